//! Regression tests for the findings of the security review, named after
//! them: what an attacker who can reach the listener, edit a live value or
//! open a pull request could do before, and can no longer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;

/// `tend watch --listen` on the workspace, its file descriptors limited
/// to `nofile` when given, with extra environment variables.
fn listening(
    ws: &Workspace,
    port: u16,
    nofile: Option<u64>,
    env: &[(&str, &str)],
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = ws.cmd();
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe and reads only the
        // struct on this stack frame.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.args([
        "watch",
        "--interval",
        "1s",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .arg(ws.desired())
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(ws.path().join("watch.log")).unwrap())
    .spawn()
    .unwrap()
}

fn wait_ready(port: u16) {
    let t0 = Instant::now();
    while http("GET", port, "/readyz").is_none_or(|(s, _)| s != 200) {
        assert!(t0.elapsed() < Duration::from_secs(30), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut watch: std::process::Child) {
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// Sends a request head (and no body) and reads the answer's status.
fn head_only(port: u16, head: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(head.as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// H1: twice the file descriptor limit in idle connections, and more with
/// half a request head, neither stop a pass from correcting drift nor
/// `/healthz` from answering; the idle ones are closed by the server.
#[test]
fn h1_idle_connections_never_starve_passes_or_healthz() {
    let ws = Workspace::new();
    ws.write("f.yaml", &file_doc("f", "f.txt", "declared\n"));
    let port = free_port();
    let nofile = 128;
    let watch = listening(&ws, port, Some(nofile), &[]);
    wait_ready(port);

    let mut held = Vec::new();
    for i in 0..2 * nofile {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        }
        held.push(s);
    }
    assert!(held.len() as u64 >= nofile, "only {} connected", held.len());

    let (status, body) = http("GET", port, "/healthz").expect("/healthz answers");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    std::fs::write(ws.path().join("f.txt"), "drifted\n").unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(ws.path().join("f.txt")).unwrap() != "declared\n" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the drift was never corrected: {}",
            std::fs::read_to_string(ws.path().join("watch.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(ws.path().join("watch.log")).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");

    // The server closes an idle connection it keeps: the header timeout.
    let last = held.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 64];
    match last.read(&mut buf) {
        Ok(n) => assert!(
            n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "an idle connection was answered: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "the idle connection stayed open: {e}"
        ),
    }
    drop(held);
    stop(watch);
}

/// H1: a hook with a wrong token or no signature is refused from its head
/// alone, before any of its body is sent, and sixty large bodies with a
/// wrong token leave memory where it was.
#[test]
fn h1_a_hook_is_refused_before_its_body_is_read() {
    let ws = Workspace::new();
    ws.write("f.yaml", &file_doc("f", "f.txt", "declared\n"));
    let port = free_port();
    let watch = listening(
        &ws,
        port,
        None,
        &[
            ("TEND_ALERTMANAGER_TOKEN", "the right token"),
            ("TEND_GITHUB_WEBHOOK_SECRET", "the webhook secret"),
        ],
    );
    wait_ready(port);
    let five_mb = 5 * 1024 * 1024;
    let alertmanager = format!(
        "POST /hooks/alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\nContent-Length: {five_mb}\r\n\r\n"
    );
    assert_eq!(head_only(port, &alertmanager), Some(401));
    let github = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: push\r\nContent-Length: {five_mb}\r\n\r\n"
    );
    assert_eq!(head_only(port, &github), Some(401));

    let before = rss(watch.id());
    let body = vec![b'x'; five_mb];
    let senders: Vec<_> = (0..60)
        .map(|_| {
            let (head, body) = (alertmanager.clone(), body.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let after = rss(watch.id());
    assert!(
        after < before + 64 * 1024 * 1024,
        "memory grew from {before} to {after} bytes"
    );
    let (status, _) = http("GET", port, "/healthz").unwrap();
    assert_eq!(status, 200);
    stop(watch);
}

/// The environment of a running process, as `KEY=value` entries.
fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

/// H3: a rollback is planned, decided and applied on the last known good
/// spec itself. A repository policy that denies `MODE=evil` denies the
/// rollback to it, and the process never runs with it again.
#[test]
fn h3_a_rollback_is_decided_on_the_spec_it_applies() {
    let ws = Workspace::new();
    let port = free_port().to_string();
    let tend = env!("CARGO_BIN_EXE_tend");
    let worker = |mode: &str| {
        format!(
            "{}  env: {{MODE: {mode}}}\nremediation: {{runbook: rollback}}\n",
            process_doc("worker", tend, &["sample-app", "--port", &port])
        )
    };
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: rollback}\nspec:\n  steps:\n    - {action: reapply-last-good, within: 10s, hold: 1s}\n    - {action: escalate}\n",
    );
    ws.write("worker.yaml", &worker("evil"));
    ws.run(&["apply"]).ok();
    ws.run(&["apply"]).ok();
    assert!(environ(ws.pid("worker")).contains(&"MODE=evil".to_string()));

    ws.write(
        "settings.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  policies: {dirs: [policies]}\n",
    );
    ws.write(
        "policies/mode.rego",
        "package tend\n\ndeny contains \"MODE=evil is forbidden\" if {\n\tsome c in input.action.changes\n\tc.to == \"evil\"\n}\n\ndeny contains \"the desired spec runs MODE=evil\" if {\n\tinput.resource.desired.spec.env.MODE == \"evil\"\n}\n",
    );
    ws.write("worker.yaml", &worker("safe"));
    kill_and_wait(ws.pid("worker"));
    let out = ws.run(&["apply", "--format", "json"]);
    let json = out.json();
    let step = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["target"]["name"] == "worker")
        .unwrap_or_else(|| panic!("no action for the worker: {json:#}"));
    assert_eq!(step["decision"], "deny", "{step:#}");
    assert!(
        step["note"]
            .as_str()
            .unwrap()
            .contains("rolls back to the spec of commit"),
        "{step:#}"
    );
    // Before, the plan showed the declaration's change (MODE → safe)
    // while the provider was handed MODE=evil.
    let to_safe = step["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["to"] == "safe");
    assert!(
        !to_safe,
        "the plan shows the rollback's own change: {step:#}"
    );
    let record = ws.record("worker");
    if let Some(pid) = record["pid"].as_i64().filter(|p| alive(*p as i32)) {
        assert!(
            !environ(pid as i32).contains(&"MODE=evil".to_string()),
            "the denied rollback ran"
        );
    }
}

/// M7: the plan of a pull request (posted as its comment) shows a live
/// value only where it equals the declared one; a declaration of a runner
/// file its author wants to read shows a digest, and no probe runs.
#[test]
fn m7_a_pull_request_plan_never_shows_runner_files() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join(".git")).unwrap();
    std::fs::write(
        ws.path().join(".git/config"),
        "[http]\n\textraheader = AUTHORIZATION: basic c2VjcmV0LXRva2VuLXZhbHVl\n",
    )
    .unwrap();
    std::fs::write(ws.path().join("same.txt"), "public\n").unwrap();
    let probe_port = free_port();
    let probed = std::net::TcpListener::bind(("127.0.0.1", probe_port)).unwrap();
    probed.set_nonblocking(true).unwrap();
    ws.write("leak.yaml", &file_doc("leak", ".git/config", "x\n"));
    ws.write(
        "same.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: internal\n      http: {{url: \"http://127.0.0.1:{probe_port}/admin\"}}\n",
            file_doc("same", "same.txt", "public\n")
        ),
    );
    let event = ws.path().join("event.json");
    std::fs::write(&event, r#"{"number": 7, "pull_request": {"number": 7}}"#).unwrap();
    let out = ws
        .cmd()
        .env("GITHUB_EVENT_NAME", "pull_request")
        .env("GITHUB_EVENT_PATH", &event)
        .env("RUNNER_TEMP", ws.path())
        .env_remove("GITHUB_TOKEN")
        .env_remove("TEND_GITHUB_TOKEN")
        .args(["--github", "plan", "--format", "json"])
        .arg(ws.desired())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("c2VjcmV0"), "{stdout}");
    assert!(!stdout.contains("extraheader"), "{stdout}");
    let plan_json = std::fs::read_to_string(ws.path().join("tend-plan.json")).unwrap_or_default();
    assert!(!plan_json.contains("c2VjcmV0"), "{plan_json}");
    assert!(
        stdout.contains("not shown in a plan of a pull request"),
        "{stdout}\n{stderr}"
    );
    assert!(
        probed.accept().is_err(),
        "a probe of the pull request's desired state ran"
    );
    // The same plan outside a pull request shows the drift as it is.
    let run = ws.run(&["plan", "--format", "json"]);
    assert!(run.stdout.contains("extraheader"), "{}", run.stdout);
}

/// L1: an error that quotes attacker-chosen text with a newline (here a
/// declared path) stays on one log line, so no line of stderr is a
/// workflow command the runner would obey.
#[test]
fn l1_a_newline_in_an_error_never_starts_a_workflow_command() {
    let ws = Workspace::new();
    ws.write(
        "f.yaml",
        "apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {name: f}\nspec:\n  path: \"/proc/nope\\n::error title=Injected::tend approved this deploy/f.txt\"\n  content: x\n",
    );
    let out = ws
        .cmd()
        .env("RUNNER_TEMP", ws.path())
        .args(["--github", "apply"])
        .arg(ws.desired())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("\\n::error title=Injected"),
        "the failure is logged, escaped: {stdout}\n{stderr}"
    );
    for line in stderr.lines() {
        assert!(!line.starts_with("::error title=Injected"), "{stderr}");
    }
}

