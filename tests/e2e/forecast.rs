//! Detection ahead of failure, under `tend watch`, with the signatures of
//! `examples/signatures/ahead.yaml`: a scratch directory that fills at a
//! steady rate is cleaned before its budget is used, a write/clean-up
//! sawtooth never is; a leak too slow for any static threshold is restarted
//! before the process reaches its limit; and latency is judged against a
//! week of history backfilled into a real Prometheus.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::signals::{incidents, wait_for, Watch};
use super::{free_port, http, wait_http, Prometheus, Workspace};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/signatures");

/// The library's runbooks and signatures, the signatures of `ahead.yaml`
/// with short `for`s, the example's settings (plus `prometheus` when
/// given), and one sample app per `(name, port, probes)`.
fn setup(ws: &Workspace, apps: &[(&str, u16, &str)], prometheus: Option<&str>) {
    let read = |f: &str| std::fs::read_to_string(Path::new(EXAMPLES).join(f)).unwrap();
    ws.write("library.yaml", &read("library.yaml"));
    let ahead = read("ahead.yaml")
        .replace("for: 1m}", "for: 2s}")
        .replace("for: 2m", "for: 3s");
    ws.write("ahead.yaml", &ahead);
    let mut settings = read("settings.yaml");
    if let Some(url) = prometheus {
        settings = settings.replace(
            "  healing:\n",
            &format!("  healing:\n    prometheus: {{url: \"{url}\"}}\n"),
        );
    }
    ws.write("settings.yaml", &settings);
    for (name, port, probes) in apps {
        ws.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata:\n  name: {name}\n  labels: {{signatures: standard}}\nspec:\n  command: ${{TEND_EXE}}\n  args: [sample-app, --port, \"{port}\", --scratch, .tend/scratch]\nhealth:\n  probes:\n{probes}"
            ),
        );
    }
}

/// The size of the files under `dir`, in MiB.
fn mib(dir: &Path) -> f64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .sum()
}

fn post(port: u16, path: &str) {
    assert!(http("POST", port, path).is_some(), "POST {path}");
}

/// A reading of `signal` (the name, or a prefix of it) in one pass.
fn reading<'a>(pass: &'a [serde_json::Value], signal: &str) -> Option<&'a serde_json::Value> {
    pass.iter()
        .find(|r| r["signal"].as_str().is_some_and(|n| n.starts_with(signal)))
}

/// How many passes read `signal` of `resource` as unhealthy, of how many
/// that read it at all, and the details of the unhealthy ones.
fn unhealthy(w: &Watch, resource: &str, signal: &str) -> (usize, usize, Vec<String>) {
    let passes = w.passes(resource);
    let read: Vec<&serde_json::Value> = passes.iter().filter_map(|p| reading(p, signal)).collect();
    let bad: Vec<String> = read
        .iter()
        .filter(|r| r["status"] == "unhealthy")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_string())
        .collect();
    (bad.len(), read.len(), bad)
}

fn of_signature<'a>(all: &'a [serde_json::Value], sig: &str) -> Vec<&'a serde_json::Value> {
    all.iter().filter(|i| i["signature"] == sig).collect()
}

const SCRATCH: &str = "    - name: scratch-full-in\n      host: {metric: diskFullIn, path: .tend/scratch, quota: 64, over: 40s, below: 1m}\n";

/// The sample app with the `scratch-full-in` forecast, under `tend watch`.
fn scratch_app() -> (Workspace, u16, Watch) {
    let ws = Workspace::new();
    let port = free_port();
    setup(&ws, &[("app", port, SCRATCH)], None);
    let w = Watch::start(&ws);
    wait_http(port);
    (ws, port, w)
}

/// A scratch directory filling at 1 MiB/s toward its 64 MiB budget: the
/// forecast falls under a minute once half the budget is used, and the
/// `clean-scratch` step deletes the files well before the budget is full.
#[test]
fn a_filling_scratch_directory_is_cleaned_before_it_is_full() {
    let (ws, port, w) = scratch_app();
    let scratch = ws.path().join(".tend/scratch");
    let t0 = Instant::now();
    let mut written = 0.0;
    let mut used = 0.0f64;
    // Write 1 MiB a second until the files are cleaned (the directory
    // shrinks: only the runbook deletes).
    let cleaned_at = loop {
        let now = mib(&scratch);
        if now < used - 0.5 {
            break used;
        }
        used = now;
        assert!(
            used + 1.0 <= 64.0,
            "the budget would be full before the clean-up: {used:.0} MiB used after {:?}; forecast {:?}",
            t0.elapsed(),
            w.signals("app").and_then(|p| reading(&p, "scratch-full-in").cloned())
        );
        post(port, "/fault/fill-disk?value=1");
        written += 1.0;
        let next = t0 + Duration::from_secs_f64(written);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    };
    wait_for("disk-filling resolved", Duration::from_secs(60), || {
        incidents(&ws)
            .iter()
            .any(|i| i["signature"] == "disk-filling" && i["status"] == "resolved")
    });
    let all = incidents(&ws);
    let inc = of_signature(&all, "disk-filling");
    assert_eq!(inc.len(), 1, "{all:#?}");
    let symptom = &inc[0]["symptoms"][0];
    assert_eq!(symptom["signal"], "scratch-full-in", "{symptom:#}");
    let left = symptom["value"].as_f64().expect("the time left");
    assert!(left > 0.0 && left < 60.0, "{symptom:#}");
    eprintln!(
        "disk-filling: cleaned at {cleaned_at:.0} of 64 MiB after {:.0} s, {:.0} s before the budget was full at 1 MiB/s (forecast {left:.0} s at detection: {})",
        written,
        64.0 - cleaned_at,
        symptom["detail"]
    );
    assert_eq!(mib(&scratch), 0.0, "the runbook deleted the scratch files");
    assert!(
        of_signature(&all, "storage-exhaustion").is_empty(),
        "no threshold was crossed: {all:#?}"
    );
}

