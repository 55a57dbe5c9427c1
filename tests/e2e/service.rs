//! `tend watch` as a service: its own metrics, scraped by a real
//! Prometheus, and its health and readiness endpoints.

use std::time::{Duration, Instant};

use super::*;

/// `tend watch --listen 127.0.0.1:<port>` on the workspace, with one
/// extra environment variable.
fn listening(
    ws: &Workspace,
    port: u16,
    interval: &str,
    env: Option<(&str, &str)>,
) -> std::process::Child {
    let mut cmd = ws.cmd();
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.args([
        "watch",
        "--interval",
        interval,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .arg(ws.desired())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap()
}

fn wait_status(port: u16, path: &str, want: u16) {
    let t0 = Instant::now();
    loop {
        if http("GET", port, path).is_some_and(|(s, _)| s == want) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{path} never answered {want}: {:?}",
            http("GET", port, path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tend_watch_serves_metrics_a_real_prometheus_scrapes() {
    let ws = Workspace::new();
    ws.write("f.yaml", &file_doc("f", "f.txt", "declared\n"));
    let app_port = free_port();
    ws.write(
        "app.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{app_port}/healthz\"}}\n",
            process_doc("web", env!("CARGO_BIN_EXE_tend"), &["sample-app", "--port", &app_port.to_string()])
        ),
    );
    let port = free_port();
    let mut watch = listening(&ws, port, "1s", None);
    wait_status(port, "/healthz", 200);
    wait_status(port, "/readyz", 200);
    wait_http(app_port);
    // A crash that the watcher heals.
    std::thread::sleep(Duration::from_millis(1500));
    kill_and_wait(ws.pid("web"));
    // Drift that a pass corrects.
    std::fs::write(ws.path().join("f.txt"), "changed by hand\n").unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(ws.path().join("f.txt")).unwrap() != "declared\n" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "drift not corrected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, text) = http("GET", port, "/metrics").unwrap();
    assert!(text.contains("# TYPE tend_passes counter"), "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");

    let prom = Prometheus::start(&[port]);
    prom.wait_for("sum(tend_passes_total)", |v| v >= 2.0, "tend's passes");
    prom.wait_for(
        r#"sum(tend_actions_total{type="create",decision="auto",outcome="synced"})"#,
        |v| v == 2.0,
        "the creates",
    );
    prom.wait_for(
        "sum(tend_time_to_recover_seconds_count)",
        |v| v >= 1.0,
        "the healed crash",
    );
    prom.wait_for(
        r#"sum(tend_actions_total{type="restart",outcome="runbook-step"})"#,
        |v| v >= 1.0,
        "the restart",
    );
    prom.wait_for(
        r#"tend_provider_calls_total{provider="host"}"#,
        |v| v >= 2.0,
        "host provider calls",
    );
    prom.wait_for(
        "tend_policy_evaluations_total",
        |v| v >= 2.0,
        "policy decisions",
    );
    prom.wait_for(
        r#"sum(tend_actions_total{type="update",decision="auto",outcome="synced"})"#,
        |v| v == 1.0,
        "the drift correction",
    );
    prom.wait_for(
        r#"tend_resources{kind="host.File",sync="in_sync"}"#,
        |v| v == 1.0,
        "the resource in sync",
    );
    prom.wait_for("tend_pending_drift", |v| v == 0.0, "no pending drift");
    prom.wait_for(
        "time() - tend_last_success_timestamp_seconds",
        |v| v < 30.0,
        "a recent successful pass",
    );
    prom.wait_for("count(tend_source_info)", |v| v == 1.0, "the source");

    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
}

#[test]
fn readyz_says_not_ready_while_no_pass_has_succeeded() {
    let ws = Workspace::new();
    ws.write(
        "bad.yaml",
        "apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {name: x}\nspec: {nope: 1}\n",
    );
    let port = free_port();
    let mut watch = listening(&ws, port, "1s", None);
    wait_status(port, "/healthz", 200);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = http("GET", port, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no pass has succeeded"), "{body}");
    let (_, text) = http("GET", port, "/metrics").unwrap();
    assert!(
        text.contains(r#"tend_passes_total{kind="full",result="error"}"#),
        "{text}"
    );
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
}

/// A POST with headers and a body, for the webhooks.
pub(super) fn post(port: u16, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, resp.split_once("\r\n\r\n").unwrap().1.to_string())
}

fn sign(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The full passes tend counted, from its own metrics.
fn full_passes(port: u16) -> u64 {
    let (_, text) = http("GET", port, "/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with("tend_passes_total{kind=\"full\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_signed_github_push_starts_a_pass_and_anything_else_is_refused() {
    let ws = Workspace::new();
    ws.write("f.yaml", &file_doc("f", "f.txt", "declared\n"));
    let port = free_port();
    let secret = "webhook secret for the test";
    let mut watch = listening(
        &ws,
        port,
        "1h",
        Some(("TEND_GITHUB_WEBHOOK_SECRET", secret)),
    );
    wait_status(port, "/readyz", 200);
    assert_eq!(full_passes(port), 1);

    let ping = r#"{"zen":"Keep it logically awesome."}"#;
    let (status, body) = post(
        port,
        "/hooks/github",
        &[
            ("X-GitHub-Event", "ping".into()),
            ("X-GitHub-Delivery", "delivery-1".into()),
            ("X-Hub-Signature-256", sign(secret, ping)),
        ],
        ping,
    );
    assert_eq!((status, body.as_str()), (200, "pong\n"));

    let push =
        r#"{"ref":"refs/heads/main","before":"fedcba9876543210","after":"0123456789abcdef"}"#;
    for wrong in [
        String::new(),
        sign("not the secret", push),
        "sha256=00".into(),
    ] {
        let (status, body) = post(
            port,
            "/hooks/github",
            &[
                ("X-GitHub-Event", "push".into()),
                ("X-GitHub-Delivery", "delivery-2".into()),
                ("X-Hub-Signature-256", wrong),
            ],
            push,
        );
        assert_eq!(status, 401, "{body}");
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(full_passes(port), 1, "a refused delivery starts no pass");

    // L3: the event type is not signed, so a signed ping is no push.
    let (status, body) = post(
        port,
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", "delivery-3".into()),
            ("X-Hub-Signature-256", sign(secret, ping)),
        ],
        ping,
    );
    assert_eq!(status, 400, "l3: a signed ping sent as a push: {body}");
    let push_headers = [
        ("X-GitHub-Event", "push".into()),
        ("X-GitHub-Delivery", "delivery-4".into()),
        ("X-Hub-Signature-256", sign(secret, push)),
    ];
    let (status, body) = post(port, "/hooks/github", &push_headers, push);
    assert_eq!(status, 202, "{body}");
    let t0 = Instant::now();
    while full_passes(port) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no pass after the push"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // L3: a replayed delivery starts nothing.
    let (status, body) = post(port, "/hooks/github", &push_headers, push);
    assert_eq!(status, 200, "l3: a replayed delivery: {body}");
    assert!(body.contains("already handled"), "{body}");
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
}

fn alert_payload(status: &str, resource: &str) -> String {
    format!(
        r#"{{"version":"4","groupKey":"g","status":"{status}","receiver":"tend","groupLabels":{{}},"commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"http://127.0.0.1:9093","alerts":[{{"status":"{status}","labels":{{"alertname":"ServiceDown","tend_resource":"{resource}"}},"annotations":{{"summary":"the service stopped answering"}},"startsAt":"2026-11-22T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"f"}}]}}"#
    )
}

fn restarts(ws: &Workspace) -> usize {
    let history = ws.run_raw(&["history", "--format", "json"]).json();
    history["entries"].as_array().map_or(0, |e| {
        e.iter()
            .filter(|e| e["action"] == "restart" && e["phase"] == "outcome")
            .count()
    })
}

/// A pushed alert is a signal of the resource it names: a signature over
/// it runs its runbook at once, and the alert resolving verifies the fix.
/// Without the token, or with a wrong one, nothing is recorded.
#[test]
fn a_pushed_alert_heals_through_its_signature_and_the_token_is_required() {
    let ws = Workspace::new();
    let port = free_port();
    let app_port = free_port();
    ws.write(
        "app.yaml",
        &process_doc(
            "web",
            env!("CARGO_BIN_EXE_tend"),
            &["sample-app", "--port", &app_port.to_string()],
        )
        .replace("  name: web\n", "  name: web\n  labels: {app: web}\n"),
    );
    ws.write(
        "healing.yaml",
        "apiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: down}\nspec:\n  cause: monitoring says the service is down\n  selector: {labels: {app: web}}\n  all: [{signal: alert/ServiceDown}]\n  runbook: restart\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: restart}\nspec:\n  steps:\n    - {action: restart, within: 20s, hold: 1s}\n    - {action: escalate}\n",
    );
    let token = "a token for the test";
    let mut watch = listening(&ws, port, "1h", Some(("TEND_ALERTMANAGER_TOKEN", token)));
    wait_status(port, "/readyz", 200);
    wait_http(app_port);
    let before = ws.pid("web");
    let firing = alert_payload("firing", "host.Process/web");
    for auth in [None, Some("Bearer wrong")] {
        let headers: Vec<(&str, String)> = auth
            .map(|a| ("Authorization", a.to_string()))
            .into_iter()
            .collect();
        let (status, body) = post(port, "/hooks/alertmanager", &headers, &firing);
        assert_eq!(status, 401, "{body}");
    }
    let bearer = [("Authorization", format!("Bearer {token}"))];
    let (status, body) = post(port, "/hooks/alertmanager", &bearer, r#"{"version":"4"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no `alerts` list"), "{body}");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(ws.pid("web"), before, "a refused alert changes nothing");
    assert_eq!(restarts(&ws), 0, "and nothing is journaled");

    let (status, body) = post(port, "/hooks/alertmanager", &bearer, &firing);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("recorded 1"), "{body}");
    let t0 = Instant::now();
    while ws.pid("web") == before || ws.pid("web") == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "not restarted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let resolved = alert_payload("resolved", "host.Process/web");
    let (status, _) = post(port, "/hooks/alertmanager", &bearer, &resolved);
    assert_eq!(status, 200);
    let t0 = Instant::now();
    let inc = loop {
        assert!(t0.elapsed() < Duration::from_secs(30), "not verified");
        std::thread::sleep(Duration::from_millis(200));
        let out = ws
            .run_raw(&["incidents", "--all", "--format", "json"])
            .json();
        if let Some(i) = out["incidents"].as_array().and_then(|a| a.first()).cloned() {
            if i["status"] == "resolved" {
                break i;
            }
        }
    };
    assert_eq!(inc["signature"], "down");
    assert_eq!(inc["steps"][0]["outcome"], "verified", "{inc:#}");
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
}

/// A real Alertmanager on 127.0.0.1, clustering off, notifying tend.
pub(super) struct Alertmanager {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub(super) port: u16,
}

impl Alertmanager {
    fn start(tend_port: u16, token: &str) -> Alertmanager {
        let hook = format!("http://127.0.0.1:{tend_port}/hooks/alertmanager");
        Alertmanager::with_config(&format!(
            "route:\n  receiver: tend\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: tend\n    webhook_configs:\n      - url: {hook}\n        send_resolved: true\n        http_config: {{authorization: {{type: Bearer, credentials: \"{token}\"}}}}\n      # A sender with the wrong token: refused every time.\n      - url: {hook}\n        send_resolved: true\n        http_config: {{authorization: {{type: Bearer, credentials: not-the-token}}}}\n"
        ))
    }

    /// A real Alertmanager on 127.0.0.1 with `config`.
    pub(super) fn with_config(config: &str) -> Alertmanager {
        let bin = which("prometheus-alertmanager")
            .or_else(|| which("alertmanager"))
            .unwrap_or_else(|| {
                panic!("Alertmanager is missing: run ./scripts/test.sh, which installs prometheus-alertmanager")
            });
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
        let mut child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip listener: it would bind beyond loopback.
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("alertmanager.log")).unwrap())
            .spawn()
            .expect("start alertmanager");
        for _ in 0..300 {
            if http("GET", port, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return Alertmanager {
                    child,
                    _dir: dir,
                    port,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("alertmanager did not become ready on {port}");
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole chain with real peers: a fault in the sample app, a Prometheus
/// rule over its error ratio fires, Alertmanager posts it to tend, tend
/// runs the signature whose selector the alert's labels match, the new
/// process serves without errors, the alert resolves, and the incident is
/// verified and resolved. Alertmanager's second sender has a wrong token:
/// refused every time, and nothing it sends is acted on.
#[test]
fn an_alert_from_a_real_alertmanager_heals_through_its_signature() {
    let ws = Workspace::new();
    let port = free_port();
    let app_port = free_port();
    ws.write(
        "app.yaml",
        &process_doc(
            "web",
            env!("CARGO_BIN_EXE_tend"),
            &["sample-app", "--port", &app_port.to_string()],
        )
        .replace("  name: web\n", "  name: web\n  labels: {app: web}\n"),
    );
    ws.write(
        "healing.yaml",
        "apiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: errors}\nspec:\n  cause: monitoring says the service fails requests\n  selector: {labels: {app: web}}\n  all: [{signal: alert/HighErrorRate}]\n  runbook: restart\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: restart}\nspec:\n  steps:\n    - {action: restart, within: 60s, hold: 1s}\n    - {action: escalate}\n",
    );
    let token = "the alertmanager token";
    let mut watch = listening(&ws, port, "1h", Some(("TEND_ALERTMANAGER_TOKEN", token)));
    wait_status(port, "/readyz", 200);
    wait_http(app_port);
    let am = Alertmanager::start(port, token);
    let rule = r#"groups:
  - name: tend
    interval: 1s
    rules:
      - alert: HighErrorRate
        expr: sum(rate(sample_http_requests_total{code="500"}[5s])) / sum(rate(sample_http_requests_total[5s])) > 0.2
        labels: {app: web}
        annotations: {summary: "more than 20% of requests fail"}
"#;
    let mut prom = Prometheus::start_with_rules(&[app_port], rule, am.port);
    let before = ws.pid("web");
    // Traffic for the whole test, and the fault.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http("GET", app_port, "/");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(http("POST", app_port, "/fault/error-ratio?value=1").is_some());
    let t0 = Instant::now();
    while ws.pid("web") == before || ws.pid("web") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the alert did not lead to a restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let inc = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "not verified after the alert resolved"
        );
        std::thread::sleep(Duration::from_millis(300));
        let out = ws
            .run_raw(&["incidents", "--all", "--format", "json"])
            .json();
        if let Some(i) = out["incidents"].as_array().and_then(|a| a.first()).cloned() {
            if i["status"] == "resolved" {
                break i;
            }
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    assert_eq!(inc["signature"], "errors", "{inc:#}");
    assert_eq!(inc["steps"][0]["outcome"], "verified", "{inc:#}");
    assert_eq!(
        restarts(&ws),
        1,
        "one restart: the refused sender changed nothing"
    );
    prom.stop();
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    assert!(watch.wait().unwrap().success());
}
