//! Secrets: never printed, never journaled, never readable by another user.

use std::os::unix::fs::PermissionsExt;

use super::Workspace;

const SECRET: &str = "hunter2-very-secret";

fn app(port: &str) -> String {
    format!(
        "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: app\nspec:\n  command: sleep\n  args: [\"300\"]\n  env:\n    API_TOKEN: {SECRET}\n    PORT: \"{port}\"\n"
    )
}

const SETTINGS: &str =
    "apiVersion: tend.dev/v1\nkind: Settings\nmetadata:\n  name: settings\nspec:\n  policies:\n    dirs: [policies]\n";

/// A repository policy that tries to print the declared token and the live
/// spec in its reason (and to compare them).
const LEAK: &str = r#"package tend

review contains msg if {
	input.action.target.kind == "host.Process"
	input.action.type == "update"
	same := input.resource.desired.spec.env.API_TOKEN == input.resource.live.spec.env.API_TOKEN
	msg := sprintf("token %v, live %v, unchanged %v", [input.resource.desired.spec.env.API_TOKEN, input.resource.live, same])
}
"#;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Regression: a repository policy whose reason interpolated
/// `input.resource.desired.spec.env.API_TOKEN` put the token into every
/// plan format, the journal and `tend history`, and the policy input
/// carried the live spec verbatim; the state database was world-readable.
#[test]
fn a_policy_cannot_print_a_secret_and_the_state_is_private() {
    let ws = Workspace::new();
    ws.write("settings.yaml", SETTINGS);
    ws.write("app.yaml", &app("8080"));
    ws.run(&["apply"]).ok();
    ws.write("policies/leak.rego", LEAK);
    ws.write("app.yaml", &app("9090"));
    for format in ["human", "json", "markdown", "sarif"] {
        let run = ws.run(&["plan", "--format", format]);
        run.ok();
        assert!(!run.stdout.contains(SECRET), "{format}: {}", run.stdout);
        assert!(
            run.stdout.contains("token (redacted sha256:"),
            "{format}: the policy still sees that a token is set: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains("unchanged true"),
            "{format}: the policy can still compare desired and live: {}",
            run.stdout
        );
    }
    let run = ws.run(&["apply", "--format", "json"]);
    run.ok();
    assert!(!run.stdout.contains(SECRET), "{}", run.stdout);
    assert!(!run.stderr.contains(SECRET), "{}", run.stderr);
    for format in ["human", "json"] {
        let history = ws.run_raw(&["history", "--format", format]);
        history.ok();
        assert!(
            history.stdout.contains("token (redacted"),
            "the decision is journaled: {}",
            history.stdout
        );
        assert!(!history.stdout.contains(SECRET), "{}", history.stdout);
    }
    let incidents = ws.run_raw(&["incidents", "--all", "--format", "json"]);
    assert!(!incidents.stdout.contains(SECRET), "{}", incidents.stdout);

    let state = ws.state();
    assert_eq!(mode(&state), 0o700, "the state directory is private");
    for entry in std::fs::read_dir(&state).unwrap().flatten() {
        let p = entry.path();
        if p.is_file() {
            assert_eq!(mode(&p), 0o600, "{} is private", p.display());
        }
    }
}

/// A state directory created readable by others is tightened on open.
#[test]
fn an_existing_open_state_directory_is_tightened() {
    let ws = Workspace::new();
    ws.write("app.yaml", &tend_file());
    std::fs::create_dir_all(ws.state()).unwrap();
    std::fs::set_permissions(ws.state(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ws.run(&["apply"]).ok();
    assert_eq!(mode(&ws.state()), 0o700);
    std::fs::set_permissions(
        ws.state().join("tend.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    ws.run(&["apply"]).ok();
    assert_eq!(mode(&ws.state().join("tend.db")), 0o600);
}

fn tend_file() -> String {
    super::file_doc("f", "out/f.txt", "hello\n")
}

/// Regression: a state directory tend cannot create gave `unable to open
/// database file: unable to open database file: Error code 14` with no
/// path; `plan`, which only reads, failed too.
#[test]
fn an_unusable_state_directory_is_named_once_and_plan_still_works() {
    let ws = Workspace::new();
    ws.write("f.yaml", &tend_file());
    std::fs::write(ws.path().join("blocker"), "a file, not a directory").unwrap();
    let state = ws.path().join("blocker/state");
    let mut cmd = ws.cmd();
    cmd.env("TEND_STATE_DIR", &state)
        .args(["apply"])
        .arg(ws.desired());
    let run = super::Run::from(cmd.output().unwrap());
    run.code(1);
    let path = state.display().to_string();
    assert_eq!(
        run.stderr.matches(&path).count(),
        1,
        "the path once: {}",
        run.stderr
    );
    assert!(run.stderr.contains("Not a directory"), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("Not a directory").count(),
        1,
        "{}",
        run.stderr
    );
    let mut cmd = ws.cmd();
    cmd.env("TEND_STATE_DIR", &state)
        .args(["plan"])
        .arg(ws.desired());
    super::Run::from(cmd.output().unwrap()).ok();
}
