//! `tend sample-app`: a small HTTP workload to reconcile and heal.
//!
//! It serves `/`, `/healthz` and `/metrics` (Prometheus text format: requests
//! by status, a latency histogram, memory in use) and has switches to inject
//! faults: crash, error ratio, latency and memory growth, as flags at start or
//! at run time through `POST /fault/...`. It binds to loopback by default.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Share of requests to `/` and `/healthz` that fail with 500 (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub error_ratio: f64,
    /// Extra latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Memory to leak per second, in MiB.
    #[arg(long, default_value_t = 0.0)]
    pub leak_mib_per_sec: f64,
    /// Exit with status 1 this many seconds after starting.
    #[arg(long)]
    pub crash_after: Option<f64>,
    /// Where `POST /fault/fill-disk?value=MIB` writes its files.
    #[arg(long, default_value = "sample-scratch")]
    pub scratch: std::path::PathBuf,
}

#[derive(Default)]
struct Faults {
    error_ratio: f64,
    latency_ms: u64,
    leak_mib_per_sec: f64,
}

struct App {
    faults: Mutex<Faults>,
    scratch: std::path::PathBuf,
    leaked: Mutex<Vec<Vec<u8>>>,
    leaked_bytes: AtomicU64,
    /// requests by status code
    requests: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// cumulative histogram counts per bucket, then +Inf
    buckets: Mutex<([u64; BUCKETS.len() + 1], f64)>,
    rng: AtomicU64,
    started: Instant,
}

impl App {
    /// xorshift64*: enough randomness to spread injected errors.
    fn random(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn observe(&self, status: u16, seconds: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry(status).or_default() += 1;
        }
        if let Ok(mut b) = self.buckets.lock() {
            for (i, le) in BUCKETS.iter().enumerate() {
                if seconds <= *le {
                    b.0[i] += 1;
                }
            }
            b.0[BUCKETS.len()] += 1;
            b.1 += seconds;
        }
    }

    async fn serve(&self, ok_body: &'static str) -> (StatusCode, &'static str) {
        let start = Instant::now();
        let (latency, ratio) = match self.faults.lock() {
            Ok(f) => (f.latency_ms, f.error_ratio),
            Err(_) => (0, 0.0),
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let fail = ratio > 0.0 && self.random() < ratio;
        let (status, body) = if fail {
            // Like a real service, a failure leaves a line in the log.
            eprintln!("sample-app: ERROR request failed: injected error");
            (StatusCode::INTERNAL_SERVER_ERROR, "injected error\n")
        } else {
            (StatusCode::OK, ok_body)
        };
        self.observe(status.as_u16(), start.elapsed().as_secs_f64());
        (status, body)
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn root(State(app): State<Arc<App>>) -> impl IntoResponse {
    app.serve("hello from the tend sample app\n").await
}

async fn healthz(State(app): State<Arc<App>>) -> impl IntoResponse {
    app.serve("ok\n").await
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    use std::fmt::Write as _;
    let mut out = String::new();
    out.push_str("# HELP sample_http_requests_total HTTP requests served, by status code.\n");
    out.push_str("# TYPE sample_http_requests_total counter\n");
    if let Ok(r) = app.requests.lock() {
        for code in [200u16, 500] {
            let n = r.get(&code).copied().unwrap_or(0);
            let _ = writeln!(out, "sample_http_requests_total{{code=\"{code}\"}} {n}");
        }
        for (code, n) in r.iter().filter(|(c, _)| **c != 200 && **c != 500) {
            let _ = writeln!(out, "sample_http_requests_total{{code=\"{code}\"}} {n}");
        }
    }
    out.push_str("# HELP sample_http_request_duration_seconds Time to serve a request.\n");
    out.push_str("# TYPE sample_http_request_duration_seconds histogram\n");
    if let Ok(b) = app.buckets.lock() {
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "sample_http_request_duration_seconds_bucket{{le=\"{le}\"}} {}",
                b.0[i]
            );
        }
        let total = b.0[BUCKETS.len()];
        let _ = writeln!(
            out,
            "sample_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(out, "sample_http_request_duration_seconds_sum {}", b.1);
        let _ = writeln!(out, "sample_http_request_duration_seconds_count {total}");
    }
    out.push_str("# HELP sample_memory_resident_bytes Resident memory of the process.\n");
    out.push_str("# TYPE sample_memory_resident_bytes gauge\n");
    let _ = writeln!(out, "sample_memory_resident_bytes {}", resident_bytes());
    out.push_str("# HELP sample_memory_leaked_bytes Memory held by the injected leak.\n");
    out.push_str("# TYPE sample_memory_leaked_bytes gauge\n");
    let _ = writeln!(
        out,
        "sample_memory_leaked_bytes {}",
        app.leaked_bytes.load(Ordering::Relaxed)
    );
    out.push_str("# HELP sample_uptime_seconds Seconds since the process started.\n");
    out.push_str("# TYPE sample_uptime_seconds gauge\n");
    let _ = writeln!(
        out,
        "sample_uptime_seconds {:.3}",
        app.started.elapsed().as_secs_f64()
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

#[derive(Deserialize)]
struct FaultQuery {
    value: Option<f64>,
}

async fn fault(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<FaultQuery>,
) -> impl IntoResponse {
    let Ok(mut f) = app.faults.lock() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "fault state unavailable\n".to_string(),
        );
    };
    match (name.as_str(), q.value) {
        ("crash", _) => {
            // Answer first, then exit as a crashing process would.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(1);
            });
            (StatusCode::OK, "crashing\n".into())
        }
        ("error-ratio", Some(v)) if (0.0..=1.0).contains(&v) => {
            f.error_ratio = v;
            (StatusCode::OK, format!("error ratio {v}\n"))
        }
        ("latency-ms", Some(v)) if v >= 0.0 => {
            f.latency_ms = v as u64;
            (StatusCode::OK, format!("latency {v} ms\n"))
        }
        ("leak-mib-per-sec", Some(v)) if v >= 0.0 => {
            f.leak_mib_per_sec = v;
            (StatusCode::OK, format!("leaking {v} MiB/s\n"))
        }
        ("fill-disk", Some(v)) if v >= 0.0 => match fill(&app.scratch, v) {
            Ok(path) => (StatusCode::OK, format!("wrote {v} MiB to {}\n", path.display())),
            Err(e) => {
                eprintln!("sample-app: ERROR write failed: {e}");
                (StatusCode::INSUFFICIENT_STORAGE, format!("write failed: {e}\n"))
            }
        },
        ("reset", _) => {
            *f = Faults::default();
            if let Ok(mut l) = app.leaked.lock() {
                l.clear();
            }
            app.leaked_bytes.store(0, Ordering::Relaxed);
            (StatusCode::OK, "faults cleared\n".into())
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "usage: POST /fault/{crash|reset} or /fault/{error-ratio|latency-ms|leak-mib-per-sec|fill-disk}?value=N\n".into(),
        ),
    }
}

