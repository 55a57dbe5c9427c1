//! Hostile repository policies through the real binary: recursion,
//! unbounded work, functions tend does not have. tend rejects what can be
//! seen before evaluating, with the file, line and column; it denies the
//! action when a limit stops an evaluation; it never crashes.

use std::time::{Duration, Instant};

use crate::{file_doc, Run, Workspace};

/// A workspace with one file to create and `policy` as a repository policy.
fn workspace(policy: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "settings.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  policies: {dirs: [policies]}\n",
    );
    ws.write("f.yaml", &file_doc("f", "f.txt", "x"));
    ws.write("policies/hostile.rego", policy);
    ws
}

fn policy_path(ws: &Workspace) -> String {
    format!("{}/policies/hostile.rego", ws.desired().display())
}

/// The process exited by itself (no signal) within `secs`.
#[track_caller]
fn exited_within(run: &Run, started: Instant, secs: u64) {
    assert!(run.code >= 0, "killed by a signal: {}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(secs),
        "took {:?}",
        started.elapsed()
    );
}

/// The decision and reasons of the action on `host.File/f` in a JSON plan.
fn decision_of_f(run: &Run) -> (String, Vec<String>) {
    let json = run.json();
    let action = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["target"]["name"] == "f")
        .unwrap_or_else(|| panic!("no action for f: {json}"))
        .clone();
    let reasons = action["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    (action["decision"].as_str().unwrap().to_string(), reasons)
}

