//! Policies and safety gates through the real binary.

use crate::{file_doc, process_doc, Workspace};

fn settings(ws: &Workspace, spec: &str) {
    ws.write(
        "settings.yaml",
        &format!("apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n{spec}"),
    );
}

#[test]
fn the_default_pack_passes_its_tests() {
    let ws = Workspace::new();
    let run = ws.run_raw(&["policy", "test"]);
    run.ok();
    assert!(
        run.stdout
            .contains("PASS data.tend_test.test_opening_ssh_to_the_world_is_denied"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(" 0 failed"), "{}", run.stdout);

    let repo_policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let run = ws.run_raw(&[
        "policy",
        "test",
        repo_policies.to_str().unwrap(),
        "--coverage",
    ]);
    run.ok();
    assert!(
        run.stdout.contains("policies/network_test.rego:"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_failing_policy_test_fails_the_command() {
    let ws = Workspace::new();
    ws.write(
        "policies/extra_test.rego",
        "package extra_test\n\nimport data.tend\n\ntest_deletes_are_auto if {\n\ttend.decision.decision == \"auto\" with input as {\"action\": {\"type\": \"delete\", \"target\": {\"kind\": \"host.File\", \"name\": \"x\"}, \"changes\": []}, \"context\": {}}\n}\n\ntest_truth if true\n",
    );
    let run = ws.run_raw(&[
        "policy",
        "test",
        ws.desired().join("policies").to_str().unwrap(),
    ]);
    run.code(1);
    assert!(
        run.stdout
            .contains("FAIL data.extra_test.test_deletes_are_auto"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("PASS data.extra_test.test_truth"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("1 passed, 1 failed"), "{}", run.stdout);
}

#[test]
fn policy_eval_prints_the_decision() {
    let ws = Workspace::new();
    let input = ws.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"action": {"type": "update", "target": {"kind": "aws.ec2.SecurityGroup", "name": "web"},
            "changes": [{"path": "/spec/ingress", "from": [], "to": [{"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "0.0.0.0/0"}]}]},
            "resource": {"desired": null, "live": null}, "incident": null, "context": {"in_maintenance_window": false}}"#,
    )
    .unwrap();
    let out = ws
        .run_raw(&["policy", "eval", "--input", input.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(out["decision"], "deny");
    assert_eq!(
        out["reasons"][0],
        "opens port 22 to the internet (0.0.0.0/0)"
    );
}

#[test]
fn a_policy_syntax_error_is_reported_at_its_line_and_nothing_runs() {
    let ws = Workspace::new();
    settings(&ws, "  policies: {dirs: [policies]}\n");
    ws.write("f.yaml", &file_doc("f", "f.txt", "x"));
    ws.write(
        "policies/broken.rego",
        "package tend\n\nreview contains \"x\" if {\n\tinput.action.type ==\n}\n",
    );
    for cmd in ["validate", "plan", "apply"] {
        let run = ws.run(&[cmd]);
        run.code(1);
        let want = format!("--> {}/policies/broken.rego:5:1", ws.desired().display());
        assert!(run.stderr.contains(&want), "{cmd}: {}", run.stderr);
        assert!(run.stderr.contains("invalid policy"), "{}", run.stderr);
    }
    assert!(!ws.path().join("f.txt").exists());
}

#[test]
fn a_repository_policy_can_deny_and_a_runtime_error_denies() {
    let ws = Workspace::new();
    settings(&ws, "  policies: {dirs: [policies]}\n");
    ws.write("secret.yaml", &file_doc("secret", "secret.txt", "x"));
    ws.write("other.yaml", &file_doc("other", "other.txt", "y"));
    ws.write(
        "policies/files.rego",
        "package tend\n\ndeny contains \"files named secret are managed elsewhere\" if {\n\tinput.action.target.name == \"secret\"\n}\n",
    );
    let run = ws.run(&["apply"]);
    run.ok();
    assert!(run.stdout.contains("host.File/secret  create  [risk low · deny · files named secret are managed elsewhere]"), "{}", run.stdout);
    assert!(!ws.path().join("secret.txt").exists());
    assert!(ws.path().join("other.txt").exists());

    // A rule that fails at run time makes the decision deny, never auto.
    ws.write(
        "policies/files.rego",
        "package tend\n\nreview contains msg if {\n\tmsg := sprintf(\"%d\", [to_number(input.action.target.name)])\n}\n",
    );
    let json = ws.run(&["plan", "--format", "json"]).ok().json();
    let secret = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["target"]["name"] == "secret")
        .unwrap();
    assert_eq!(secret["decision"], "deny", "{secret}");
    assert!(
        secret["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("policy evaluation failed"),
        "{secret}"
    );
}

#[test]
fn the_cooldown_holds_a_second_correction() {
    let ws = Workspace::new();
    settings(&ws, "  safety: {cooldown: 1h}\n");
    ws.write("f.yaml", &file_doc("f", "f.txt", "declared"));
    ws.run(&["apply"]).ok();
    std::fs::write(ws.path().join("f.txt"), "edited").unwrap();
    let run = ws.run(&["apply"]);
    run.ok();
    assert!(run.stdout.contains("· deferred · "), "{}", run.stdout);
    assert!(
        run.stdout.contains("cooldown: last action at"),
        "{}",
        run.stdout
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("f.txt")).unwrap(),
        "edited"
    );
}

/// Regression: the initial create counted as a correction, so a field was
/// contested after two real corrections instead of the configured three.
#[test]
fn fight_detection_stops_correcting_a_contested_field() {
    let ws = Workspace::new();
    settings(
        &ws,
        "  safety:\n    fightDetection: {corrections: 3, window: 1h}\n",
    );
    ws.write("f.yaml", &file_doc("f", "f.txt", "declared"));
    // Creating the file sets the field for the first time: no correction.
    ws.run(&["apply"]).ok();
    for round in 1..=3 {
        std::fs::write(ws.path().join("f.txt"), format!("changed back {round}")).unwrap();
        ws.run(&["apply"]).ok();
        assert_eq!(
            std::fs::read_to_string(ws.path().join("f.txt")).unwrap(),
            "declared"
        );
    }
    // Three real corrections; another controller changes it back once
    // more: tend stops fighting.
    std::fs::write(ws.path().join("f.txt"), "changed back again").unwrap();
    let json = ws.run(&["apply", "--format", "json"]).ok().json();
    let action = &json["actions"][0];
    assert_eq!(action["decision"], "review", "{action}");
    assert_eq!(action["contested"], true);
    assert!(
        action["reasons"][1]
            .as_str()
            .unwrap()
            .contains("/spec/content was corrected 3 times"),
        "{action}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("f.txt")).unwrap(),
        "changed back again"
    );
}

#[test]
fn a_maintenance_window_holds_actions_for_review() {
    let ws = Workspace::new();
    settings(
        &ws,
        "  maintenanceWindows:\n    - {name: always, days: [mon, tue, wed, thu, fri, sat, sun], start: \"00:00\", end: \"24:00\", timeZone: Europe/Berlin}\n",
    );
    ws.write("f.yaml", &file_doc("f", "f.txt", "x"));
    let run = ws.run(&["apply"]);
    run.ok();
    assert!(
        run.stdout.contains("review · a maintenance window is open"),
        "{}",
        run.stdout
    );
    assert!(!ws.path().join("f.txt").exists());
}

#[test]
fn an_unknown_time_zone_is_invalid() {
    let ws = Workspace::new();
    settings(&ws, "  maintenanceWindows:\n    - {name: w, days: [mon], start: \"01:00\", end: \"02:00\", timeZone: Mars/Olympus}\n");
    let run = ws.run(&["validate"]);
    run.code(1);
    assert!(
        run.stderr.contains("unknown time zone `Mars/Olympus`"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_action_budget_defers_the_rest() {
    let ws = Workspace::new();
    settings(&ws, "  safety: {maxActionsPerRun: 1}\n");
    for name in ["a", "b", "c"] {
        ws.write(
            &format!("{name}.yaml"),
            &file_doc(name, &format!("{name}.txt"), name),
        );
    }
    let json = ws.run(&["apply", "--format", "json"]).ok().json();
    assert_eq!(json["results"]["applied"], 1);
    let deferred = json["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["decision"] == "deferred")
        .count();
    assert_eq!(deferred, 2);
    // The next pass takes the next one.
    ws.run(&["apply"]).ok();
    let created = ["a", "b", "c"]
        .iter()
        .filter(|n| ws.path().join(format!("{n}.txt")).exists())
        .count();
    assert_eq!(created, 2);
}

#[test]
fn the_circuit_breaker_stops_acting_when_actions_keep_failing() {
    let ws = Workspace::new();
    settings(
        &ws,
        "  safety:\n    circuitBreaker: {failures: 2, window: 1h}\n",
    );
    for name in ["p1", "p2", "p3"] {
        ws.write(
            &format!("{name}.yaml"),
            &process_doc(name, "/nonexistent/program", &[]),
        );
    }
    let run = ws.run(&["apply"]);
    run.code(1);
    assert_eq!(
        run.stdout.matches("failed: failed to create").count(),
        2,
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("not applied: circuit breaker opened after 2 consecutive failures"),
        "{}",
        run.stdout
    );
    // Across passes it stays open while the failures are recent.
    let run = ws.run(&["apply"]);
    run.ok();
    assert_eq!(
        run.stdout
            .matches("circuit breaker open: the last 2 actions failed")
            .count(),
        3,
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout
            .matches("not applied: decision is deferred")
            .count(),
        3,
        "{}",
        run.stdout
    );
}

#[test]
fn the_example_repository_policies_pass_their_tests_and_apply() {
    let ws = Workspace::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/desired-state");
    let run = ws.run_raw(&["policy", "test", example.join("policies").to_str().unwrap()]);
    run.ok();
    assert!(run.stdout.contains("2 passed, 0 failed"), "{}", run.stdout);
    let run = ws.run_raw(&["validate", example.to_str().unwrap()]);
    run.ok();
    // A file declared outside .tend/ is denied by the example's own policy.
    ws.write("settings.yaml", "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  policies: {dirs: [policies]}\n");
    std::fs::create_dir_all(ws.desired().join("policies")).unwrap();
    std::fs::copy(
        example.join("policies/paths.rego"),
        ws.desired().join("policies/paths.rego"),
    )
    .unwrap();
    ws.write("f.yaml", &file_doc("f", "elsewhere.txt", "x"));
    let run = ws.run(&["apply"]);
    run.ok();
    assert!(
        run.stdout
            .contains("deny · this repository only manages files under .tend/, not elsewhere.txt"),
        "{}",
        run.stdout
    );
    assert!(!ws.path().join("elsewhere.txt").exists());
}
