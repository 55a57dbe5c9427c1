//! Several watchers on one shared PostgreSQL (the tests' own server).

use crate::{file_doc, pg, Workspace};

/// `tend` of a workspace on the shared database `db`, as node `node`.
fn on(ws: &Workspace, db: &pg::Database, node: &str, args: &[&str]) -> crate::Run {
    let mut c = ws.cmd();
    c.env("TEND_STATE_URL", db.url())
        .env("TEND_STATE_PASSWORD", pg::PASSWORD)
        .env("TEND_NODE", node)
        .args(args);
    crate::Run::from(c.output().expect("run tend"))
}

#[test]
fn apply_and_history_use_the_shared_database_and_keep_nothing_local() {
    let db = pg::database();
    let ws = Workspace::new();
    ws.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let desired = ws.desired().display().to_string();
    on(&ws, &db, "n1", &["apply", &desired]).ok();
    assert_eq!(
        std::fs::read_to_string(ws.path().join("etc/motd")).unwrap(),
        "hello\n"
    );
    assert!(
        !ws.state().join("tend.db").exists(),
        "the journal is in the shared database"
    );
    let json = on(&ws, &db, "n1", &["history", "--format", "json"])
        .ok()
        .json();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{json}");
    assert_eq!(
        db.sql("SELECT count(*) FROM journal WHERE phase = 'outcome'"),
        "1"
    );
    // Without the URL the embedded store is read: nothing was applied there.
    ws.run_raw(&["history"]).code(1);
}

#[test]
fn a_password_in_git_or_on_the_command_line_is_refused_and_nothing_changes() {
    let db = pg::database();
    let ws = Workspace::new();
    ws.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let run = ws.run_raw(&[
        "apply",
        "--state",
        &db.url_with_password(),
        &ws.desired().display().to_string(),
    ]);
    run.code(1);
    assert!(
        run.stderr.contains("--state carries a password")
            && run.stderr.contains("TEND_STATE_PASSWORD"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(pg::PASSWORD), "{}", run.stderr);
    ws.write(
        "settings.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  state: {{url: \"{}\"}}\n",
            db.url_with_password()
        ),
    );
    let run = ws.run(&["apply"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("Settings spec.state.url carries a password"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(pg::PASSWORD), "{}", run.stderr);
    assert!(!ws.path().join("etc/motd").exists(), "nothing was applied");

    // The URL from Settings, the password from the environment: applied.
    ws.write(
        "settings.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  state: {{url: \"{}\"}}\n",
            db.url()
        ),
    );
    let mut c = ws.cmd();
    c.env("TEND_STATE_PASSWORD", pg::PASSWORD)
        .arg("apply")
        .arg(ws.desired());
    crate::Run::from(c.output().unwrap()).ok();
    assert_eq!(db.sql("SELECT count(*) FROM runs"), "1");
}

#[test]
fn an_unreachable_database_is_an_error_and_nothing_changes() {
    let ws = Workspace::new();
    ws.write("motd.yaml", &file_doc("motd", "etc/motd", "hello\n"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = ws.cmd();
    c.env(
        "TEND_STATE_URL",
        format!("postgres://tend@127.0.0.1:{port}/x"),
    )
    .arg("apply")
    .arg(ws.desired());
    let run = crate::Run::from(c.output().unwrap());
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains(&format!("postgres://tend@127.0.0.1:{port}/x")),
        "{}",
        run.stderr
    );
    assert!(!ws.path().join("etc/motd").exists(), "nothing was applied");
}
