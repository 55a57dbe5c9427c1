//! Self-healing end to end: the real binary, the sample workload, and a real
//! Prometheus server on 127.0.0.1 scraping it every second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

const TEND: &str = env!("CARGO_BIN_EXE_tend");

fn settings(extra: &str) -> String {
    format!("apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n{extra}")
}

fn incidents(ws: &Workspace) -> Vec<serde_json::Value> {
    let out = ws.run_raw(&["incidents", "--all", "--format", "json"]);
    out.ok();
    out.json()["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A listener that can be opened and closed, for a TCP probe to see.
struct Toggle {
    port: u16,
    listener: Option<std::net::TcpListener>,
}

impl Toggle {
    fn new() -> Toggle {
        Toggle {
            port: free_port(),
            listener: None,
        }
    }

    fn open(&mut self) {
        if self.listener.is_none() {
            self.listener = Some(std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap());
        }
    }

    fn close(&mut self) {
        self.listener = None;
    }
}

/// A watched file whose health is a TCP probe on `port`.
fn probed_file(port: u16, slo_for: &str, runbook: &str) -> String {
    format!(
        "{}health:\n  probes:\n    - name: port\n      tcp: {{address: \"127.0.0.1:{port}\", timeout: 1s}}\n  slos:\n    - {{name: reachable, signal: port, for: {slo_for}, recovery: 0s}}\nremediation:\n  runbook: {runbook}\n",
        file_doc("f", "f.txt", "x")
    )
}

#[test]
fn a_crash_is_restarted_verified_and_resolved_with_timings() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\", status: 200}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    ws.run(&["apply"]).ok();
    wait_http(port);
    assert!(
        incidents(&ws).is_empty(),
        "starting a new process is no incident"
    );
    let before = ws.pid("web");
    kill_and_wait(before);

    let out = ws.run(&["apply", "--format", "json"]);
    out.ok();
    let j = out.json();
    let inc = &j["incidents"][0];
    assert_eq!(inc["status"], "resolved", "{inc:#}");
    assert!(inc["cause"].as_str().unwrap().contains("not running"));
    assert_eq!(inc["steps"][0]["action"], "restart");
    assert_eq!(inc["steps"][0]["outcome"], "verified");
    assert_eq!(inc["symptoms"][0]["signal"], "liveness");
    assert!(inc["timeToDetectMs"].as_i64().unwrap() >= 0);
    assert!(inc["timeToRecoverMs"].as_i64().is_some(), "{inc:#}");
    let after = ws.pid("web");
    assert_ne!(before, after);
    assert!(alive(after));
    wait_http(port);

    // Healthy again: the next pass has nothing to do.
    let again = ws.run(&["apply", "--format", "json"]);
    again.ok();
    assert_eq!(again.json()["summary"]["pending"], 0);
    let all = incidents(&ws);
    assert_eq!(all.len(), 1);
    let shown = ws.run_raw(&["incidents", "show", &all[0]["id"].to_string()]);
    shown.ok();
    for part in [
        "resource:",
        "symptoms:",
        "probable cause:",
        "actions tried:",
        "current state:",
        "next action:",
        "time to detect",
        "time to recover",
    ] {
        assert!(
            shown.stdout.contains(part),
            "{part} missing:\n{}",
            shown.stdout
        );
    }
}

#[test]
fn tend_watch_heals_a_crash_and_stops_cleanly_on_sigterm() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    let mut watch = ws
        .cmd()
        .args(["watch", "--interval", "2s", "--format", "json"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_http(port);
    // Let a healthy pass be recorded, so detection is measured from it.
    std::thread::sleep(Duration::from_millis(2500));
    let pid = ws.pid("web");
    let killed_at = chrono::Utc::now();
    let t0 = Instant::now();
    kill_and_wait(pid);
    let resolved = loop {
        assert!(t0.elapsed() < Duration::from_secs(60), "not healed in 60 s");
        std::thread::sleep(Duration::from_millis(200));
        if let Some(i) = incidents(&ws)
            .into_iter()
            .find(|i| i["status"] == "resolved")
        {
            break i;
        }
    };
    let ts = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(resolved[k].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let detect = (ts("detectedAt") - killed_at).num_milliseconds();
    let recover = (ts("resolvedAt") - killed_at).num_milliseconds();
    eprintln!(
        "tend watch --interval 2s, crash: detected {detect} ms after the kill, recovery verified {recover} ms after the kill (recorded: time to detect {} ms, time to recover {} ms)",
        resolved["timeToDetectMs"], resolved["timeToRecoverMs"]
    );
    assert!(alive(ws.pid("web")));

    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let status = watch.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(watch.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "one JSON document per line:\n{out}"
    );
    // The lock is released: a plain apply runs.
    ws.run(&["apply"]).ok();
}

/// Instant crash detection: under a 30 s interval, a killed process is
/// noticed through its pidfd when it exits and restarted long before the
/// next pass would have run. Prints the measured times (no timing assert:
/// the machine's load varies); the bound asserted is the interval.
#[test]
fn a_crash_is_restarted_at_once_under_a_long_interval() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    let mut watch = ws
        .cmd()
        .args(["watch", "--interval", "30s"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_http(port);
    std::thread::sleep(Duration::from_millis(1500));
    let mut restarts = Vec::new();
    let mut verified = Vec::new();
    for round in 0..3 {
        let pid = ws.pid("web");
        let t0 = Instant::now();
        kill_and_wait(pid);
        let restarted = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(25),
                "round {round}: not restarted before the next interval"
            );
            std::thread::sleep(Duration::from_millis(5));
            let now = ws.record("web")["pid"].as_i64().unwrap_or(0) as i32;
            if now > 0 && now != pid && alive(now) {
                break t0.elapsed();
            }
        };
        restarts.push(restarted);
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(25),
                "round {round}: not verified before the next interval"
            );
            std::thread::sleep(Duration::from_millis(20));
            let done = incidents(&ws)
                .iter()
                .filter(|i| i["status"] == "resolved")
                .count();
            if done > round {
                break;
            }
        }
        verified.push(t0.elapsed());
        // Out of the crash-loop window's reach: one crash per round.
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "tend watch --interval 30s, SIGKILL: restarted after {:?}, recovery verified after {:?}",
        restarts, verified
    );
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
}

