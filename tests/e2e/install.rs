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
