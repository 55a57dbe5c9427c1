//! Records the commit tend is built from, for `tend --version`: the Git
//! HEAD of the source tree when there is one, else `TEND_COMMIT` from the
//! environment (a release build from an archive), else "commit unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TEND_COMMIT");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    // Only this tree's own repository: a crate unpacked inside another
    // repository (vendored) must not take that one's commit.
    let from_git = std::path::Path::new(".git")
        .exists()
        .then(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
        })
        .and_then(Result::ok)
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let commit = std::env::var("TEND_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or(from_git);
    let commit = commit.unwrap_or_else(|| "commit unknown".to_string());
    println!("cargo:rustc-env=TEND_BUILD_COMMIT={commit}");
}