#[test]
fn an_error_ratio_matching_a_signature_runs_its_runbook_and_unknown_never_acts() {
    let ws = Workspace::new();
    let port = free_port();
    let mut prom = Prometheus::start(&[port]);
    let ratio = r#"sum(rate(sample_http_requests_total{code="500"}[5s])) / sum(rate(sample_http_requests_total[5s]))"#;
    ws.write(
        "settings.yaml",
        &settings(&format!(
            "  healing:\n    prometheus: {{url: \"{}\", timeout: 1s}}\n",
            prom.url()
        )),
    );
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: error-ratio\n      prometheus:\n        query: '{ratio}'\n        above: 0.3\n  slos:\n    - name: budget\n      for: 1h\n      objective: 0.9\n      errorRatio: '{}'\n      burnRates: [{{long: 10s, short: 5s, factor: 2}}]\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()]),
            ratio.replace("[5s]", "[$window]")
        ),
    );
    ws.write(
        "healing.yaml",
        "apiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: errors}\nspec:\n  cause: the service fails requests\n  all: [{signal: error-ratio, for: 1s}]\n  runbook: restart\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: restart}\nspec:\n  steps:\n    - {action: restart, within: 40s, hold: 2s}\n    - {action: escalate}\n",
    );
    ws.run(&["apply"]).ok();
    wait_http(port);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = http("GET", port, "/");
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    prom.wait_for(ratio, |v| v < 0.3, "healthy traffic");
    let before = ws.pid("web");
    http("POST", port, "/fault/error-ratio?value=0.9").unwrap();
    prom.wait_for(ratio, |v| v > 0.3, "the injected error ratio");

    let mut healed = None;
    let mut burn = None;
    for _ in 0..5 {
        let out = ws.run(&["apply", "--format", "json"]);
        out.ok();
        burn = burn.or_else(|| {
            out.json()["health"][0]["signals"]
                .as_array()?
                .iter()
                .find(|s| s["signal"] == "burn-rate/budget")
                .cloned()
        });
        if let Some(i) = out.json()["incidents"]
            .as_array()
            .and_then(|a| a.first().cloned())
        {
            healed = Some(i);
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let inc = healed.expect("an incident was opened");
    // A 0.9 error ratio against a 90% objective burns the budget 9x.
    let burn = burn.expect("the burn-rate signal was read");
    assert_eq!(burn["status"], "unhealthy", "{burn:#}");
    assert!(burn["value"].as_f64().unwrap() > 2.0, "{burn:#}");
    assert_eq!(inc["status"], "resolved", "{inc:#}");
    assert_eq!(inc["signature"], "errors");
    assert_eq!(inc["cause"], "the service fails requests");
    assert_eq!(inc["steps"][0]["outcome"], "verified", "{inc:#}");
    assert!(inc["symptoms"][0]["value"].as_f64().unwrap() > 0.3);
    assert_ne!(ws.pid("web"), before, "restarted");

    // Prometheus stopped: the signal is unknown, reported, and nothing acts
    // even though the workload fails again.
    prom.stop();
    http("POST", port, "/fault/error-ratio?value=0.9").unwrap();
    let pid = ws.pid("web");
    for _ in 0..2 {
        let out = ws.run(&["apply", "--format", "json"]);
        out.ok();
        let j = out.json();
        let sig = j["health"][0]["signals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["signal"] == "error-ratio")
            .cloned()
            .unwrap();
        assert_eq!(sig["status"], "unknown", "{sig:#}");
        assert!(sig["detail"]
            .as_str()
            .unwrap()
            .contains("Prometheus unreachable"));
        assert_eq!(j["summary"]["pending"], 0);
        std::thread::sleep(Duration::from_millis(1200));
    }
    let human = ws.run(&["plan"]);
    human.ok();
    assert!(
        human.stdout.contains("no action on unknown signals"),
        "{}",
        human.stdout
    );
    assert_eq!(ws.pid("web"), pid, "not restarted on an unknown signal");
    assert_eq!(incidents(&ws).len(), 1);
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
}

#[test]
fn a_fix_that_does_not_hold_moves_on_and_escalates_with_a_summary() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}remediation: {{runbook: two-restarts}}\n",
            process_doc(
                "web",
                TEND,
                &[
                    "sample-app",
                    "--port",
                    &port.to_string(),
                    "--crash-after",
                    "0.8"
                ]
            )
        ),
    );
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: two-restarts}\nspec:\n  steps:\n    - {action: restart, within: 4s, hold: 2s}\n    - {action: reapply, within: 4s, hold: 2s}\n    - {action: escalate}\n",
    );
    ws.run(&["apply"]).ok();
    std::thread::sleep(Duration::from_millis(1500));
    let out = ws.run(&["apply"]);
    out.code(1);
    assert!(
        out.stderr.contains("1 incident is escalated"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("ESCALATED"), "{}", out.stdout);

    let list = incidents(&ws);
    assert_eq!(list.len(), 1);
    let inc = &list[0];
    assert_eq!(inc["status"], "escalated");
    let outcomes: Vec<&str> = inc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["not-verified", "not-verified", "escalated"],
        "{inc:#}"
    );
    assert!(inc["recommendation"]
        .as_str()
        .unwrap()
        .contains("a human should investigate"));

    let shown = ws.run_raw(&["incidents", "show", &inc["id"].to_string()]);
    shown.ok();
    assert!(shown.stdout.contains("ESCALATED"));
    assert!(
        shown.stdout.contains("step 1 restart [auto] not-verified"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("step 2 reapply [auto] not-verified"),
        "{}",
        shown.stdout
    );
    // Regression: the escalation was shown as "step 4" of this 3-step
    // runbook, the current state named the first dead pid, and the cause
    // read "the process is not running (not running)".
    assert!(
        shown.stdout.contains("step 3 escalate [auto] escalated"),
        "{}",
        shown.stdout
    );
    assert!(!shown.stdout.contains("step 4"), "{}", shown.stdout);
    let latest = ws.pid("web");
    assert!(
        inc["state"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {latest} has exited")),
        "the latest instance: {inc:#}"
    );
    assert_eq!(inc["cause"], "the process is not running", "{inc:#}");

    // It stays escalated and nothing more is tried until a human acts.
    let again = ws.run(&["apply", "--format", "markdown"]);
    again.code(1);
    assert!(again.stdout.contains("[!CAUTION]"), "{}", again.stdout);
    assert_eq!(incidents(&ws)[0]["steps"].as_array().unwrap().len(), 3);
    let sarif = ws.run(&["apply", "--format", "sarif"]);
    sarif.code(1);
    let result = sarif.json()["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ruleId"] == "tend/escalated")
        .cloned()
        .expect("an escalated result");
    assert_eq!(result["level"], "error");
    assert!(
        result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("app.yaml")
    );

    // A human commits the fix: it is applied although the incident is
    // escalated, and the next healthy pass resolves the incident.
    ws.write(
        "app.yaml",
        &format!(
            "{}remediation: {{runbook: two-restarts}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    ws.run(&["apply"]).code(1);
    wait_http(port);
    std::thread::sleep(Duration::from_millis(1200));
    ws.run(&["apply"]).ok();
    let inc = &incidents(&ws)[0];
    assert_eq!(inc["status"], "resolved", "{inc:#}");
    assert_eq!(
        inc["steps"].as_array().unwrap().last().unwrap()["outcome"],
        "recovered"
    );
}

#[test]
fn a_signal_that_flaps_within_its_for_window_causes_no_action() {
    let ws = Workspace::new();
    let mut t = Toggle::new();
    ws.write("f.yaml", &probed_file(t.port, "2s", "again"));
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: again}\nspec:\n  steps:\n    - {action: reapply, within: 1s, hold: 0s}\n    - {action: escalate}\n",
    );
    for i in 0..6 {
        if i % 2 == 0 {
            t.close()
        } else {
            t.open()
        }
        ws.run(&["apply"]).ok();
        std::thread::sleep(Duration::from_millis(900));
    }
    assert!(
        incidents(&ws).is_empty(),
        "a flapping signal opened an incident"
    );
    // The same signal failing for longer than `for` does breach.
    t.close();
    ws.run(&["apply"]).ok();
    std::thread::sleep(Duration::from_millis(2200));
    let out = ws.run(&["apply"]);
    out.code(1);
    let list = incidents(&ws);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["cause"], "SLO `reachable` is breached");
}

