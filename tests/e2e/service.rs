//! `tend watch` as a service: its own metrics, scraped by a real
//! Prometheus, and its health and readiness endpoints.

use std::time::{Duration, Instant};

use super::*;

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
    let port = free_port();
    let mut watch = ws
        .cmd()
        .args([
            "watch",
            "--interval",
            "1s",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_status(port, "/healthz", 200);
    wait_status(port, "/readyz", 200);
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
        |v| v == 1.0,
        "the create",
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
    let mut watch = ws
        .cmd()
        .args([
            "watch",
            "--interval",
            "1s",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
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