/// Runs the action's `run.sh` with a stand-in `tend` that writes `outputs`
/// and exits with `code`; returns the step outputs.
fn run_sh(outputs: &str, code: i32, fail_on: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let stub = bin.join("tend");
    std::fs::write(
        &stub,
        format!("#!/bin/sh\nprintf '{outputs}' >> \"$GITHUB_OUTPUT\"\nexit {code}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out_file = dir.path().join("out");
    std::fs::write(&out_file, "").unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("action/run.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("GITHUB_OUTPUT", &out_file)
        .env("TEND_COMMAND", "apply")
        .env("TEND_FAIL_ON", fail_on)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(out_file).unwrap()
}

/// L2: with `fail-on: error`, a failed action fails the job even when an
/// incident is escalated in the same pass; an escalation alone does not.
#[test]
fn l2_a_failure_beside_an_escalation_fails_the_job() {
    let both = run_sh("escalated=1\\nfailed=1\\n", 1, "error");
    assert!(both.contains("fail=true"), "{both}");
    let escalation = run_sh("escalated=1\\nfailed=0\\n", 1, "error");
    assert!(escalation.contains("fail=false"), "{escalation}");
    let unreported = run_sh("", 1, "error");
    assert!(unreported.contains("fail=true"), "{unreported}");
}

/// Runs the action's `state.sh` on `dir`.
fn state_sh(step: &str, dir: &std::path::Path, origin: &str, secret: &str) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("action/state.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(step)
        .env("TEND_STATE_DIR", dir)
        .env("TEND_STATE_ORIGIN", origin)
        .env("TEND_STATE_SECRET", secret)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// M6: a state restored from another workflow, or whose signature does
/// not verify, is set aside before tend runs; a state signed by a run of
/// the same workflow is kept.
#[test]
fn m6_a_state_nobody_vouches_for_is_never_used() {
    let ws = Workspace::new();
    ws.write("f.yaml", &file_doc("f", "f.txt", "x\n"));
    ws.run(&["apply"]).ok();
    let state = ws.state();
    let drift = "tend drift desired-state";
    state_sh("sign", &state, drift, "the secret");
    assert_eq!(state_sh("verify", &state, drift, "the secret"), "");
    assert!(state.join("tend.db").exists());

    // Another workflow's state, under a key both use.
    let other = state_sh("verify", &state, "tend drift-aws aws", "the secret");
    assert!(
        other.contains("belongs to 'tend drift desired-state'"),
        "{other}"
    );
    assert!(!state.join("tend.db").exists());

    // A state changed after it was signed (a planted approval record).
    ws.run(&["apply"]).ok();
    state_sh("sign", &state, drift, "the secret");
    let mut db = std::fs::OpenOptions::new()
        .append(true)
        .open(state.join("tend.db"))
        .unwrap();
    db.write_all(b"planted").unwrap();
    drop(db);
    let tampered = state_sh("verify", &state, drift, "the secret");
    assert!(tampered.contains("does not verify"), "{tampered}");
    assert!(!state.join("tend.db").exists());

    // Signed without the secret: not signed at all.
    ws.run(&["apply"]).ok();
    state_sh("sign", &state, drift, "");
    let unsigned = state_sh("verify", &state, drift, "the secret");
    assert!(unsigned.contains("not signed"), "{unsigned}");
}

/// The healing passes tend counted, from its own metrics.
fn healing_passes(port: u16) -> u64 {
    let (_, text) = http("GET", port, "/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with("tend_passes_total{kind=\"healing\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// M8: a token holder flooding the Alertmanager hook (alerts for
/// undeclared resources, and thousands of instances for a declared one)
/// grows tend's memory only within the alert book's bounds, and a burst of
/// posts is far fewer healing passes than posts.
#[test]
fn m8_an_alert_flood_is_bounded_and_coalesced() {
    let ws = Workspace::new();
    ws.write(
        "f.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: up\n      tcp: {{address: \"127.0.0.1:1\"}}\n",
            file_doc("f", "f.txt", "x\n")
        ),
    );
    let port = free_port();
    let token = "the alertmanager token";
    let watch = listening(
        &ws,
        port,
        None,
        &[("TEND_ALERTMANAGER_TOKEN", token), ("TEND_LOG", "error")],
    );
    wait_ready(port);
    let before = rss(watch.id());
    let passes_before = healing_passes(port);
    let alert = |resource: &str, n: usize, i: usize| {
        format!(
            r#"{{"status":"firing","labels":{{"alertname":"Flood{i}","tend_resource":"{resource}","instance":"i-{n}"}},"annotations":{{"summary":"{}"}},"fingerprint":"{i:04}-{n:06}"}}"#,
            "s".repeat(400)
        )
    };
    let posts = 20;
    for i in 0..posts {
        let undeclared: Vec<String> = (0..1000)
            .map(|n| alert(&format!("host.File/x-{i}-{n}"), n, i))
            .collect();
        let declared: Vec<String> = (0..1000).map(|n| alert("host.File/f", n, i)).collect();
        for list in [undeclared, declared] {
            let body = format!(
                r#"{{"version":"4","status":"firing","alerts":[{}]}}"#,
                list.join(",")
            );
            let bearer = [("Authorization", format!("Bearer {token}"))];
            let (status, answer) =
                super::service::post(port, "/hooks/alertmanager", &bearer, &body);
            assert_eq!(status, 200, "{answer}");
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = rss(watch.id());
    let passes = healing_passes(port) - passes_before;
    eprintln!(
        "alert flood: {} posts, RSS {} → {} MiB, {passes} healing passes",
        2 * posts,
        before / (1 << 20),
        after / (1 << 20)
    );
    assert!(
        after < before + 96 * 1024 * 1024,
        "memory grew from {before} to {after} bytes"
    );
    assert!(
        passes < posts as u64,
        "{passes} healing passes for {posts} posts"
    );
    stop(watch);
}