#[test]
fn a_maintenance_window_holds_the_step_for_review() {
    let ws = Workspace::new();
    let port = free_port();
    let app = format!(
        "{}health:\n  probes:\n    - name: port\n      tcp: {{address: \"127.0.0.1:{port}\"}}\n",
        process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
    );
    ws.write("app.yaml", &app);
    ws.run(&["apply"]).ok();
    wait_http(port);
    ws.write(
        "settings.yaml",
        &settings("  maintenanceWindows:\n    - {name: always, days: [mon, tue, wed, thu, fri, sat, sun], start: \"00:00\", end: \"24:00\"}\n"),
    );
    let pid = ws.pid("web");
    kill_and_wait(pid);
    let out = ws.run(&["apply", "--format", "json"]);
    out.ok();
    let j = out.json();
    let action = &j["actions"][0];
    assert_eq!(action["decision"], "review", "{action:#}");
    assert_eq!(action["incident"]["runbook"], "built-in");
    let inc = &j["incidents"][0];
    assert_eq!(inc["status"], "open");
    assert_eq!(inc["steps"][0]["outcome"], "held");
    assert!(inc["steps"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("maintenance window"));
    assert!(!alive(pid));
    assert_eq!(ws.record("web")["pid"], pid, "not restarted");

    // Regression: every pass in the window added another identical `held`
    // step. The step is recorded once and its end moves on.
    let first_end = inc["steps"][0]["finishedAt"].as_str().unwrap().to_string();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(20));
        ws.run(&["apply"]).ok();
    }
    let inc = &incidents(&ws)[0];
    let steps = inc["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{inc:#}");
    assert_eq!(steps[0]["outcome"], "held");
    assert_eq!(
        steps[0]["startedAt"],
        j["incidents"][0]["steps"][0]["startedAt"]
    );
    assert!(steps[0]["finishedAt"].as_str().unwrap() > first_end.as_str());
}

