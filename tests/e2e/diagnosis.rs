//! Diagnosis end to end: the example desired state as shipped (its SLOs
//! and signatures), the sample workload with traffic, a real Prometheus on
//! 127.0.0.1 scraping it, and `tend watch`. The most specific known cause
//! names the incident, not whichever condition fired first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::signals::{incidents, wait_for, Watch};
use super::*;

/// The example's error ratio, as its `error-ratio` probe reads it.
const RATIO: &str = r#"sum(rate(sample_http_requests_total{code=~"5.."}[5s])) / sum(rate(sample_http_requests_total[5s]))"#;

/// `examples/desired-state` in the workspace, unchanged but for where the
/// sample app listens and where Prometheus answers.
fn example(ws: &Workspace, port: u16, prometheus: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/desired-state");
    for rel in [
        "healing.yaml",
        "motd.yaml",
        "sample-app.yaml",
        "settings.yaml",
        "policies/paths.rego",
        "policies/paths_test.rego",
    ] {
        let text = std::fs::read_to_string(root.join(rel))
            .unwrap()
            .replace("127.0.0.1:8787", &format!("127.0.0.1:{port}"))
            .replace("\"8787\"", &format!("\"{port}\""))
            .replace("http://127.0.0.1:9090", prometheus);
        ws.write(rel, &text);
    }
}

/// Requests to the app every 40 ms until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = http("GET", port, "/");
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The example running under `tend watch` with healthy traffic measured.
struct Running {
    ws: Workspace,
    port: u16,
    _prom: Prometheus,
    _watch: Watch,
    _traffic: Traffic,
}

fn running() -> Running {
    let ws = Workspace::new();
    let port = free_port();
    let prom = Prometheus::start(&[port]);
    example(&ws, port, &prom.url());
    let watch = Watch::start(&ws);
    wait_http(port);
    let traffic = Traffic::start(port);
    prom.wait_for(RATIO, |v| v < 0.2, "healthy traffic");
    Running {
        ws,
        port,
        _prom: prom,
        _watch: watch,
        _traffic: traffic,
    }
}

fn resolved(ws: &Workspace) -> Option<serde_json::Value> {
    incidents(ws)
        .into_iter()
        .find(|i| i["status"] == "resolved")
}

fn time(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .with_timezone(&chrono::Utc)
}

