//! End-to-end tests: the real `tend` binary against temp directories, real
//! processes and a real `git daemon` on 127.0.0.1.

mod apply;
mod git_source;
mod invalid;
mod policy;
mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch workspace: desired state in `desired/`, tend's state in
/// `state/`, tend run with the workspace as working directory. Processes
/// tend started are stopped when it is dropped.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("desired")).unwrap();
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn desired(&self) -> PathBuf {
        self.path().join("desired")
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// Writes `desired/<name>`.
    pub fn write(&self, name: &str, text: &str) {
        let p = self.desired().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.desired().join(name)).unwrap();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tend"));
        c.current_dir(self.path())
            .env("TEND_STATE_DIR", self.state())
            .env("NO_COLOR", "1")
            .env_remove("TEND_LOG");
        c
    }

    /// Runs tend with `args` followed by the desired directory.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.args(args).arg(self.desired());
        Run::from(c.output().expect("run tend"))
    }

    /// Runs tend with exactly `args`.
    pub fn run_raw(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().expect("run tend"))
    }

    pub fn record(&self, name: &str) -> serde_json::Value {
        let p = self.state().join(format!("host/processes/{name}.json"));
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    }

    pub fn pid(&self, name: &str) -> i32 {
        self.record(name)["pid"].as_i64().unwrap() as i32
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let dir = self.state().join("host/processes");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                if let Ok(pid) = std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .trim()
                    .parse::<i32>()
                {
                    if pid > 0 {
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

pub fn file_doc(name: &str, path: &str, content: &str) -> String {
    format!(
        "apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: {name}\nspec:\n  path: {path}\n  mode: \"0644\"\n  content: {}\n",
        serde_json::to_string(content).unwrap()
    )
}

pub fn process_doc(name: &str, command: &str, args: &[&str]) -> String {
    format!(
        "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: {name}\nspec:\n  command: {command}\n  args: {}\n",
        serde_json::to_string(args).unwrap()
    )
}

pub fn alive(pid: i32) -> bool {
    // Zombies count as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let rest = &s[s.rfind(')').unwrap() + 1..];
            !matches!(rest.split_whitespace().next(), Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

/// Kills a process and waits until it is gone (reaping a child of ours).
pub fn kill_and_wait(pid: i32) {
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..200 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("pid {pid} did not die");
}
