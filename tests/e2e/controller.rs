//! The per-resource controller end to end: a runbook step under
//! verification on one resource never delays another resource's drift
//! correction or healing, and a rate-limited GitHub never delays a pass or
//! a stop.

use std::time::{Duration, Instant};

use super::github::github;
use super::*;

const TEND: &str = env!("CARGO_BIN_EXE_tend");

fn settings(extra: &str) -> String {
    format!("apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n{extra}")
}

fn incidents(ws: &Workspace) -> Vec<serde_json::Value> {
    ws.run_raw(&["incidents", "--all", "--format", "json"])
        .json()["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits up to `limit` for `done`, and says how long it took.
fn within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if done() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm_and_wait(child: &mut std::process::Child) -> (std::process::ExitStatus, Duration) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("tend watch did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression: a runbook step verified for 20 s held the whole pass, so
/// no other resource was corrected or healed until it ended.
#[test]
fn a_step_under_verification_never_delays_another_resource() {
    let ws = Workspace::new();
    let port = free_port();
    let closed = free_port();
    // `slow`: a file whose TCP probe never answers; its runbook's first
    // step is verified for 20 s and never holds.
    ws.write(
        "slow.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: port\n      tcp: {{address: \"127.0.0.1:{closed}\", timeout: 1s}}\n  slos:\n    - {{name: reachable, signal: port, for: 0s, recovery: 0s}}\nremediation:\n  runbook: slow\n",
            file_doc("slow", "slow.txt", "x")
        ),
    );
    ws.write(
        "runbook.yaml",
        "apiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: slow}\nspec:\n  steps:\n    - {action: reapply, within: 20s, hold: 1s}\n    - {action: escalate}\n",
    );
    ws.write("other.yaml", &file_doc("other", "other.txt", "declared\n"));
    ws.write(
        "web.yaml",
        &format!(
            "{}health:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\"}}\n",
            process_doc("web", TEND, &["sample-app", "--port", &port.to_string()])
        ),
    );
    let interval = Duration::from_secs(2);
    let mut watch = ws
        .cmd()
        .args(["watch", "--interval", "2s", "--jitter", "0"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_http(port);
    // The slow step is carried out and under verification.
    within(Duration::from_secs(30), "the slow step starts", || {
        incidents(&ws).iter().any(|i| {
            i["name"] == "slow"
                && i["steps"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["outcome"] == "running"))
        })
    });
    let verifying_since = Instant::now();

    std::fs::write(ws.path().join("other.txt"), "edited by hand\n").unwrap();
    let corrected = within(Duration::from_secs(15), "the drift is corrected", || {
        std::fs::read_to_string(ws.path().join("other.txt")).unwrap() == "declared\n"
    });
    let first = ws.pid("web");
    kill_and_wait(first);
    let restarted = within(Duration::from_secs(15), "the process is restarted", || {
        let pid = ws.pid("web");
        pid != first && alive(pid)
    });
    eprintln!(
        "during a 20 s verification: drift corrected {corrected:?} after the edit (interval {interval:?}), the killed process restarted {restarted:?} after the kill"
    );
    assert!(
        verifying_since.elapsed() < Duration::from_secs(20),
        "the slow step's verification ended before the other resources were checked"
    );
    assert!(
        corrected <= interval + Duration::from_secs(1),
        "{corrected:?}"
    );
    assert!(restarted <= Duration::from_secs(3), "{restarted:?}");
    let slow = incidents(&ws)
        .into_iter()
        .find(|i| i["name"] == "slow")
        .unwrap();
    assert!(
        slow["state"]
            .as_str()
            .unwrap()
            .starts_with("verifying step 1"),
        "the waiting state is on the incident: {slow:#}"
    );

    // The slow step ends on its own, not verified, and the runbook goes on
    // to escalate.
    within(
        Duration::from_secs(40),
        "the slow incident escalates",
        || {
            incidents(&ws)
                .iter()
                .any(|i| i["name"] == "slow" && i["status"] == "escalated")
        },
    );
    let (status, took) = sigterm_and_wait(&mut watch);
    assert!(status.success(), "{status}");
    eprintln!("tend watch stopped {took:?} after SIGTERM");
}

/// Regression: publishing to GitHub ran inside the loop, so a rate limit
/// (up to four waits of 60 s) stalled drift correction and SIGTERM.
#[test]
fn m4_a_rate_limited_github_never_delays_a_pass_or_a_stop() {
    let ws = Workspace::new();
    let repo = "tend-e2e/rate-limited-watch";
    let files = [
        (
            "settings.yaml".to_string(),
            settings(&format!(
                "  policies:\n    dirs: [policies]\n  review:\n    github:\n      repository: {repo}\n      baseBranch: main\n      apiUrl: {}\n",
                github().api_url()
            )),
        ),
        (
            "policies/review.rego".to_string(),
            "package tend\n\nreview contains \"a change to a managed file needs a human\" if {\n\tinput.action.target.kind == \"host.File\"\n\tinput.action.type == \"update\"\n}\n".to_string(),
        ),
        ("motd.yaml".to_string(), file_doc("motd", "motd.txt", "hello\n")),
        ("other.yaml".to_string(), file_doc("other", "other.txt", "declared\n")),
    ];
    for (p, t) in &files {
        ws.write(p, t);
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    github().create_repo(repo, &refs);
    for method in ["GET", "POST", "PATCH"] {
        for _ in 0..40 {
            github().fail_next(
                repo,
                method,
                "",
                429,
                serde_json::json!({"message": "You have exceeded a secondary rate limit", "documentation_url": "https://docs.github.com/rest"}),
                &[("retry-after", "60")],
            );
        }
    }
    let mut watch = ws
        .cmd()
        .env("TEND_GITHUB_TOKEN", "ghp_test-token-never-printed")
        .env_remove("GITHUB_TOKEN")
        .args(["watch", "--interval", "1s", "--jitter", "0"])
        .arg(ws.desired())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let other = ws.path().join("other.txt");
    within(Duration::from_secs(15), "the first pass", || other.exists());
    // A change that needs review: the pull request waits on the limit.
    std::fs::write(ws.path().join("motd.txt"), "edited by hand\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !github().requests(repo).is_empty(),
        "tend is publishing to the rate-limited GitHub"
    );
    for round in 0..3 {
        std::fs::remove_file(&other).unwrap();
        let took = within(Duration::from_secs(10), "the file is recreated", || {
            other.exists()
        });
        eprintln!("round {round}: recreated {took:?} after its removal while GitHub rate-limits");
        assert!(took <= Duration::from_secs(3), "{took:?}");
    }
    let (status, took) = sigterm_and_wait(&mut watch);
    eprintln!("tend watch stopped {took:?} after SIGTERM while GitHub rate-limits");
    assert!(status.success(), "{status}");
    assert!(took <= Duration::from_secs(5), "{took:?}");
    assert!(
        github().pulls(repo).is_empty(),
        "nothing reached GitHub past the limit"
    );
}
