//! Host signals and the signature library, against real conditions: a
//! process that allocates memory, a filesystem, a log the test writes to,
//! and the faults of the sample workload, under `tend watch`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use super::{free_port, http, wait_http, Workspace};

const TEND: &str = env!("CARGO_BIN_EXE_tend");

/// `tend watch --format json` in a workspace, stopped when dropped.
pub(super) struct Watch {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Watch {
    pub(super) fn start(ws: &Workspace) -> Watch {
        let out = ws.path().join("watch.jsonl");
        let child = ws
            .cmd()
            .args(["watch", "--interval", "1s", "--format", "json"])
            .arg(ws.desired())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Watch { child, out }
    }

    /// The signals of the newest pass that read `resource`.
    pub(super) fn signals(&self, resource: &str) -> Option<Vec<serde_json::Value>> {
        self.passes(resource).pop()
    }

    /// The signals of `resource` in every pass so far, oldest first.
    pub(super) fn passes(&self, resource: &str) -> Vec<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                let h = v["health"]
                    .as_array()?
                    .iter()
                    .find(|h| h["target"]["name"] == resource)?
                    .clone();
                h["signals"].as_array().cloned()
            })
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn value(signals: &[serde_json::Value], name: &str) -> Option<f64> {
    signals
        .iter()
        .find(|s| s["reading"]["signal"] == name || s["signal"] == name)
        .and_then(|s| s["reading"]["value"].as_f64().or(s["value"].as_f64()))
}

pub(super) fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn each_host_signal_reads_a_real_condition() {
    let ws = Workspace::new();
    let port = free_port();
    let log = ws.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    ws.write(
        "app.yaml",
        &format!(
            "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata: {{name: leaky}}\nspec:\n  command: {TEND}\n  args: [sample-app, --port, \"{port}\", --leak-mib-per-sec, \"20\"]\nhealth:\n  probes:\n    - {{name: mem, host: {{metric: memory, above: 100000}}}}\n    - {{name: growth, host: {{metric: memoryGrowth, above: 100000, window: 4s}}}}\n    - {{name: cpu, host: {{metric: cpu, above: 64}}}}\n    - {{name: host-mem, host: {{metric: memory, above: 100000000}}}}\n    - {{name: disk, host: {{metric: disk, path: /, above: 1}}}}\n    - {{name: free, host: {{metric: diskFree, path: ., below: 0}}}}\n    - {{name: booms, host: {{metric: logRate, file: {}, regex: boom, above: 100000, window: 30s}}}}\n    - {{name: starts, host: {{metric: restarts, above: 100, window: 10m}}}}\n",
            log.display()
        ),
    );
    // Any other resource reads the host's own CPU and memory.
    ws.write(
        "host.yaml",
        "apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {name: marker}\nspec: {path: marker.txt, content: x}\nhealth:\n  probes:\n    - {name: host-mem, host: {metric: memory, above: 100000000}}\n    - {name: host-cpu, host: {metric: cpu, above: 100000}}\n",
    );
    let w = Watch::start(&ws);
    wait_http(port);
    // Log lines, with a rotation in the middle: the renamed file is done,
    // the new one is read from its start.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..10 {
        writeln!(f, "boom: something failed").unwrap();
        writeln!(f, "fine").unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::rename(&log, ws.path().join("app.log.1")).unwrap();
    let mut f = std::fs::File::create(&log).unwrap();
    for _ in 0..5 {
        writeln!(f, "boom again").unwrap();
    }
    drop(f);
    let mut last = Vec::new();
    wait_for("every host signal read", Duration::from_secs(30), || {
        last = w.signals("leaky").unwrap_or_default();
        value(&last, "growth").is_some_and(|g| g > 300.0)
            && value(&last, "booms").is_some_and(|b| b >= 30.0)
    });
    let mem = value(&last, "mem").unwrap();
    assert!(mem > 20.0, "the process holds the leaked memory: {mem} MiB");
    // 20 MiB/s is 1200 MiB/min.
    let growth = value(&last, "growth").unwrap();
    assert!((300.0..3000.0).contains(&growth), "{growth} MiB/min");
    // 15 lines over a 30 s window: 30 lines per minute.
    let booms = value(&last, "booms").unwrap();
    assert!(
        (29.9..31.0).contains(&booms),
        "{booms} lines/min: {last:#?}"
    );
    let cpu = value(&last, "cpu").unwrap();
    assert!((0.0..64.0).contains(&cpu), "{cpu} cores");
    let host = w.signals("marker").unwrap();
    let host_mem = value(&host, "host-mem").unwrap();
    assert!(
        host_mem > mem,
        "the host holds more than the process: {host_mem} vs {mem} MiB"
    );
    assert!(value(&host, "host-cpu").unwrap() >= 0.0);
    let disk = value(&last, "disk").unwrap();
    assert!(disk > 0.0 && disk < 1.0, "{disk}");
    assert!(value(&last, "free").unwrap() > 0.0);
    assert_eq!(
        value(&last, "starts"),
        Some(1.0),
        "the first start, from the journal"
    );
}

