//! Reaching on-call end to end: an incident that escalates is sent once,
//! and its resolution once, never once per pass: through a real
//! Alertmanager routing to a receiver the test owns, and as a signed
//! CloudEvents webhook that is retried until the receiver takes it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};

use super::service::Alertmanager;
use super::*;

const SECRET: &str = "hunter2-very-secret";

/// An HTTP receiver on 127.0.0.1: records each request (headers, body)
/// and answers the scripted statuses, then 200.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(String, String, u16)>>>,
}

impl Receiver {
    fn start(mut script: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&got);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, body) = loop {
                    let Ok(n) = c.read(&mut chunk) else {
                        break (String::new(), String::new());
                    };
                    if n == 0 {
                        break (String::new(), String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break (head.to_string(), rest[..len].to_string());
                        }
                    }
                };
                let status = if script.is_empty() {
                    200
                } else {
                    script.remove(0)
                };
                log.lock().unwrap().push((head, body, status));
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, got }
    }

    fn requests(&self) -> Vec<(String, String, u16)> {
        self.got.lock().unwrap().clone()
    }

    fn taken(&self) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .filter(|(_, _, s)| *s == 200)
            .map(|(h, b, _)| (h, b))
            .collect()
    }
}

/// A process that prints its token and whose health probe never answers
/// until `port` is opened: its runbook fails, and the incident escalates.
fn escalating(ws: &Workspace, port: u16, notify: &str) {
    ws.write(
        "settings.yaml",
        &format!("apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  notify:\n{notify}"),
    );
    ws.write(
        "app.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata: {{name: app}}\nspec:\n  command: /bin/sh\n  args: [\"-c\", \"echo token=$API_TOKEN; exec sleep 1000\"]\n  env: {{API_TOKEN: {SECRET}}}\n  state: running\nhealth:\n  probes:\n    - name: port\n      tcp: {{address: \"127.0.0.1:{port}\", timeout: 1s}}\n  slos:\n    - {{name: reachable, signal: port, for: 0s, recovery: 0s}}\nremediation: {{runbook: once}}\n"
        ),
    );
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: once}\nspec:\n  steps:\n    - {action: reapply, within: 2s, hold: 1s}\n    - {action: escalate}\n",
    );
}

fn apply(ws: &Workspace) -> Run {
    let mut c = ws.cmd();
    c.env("TEND_WEBHOOK_SECRET", "the signing secret")
        .args(["apply", "--format", "json"])
        .arg(ws.desired());
    Run::from(c.output().expect("run tend"))
}

fn escalated(ws: &Workspace) {
    for _ in 0..3 {
        let _ = apply(ws);
        let list = ws.run_raw(&["incidents", "--format", "json"]).json();
        if list["incidents"][0]["status"] == "escalated" {
            return;
        }
    }
    panic!("the incident never escalated");
}

fn within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_signed_webhook_gets_each_state_change_once_retried_until_taken() {
    let ws = Workspace::new();
    let rx = Receiver::start(vec![500, 500]);
    let probe = free_port();
    escalating(
        &ws,
        probe,
        &format!(
            "    webhook: {{url: \"http://127.0.0.1:{}/events\"}}\n",
            rx.port
        ),
    );
    escalated(&ws);
    within("the event", Duration::from_secs(10), || {
        rx.taken().len() == 1
    });
    assert_eq!(rx.requests().len(), 3, "taken on the third try");
    let (head, body) = rx.taken()[0].clone();
    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "dev.tend.incident.escalated", "{event:#}");
    assert_eq!(event["subject"], "host.Process/app");
    // The receiver verifies the signature with the shared secret.
    let sig = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-tend-signature: ")
                .or(l.strip_prefix("X-Tend-Signature: "))
        })
        .expect("signed");
    let (t, v1) = sig.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"the signing secret").unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    assert_eq!(
        hex::encode(mac.finalize().into_bytes()),
        v1,
        "the signature verifies"
    );
    // The log tail is there, and the secret never is.
    assert!(
        event["data"]["logTail"]
            .as_str()
            .unwrap()
            .contains("token="),
        "{event:#}"
    );
    for (h, b, _) in rx.requests() {
        assert!(
            !b.contains(SECRET) && !h.contains(SECRET),
            "a secret was sent: {b}"
        );
    }
    // Ten more passes of the escalated incident: nothing more is sent.
    for _ in 0..10 {
        let _ = apply(&ws);
    }
    assert_eq!(rx.taken().len(), 1, "one notification, not one per pass");
    // Healthy again: the resolution, once.
    let _open = TcpListener::bind(("127.0.0.1", probe)).unwrap();
    let _ = apply(&ws);
    let _ = apply(&ws);
    within("the resolution", Duration::from_secs(10), || {
        rx.taken().len() == 2
    });
    let resolved: serde_json::Value = serde_json::from_str(&rx.taken()[1].1).unwrap();
    assert_eq!(
        resolved["type"], "dev.tend.incident.resolved",
        "{resolved:#}"
    );
    let _ = apply(&ws);
    assert_eq!(rx.taken().len(), 2);
}