/// What the incident did, one word per step (`observe` for a diagnosis).
fn steps(i: &serde_json::Value) -> Vec<String> {
    i["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["action"].as_str().unwrap(),
                s["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn an_error_storm_is_named_by_its_signature_and_healed_by_its_runbook() {
    let r = running();
    let injected = chrono::Utc::now();
    let t0 = Instant::now();
    http("POST", r.port, "/fault/error-ratio?value=0.9").unwrap();
    let mut found = None;
    wait_for("the incident resolved", Duration::from_secs(120), || {
        found = resolved(&r.ws);
        found.is_some()
    });
    let i = found.unwrap();
    let took = t0.elapsed();
    assert_eq!(i["signature"], "error-storm", "{i:#}");
    assert_eq!(i["cause"], "the service is failing requests", "{i:#}");
    assert_eq!(i["runbook"], "restart-then-escalate", "{i:#}");
    let tried = steps(&i);
    assert!(
        tried.iter().any(|s| s == "restart verified"),
        "healed by its runbook's restart: {tried:?}"
    );
    // Every symptom says its value and since when.
    let symptoms = i["symptoms"].as_array().unwrap();
    let ratio = symptoms
        .iter()
        .find(|s| s["signal"] == "error-ratio")
        .unwrap_or_else(|| panic!("{i:#}"));
    assert!(ratio["value"].as_f64().unwrap() > 0.2, "{ratio:#}");
    assert!(ratio["since"].is_string(), "{ratio:#}");
    assert!(
        i["why"]
            .as_str()
            .is_some_and(|w| w.contains("`error-storm`")),
        "{i:#}"
    );
    let detected = time(&i["detectedAt"]);
    eprintln!(
        "error storm: detected {:.1} s after the fault, resolved after {:.1} s; steps {tried:?}",
        (detected - injected).num_milliseconds() as f64 / 1000.0,
        took.as_secs_f64()
    );
    let id = i["id"].to_string();
    let human = r.ws.run_raw(&["incidents", "show", &id]);
    human.ok();
    assert!(
        human.stdout.contains("why this cause:  `error-storm`"),
        "{}",
        human.stdout
    );
    assert_eq!(incidents(&r.ws).len(), 1, "one incident");
}

#[test]
fn a_memory_leak_with_errors_is_named_memory_leak() {
    let r = running();
    // A leak first (alone it matches no signature and breaches no SLO),
    // then the errors it ends in.
    http("POST", r.port, "/fault/leak-mib-per-sec?value=20").unwrap();
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(incidents(&r.ws).len(), 0, "a leak alone is no incident yet");
    http("POST", r.port, "/fault/error-ratio?value=0.9").unwrap();
    let mut found = None;
    wait_for("the incident resolved", Duration::from_secs(120), || {
        found = resolved(&r.ws);
        found.is_some()
    });
    let i = found.unwrap();
    assert_eq!(i["signature"], "memory-leak", "{i:#}");
    assert_eq!(i["cause"], "memory leak", "{i:#}");
    let why = i["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("`memory-leak` (2 conditions) was chosen over `error-storm` (1 condition, less specific)"),
        "{i:#}"
    );
    let signals: Vec<&str> = i["symptoms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    assert!(
        signals.contains(&"error-ratio") && signals.contains(&"memory-growth"),
        "{signals:?}"
    );
    assert!(steps(&i).iter().any(|s| s == "restart verified"), "{i:#}");
    assert_eq!(incidents(&r.ws).len(), 1, "one incident");
}

/// A signature whose runbook differs from the resource's: the incident
/// opens on the SLO (the signature's `for` is longer than the grace), runs
/// the resource's runbook, is diagnosed while that step is verified, and
/// its next step comes from the signature's runbook.
#[test]
fn after_a_diagnosis_the_next_step_comes_from_the_signatures_runbook() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "settings.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  providers: [host]\n  healing:\n    commands: [/bin/true]\n",
    );
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\", status: 200, timeout: 1s}}\n  slos:\n    - {{name: availability, signal: http, for: 1s, recovery: 30s}}\nremediation: {{runbook: look-around}}\n",
            process_doc("web", env!("CARGO_BIN_EXE_tend"), &["sample-app", "--port", &port.to_string()])
        ),
    );
    ws.write(
        "healing.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: look-around}\nspec:\n  steps:\n    - {action: command, command: [/bin/true], within: 10s, hold: 1s}\n    - {action: escalate}\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: restart-it}\nspec:\n  steps:\n    - {action: restart, within: 20s, hold: 2s}\n    - {action: escalate}\n---\napiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: failing-health}\nspec:\n  cause: the health check keeps failing\n  all: [{signal: http, for: 6s}]\n  runbook: restart-it\n",
    );
    ws.run(&["apply"]).ok();
    wait_http(port);
    let before = ws.pid("web");
    http("POST", port, "/fault/error-ratio?value=1").unwrap();
    // The first pass starts the health check's clock; the second opens the
    // incident on the SLO and heals it to the end.
    ws.run(&["apply"]).ok();
    std::thread::sleep(Duration::from_millis(1500));
    let out = ws.run(&["apply", "--format", "json"]);
    out.ok();
    let all = incidents(&ws);
    assert_eq!(all.len(), 1, "{all:#?}");
    let i = &all[0];
    assert_eq!(i["status"], "resolved", "{i:#}");
    assert_eq!(i["signature"], "failing-health", "{i:#}");
    assert_eq!(i["runbook"], "restart-it", "{i:#}");
    assert_eq!(
        steps(i),
        [
            "command not-verified",
            "observe diagnosed",
            "restart verified"
        ],
        "{i:#}"
    );
    let diagnosed = &i["steps"][1]["detail"];
    assert!(
        diagnosed.as_str().is_some_and(|d| d.starts_with(
            "diagnosed as `failing-health`: the health check keeps failing (was: SLO `availability` is breached)"
        ) && d.contains("runbook `restart-it` replaces `look-around` once the step in flight ends, from its first step")),
        "{diagnosed}"
    );
    // The step from the new runbook is its step 1.
    assert_eq!(i["steps"][2]["step"], 0, "{i:#}");
    assert_ne!(
        ws.pid("web"),
        before,
        "restarted by the signature's runbook"
    );
}

