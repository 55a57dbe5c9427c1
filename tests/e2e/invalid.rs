//! Every class of bad input gets a located error, exit 1, and no action.

use crate::{file_doc, Workspace};

/// Writes a valid resource that would create `made.txt` plus one bad
/// document; checks validate, plan and apply all refuse with the location,
/// and that nothing was created.
#[track_caller]
fn refused(bad: &str, location: &str, message: &str) {
    let ws = Workspace::new();
    ws.write("good.yaml", &file_doc("made", "made.txt", "hello\n"));
    ws.write("bad.yaml", bad);
    for cmd in ["validate", "plan", "apply"] {
        let run = ws.run(&[cmd]);
        run.code(1);
        let want = format!("--> {}/{location}", ws.desired().display());
        assert!(
            run.stderr.contains(&want),
            "{cmd}: expected `{want}` in:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(message),
            "{cmd}: expected `{message}` in:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("tend: desired state is invalid"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains('^'), "no caret in:\n{}", run.stderr);
    }
    assert!(
        !ws.path().join("made.txt").exists(),
        "an invalid desired state must change nothing"
    );
}

const HEAD: &str = "apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: bad\n";

#[test]
fn yaml_syntax_error() {
    refused(
        &format!("{HEAD}spec:\n  path: [unclosed\n"),
        "bad.yaml:",
        "invalid YAML",
    );
}

#[test]
fn tab_indentation() {
    refused(
        &format!("{HEAD}spec:\n\tpath: /tmp/x\n"),
        "bad.yaml:6:1",
        "tab character",
    );
}

#[test]
fn duplicate_key() {
    refused(
        &format!("{HEAD}spec:\n  path: a\n  path: b\n"),
        "bad.yaml:7:",
        "duplicate",
    );
}

#[test]
fn wrong_type() {
    refused(
        &format!("{HEAD}spec:\n  path: a\n  content: 12\n"),
        "bad.yaml:7:12",
        "expected string, found integer",
    );
}

#[test]
fn unknown_field() {
    let ws_bad = format!("{HEAD}spec:\n  path: a\n  contnet: x\n");
    refused(&ws_bad, "bad.yaml:7:3", "unknown field `contnet`");
    refused(
        &ws_bad,
        "bad.yaml:7:3",
        "expected one of: path, content, mode",
    );
}

#[test]
fn missing_required_field() {
    refused(
        &format!("{HEAD}spec:\n  content: x\n"),
        "bad.yaml:5:1",
        "missing required field `path`",
    );
}

#[test]
fn unknown_kind() {
    refused(
        "apiVersion: tend.dev/v1\nkind: host.Fiel\nmetadata:\n  name: x\nspec: {}\n",
        "bad.yaml:2:7",
        "unknown kind `host.Fiel`",
    );
    refused(
        "apiVersion: tend.dev/v1\nkind: host.Fiel\nmetadata:\n  name: x\nspec: {}\n",
        "bad.yaml:2:7",
        "known kinds: Settings, host.File, host.Process",
    );
}

#[test]
fn same_kind_and_name_twice() {
    let ws = Workspace::new();
    ws.write("a.yaml", &file_doc("same", "one.txt", "1"));
    ws.write("b.yaml", &file_doc("same", "two.txt", "2"));
    let run = ws.run(&["apply"]);
    run.code(1);
    let d = ws.desired().display().to_string();
    assert!(
        run.stderr.contains("host.File/same is declared twice"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("--> {d}/b.yaml:4:9")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("--> {d}/a.yaml:4:9")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("first declared here"), "{}", run.stderr);
    assert!(!ws.path().join("one.txt").exists() && !ws.path().join("two.txt").exists());
}

#[test]
fn ignore_entry_not_a_json_pointer() {
    refused(
        &format!("{HEAD}spec:\n  path: a\nignore:\n  - /spec/mode\n  - spec/content\n"),
        "bad.yaml:9:5",
        "ignore entry `spec/content` is not a valid JSON Pointer",
    );
}

#[test]
fn alias_bomb() {
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        bomb.push_str(&format!("{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let started = std::time::Instant::now();
    refused(&bomb, "bad.yaml:", "invalid YAML");
    // Not a timing assertion on performance: a bomb that expanded would
    // take minutes and gigabytes, so this only guards against that.
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn deep_nesting() {
    let deep = format!(
        "{HEAD}spec:\n  path: {}{}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    refused(&deep, "bad.yaml:", "invalid YAML");
}

#[test]
fn errors_in_several_files_are_all_reported() {
    let ws = Workspace::new();
    ws.write("a.yaml", &format!("{HEAD}spec:\n  pth: a\n"));
    ws.write(
        "b.yaml",
        "apiVersion: tend.dev/v1\nkind: Nope\nmetadata: {name: x}\n",
    );
    let run = ws.run(&["validate"]);
    run.code(1);
    assert!(run.stderr.contains("a.yaml:6:3"), "{}", run.stderr);
    assert!(run.stderr.contains("b.yaml:2:7"), "{}", run.stderr);
    assert!(run.stderr.contains("invalid: 3 errors"), "{}", run.stderr);
}

const PROCESS: &str = "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: app\nspec:\n  command: /bin/sleep\n  args: [\"600\"]\nhealth:\n  probes:\n";

#[test]
fn a_forecast_of_an_unknown_signal() {
    refused(
        &format!(
            "{PROCESS}    - name: full-in\n      forecast: {{of: nope, threshold: 1, below: 1h}}\n"
        ),
        "bad.yaml:11:22",
        "forecast `full-in` refers to unknown signal `nope`",
    );
}

#[test]
fn a_forecast_host_metric_with_above() {
    refused(
        &format!(
            "{PROCESS}    - name: mem-in\n      host: {{metric: memoryExhaustedIn, above: 600}}\n"
        ),
        "bad.yaml:11:48",
        "it takes `below`, a duration such as 4h",
    );
}

#[test]
fn an_anomaly_on_an_slo() {
    refused(
        "apiVersion: tend.dev/v1\nkind: Signature\nmetadata:\n  name: odd\nspec:\n  cause: odd\n  all:\n    - {slo: availability, anomaly: {sensitivity: 3}}\n  runbook: restart-it\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata:\n  name: restart-it\nspec:\n  steps:\n    - {action: restart}\n",
        "bad.yaml:8:36",
        "an anomaly condition is on a signal",
    );
}

/// A condition on a signal none of the selected resources has is valid
/// (signatures are shared) but never holds: validate says so.
#[test]
fn a_signature_condition_on_a_missing_signal_is_a_warning() {
    let ws = Workspace::new();
    ws.write(
        "app.yaml",
        &format!("{PROCESS}    - name: latency\n      http: {{url: \"http://127.0.0.1:9/\"}}\n"),
    );
    ws.write(
        "sig.yaml",
        "apiVersion: tend.dev/v1\nkind: Signature\nmetadata:\n  name: slow\nspec:\n  cause: slow\n  all:\n    - {signal: latncy}\n  runbook: restart-it\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata:\n  name: restart-it\nspec:\n  steps:\n    - {action: restart}\n",
    );
    let run = ws.run(&["validate"]);
    run.ok();
    assert!(
        run.stderr
            .contains("none of the resources signature `slow` selects has a signal `latncy`")
            && run.stderr.contains("latency")
            && run.stderr.contains("sig.yaml"),
        "{}",
        run.stderr
    );
}
