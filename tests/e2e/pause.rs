//! The emergency pause end to end: `tend pause` stops all automatic
//! action of a running `tend watch` (healing included) while plans still
//! say what would be done; it ends by itself or on `tend resume`, and the
//! listener's `POST /pause` and `POST /resume` need their own token.

use std::time::{Duration, Instant};

use super::service::post;
use super::*;

const TEND: &str = env!("CARGO_BIN_EXE_tend");
const TOKEN: &str = "pause-token-for-tests";

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

#[test]
fn a_pause_stops_healing_until_it_ends_and_the_listener_needs_its_token() {
    let ws = Workspace::new();
    let port = free_port();
    let listen = free_port();
    ws.write(
        "web.yaml",
        &process_doc("web", TEND, &["sample-app", "--port", &port.to_string()]),
    );
    let mut watch = ws
        .cmd()
        .env("TEND_PAUSE_TOKEN", TOKEN)
        .args([
            "watch",
            "--interval",
            "30s",
            "--listen",
            &format!("127.0.0.1:{listen}"),
        ])
        .arg(ws.desired())
        .env("TEND_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(ws.path().join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(ws.path().join("watch.log")).unwrap_or_default();
    wait_http(port);
    // The start is recorded once the process has run for a moment.
    std::thread::sleep(Duration::from_secs(1));

    // Paused for 5 s: a killed process stays dead, and the plan says why.
    let out = ws.run_raw(&["pause", "--for", "5s", "--reason", "incident 42: hands off"]);
    out.ok();
    assert!(
        out.stdout.contains("paused everything until"),
        "{}",
        out.stdout
    );
    let paused_at = Instant::now();
    let pid = ws.pid("web");
    kill_and_wait(pid);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!alive(ws.pid("web")), "not restarted while paused");
    let plan = ws.run(&["plan"]);
    plan.ok();
    assert!(
        plan.stdout.contains("paused everything until")
            && plan.stdout.contains("incident 42: hands off"),
        "{}",
        plan.stdout
    );
    // The pause ends by itself: the process is started again at once.
    let left = Duration::from_secs(5).saturating_sub(paused_at.elapsed());
    std::thread::sleep(left);
    let t0 = Instant::now();
    while !{
        let p = ws.pid("web");
        p != pid && alive(p)
    } {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "not restarted after the pause:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = t0.elapsed();
    eprintln!("restarted {after:?} after the pause ended");

    // The listener: no token, no pause.
    let body = r#"{"selector": "host.Process/web", "reason": "from the pager", "for": "1h"}"#;
    let (status, _) = post(listen, "/pause", &[], body);
    assert_eq!(status, 401);
    let bearer = [("Authorization", format!("Bearer {TOKEN}"))];
    let (status, text) = post(listen, "/pause", &bearer, r#"{"selector": "nope/"}"#);
    assert_eq!(status, 400, "{text}");
    let (status, text) = post(listen, "/pause", &bearer, body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("paused `host.Process/web`"), "{text}");
    let pid = ws.pid("web");
    kill_and_wait(pid);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!alive(ws.pid("web")), "paused through the listener");
    let json = ws.run(&["plan", "--format", "json"]).json();
    assert_eq!(
        json["paused"][0]["selector"], "host.Process/web",
        "{json:#}"
    );
    assert!(json["actions"][0]["reasons"]
        .to_string()
        .contains("paused `host.Process/web`"));
    // Resumed through the listener: acted on at once.
    let (status, text) = post(listen, "/resume", &bearer, "");
    assert_eq!(status, 200, "{text}");
    wait_until("restarted after resume", Duration::from_secs(15), || {
        let p = ws.pid("web");
        p != pid && alive(p)
    });
    let out = ws.run_raw(&["resume"]);
    out.code(1);
    assert!(out.stderr.contains("nothing to resume"), "{}", out.stderr);
    let bad = ws.run_raw(&["pause", "web", "--reason", "x"]);
    bad.code(1);
    assert!(
        bad.stderr.contains("invalid selector `web`"),
        "{}",
        bad.stderr
    );
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let _ = watch.wait();
}

/// A freeze window covering now holds a drift correction of what it
/// selects; the same correction with a break-glass approval runs, once.
#[test]
fn a_freeze_window_holds_drift_and_break_glass_lets_one_change_through() {
    let ws = Workspace::new();
    ws.write(
        "settings.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  freezeWindows:\n    - {name: year-end, days: [mon, tue, wed, thu, fri, sat, sun], start: \"00:00\", end: \"24:00\", selector: {labels: {tier: web}}}\n",
    );
    let web = file_doc("web", "web.txt", "declared\n")
        .replace("name: web", "name: web\n  labels: {tier: web}");
    ws.write("web.yaml", &web);
    ws.write("other.yaml", &file_doc("other", "other.txt", "declared\n"));
    // Creating is an action too: frozen, the web file is not created.
    let run = ws.run(&["apply", "--format", "json"]);
    run.ok();
    assert!(!ws.path().join("web.txt").exists(), "frozen");
    assert!(
        ws.path().join("other.txt").exists(),
        "not selected: created"
    );
    let a = run.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["target"]["name"] == "web")
        .cloned()
        .unwrap();
    assert_eq!(a["decision"], "deferred", "{a:#}");
    assert!(
        a["reasons"]
            .to_string()
            .contains("freeze window `year-end` is open"),
        "{a:#}"
    );
    // Break glass: an approval of exactly that change, merged.
    let fingerprint = a["fingerprint"].as_str().unwrap();
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    ws.write(
        "approvals/host.File/web.yaml",
        &format!("apiVersion: tend.dev/v1\nkind: Approval\nmetadata: {{name: glass}}\nspec:\n  target: {{kind: host.File, name: web}}\n  fingerprint: {fingerprint}\n  expires: \"{expires}\"\n  breakGlass: true\n"),
    );
    ws.run(&["apply"]).ok();
    assert_eq!(
        std::fs::read_to_string(ws.path().join("web.txt")).unwrap(),
        "declared\n",
        "the approved change ran"
    );
    // Once: the next drift of it is frozen again.
    std::fs::write(ws.path().join("web.txt"), "edited\n").unwrap();
    let run = ws.run(&["apply", "--format", "json"]);
    run.ok();
    assert_eq!(run.json()["results"]["applied"], 0, "{}", run.stdout);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("web.txt")).unwrap(),
        "edited\n"
    );
}