/// A signature in shadow matches an injected fault: tend records what it
/// would have run and takes no action; when the fault goes away by itself,
/// `tend signatures` counts it as gone on its own. A signature trusted to
/// recommend plans its step for a human.
#[test]
fn a_signature_in_shadow_records_what_it_would_do_and_never_acts() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\", status: 200, timeout: 1s}}\n",
            process_doc("web", env!("CARGO_BIN_EXE_tend"), &["sample-app", "--port", &port.to_string()])
        ),
    );
    ws.write(
        "healing.yaml",
        "apiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: failing-health}\nspec:\n  cause: the health check fails\n  trust: shadow\n  all: [{signal: http}]\n  runbook: restart-it\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: restart-it}\nspec:\n  steps:\n    - {action: restart, within: 30s}\n    - {action: escalate}\n",
    );
    ws.run(&["apply"]).ok();
    wait_http(port);
    std::thread::sleep(Duration::from_millis(500));
    let pid = ws.pid("web");
    http("POST", port, "/fault/error-ratio?value=1").unwrap();
    for _ in 0..3 {
        let out = ws.run(&["apply", "--format", "json"]);
        out.ok();
        assert_eq!(
            out.json()["health"][0]["shadow"][0]["signature"],
            "failing-health"
        );
    }
    assert_eq!(ws.pid("web"), pid, "shadow never acts");
    assert_eq!(incidents(&ws).len(), 0, "and opens no incident");
    // The fault goes away by itself.
    http("POST", port, "/fault/error-ratio?value=0").unwrap();
    ws.run(&["apply"]).ok();
    let out = ws.run(&["signatures", "--format", "json"]);
    out.ok();
    let sig = &out.json()["signatures"][0];
    assert_eq!(sig["trust"], "shadow", "{sig:#}");
    assert_eq!(sig["matches"], 1, "{sig:#}");
    assert_eq!(sig["wouldHaveRun"][0], "restart", "{sig:#}");
    assert_eq!(sig["resolvedOnItsOwn"]["onItsOwn"], 1, "{sig:#}");
    let human = ws.run(&["signatures"]);
    assert!(
        human.stdout.starts_with("SIGNATURE       TRUST   MATCHES  EVIDENCE\n")
            && human.stdout.contains(
                "failing-health  shadow        1  would have run restart; went away on its own 1/1 (100%)"
            ),
        "{}",
        human.stdout
    );

    // Trusted to recommend: the step is planned, for a human.
    let text = std::fs::read_to_string(ws.desired().join("healing.yaml"))
        .unwrap()
        .replace("trust: shadow", "trust: recommend");
    ws.write("healing.yaml", &text);
    http("POST", port, "/fault/error-ratio?value=1").unwrap();
    let out = ws.run(&["apply", "--format", "json"]);
    out.ok();
    let step = out.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["incident"]["trust"] == "recommend")
        .cloned()
        .unwrap_or_else(|| panic!("{:#}", out.json()));
    assert_eq!(step["decision"], "review", "{step:#}");
    assert_eq!(ws.pid("web"), pid, "recommend never acts");
}