#[test]
fn a_step_that_keeps_failing_is_demoted_as_ineffective() {
    let ws = Workspace::new();
    let mut t = Toggle::new();
    ws.write(
        "settings.yaml",
        &settings("  healing:\n    commands: [/bin/sh]\n    ineffectiveAfter: 2\n"),
    );
    ws.write("f.yaml", &probed_file(t.port, "0s", "poke"));
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: poke}\nspec:\n  steps:\n    - {action: command, command: [/bin/sh, -c, \"echo poked $TEND_RESOURCE\"], within: 1s, hold: 0s}\n    - {action: escalate}\n",
    );
    ws.run(&["apply"]).ok();
    ws.run(&["apply"]).code(1);
    for _ in 0..2 {
        t.open();
        ws.run(&["apply"]).ok();
        t.close();
        ws.run(&["apply"]).code(1);
    }
    let list = incidents(&ws);
    assert_eq!(list.len(), 3);
    // Newest first.
    let first = &list[2];
    assert_eq!(first["steps"][0]["action"], "command");
    assert_eq!(first["steps"][0]["outcome"], "not-verified");
    assert!(first["steps"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("poked host.File/f"));
    assert_eq!(list[1]["status"], "resolved", "{:#}", list[1]);
    let last = &list[0];
    assert_eq!(last["steps"][0]["outcome"], "skipped", "{last:#}");
    assert!(last["steps"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("ineffective"));
    assert_eq!(last["status"], "escalated");

    let stats = ws.run_raw(&["incidents", "stats", "--format", "json"]);
    stats.ok();
    let step = &stats.json()["steps"][0];
    assert_eq!(step["cause"], "host.File/f");
    assert_eq!(step["action"], "command");
    assert_eq!(
        (
            step["failures"].as_i64(),
            step["consecutiveFailures"].as_i64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(step["successes"], 0);
}

#[test]
fn a_runbook_command_must_be_allowlisted() {
    let ws = Workspace::new();
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: poke}\nspec:\n  steps:\n    - action: command\n      command: [/usr/bin/rm, -rf, /]\n",
    );
    ws.write(
        "f.yaml",
        &format!(
            "{}remediation: {{runbook: pokey}}\n",
            file_doc("f", "f.txt", "x")
        ),
    );
    let out = ws.run(&["validate"]);
    out.code(1);
    assert!(out.stderr.contains("runbook.yaml:7:"), "{}", out.stderr);
    assert!(out
        .stderr
        .contains("`/usr/bin/rm` is not an allowed command"));
    assert!(out.stderr.contains("f.yaml:"), "{}", out.stderr);
    assert!(out.stderr.contains("unknown runbook `pokey`"));
    assert!(!ws.path().join("f.txt").exists());
}

#[test]
fn tend_watch_reconciles_at_once_when_the_source_changes() {
    let ws = Workspace::new();
    ws.write("a.yaml", &file_doc("a", "a.txt", "first"));
    let mut watch = ws
        .cmd()
        .args(["watch", "--interval", "10m"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |path: &str, want: &str| {
        let p = ws.path().join(path);
        for _ in 0..100 {
            if std::fs::read_to_string(&p).is_ok_and(|t| t == want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    assert!(wait_for("a.txt", "first"), "the first pass ran");
    ws.write("b.yaml", &file_doc("b", "b.txt", "second"));
    assert!(
        wait_for("b.txt", "second"),
        "a new document is applied long before the 10 minute interval"
    );
    // A broken commit changes nothing and the watcher keeps going.
    ws.write("c.yaml", "kind: [\n");
    std::thread::sleep(Duration::from_millis(800));
    ws.remove("c.yaml");
    ws.write("a.yaml", &file_doc("a", "a.txt", "third"));
    assert!(wait_for("a.txt", "third"));
    unsafe { libc::kill(watch.id() as i32, libc::SIGINT) };
    assert!(watch.wait().unwrap().success());
}

#[test]
fn health_declarations_are_checked_with_locations() {
    let ws = Workspace::new();
    ws.write(
        "f.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: both\n      tcp: {{address: \"127.0.0.1:1\"}}\n      http: {{url: \"http://127.0.0.1:1/\"}}\n    - name: q\n      prometheus: {{query: up, above: 1}}\n  slos:\n    - {{name: s, signal: nope}}\n",
            file_doc("f", "f.txt", "x")
        ),
    );
    let out = ws.run(&["validate"]);
    out.code(1);
    for want in [
        "error: probe `both` must have exactly one of http, tcp, prometheus",
        "f.yaml:11:7",
        "error: prometheus probe `q` needs a Prometheus server",
        "f.yaml:15:19",
        "help: set Settings spec.healing.prometheus.url",
        "error: SLO `s` refers to unknown signal `nope`",
        "f.yaml:17:25",
        "signals of host.File/f: status, both, q",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?} in:\n{}",
            out.stderr
        );
    }
}

#[test]
fn reapply_last_good_rolls_a_bad_change_back() {
    let ws = Workspace::new();
    let port = free_port();
    let p = port.to_string();
    let good = process_doc("web", TEND, &["sample-app", "--port", &p]);
    let runbook = "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: rollback}\nspec:\n  steps:\n    - {action: reapply-last-good, within: 10s, hold: 2s}\n    - {action: escalate}\n";
    ws.write("runbook.yaml", runbook);
    ws.write(
        "app.yaml",
        &format!("{good}remediation: {{runbook: rollback}}\n"),
    );
    ws.run(&["apply"]).ok();
    wait_http(port);
    // A healthy, in-sync pass records the last known good spec.
    ws.run(&["apply"]).ok();
    let bad = process_doc(
        "web",
        TEND,
        &["sample-app", "--port", &p, "--crash-after", "0.5"],
    );
    // Not verified as a change (a verified change is rolled back by the
    // built-in rollback, see tests/e2e/changes.rs): the resource's own
    // runbook heals it.
    ws.write(
        "app.yaml",
        &format!("{bad}remediation: {{runbook: rollback}}\nchanges: {{verify: false}}\n"),
    );
    ws.run(&["apply"]).ok();
    std::thread::sleep(Duration::from_millis(1200));
    let out = ws.run(&["apply", "--format", "json"]);
    out.ok();
    let inc = &out.json()["incidents"][0];
    assert_eq!(inc["status"], "resolved", "{inc:#}");
    assert_eq!(inc["steps"][0]["action"], "reapply-last-good");
    assert!(inc["steps"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("spec of commit"));
    let args = ws.record("web")["cmdline"].to_string();
    assert!(!args.contains("crash-after"), "{args}");
    wait_http(port);
}

/// Regression: while the desired state was invalid, a workload killed in
/// that window was not restarted until the file was fixed. The last valid
/// desired state keeps being healed; nothing of the broken one is applied.
#[test]
fn a_broken_commit_does_not_stop_healing() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    let mut watch = ws
        .cmd()
        .args(["watch", "--interval", "1s"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_http(port);
    std::thread::sleep(Duration::from_millis(1500));
    ws.write(
        "broken.yaml",
        &file_doc("extra", "extra.txt", "x").replace("spec:", "spec: [oops"),
    );
    // The broken file is read and reported before the crash.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = ws.pid("web");
    kill_and_wait(pid);
    let t0 = Instant::now();
    let restarted = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not restarted in 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = ws.pid("web");
        if now != pid && alive(now) {
            break now;
        }
    };
    assert!(
        !ws.path().join("extra.txt").exists(),
        "nothing of the broken state is applied"
    );
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
    let mut out = String::new();
    std::io::Read::read_to_string(watch.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains("pass failed, nothing changed"), "{out}");
    assert!(out.contains("broken.yaml"), "the error is located: {out}");
    assert!(alive(restarted));
}

/// A server that answers every request with 200, holding a port.
fn foreign_server(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    use std::io::{Read, Write};
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf);
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// Regression: with a foreign process on the workload's port, the http
/// probe read the foreign server's answers as the workload's health and
/// "Address already in use" appeared only inside step details. A port
/// conflict is the stated cause.
#[test]
fn a_port_held_by_another_process_is_the_stated_cause() {
    let ws = Workspace::new();
    let port = free_port();
    let stop = Arc::new(AtomicBool::new(false));
    let server = foreign_server(port, Arc::clone(&stop));
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    let first = ws.run(&["apply"]);
    first.code(1);
    assert!(
        first.stdout.contains("Address already in use"),
        "{}",
        first.stdout
    );
    ws.run(&["apply"]);
    let list = incidents(&ws);
    assert_eq!(list.len(), 1, "{list:#?}");
    let cause = list[0]["cause"].as_str().unwrap();
    assert!(cause.starts_with("port conflict"), "{cause}");
    assert!(cause.contains("Address already in use"), "{cause}");
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

/// The processes whose command line holds `--port <port>`.
fn instances_on(port: u16) -> Vec<i32> {
    let needle = format!("--port\0{port}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
                && alive(*pid)
        })
        .collect()
}

/// Regression: when `tend apply` was killed after it spawned the workload
/// but before it wrote the pid record, the orphan kept the port, the next
/// pass started a second instance that failed with "Address already in
/// use", and the incident escalated falsely.
#[test]
fn a_kill_between_spawn_and_record_leaves_exactly_one_instance() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    let mut cmd = ws.cmd();
    cmd.env("TEND_FAULT", "kill-after-spawn")
        .arg("apply")
        .arg(ws.desired());
    let killed = cmd.output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(libc::SIGKILL)
    );
    wait_http(port);
    assert_eq!(instances_on(port).len(), 1);

    let out = ws.run(&["apply", "--format", "json"]);
    out.ok();
    let orphan = instances_on(port);
    assert_eq!(orphan.len(), 1, "exactly one instance");
    assert_eq!(ws.pid("web"), orphan[0], "the orphan is adopted");
    assert!(incidents(&ws).is_empty(), "no false incident");
    let history = ws.run_raw(&["history", "--format", "json"]).ok().json();
    let interrupted: Vec<&serde_json::Value> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "interrupted")
        .collect();
    assert_eq!(interrupted.len(), 1, "{history:#}");
    assert_eq!(interrupted[0]["action"], "create");
    // And a second pass leaves it alone.
    ws.run(&["apply"]).ok();
    assert_eq!(instances_on(port), orphan);
}

/// Regression: when `tend watch` was killed while it verified a restart,
/// the restart was missing from the incident and nothing recorded the
/// interruption. The next pass records the interrupted step on the
/// incident and in the journal.
#[test]
fn a_watch_killed_during_verification_leaves_an_interrupted_step() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\nremediation: {{runbook: slow}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: slow}\nspec:\n  steps:\n    - {action: restart, within: 60s, hold: 30s}\n    - {action: escalate}\n",
    );
    ws.run(&["apply"]).ok();
    wait_http(port);
    let mut watch = ws
        .cmd()
        .args(["watch", "--interval", "1s"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let first = ws.pid("web");
    kill_and_wait(first);
    let t0 = Instant::now();
    // Killed once the restart is done and its verification under way.
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no verification under way"
        );
        std::thread::sleep(Duration::from_millis(100));
        let history = ws.run_raw(&["history", "--format", "json"]).json();
        let verifying = history["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["action"] == "verify"));
        if verifying {
            break;
        }
    }
    watch.kill().unwrap();
    watch.wait().unwrap();

    ws.run(&["apply"]).ok();
    let inc = &incidents(&ws)[0];
    let steps = inc["steps"].as_array().unwrap();
    assert_eq!(steps[0]["action"], "restart", "{inc:#}");
    assert_eq!(steps[0]["outcome"], "interrupted", "{inc:#}");
    assert!(steps[0]["detail"]
        .as_str()
        .unwrap()
        .contains("tend stopped"));
    assert_eq!(inc["status"], "resolved", "the restart held: {inc:#}");
    let history = ws.run_raw(&["history", "--format", "json"]).ok().json();
    assert!(
        history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "verify" && e["outcome"] == "interrupted"),
        "{history:#}"
    );
}

