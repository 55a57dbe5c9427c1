//! host.Process: start, survive tend, restart when killed, never adopt a
//! reused pid.

use crate::{alive, kill_and_wait, process_doc, Workspace};

#[test]
fn a_killed_process_is_restarted() {
    let ws = Workspace::new();
    ws.write("p.yaml", &process_doc("sleeper", "sleep", &["300"]));
    let run = ws.run(&["apply"]);
    run.ok();
    let pid = ws.pid("sleeper");
    assert!(alive(pid), "the process must outlive tend");
    assert!(ws.state().join("host/processes/sleeper.pid").exists());
    assert!(ws.state().join("host/processes/sleeper.log").exists());
    ws.run(&["plan", "--detailed-exitcode"]).code(0);

    kill_and_wait(pid);
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("↻ host.Process/sleeper  restart"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!("note: pid {pid} has exited")),
        "{}",
        plan.stdout
    );

    ws.run(&["apply"]).ok();
    let new_pid = ws.pid("sleeper");
    assert_ne!(new_pid, pid);
    assert!(alive(new_pid));
    ws.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn a_reused_pid_is_never_adopted_or_signalled() {
    let ws = Workspace::new();
    ws.write("p.yaml", &process_doc("sleeper", "sleep", &["300"]));
    ws.run(&["apply"]).ok();
    let pid = ws.pid("sleeper");
    kill_and_wait(pid);

    // Another program now holds the recorded pid (simulated by pointing the
    // record at it): even with the very same command line, its start time
    // differs, so it is not ours.
    let mut foreign = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let mut rec = ws.record("sleeper");
    rec["pid"] = foreign.id().into();
    std::fs::write(
        ws.state().join("host/processes/sleeper.json"),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();

    let plan = ws.run(&["plan"]);
    plan.ok();
    assert!(plan.stdout.contains("restart"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("belongs to another program"),
        "{}",
        plan.stdout
    );

    ws.run(&["apply"]).ok();
    assert!(
        alive(foreign.id() as i32),
        "tend must not signal a process it does not own"
    );
    let new_pid = ws.pid("sleeper");
    assert_ne!(new_pid, foreign.id() as i32);
    assert!(alive(new_pid));
    foreign.kill().unwrap();
    foreign.wait().unwrap();
}

#[test]
fn changing_the_command_restarts_with_the_new_one() {
    let ws = Workspace::new();
    ws.write("p.yaml", &process_doc("sleeper", "sleep", &["300"]));
    ws.run(&["apply"]).ok();
    let old = ws.pid("sleeper");
    ws.write("p.yaml", &process_doc("sleeper", "sleep", &["301"]));
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains("/spec/args: [\"300\"] → [\"301\"]"),
        "{}",
        plan.stdout
    );
    ws.run(&["apply"]).ok();
    let new = ws.pid("sleeper");
    assert!(!alive(old));
    assert!(alive(new));
    assert_eq!(
        ws.record("sleeper")["cmdline"],
        serde_json::json!(["sleep", "301"])
    );
}

#[test]
fn a_process_that_exits_at_once_is_a_failed_action() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &process_doc("broken", "sh", &["-c", "echo cannot start >&2; exit 3"]),
    );
    let run = ws.run(&["apply"]);
    run.code(1);
    assert!(run.stdout.contains("failed"), "{}", run.stdout);
    assert!(run.stdout.contains("cannot start"), "{}", run.stdout);
    let history = ws.run_raw(&["history"]);
    assert!(history.stdout.contains("failed"), "{}", history.stdout);
}

#[test]
fn the_sample_app_serves_health_and_metrics() {
    use std::io::{Read, Write};
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &process_doc(
            "app",
            "${TEND_EXE}",
            &["sample-app", "--port", &port.to_string()],
        ),
    );
    ws.run(&["apply"]).ok();
    let get = |path: &str| -> String {
        for _ in 0..100 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                return out;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("sample app never listened on {port}");
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics");
    assert!(
        metrics.contains("sample_http_requests_total{code=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sample_http_request_duration_seconds_bucket{le=\"+Inf\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sample_memory_resident_bytes "),
        "{metrics}"
    );
}
