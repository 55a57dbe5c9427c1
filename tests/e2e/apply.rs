//! Plan and apply against files: drift, modes, prune, the journal, the lock.

use std::time::Duration;

use crate::{file_doc, Workspace};

#[test]
fn a_drifted_file_is_corrected() {
    let ws = Workspace::new();
    ws.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\nworld\n"));
    ws.run(&["apply"]).ok();
    let path = ws.path().join("etc/motd");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\nworld\n");

    // A person edits the file and loosens its mode behind tend's back.
    std::fs::write(&path, "hello\nmars\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();

    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("~ host.File/motd  update"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("-mars") && plan.stdout.contains("+world"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("/spec/mode: \"0666\" → \"0644\""),
        "{}",
        plan.stdout
    );

    let sarif = ws.run(&["plan", "--format", "sarif"]).ok().json();
    let result = &sarif["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "tend/drift");
    let location = &result["locations"][0]["physicalLocation"];
    assert!(
        location["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("desired/motd.yaml"),
        "{result}"
    );
    assert_eq!(location["region"]["startLine"], 1);

    let json = ws.run(&["plan", "--format", "json"]).ok().json();
    assert_eq!(json["summary"]["update"], 1);
    assert_eq!(json["actions"][0]["declaredAt"]["line"], 1);
    let changes = &json["actions"][0]["changes"];
    assert_eq!(changes.as_array().unwrap().len(), 2);
    assert_eq!(json["actions"][0]["decision"], "auto");

    ws.run(&["apply"]).ok();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\nworld\n");
    let mode = std::fs::metadata(&path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o644
    );
    ws.run(&["plan", "--detailed-exitcode"]).code(0);
}

#[test]
fn observe_acts_on_nothing() {
    let ws = Workspace::new();
    ws.write("f.yaml", &file_doc("f", "f.txt", "x"));
    let run = ws.run(&["apply", "--mode", "observe"]);
    run.ok();
    assert!(
        run.stdout.contains("not applied: decision is observe"),
        "{}",
        run.stdout
    );
    assert!(!ws.path().join("f.txt").exists());

    // The same holds when Settings say so, and for one resource only.
    ws.write(
        "s.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec: {mode: recommend}\n",
    );
    let run = ws.run(&["apply"]);
    run.ok();
    assert!(
        run.stdout.contains("not applied: decision is review"),
        "{}",
        run.stdout
    );
    assert!(!ws.path().join("f.txt").exists());
}

#[test]
fn a_resource_in_observe_mode_is_left_alone_while_others_are_corrected() {
    let ws = Workspace::new();
    ws.write("a.yaml", &file_doc("a", "a.txt", "a"));
    ws.write(
        "b.yaml",
        "apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: b\n  mode: observe\nspec:\n  path: b.txt\n  content: b\n",
    );
    ws.run(&["apply"]).ok();
    assert!(ws.path().join("a.txt").exists());
    assert!(!ws.path().join("b.txt").exists());
}

#[test]
fn prune_proposes_deleting_only_owned_resources() {
    let ws = Workspace::new();
    for name in ["a", "b", "c", "d"] {
        ws.write(
            &format!("{name}.yaml"),
            &file_doc(name, &format!("{name}.txt"), name),
        );
    }
    ws.run(&["apply"]).ok();
    std::fs::write(ws.path().join("foreign.txt"), "not tend's").unwrap();
    ws.remove("a.yaml");

    // Prune off: the undeclared file is reported, not touched.
    let run = ws.run(&["apply"]);
    run.ok();
    assert!(
        run.stdout
            .contains("? host.File/a  unmanaged: no longer declared; prune is disabled"),
        "{}",
        run.stdout
    );
    assert!(ws.path().join("a.txt").exists());

    // Prune on: the deletion is planned, and the default policy asks a human.
    ws.write(
        "s.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  prune: {enabled: true}\n",
    );
    let run = ws.run(&["apply"]);
    run.ok();
    assert!(
        run.stdout.contains(
            "- host.File/a  delete  [risk high · review · deleting a resource needs a human]"
        ),
        "{}",
        run.stdout
    );
    assert!(ws.path().join("a.txt").exists());
    assert!(ws.path().join("foreign.txt").exists());
    // The journal records why nothing was done.
    let history = ws.run_raw(&["history"]);
    assert!(
        history.stdout.contains("review  delete host.File/a")
            && history.stdout.contains("deleting a resource needs a human"),
        "{}",
        history.stdout
    );
}

#[test]
fn the_prune_guard_stops_a_pass_that_would_delete_too_much() {
    let ws = Workspace::new();
    for name in ["a", "b", "c", "d"] {
        ws.write(
            &format!("{name}.yaml"),
            &file_doc(name, &format!("{name}.txt"), name),
        );
    }
    ws.write(
        "s.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  prune: {enabled: true, maxDeleteShare: 0.5}\n",
    );
    ws.run(&["apply"]).ok();
    // Someone emptied most of the repository, and a kept file drifted.
    for name in ["a", "b", "c"] {
        ws.remove(&format!("{name}.yaml"));
    }
    std::fs::write(ws.path().join("d.txt"), "drifted").unwrap();
    for cmd in ["plan", "apply"] {
        let run = ws.run(&[cmd]);
        run.code(1);
        assert!(
            run.stderr.contains("tend: prune guard: this pass would delete 3 of 4 managed resources (75%), more than the 50% allowed"),
            "{}",
            run.stderr
        );
    }
    // The whole pass stopped: not even the drifted file was corrected.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("d.txt")).unwrap(),
        "drifted"
    );
}

#[test]
fn the_journal_records_intent_and_outcome() {
    let ws = Workspace::new();
    ws.write("f.yaml", &file_doc("f", "f.txt", "x"));
    ws.run(&["apply"]).ok();
    let run = ws.run_raw(&["history"]);
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[0].contains("intent") && lines[0].contains("create host.File/f"),
        "{}",
        run.stdout
    );
    assert!(
        lines[1].contains("synced") && lines[1].contains("create host.File/f"),
        "{}",
        run.stdout
    );

    let json = ws.run_raw(&["history", "--format", "json"]).ok().json();
    assert_eq!(json["entries"].as_array().unwrap().len(), 2);
    let later = ws
        .run_raw(&[
            "history",
            "--since",
            "2999-01-01T00:00:00Z",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(later["entries"].as_array().unwrap().len(), 0);
}

#[test]
fn history_without_a_journal_is_a_clear_error() {
    let ws = Workspace::new();
    let run = ws.run_raw(&["history"]);
    run.code(1);
    assert!(
        run.stderr.starts_with("tend: no journal at"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_concurrent_second_apply_is_refused() {
    let ws = Workspace::new();
    // A process that ignores SIGTERM: replacing it keeps the first apply
    // busy for the whole stop timeout, holding the lock.
    let doc = |tag: &str| {
        format!(
            "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: stubborn\nspec:\n  command: sh\n  args: [-c, \"trap '' TERM; while true; do sleep 0.2; done\", {tag}]\n"
        )
    };
    ws.write("p.yaml", &doc("one"));
    ws.run(&["apply"]).ok();
    ws.write("p.yaml", &doc("two"));

    let mut first = ws.cmd();
    first.arg("apply").arg(ws.desired());
    let first = first
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first_pid = first.id();
    // Wait until the first apply is stopping the old process.
    std::thread::sleep(Duration::from_millis(1500));
    let second = ws.run(&["apply"]);
    second.code(1);
    assert!(
        second.stderr.contains("holds the state lock"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains(&format!("pid {first_pid}")),
        "{}",
        second.stderr
    );
    let first = crate::Run::from(first.wait_with_output().unwrap());
    first.ok();
    assert!(first.stdout.contains("killed pid"), "{}", first.stdout);
    // With the first done, the lock is free again.
    ws.run(&["plan", "--detailed-exitcode"]).code(0);
    ws.run(&["apply"]).ok();
}

#[test]
fn an_intent_left_by_a_crash_is_marked_interrupted_and_live_state_reread() {
    let ws = Workspace::new();
    ws.write("f.yaml", &file_doc("f", "f.txt", "x"));
    ws.run(&["apply"]).ok();
    // Simulate a run killed between calling the provider and recording the
    // outcome: an intent with no outcome.
    let db = rusqlite::Connection::open(ws.state().join("tend.db")).unwrap();
    db.execute(
        "INSERT INTO runs (started_at, command, origin, mode) VALUES ('2026-01-01T00:00:00.000Z', 'apply', 'x', 'auto')",
        [],
    )
    .unwrap();
    let run = db.last_insert_rowid();
    db.execute(
        "INSERT INTO journal (run_id, at, phase, fingerprint, action, kind, name, detail) VALUES (?1, '2026-01-01T00:00:01.000Z', 'intent', 'dead', 'update', 'host.File', 'f', '{}')",
        [run],
    )
    .unwrap();
    drop(db);
    std::fs::write(ws.path().join("f.txt"), "drifted").unwrap();
    ws.run(&["apply"]).ok();
    let history = ws.run_raw(&["history"]).ok().stdout.clone();
    assert!(
        history.contains("interrupted update host.File/f  [dead]"),
        "{history}"
    );
    assert!(history.contains("live state re-read by run"), "{history}");
    // The correction came from re-reading live state, not from replaying.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("f.txt")).unwrap(),
        "x"
    );
}

#[test]
fn secrets_never_reach_plans_or_the_journal() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: app\nspec:\n  command: sleep\n  args: [\"300\"]\n  env:\n    API_TOKEN: hunter2-very-secret\n    PORT: \"8080\"\n",
    );
    for format in ["human", "json", "markdown"] {
        let run = ws.run(&["plan", "--format", format]);
        run.ok();
        assert!(!run.stdout.contains("hunter2"), "{format}: {}", run.stdout);
        assert!(
            run.stdout.contains("(redacted)"),
            "{format}: {}",
            run.stdout
        );
        assert!(run.stdout.contains("8080"), "{format}: {}", run.stdout);
    }
    let run = ws.run(&["apply", "--format", "json"]);
    run.ok();
    assert!(!run.stdout.contains("hunter2"));
    let history = ws
        .run_raw(&["history", "--format", "json"])
        .ok()
        .stdout
        .clone();
    assert!(!history.contains("hunter2"), "{history}");
    let db = std::fs::read(ws.state().join("tend.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains("hunter2"),
        "the journal holds the secret"
    );
    // The record that lets tend recognise the process is private.
    let meta = std::fs::metadata(ws.state().join("host/processes/app.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // The process itself gets it.
    let pid = ws.pid("app");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("API_TOKEN=hunter2-very-secret"));
}

/// `tend plan` of the example on a fresh machine says each thing once: the
/// process about to be created is one health line, not one per signal, and
/// Prometheus being unreachable is said once, naming the signals that read
/// it.
#[test]
fn the_example_plan_says_each_thing_once() {
    let ws = Workspace::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/desired-state");
    let run = ws.run_raw(&["plan", example.to_str().unwrap()]);
    run.ok();
    let health: Vec<&str> = run
        .stdout
        .split("Health\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Health section:\n{}", run.stdout))
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .collect();
    assert_eq!(
        health,
        ["· host.Process/sample-app  not created yet; health is read once it exists"],
        "{}",
        run.stdout
    );
    let mut seen = std::collections::HashSet::new();
    for line in run.stdout.lines().filter(|l| !l.trim().is_empty()) {
        assert!(seen.insert(line), "said twice: {line}\n{}", run.stdout);
    }
}
