//! Detection ahead of failure: one forecast (a Theil–Sen fit and its
//! guards) and one seasonal band (median and MAD at this time of day) over
//! a full series, the work each forecast probe and anomaly condition adds
//! to a health read.

use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{criterion_group, BenchmarkId, Criterion};
use tend::trend::{band, forecast, Guard, Sample, Seasonality};

// The same allocator as the tend binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `n` samples `every` seconds apart: a daily cycle on a slow rise, with
/// a little deterministic noise.
fn series(n: i64, every: i64) -> Vec<Sample> {
    let t0 = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
    (0..n)
        .map(|i| {
            let t = i * every;
            let day = 2.0 * std::f64::consts::PI * t as f64 / 86_400.0;
            let noise = ((i * 7919) % 21 - 10) as f64 / 1000.0;
            (
                t0 + chrono::Duration::seconds(t),
                0.5 + 1e-6 * t as f64 + 0.1 * day.cos() + noise,
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("detection");
    let guard = Guard {
        min_span: Duration::from_secs(3600),
        min_fit: 0.8,
        floor: Some(0.5),
        rising: Some(true),
    };
    // A series kept by tend: about 2000 samples (6h at 10 s, 7d at 5 min);
    // a week of Prometheus history at one minute is 10080.
    for (n, every) in [(2_000, 10), (10_080, 60)] {
        let s = series(n, every);
        group.bench_with_input(BenchmarkId::new("forecast", n), &s, |b, s| {
            b.iter(|| forecast(s, 1.0, &guard))
        });
        let at = s.last().unwrap().0;
        group.bench_with_input(BenchmarkId::new("band_daily", n), &s, |b, s| {
            b.iter(|| band(s, at, Seasonality::Daily, 4.0, Duration::from_secs(3600)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