/// The starts of the workload tend journaled (create and restart outcomes).
fn starts(ws: &Workspace) -> Vec<chrono::DateTime<chrono::Utc>> {
    let history = ws.run_raw(&["history", "--format", "json"]).ok().json();
    history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["phase"] == "outcome"
                && e["outcome"] == "synced"
                && matches!(e["action"].as_str(), Some("create" | "restart"))
        })
        .map(|e| {
            chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc)
        })
        .collect()
}

/// Regression: after a runbook was exhausted, a dead process stayed dead
/// until a human acted ("already escalated; waiting for a human" on every
/// pass). The declared state is restored with backoff, each attempt on the
/// incident, and the incident stays escalated.
#[test]
fn an_escalated_process_is_still_restarted_with_backoff() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "settings.yaml",
        &settings("  healing:\n    backoff: {initial: 1s, max: 2s}\n"),
    );
    ws.write(
        "app.yaml",
        &format!(
            "{}remediation: {{runbook: once}}\n",
            process_doc(
                "web",
                TEND,
                &[
                    "sample-app",
                    "--port",
                    &port.to_string(),
                    "--crash-after",
                    "0.5"
                ]
            )
        ),
    );
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: once}\nspec:\n  steps:\n    - {action: restart, within: 2s, hold: 1s}\n    - {action: escalate}\n",
    );
    ws.run(&["apply"]).ok();
    std::thread::sleep(Duration::from_millis(1000));
    ws.run(&["apply"]).code(1);
    assert_eq!(incidents(&ws)[0]["status"], "escalated");
    let dead = ws.pid("web");
    assert!(!alive(dead));

    // Within the backoff: nothing is started, the plan says when.
    let held = ws.run(&["apply"]);
    held.code(1);
    assert!(
        held.stdout.contains("restore the declared state after"),
        "{}",
        held.stdout
    );
    assert_eq!(ws.pid("web"), dead);

    let mut pids = vec![dead];
    for attempt in 1..=2 {
        std::thread::sleep(Duration::from_millis(2100));
        ws.run(&["apply"]).code(1);
        let pid = ws.pid("web");
        assert!(!pids.contains(&pid), "attempt {attempt} starts it again");
        pids.push(pid);
        let inc = &incidents(&ws)[0];
        assert_eq!(inc["status"], "escalated", "{inc:#}");
        let last = inc["steps"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["outcome"], "restored", "{inc:#}");
        let detail = last["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("attempt {attempt} ")), "{detail}");
        assert!(detail.contains("the next attempt waits 2s"), "{detail}");
        // Right after an attempt, the backoff holds the next one.
        std::thread::sleep(Duration::from_millis(700));
        ws.run(&["apply"]).code(1);
        assert_eq!(ws.pid("web"), pid, "held by the backoff");
    }
}

