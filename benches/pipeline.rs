//! load + validate + normalise + diff + plan for synthetic desired state of
//! 1k, 10k and 100k resources against an in-memory live inventory with 1%
//! drift. Prints the process's peak RSS at the end.

use std::collections::HashMap;

use criterion::{criterion_group, BenchmarkId, Criterion};
use serde_json::json;
use tend::model::{Kind, Mode, ResourceKey, SourceFile};
use tend::plan::{PlanInput, SourceInfo};
use tend::provider::host::HostProvider;
use tend::provider::{BuiltIn, LiveResource, Providers};

// The same allocator as the tend binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DOCS_PER_FILE: usize = 500;

fn desired_files(n: usize) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: file-{i}\n  labels:\n    tier: web\n    shard: \"{}\"\nspec:\n  path: /srv/app/conf/file-{i}.conf\n  mode: \"0644\"\n  content: |\n    listen 127.0.0.1:{}\n    workers {}\nignore: [/spec/mode]\n",
            i % 16,
            8000 + i % 1000,
            i % 8
        ));
        if (i + 1) % DOCS_PER_FILE == 0 || i + 1 == n {
            files.push(SourceFile {
                path: format!("desired/part-{:04}.yaml", files.len()),
                text: std::mem::take(&mut text),
            });
        }
    }
    files
}

fn live_inventory(n: usize) -> HashMap<ResourceKey, LiveResource> {
    (0..n)
        .map(|i| {
            let drift = i % 100 == 0;
            let key = ResourceKey::new(Kind::HostFile, format!("file-{i}"));
            let content = format!(
                "listen 127.0.0.1:{}\nworkers {}\n",
                8000 + i % 1000,
                if drift { 99 } else { i % 8 }
            );
            let live = LiveResource {
                key: key.clone(),
                spec: json!({"path": format!("/srv/app/conf/file-{i}.conf"), "mode": "0644", "content": content}),
                owned: true,
                id: String::new(),
                note: None,
            };
            (key, live)
        })
        .collect()
}

fn pass(
    files: &[SourceFile],
    live: &HashMap<ResourceKey, LiveResource>,
    providers: &Providers,
) -> usize {
    let mut desired = tend::load(files).expect("valid synthetic state");
    providers.normalize_all(&mut desired.resources);
    let diff = tend::diff(&desired.resources, live, tend::DiffOptions { prune: false });
    let index = desired.index();
    let resource_mode = |k: &ResourceKey| index.get(k).and_then(|r| r.mode);
    let plan = tend::plan(
        &diff,
        PlanInput {
            source: SourceInfo {
                origin: "bench".into(),
                commit: None,
            },
            mode: Mode::Auto,
            resources: desired.resources.len(),
            resource_mode: &resource_mode,
        },
    );
    plan.actions.len()
}

fn bench(c: &mut Criterion) {
    let providers = Providers {
        all: vec![BuiltIn::Host(HostProvider::new(
            std::path::Path::new("/"),
            std::path::Path::new("/nonexistent"),
        ))],
    };
    let mut group = c.benchmark_group("load_validate_diff_plan");
    for n in [1_000usize, 10_000, 100_000] {
        let files = desired_files(n);
        let live = live_inventory(n);
        assert_eq!(pass(&files, &live, &providers), n / 100);
        if n >= 100_000 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| pass(&files, &live, &providers))
        });
    }
    group.finish();
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!(
        "peak RSS of the benchmark process (includes the 100k inputs): {:.0} MiB",
        peak_rss_mib()
    );
}
