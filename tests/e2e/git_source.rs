//! Desired state from a Git repository served by a real `git daemon` on
//! 127.0.0.1.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::{file_doc, git, Workspace};

struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // Run git-daemon itself: `git daemon` is a wrapper whose death would
        // leave the real daemon serving.
        let exec_path = git(base, &["--exec-path"]);
        let mut child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .spawn()
            .expect("git daemon is installed");
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Daemon { child, port };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("git daemon did not start on port {port}");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bare repository served by the daemon and a work tree that pushes to it.
fn setup(ws: &Workspace) -> (std::path::PathBuf, Daemon, String) {
    let served = ws.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(
        &served,
        &["init", "-q", "--bare", "-b", "main", "infra.git"],
    );
    let work = ws.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(
        &work,
        &[
            "remote",
            "add",
            "origin",
            &served.join("infra.git").display().to_string(),
        ],
    );
    let daemon = Daemon::start(&served);
    let url = format!("git://127.0.0.1:{}/infra.git", daemon.port);
    (work, daemon, url)
}

fn commit(work: &Path, file: &str, text: &str, msg: &str) -> String {
    let p = work.join(file);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", msg]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

#[test]
fn a_pushed_commit_is_picked_up_on_the_next_plan() {
    let ws = Workspace::new();
    let (work, _daemon, url) = setup(&ws);
    let first = commit(
        &work,
        "deploy/motd.yaml",
        &file_doc("motd", "motd.txt", "v1\n"),
        "first",
    );
    commit(&work, "README.md", "not desired state", "docs");
    let first_head = git(&work, &["rev-parse", "HEAD"]);
    assert_ne!(first, first_head);

    let plan = ws
        .run_raw(&[
            "plan", "--repo", &url, "--path", "deploy", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["source"]["commit"], first_head.as_str());
    assert_eq!(plan["actions"][0]["changes"][2]["to"], "v1\n");

    let second = commit(
        &work,
        "deploy/motd.yaml",
        &file_doc("motd", "motd.txt", "v2\n"),
        "second",
    );
    let plan = ws
        .run_raw(&[
            "plan", "--repo", &url, "--path", "deploy", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["source"]["commit"], second.as_str());
    assert_eq!(plan["actions"][0]["changes"][2]["to"], "v2\n");

    // Apply names the commit in its output and in the journal.
    let run = ws.run_raw(&["apply", "--repo", &url, "--path", "deploy"]);
    run.ok();
    assert!(run.stdout.contains(&second[..12]), "{}", run.stdout);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("motd.txt")).unwrap(),
        "v2\n"
    );
    let history = ws.run_raw(&["history", "--format", "json"]).ok().json();
    assert_eq!(history["entries"][0]["commit"], second.as_str());

    // An older ref by name or by sha.
    git(&work, &["tag", "v1", &first]);
    git(&work, &["push", "-q", "origin", "v1"]);
    let plan = ws
        .run_raw(&[
            "plan", "--repo", &url, "--ref", "v1", "--path", "deploy", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["source"]["commit"], first.as_str());
    assert_eq!(plan["actions"][0]["changes"][0]["to"], "v1\n");
}

#[test]
fn an_unknown_ref_or_path_is_an_error() {
    let ws = Workspace::new();
    let (work, _daemon, url) = setup(&ws);
    commit(
        &work,
        "motd.yaml",
        &file_doc("motd", "motd.txt", "v1\n"),
        "first",
    );
    let run = ws.run_raw(&["plan", "--repo", &url, "--ref", "nope"]);
    run.code(1);
    assert!(run.stderr.contains("unknown ref `nope`"), "{}", run.stderr);
    let run = ws.run_raw(&["plan", "--repo", &url, "--path", "missing"]);
    run.code(1);
    assert!(
        run.stderr.contains("path `missing` does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn remote_down_is_an_error_and_nothing_is_applied() {
    let ws = Workspace::new();
    let (work, mut daemon, url) = setup(&ws);
    commit(
        &work,
        "motd.yaml",
        &file_doc("motd", "motd.txt", "v1\n"),
        "first",
    );
    // Fetched once, so a cached copy exists: it must not be used.
    ws.run_raw(&["plan", "--repo", &url]).ok();
    daemon.stop();
    for cmd in ["plan", "apply", "validate"] {
        let run = ws.run_raw(&[cmd, "--repo", &url]);
        run.code(1);
        assert!(
            run.stderr.starts_with(&format!(
                "tend: failed to read the source: failed to fetch {url}"
            )),
            "{}",
            run.stderr
        );
    }
    assert!(!ws.path().join("motd.txt").exists());
}