pub(super) fn incidents(ws: &Workspace) -> Vec<serde_json::Value> {
    let out = ws.run_raw(&["incidents", "--all", "--format", "json"]);
    out.json()["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The incident of `signature`, once it is resolved.
fn resolved(ws: &Workspace, signature: &str) -> bool {
    incidents(ws)
        .iter()
        .any(|i| i["signature"] == signature && i["status"] == "resolved")
}

fn post(port: u16, path: &str) {
    assert!(http("POST", port, path).is_some(), "POST {path}");
}

/// The library of `examples/signatures`, on a free port, with the free-disk
/// threshold 256 MiB under what is free now, so writing 768 MiB crosses it
/// (and what other tests write meanwhile does not).
fn library(ws: &Workspace, port: u16) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/signatures");
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("8788", &port.to_string());
        if name == "workload.yaml" {
            let st = nix_free_mib(ws.path());
            text = text.replace("below: 512}", &format!("below: {}}}", (st - 256.0).floor()));
        }
        ws.write(&name, &text);
    }
}

fn nix_free_mib(path: &std::path::Path) -> f64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as f64 * st.f_frsize as f64 / (1024.0 * 1024.0)
}

#[test]
fn the_signature_library_heals_each_fault_and_stays_quiet_without_one() {
    let ws = Workspace::new();
    let port = free_port();
    library(&ws, port);
    let _w = Watch::start(&ws);
    wait_http(port);
    // Quiet: a healthy workload, watched for a while, has no incident.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        incidents(&ws),
        Vec::<serde_json::Value>::new(),
        "no fault, no incident"
    );

    // Storage exhaustion: the scratch files are cleaned by the command step.
    for _ in 0..3 {
        post(port, "/fault/fill-disk?value=256");
    }
    wait_for(
        "storage-exhaustion resolved",
        Duration::from_secs(60),
        || resolved(&ws, "storage-exhaustion"),
    );
    let left = std::fs::read_dir(ws.path().join(".tend/scratch"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the runbook deleted the scratch files");

    // Memory leak: a restart sheds it.
    post(port, "/fault/leak-mib-per-sec?value=40");
    wait_for("memory-leak resolved", Duration::from_secs(90), || {
        resolved(&ws, "memory-leak")
    });

    // Network trouble: slow answers, healed by a restart (the new process
    // has no injected latency).
    wait_http(port);
    post(port, "/fault/latency-ms?value=800");
    wait_for("network-trouble resolved", Duration::from_secs(90), || {
        resolved(&ws, "network-trouble")
    });

    // Application failure: errors in the log.
    wait_http(port);
    post(port, "/fault/error-ratio?value=1");
    for _ in 0..5 {
        let _ = http("GET", port, "/");
    }
    wait_for(
        "application-failure resolved",
        Duration::from_secs(90),
        || resolved(&ws, "application-failure"),
    );
    let all = incidents(&ws);
    assert_eq!(all.len(), 4, "one incident per fault: {all:#?}");
    assert!(all.iter().all(|i| i["status"] == "resolved"), "{all:#?}");
}