/// Regression: a self-recursive function overflowed the stack ("thread
/// 'main' has overflowed its stack", exit 134) in plan, apply, policy eval
/// and watch, while validate called the policy valid.
#[test]
fn a_self_recursive_function_is_rejected_at_its_call_by_every_command() {
    let ws = workspace(
        "package tend\n\nf(x) := y if {\n\ty := f(x)\n}\n\nreview contains \"r\" if f(1)\n",
    );
    let want = format!("--> {}:4:10", policy_path(&ws));
    for cmd in ["validate", "plan", "apply"] {
        let started = Instant::now();
        let run = ws.run(&[cmd]);
        exited_within(&run, started, 10);
        run.code(1);
        assert!(run.stderr.contains(&want), "{cmd}: {}", run.stderr);
        assert!(
            run.stderr.contains(
                "invalid policy: recursion: data.tend.f depends on itself (f -> f); Rego does not allow recursion"
            ),
            "{cmd}: {}",
            run.stderr
        );
    }
    assert!(!ws.path().join("f.txt").exists());

    let input = ws.path().join("input.json");
    std::fs::write(&input, r#"{"action": {"type": "create"}}"#).unwrap();
    let dir = ws.desired().join("policies");
    let run = ws.run_raw(&[
        "policy",
        "eval",
        "--input",
        input.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    run.code(1);
    assert!(run.stderr.contains(&want), "{}", run.stderr);

    // `tend watch` reports each pass as invalid, as for any invalid
    // policy, and keeps running.
    let started = Instant::now();
    let run = ws.run(&["watch", "--interval", "1s", "--max-passes", "2"]);
    exited_within(&run, started, 15);
    run.ok();
    let failed = run
        .stdout
        .lines()
        .filter(|l| l.contains("pass failed, nothing changed: desired state is invalid"))
        .count();
    assert_eq!(failed, 2, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("invalid policy: recursion: data.tend.f depends on itself"),
        "{}",
        run.stdout
    );
}

/// Regression: `numbers.range(1, 1e8)` ran for 22 s, took 3.9 GiB and
/// aborted tend. Constant bounds are rejected by validate; bounds that come
/// from the input deny the action at once, naming the limit and the policy.
#[test]
fn a_huge_range_is_rejected_when_constant_and_denied_when_not() {
    let ws =
        workspace("package tend\n\nreview contains \"r\" if count(numbers.range(1, 1e8)) > 0\n");
    let run = ws.run(&["validate"]);
    run.code(1);
    assert!(
        run.stderr
            .contains(&format!("--> {}:3:30", policy_path(&ws))),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("invalid policy: numbers.range here would build 100000000 numbers, more than tend's limit of 1000000"),
        "{}",
        run.stderr
    );

    ws.write(
        "policies/hostile.rego",
        "package tend\n\nreview contains \"r\" if count(numbers.range(1, input.context.run.resources_total * 1e8)) > 0\n",
    );
    ws.run(&["validate"]).ok();
    let started = Instant::now();
    let run = ws.run(&["plan", "--format", "json"]);
    exited_within(&run, started, 5);
    run.ok();
    let (decision, reasons) = decision_of_f(&run);
    assert_eq!(decision, "deny");
    assert_eq!(
        reasons,
        vec![format!(
            "policy evaluation failed: numbers.range would build 100000000 numbers, more than tend's limit of 1000000 (at {}:3:43)",
            policy_path(&ws)
        )]
    );
}

const SLOW: &str = "package tend\n\nreview contains \"r\" if {\n\tn := 5000 + count(input.action.changes)\n\tx := [a | some i in numbers.range(1, n); some j in numbers.range(1, n); a := i * j]\n\tcount(x) > 0\n}\n";

/// Regression: a 5k x 5k comprehension ran for 35 s and took 5 GiB. It is
/// stopped at the time limit and the action is denied.
#[test]
fn a_comprehension_past_the_time_limit_denies_the_action() {
    let ws = workspace(SLOW);
    ws.run(&["validate"]).ok();
    let started = Instant::now();
    let run = ws.run(&["plan", "--format", "json"]);
    exited_within(&run, started, 5);
    run.ok();
    assert_eq!(
        decision_of_f(&run),
        (
            "deny".to_string(),
            vec![format!(
                "policy evaluation exceeded the time limit of 500ms per decision (policies {})",
                policy_path(&ws)
            )]
        )
    );
    let started = Instant::now();
    let run = ws.run(&["apply"]);
    exited_within(&run, started, 5);
    run.ok();
    assert!(!ws.path().join("f.txt").exists());
}

/// One repository policy used to stall or kill a watcher; it now denies
/// and the watcher serves its next pass.
#[test]
fn tend_watch_keeps_serving_passes_with_a_policy_past_the_limit() {
    let ws = workspace(SLOW);
    let started = Instant::now();
    let run = ws.run(&[
        "watch",
        "--interval",
        "1s",
        "--max-passes",
        "2",
        "--format",
        "json",
    ]);
    exited_within(&run, started, 15);
    run.ok();
    let passes: Vec<&str> = run.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(passes.len(), 2, "{}", run.stdout);
    for pass in passes {
        assert!(
            pass.contains("policy evaluation exceeded the time limit of 500ms per decision"),
            "{pass}"
        );
    }
    assert!(!ws.path().join("f.txt").exists());
}

#[test]
fn functions_tend_does_not_have_are_rejected_where_called() {
    let ws = workspace(
        "package tend\n\ndeny contains \"down\" if {\n\tresp := http.send({\"method\": \"GET\", \"url\": \"http://127.0.0.1:1\"})\n\tresp.status_code != 200\n}\n\nreview contains \"env\" if opa.runtime().env.HOME\n",
    );
    let run = ws.run(&["validate"]);
    run.code(1);
    let path = policy_path(&ws);
    for want in [
        format!("--> {path}:4:13"),
        "invalid policy: http.send is not available in tend: policies cannot reach the network".to_string(),
        format!("--> {path}:8:26"),
        "invalid policy: opa.runtime is not available in tend: policies cannot read tend's runtime or environment".to_string(),
    ] {
        assert!(run.stderr.contains(&want), "{want}\n{}", run.stderr);
    }
}

#[test]
fn a_second_decision_rule_is_rejected_as_a_conflict() {
    let ws = workspace("package tend\n\ndecision := {\"decision\": \"auto\"}\n");
    let run = ws.run(&["validate"]);
    run.code(1);
    assert!(
        run.stderr
            .contains(&format!("--> {}:3:1", policy_path(&ws))),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("invalid policy: conflicting rules: data.tend.decision always has a value from policies/decision.rego:18:1"),
        "{}",
        run.stderr
    );
}