/// `tend watch --interval 1s` on the workspace for `d`, then SIGTERM, which
/// it must stop cleanly on.
fn watch_for(ws: &Workspace, d: Duration) {
    let mut watch = ws
        .cmd()
        .args(["watch", "--interval", "1s"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(d);
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
}

/// Regression: a workload that crashed a few seconds after every start
/// was restarted 11 times in 60 s, with 10 "resolved" incidents and no
/// escalation. The same problem recurring is a crash loop: escalated, and
/// restarts are bounded by the backoff.
#[test]
fn a_crash_loop_is_escalated_and_restarts_are_bounded() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "settings.yaml",
        &settings("  healing:\n    crashLoop: {incidents: 2, window: 5m}\n    backoff: {initial: 4s, max: 8s}\n"),
    );
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\n",
            process_doc(
                "web",
                TEND,
                &["sample-app", "--port", &port.to_string(), "--crash-after", "1.5"]
            )
        ),
    );
    watch_for(&ws, Duration::from_secs(20));

    let starts = starts(&ws);
    eprintln!(
        "crash loop (crash 1.5 s after each start): {} starts in 20 s",
        starts.len()
    );
    assert!(starts.len() <= 6, "{} starts in 20 s", starts.len());
    let list = incidents(&ws);
    let looped: Vec<&serde_json::Value> =
        list.iter().filter(|i| i["status"] == "escalated").collect();
    assert_eq!(looped.len(), 1, "{list:#?}");
    let steps = looped[0]["steps"].as_array().unwrap();
    assert!(
        steps[0]["detail"].as_str().unwrap().contains("crash loop"),
        "{steps:#?}"
    );
    assert!(
        steps.iter().any(|s| s["outcome"] == "restored"),
        "restored with backoff: {steps:#?}"
    );
    let resolved = list.iter().filter(|i| i["status"] == "resolved").count();
    assert!(resolved <= 2, "{resolved} resolved incidents");
    // The backoff doubles between restores.
    let restored: Vec<&serde_json::Value> = steps
        .iter()
        .filter(|s| s["outcome"] == "restored")
        .collect();
    if restored.len() >= 2 {
        assert!(
            restored[1]["detail"].as_str().unwrap().contains("waits 8s"),
            "{restored:#?}"
        );
    }
}