#[test]
fn alertmanager_routes_an_escalation_once_and_its_resolution() {
    let ws = Workspace::new();
    let rx = Receiver::start(Vec::new());
    let am = Alertmanager::with_config(&format!(
        "route:\n  receiver: oncall\n  group_by: [alertname, tend_resource]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: oncall\n    webhook_configs:\n      - url: http://127.0.0.1:{}/page\n        send_resolved: true\n",
        rx.port
    ));
    let probe = free_port();
    escalating(
        &ws,
        probe,
        &format!(
            "    alertmanager: {{url: \"http://127.0.0.1:{}\"}}\n",
            am.port
        ),
    );
    escalated(&ws);
    within("the page", Duration::from_secs(20), || {
        rx.taken().len() == 1
    });
    let page: serde_json::Value = serde_json::from_str(&rx.taken()[0].1).unwrap();
    assert_eq!(page["status"], "firing", "{page:#}");
    let labels = &page["alerts"][0]["labels"];
    assert_eq!(labels["alertname"], "TendIncident", "{page:#}");
    assert_eq!(labels["tend_resource"], "host.Process/app");
    assert!(labels["node"].is_string());
    assert!(!page.to_string().contains(SECRET));
    // Re-posted each pass, paged once.
    for _ in 0..10 {
        let _ = apply(&ws);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.taken().len(), 1, "one page over ten passes");
    // Resolved: Alertmanager sends the resolution.
    let _open = TcpListener::bind(("127.0.0.1", probe)).unwrap();
    let _ = apply(&ws);
    let _ = apply(&ws);
    within("the resolution", Duration::from_secs(20), || {
        rx.taken()
            .iter()
            .any(|(_, b)| b.contains("\"status\":\"resolved\""))
    });
}

/// A tiny HTTP server answering 200 on 127.0.0.1:`port` until stopped.
struct Upstream {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(port: u16) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Upstream {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The storm guard: five processes whose health checks read one address;
/// the address goes down while the processes stay alive. Nothing is
/// restarted, one incident names the source, on-call hears once; the
/// address back, the incident resolves and still nothing was done.
#[test]
fn a_shared_source_failing_is_one_correlated_incident_and_no_restart() {
    let ws = Workspace::new();
    let upstream_port = free_port();
    let mut upstream = Upstream::start(upstream_port);
    let rx = Receiver::start(Vec::new());
    ws.write(
        "settings.yaml",
        &format!("apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  notify:\n    webhook: {{url: \"http://127.0.0.1:{}/events\"}}\n", rx.port),
    );
    for i in 0..5 {
        ws.write(
            &format!("w{i}.yaml"),
            &format!(
                "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{upstream_port}/healthz\", status: 200, timeout: 1s}}\n  slos:\n    - {{name: reachable, signal: http, for: 0s, recovery: 0s}}\n",
                process_doc(&format!("w{i}"), "/bin/sleep", &["1000"])
            ),
        );
    }
    apply(&ws).ok();
    std::thread::sleep(Duration::from_millis(500));
    apply(&ws).ok();
    let pids: Vec<i32> = (0..5).map(|i| ws.pid(&format!("w{i}"))).collect();
    assert!(ws
        .run_raw(&["incidents", "--all", "--format", "json"])
        .json()["incidents"]
        .as_array()
        .unwrap()
        .is_empty());

    upstream.stop();
    for _ in 0..3 {
        let _ = apply(&ws);
    }
    let now: Vec<i32> = (0..5).map(|i| ws.pid(&format!("w{i}"))).collect();
    assert_eq!(now, pids, "nothing restarted");
    let all = ws
        .run_raw(&["incidents", "--all", "--format", "json"])
        .json();
    let list = all["incidents"].as_array().unwrap();
    assert_eq!(list.len(), 1, "one incident: {all:#}");
    let inc = &list[0];
    assert_eq!(inc["status"], "escalated", "{inc:#}");
    assert!(
        inc["cause"].as_str().unwrap().starts_with(&format!(
            "correlated failure: HTTP 127.0.0.1:{upstream_port} fails for 5 of the 5 resources that read it"
        )),
        "{inc:#}"
    );
    within("one notification", Duration::from_secs(10), || {
        rx.taken().len() == 1
    });

    let _back = Upstream::start(upstream_port);
    let _ = apply(&ws);
    let _ = apply(&ws);
    let inc = &ws
        .run_raw(&["incidents", "--all", "--format", "json"])
        .json()["incidents"][0];
    assert_eq!(inc["status"], "resolved", "{inc:#}");
    let now: Vec<i32> = (0..5).map(|i| ws.pid(&format!("w{i}"))).collect();
    assert_eq!(now, pids, "no action taken");
    assert_eq!(rx.taken().len(), 2, "and its resolution");
}
