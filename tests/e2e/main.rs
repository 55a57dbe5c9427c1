//! End-to-end tests: the real `tend` binary against temp directories, real
//! processes and a real `git daemon` on 127.0.0.1.

mod action;
mod apply;
mod aws;
mod changes;
mod controller;
mod diagnosis;
mod fleet;
mod forecast;
mod git_source;
mod github;
mod healing;
mod hostile;
mod install;
mod invalid;
mod notify;
mod pause;
mod pg;
mod policy;
mod policy_limits;
mod process;
mod proxy;
mod review;
mod secrets;
mod security;
mod service;
mod signals;
mod store;

pub use proxy::CutoffProxy;

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

/// Makes `dir` a Git repository on `main` with one commit of everything
/// in it.
/// Runs git in `dir` as a test author; its output, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn commit_all(dir: &Path, message: &str) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", message]);
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A plain HTTP/1.1 request to 127.0.0.1: (status, body).
pub fn http(method: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Waits until the sample app answers on `port`.
pub fn wait_http(port: u16) {
    for _ in 0..200 {
        if http("GET", port, "/healthz").is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing answers on {port}");
}

/// A real Prometheus server on 127.0.0.1 scraping the given ports every
/// second. Stopped when dropped.
pub struct Prometheus {
    child: Option<std::process::Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[u16]) -> Prometheus {
        Prometheus::start_with(targets, None)
    }

    /// Prometheus with alerting rules, sending to an Alertmanager.
    pub fn start_with_rules(targets: &[u16], rules: &str, alertmanager: u16) -> Prometheus {
        Prometheus::start_with(targets, Some((rules, alertmanager)))
    }

    /// Prometheus whose storage starts with `openmetrics` (samples with
    /// timestamps, ending in `# EOF`) backfilled by `promtool`.
    pub fn start_backfilled(targets: &[u16], openmetrics: &str) -> Prometheus {
        let promtool = which("promtool").unwrap_or_else(|| {
            panic!("the `promtool` binary is missing: run ./scripts/test.sh, which installs it")
        });
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("history.om");
        std::fs::write(&input, openmetrics).unwrap();
        let out = Command::new(promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics", "-q"])
            .arg(&input)
            .arg(dir.path().join("data"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Prometheus::start_in(dir, targets, None)
    }

    fn start_with(targets: &[u16], alerting: Option<(&str, u16)>) -> Prometheus {
        Prometheus::start_in(tempfile::tempdir().unwrap(), targets, alerting)
    }

    fn start_in(
        dir: tempfile::TempDir,
        targets: &[u16],
        alerting: Option<(&str, u16)>,
    ) -> Prometheus {
        let bin = which("prometheus").unwrap_or_else(|| {
            panic!("the `prometheus` binary is missing: run ./scripts/test.sh, which installs it")
        });
        let port = free_port();
        let targets: Vec<String> = targets
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let mut config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: sample\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        if let Some((rules, am)) = alerting {
            std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
            config.push_str(&format!(
                "rule_files: [{}]\nalerting:\n  alertmanagers:\n    - static_configs: [{{targets: [\"127.0.0.1:{am}\"]}}]\n",
                dir.path().join("rules.yml").display()
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child: Some(child),
            port,
            _dir: dir,
        };
        for _ in 0..300 {
            if http("GET", port, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return p;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("prometheus did not become ready on {port}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The first sample of an instant query.
    pub fn query(&self, q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (_, body) = http("GET", self.port, &format!("/api/v1/query?query={enc}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v.pointer("/data/result/0/value/1")?.as_str()?.parse().ok()
    }

    /// Waits until `q` has a sample for which `ok` holds.
    pub fn wait_for(&self, q: &str, ok: impl Fn(f64) -> bool, what: &str) {
        for _ in 0..120 {
            if self.query(q).is_some_and(&ok) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!("prometheus never saw {what} ({q} = {:?})", self.query(q));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// A real moto server (AWS-compatible) on 127.0.0.1, one per test so tests
/// never share cloud state. Stopped when dropped.
pub struct Moto {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let bin = which("moto_server").unwrap_or_else(|| {
            panic!("`moto_server` is missing: run ./scripts/test.sh, which installs moto[server]")
        });
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let m = Moto {
            child: Some(child),
            port,
        };
        for _ in 0..300 {
            if http("GET", port, "/moto-api/data.json").is_some() {
                return m;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("moto_server did not start on {port}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Forgets every resource.
    pub fn reset(&self) {
        http("POST", self.port, "/moto-api/reset").expect("reset moto");
    }

    /// Runs Python with a boto3 `ec2` and `s3` client on this server, as a
    /// person at the console would change things behind tend's back.
    /// Returns what the script prints.
    pub fn boto(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json\nkw = dict(endpoint_url='{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\nec2 = boto3.client('ec2', **kw)\ns3 = boto3.client('s3', **kw)\n",
            self.url()
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "boto3 script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