/// Regression (M5): the crash-loop guard compared causes as text, and a
/// port conflict's cause quotes the log line, so a timestamp in that line
/// made every recurrence a new cause: 33 incidents and no escalation in
/// 100 s. Causes are compared by kind: the loop is escalated.
#[test]
fn m5_a_changing_log_line_is_still_a_crash_loop() {
    let ws = Workspace::new();
    ws.write(
        "settings.yaml",
        &settings("  healing:\n    crashLoop: {incidents: 2, window: 5m}\n    backoff: {initial: 4s, max: 8s}\n"),
    );
    ws.write(
        "app.yaml",
        &format!(
            "{}remediation: {{runbook: restart}}\n",
            process_doc(
                "web",
                "/bin/sh",
                &[
                    "-c",
                    "sleep 1.5; echo \"$(date +%s%N) listen tcp 127.0.0.1:9: bind: address already in use\" >&2; exit 1",
                ],
            )
        ),
    );
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: restart}\nspec:\n  steps:\n    - {action: restart, within: 3s, hold: 300ms}\n    - {action: escalate}\n",
    );
    watch_for(&ws, Duration::from_secs(15));
    let list = incidents(&ws);
    let causes: Vec<&str> = list.iter().filter_map(|i| i["cause"].as_str()).collect();
    assert!(
        causes.iter().all(|c| c.starts_with("port conflict")),
        "{causes:#?}"
    );
    // Each restart held, so only the guard can escalate: as a crash loop.
    let looped: Vec<_> = list.iter().filter(|i| i["status"] == "escalated").collect();
    assert_eq!(looped.len(), 1, "{list:#?}");
    let detail = looped[0]["steps"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("crash loop"), "{list:#?}");
    assert!(list.len() <= 3, "{} incidents: {list:#?}", list.len());
}