/// Writes `mib` MiB of data to a new file in `dir`.
fn fill(dir: &std::path::Path, mib: f64) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let n = std::fs::read_dir(dir)?.count();
    let path = dir.join(format!("fill-{n}.bin"));
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = (mib * 1024.0 * 1024.0) as usize;
    while left > 0 {
        let k = left.min(chunk.len());
        f.write_all(&chunk[..k])?;
        left -= k;
    }
    f.sync_all()?;
    Ok(path)
}

/// Runs the sample app until it is killed (or crashes on purpose).
pub async fn run(args: SampleArgs) -> anyhow::Result<()> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let app = Arc::new(App {
        faults: Mutex::new(Faults {
            error_ratio: args.error_ratio.clamp(0.0, 1.0),
            latency_ms: args.latency_ms,
            leak_mib_per_sec: args.leak_mib_per_sec.max(0.0),
        }),
        scratch: args.scratch.clone(),
        leaked: Mutex::new(Vec::new()),
        leaked_bytes: AtomicU64::new(0),
        requests: Mutex::new(Default::default()),
        buckets: Mutex::new(([0; BUCKETS.len() + 1], 0.0)),
        rng: AtomicU64::new(seed),
        started: Instant::now(),
    });

    let leaker = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let rate = leaker
                .faults
                .lock()
                .map(|f| f.leak_mib_per_sec)
                .unwrap_or(0.0);
            if rate > 0.0 {
                let bytes = (rate * 1024.0 * 1024.0 / 10.0) as usize;
                // Touch every page so the growth is resident, not just reserved.
                let chunk = vec![1u8; bytes];
                leaker
                    .leaked_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                if let Ok(mut l) = leaker.leaked.lock() {
                    l.push(chunk);
                }
            }
        }
    });
    if let Some(secs) = args.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
            eprintln!("sample-app: crashing as asked (--crash-after {secs})");
            std::process::exit(1);
        });
    }

    let router = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/fault/{name}", post(fault))
        .with_state(app);
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {addr}: {e}"))?;
    let ratio = args.error_ratio.clamp(0.0, 1.0);
    if ratio > 0.0 {
        eprintln!("sample-app: listening on http://{addr}, failing {ratio} of requests");
    } else {
        eprintln!("sample-app: listening on http://{addr}");
    }
    axum::serve(listener, router)
        .await
        .map_err(|e| anyhow::anyhow!("failed to serve on {addr}: {e}"))
}