/// A write/clean-up sawtooth up to 40 of 64 MiB (past the floor), cleaned
/// every 5 s: the fit never explains the series, so nothing is forecast
/// and nothing acts.
#[test]
fn a_write_and_clean_up_sawtooth_never_acts() {
    let (ws, port, w) = scratch_app();
    let scratch = ws.path().join(".tend/scratch");
    let t0 = Instant::now();
    let mut peak = 0.0f64;
    for second in 0..75u32 {
        if second % 5 == 0 {
            for e in std::fs::read_dir(&scratch).into_iter().flatten().flatten() {
                std::fs::remove_file(e.path()).unwrap();
            }
        } else {
            post(port, "/fault/fill-disk?value=10");
            peak = peak.max(mib(&scratch));
        }
        let next = t0 + Duration::from_secs(u64::from(second) + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let (bad, read, details) = unhealthy(&w, "app", "scratch-full-in");
    let forecasting = w
        .passes("app")
        .iter()
        .filter_map(|p| reading(p, "scratch-full-in").cloned())
        .filter(|r| r["status"] == "healthy")
        .count();
    eprintln!(
        "sawtooth: peak {peak:.0} of 64 MiB, {read} forecasts read ({forecasting} judged, the rest learning), {bad} unhealthy"
    );
    assert!(peak > 32.0, "the sawtooth goes past the floor: {peak}");
    assert!(
        forecasting > 20,
        "the forecast judged the series: {forecasting}"
    );
    assert_eq!(bad, 0, "false positives: {details:#?}");
    let all = incidents(&ws);
    assert!(all.is_empty(), "no incident: {all:#?}");
}

/// A leak of 0.5 MiB/s (30 MiB a minute, half memory-leak's threshold of
/// 60 MiB a minute, and far from its 256 MiB): `memoryExhaustedIn` against
/// a 64 MiB limit restarts the process before it gets there.
#[test]
fn a_slow_leak_is_restarted_before_the_process_reaches_its_limit() {
    let ws = Workspace::new();
    let port = free_port();
    let probes = "    - name: memory\n      host: {metric: memory, above: 256}\n    - name: memory-growth\n      host: {metric: memoryGrowth, above: 60, window: 20s}\n    - name: cpu\n      host: {metric: cpu, above: 0.9}\n    - name: memory-exhausted-in\n      host: {metric: memoryExhaustedIn, limit: 64, over: 40s, below: 1m}\n";
    setup(&ws, &[("app", port, probes)], None);
    let w = Watch::start(&ws);
    wait_http(port);
    // Flat memory: nothing is forecast.
    std::thread::sleep(Duration::from_secs(12));
    let pid = ws.pid("app");
    post(port, "/fault/leak-mib-per-sec?value=0.5");
    let t0 = Instant::now();
    let rss = |pid: i32| -> Option<f64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    };
    let mut highest = 0.0f64;
    while let Some(m) = rss(pid) {
        highest = highest.max(m);
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "not restarted: {highest:.0} MiB after {:?}; {:?}",
            t0.elapsed(),
            w.signals("app")
                .and_then(|p| reading(&p, "memory-exhausted-in").cloned())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        "memory-exhaustion resolved",
        Duration::from_secs(60),
        || {
            incidents(&ws)
                .iter()
                .any(|i| i["signature"] == "memory-exhaustion" && i["status"] == "resolved")
        },
    );
    let all = incidents(&ws);
    assert_eq!(all.len(), 1, "only memory-exhaustion: {all:#?}");
    let symptom = &all[0]["symptoms"][0];
    eprintln!(
        "memory-exhaustion: restarted at {highest:.1} of 64 MiB after {:.0} s of leaking, {:.0} s before the limit at 0.5 MiB/s ({})",
        t0.elapsed().as_secs_f64(),
        (64.0 - highest) / 0.5,
        symptom["detail"]
    );
    assert!(highest < 64.0, "restarted before the limit: {highest}");
    assert_ne!(ws.pid("app"), pid, "a new process");
    let (growth, _, _) = unhealthy(&w, "app", "memory-growth");
    assert_eq!(growth, 0, "the leak is slower than the static threshold");
}

/// A test exporter: `/metrics` with the live value of each series.
struct Exporter {
    port: u16,
    values: Arc<Mutex<Vec<(&'static str, f64)>>>,
}

impl Exporter {
    fn start(values: Vec<(&'static str, f64)>) -> Exporter {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let values = Arc::new(Mutex::new(values));
        let shared = Arc::clone(&values);
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let mut body = String::from("# TYPE tend_test_latency gauge\n");
                for (series, v) in shared.lock().unwrap().iter() {
                    body.push_str(&format!("tend_test_latency{{series=\"{series}\"}} {v}\n"));
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Exporter { port, values }
    }

    fn set(&self, series: &str, v: f64) {
        for (s, value) in self.values.lock().unwrap().iter_mut() {
            if *s == series {
                *value = v;
            }
        }
    }
}

/// A week of one-minute samples of two series with a daily cycle between
/// 0.05 and 0.35 (and ±0.01 of noise), ending five minutes ago: `quiet` is
/// at its trough at this time of day, `busy` at its peak.
fn week_of_history() -> String {
    let now = chrono::Utc::now().timestamp();
    let mut out = String::from("# TYPE tend_test_latency gauge\n");
    for (series, sign) in [("quiet", -1.0), ("busy", 1.0)] {
        let mut t = now - 7 * 86_400;
        let mut i = 0i64;
        while t <= now - 300 {
            let noise = ((i * 7919) % 21 - 10) as f64 / 1000.0;
            let phase = 2.0 * std::f64::consts::PI * (t - now) as f64 / 86_400.0;
            let v = 0.2 + sign * 0.15 * phase.cos() + noise;
            out.push_str(&format!(
                "tend_test_latency{{series=\"{series}\"}} {v:.4} {t}\n"
            ));
            t += 60;
            i += 1;
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Latency judged against its band for this time of day, learned from a
/// week of history in Prometheus: the usual value at a quiet hour and the
/// usual (high) value at a busy hour are no incident; the busy hour's value
/// at the quiet hour is, with the band in the incident.
#[test]
fn latency_far_from_its_band_for_this_time_of_day_is_an_incident() {
    let exporter = Exporter::start(vec![("quiet", 0.05), ("busy", 0.35)]);
    let prom = Prometheus::start_backfilled(&[exporter.port], &week_of_history());
    prom.wait_for(
        "max(tend_test_latency{series=\"quiet\", job=\"sample\"})",
        |v| v > 0.0,
        "the exporter's live values",
    );
    let ws = Workspace::new();
    let (quiet, busy) = (free_port(), free_port());
    // And a forecast of the same Prometheus signal, from its range query:
    // near either end of the cycle no crossing is coming.
    let probe = |series: &str| {
        format!("    - name: latency\n      prometheus: {{query: 'max(tend_test_latency{{series=\"{series}\"}})', above: 1000}}\n    - name: latency-limit-in\n      forecast: {{of: latency, threshold: 1, over: 1h, below: 1h}}\n")
    };
    setup(
        &ws,
        &[
            ("quiet-hour", quiet, &probe("quiet")),
            ("busy-hour", busy, &probe("busy")),
        ],
        Some(&prom.url()),
    );
    let w = Watch::start(&ws);
    wait_http(quiet);
    wait_http(busy);
    // Both are judged (the baseline is there from the first pass).
    wait_for(
        "both anomaly readings judged",
        Duration::from_secs(30),
        || {
            ["quiet-hour", "busy-hour"].iter().all(|r| {
                w.signals(r)
                    .and_then(|p| reading(&p, "anomaly/latency").cloned())
                    .is_some_and(|r| r["status"] == "healthy")
            })
        },
    );
    for r in ["quiet-hour", "busy-hour"] {
        let pass = w.signals(r).unwrap();
        let f = reading(&pass, "latency-limit-in").unwrap();
        assert_eq!(f["status"], "healthy", "{f:#}");
        assert!(
            f["detail"]
                .as_str()
                .unwrap()
                .starts_with("latency reaches 1: "),
            "{f:#}"
        );
    }
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        incidents(&ws).is_empty(),
        "usual values: {:#?}",
        incidents(&ws)
    );

    // The busy hour's value at the quiet hour.
    exporter.set("quiet", 0.35);
    wait_for(
        "latency-anomaly on quiet-hour",
        Duration::from_secs(40),
        || {
            incidents(&ws)
                .iter()
                .any(|i| i["signature"] == "latency-anomaly" && i["name"] == "quiet-hour")
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let all = incidents(&ws);
    let inc = of_signature(&all, "latency-anomaly");
    assert_eq!(inc.len(), 1, "only the quiet hour: {all:#?}");
    let detail = inc[0]["symptoms"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("above its usual") && detail.contains("at this time"),
        "the band is shown: {detail}"
    );
    eprintln!("latency-anomaly: {detail}");
    let (bad, read, details) = unhealthy(&w, "busy-hour", "anomaly/latency");
    eprintln!("seasonal: busy-hour read {read} times at its daily peak, {bad} unhealthy");
    assert!(read > 10, "{read}");
    assert_eq!(bad, 0, "false positives at the daily peak: {details:#?}");
}