/// Regression: with `rate(...[15s])` and `for: 5s`, a 4 s error burst
/// stayed visible for about 14 s, so `for` was exceeded and the workload
/// was restarted for a burst shorter than `for`. With `for` longer than the
/// query's window, a burst shorter than `for` causes no action.
#[test]
fn a_burst_shorter_than_for_causes_no_action() {
    let ws = Workspace::new();
    let port = free_port();
    let prom = Prometheus::start(&[port]);
    let ratio = r#"sum(rate(sample_http_requests_total{code="500"}[5s])) / sum(rate(sample_http_requests_total[5s]))"#;
    ws.write(
        "settings.yaml",
        &settings(&format!(
            "  healing:\n    prometheus: {{url: \"{}\", timeout: 1s}}\n",
            prom.url()
        )),
    );
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: error-ratio\n      prometheus:\n        query: '{ratio}'\n        above: 0.3\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()]),
        ),
    );
    ws.write(
        "healing.yaml",
        "apiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: errors}\nspec:\n  cause: the service fails requests\n  all: [{signal: error-ratio, for: 10s}]\n  runbook: restart\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: restart}\nspec:\n  steps:\n    - {action: restart, within: 40s, hold: 2s}\n    - {action: escalate}\n",
    );
    let validate = ws.run(&["validate"]);
    validate.ok();
    assert!(!validate.stderr.contains("warning"), "{}", validate.stderr);
    ws.run(&["apply"]).ok();
    wait_http(port);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = http("GET", port, "/");
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    prom.wait_for(ratio, |v| v < 0.3, "healthy traffic");
    let pid = ws.pid("web");
    let mut watch = ws
        .cmd()
        .args(["watch", "--interval", "1s"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    http("POST", port, "/fault/error-ratio?value=0.9").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    http("POST", port, "/fault/error-ratio?value=0").unwrap();
    // The burst, its 5 s tail in the query, and more.
    std::thread::sleep(Duration::from_secs(14));
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert!(incidents(&ws).is_empty(), "{:#?}", incidents(&ws));
    assert_eq!(ws.pid("web"), pid, "not restarted");
}

/// `tend validate` warns when a `for` is shorter than the window of its
/// signal's query, at the condition.
#[test]
fn validate_warns_when_for_is_shorter_than_the_query_window() {
    let ws = Workspace::new();
    ws.write(
        "settings.yaml",
        &settings("  healing:\n    prometheus: {url: \"http://127.0.0.1:9\"}\n"),
    );
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: error-ratio\n      prometheus:\n        query: 'rate(errors[15s])'\n        above: 0.3\n  slos:\n    - {{name: errors, signal: error-ratio, for: 20s}}\n",
            process_doc("web", "sleep", &["300"]),
        ),
    );
    ws.write(
        "healing.yaml",
        "apiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: errors}\nspec:\n  cause: errors\n  all: [{signal: error-ratio, for: 5s}]\n  runbook: again\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: again}\nspec:\n  steps: [{action: restart}]\n",
    );
    let out = ws.run(&["validate"]);
    out.ok();
    assert_eq!(out.stderr.matches("warning:").count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`for: 5s` is shorter than the 15s range window of signal `error-ratio`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("healing.yaml:1:1 (at /spec/all/0/for)"),
        "{}",
        out.stderr
    );
}
