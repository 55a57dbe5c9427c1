//! Decisions per second for the default policy pack over 10,000 varied
//! actions, on one thread and on two, through the same shared engine and
//! the same parallel evaluation `tend plan` uses.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use tend::policy::{default_pack, evaluate_all, Policies, Verdict};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn input(i: usize) -> Value {
    let (kind, ty, changes) = match i % 6 {
        0 => (
            "host.Process",
            "restart",
            json!([{"path": "/spec/state", "from": "stopped", "to": "running"}]),
        ),
        1 => (
            "host.File",
            "update",
            json!([{"path": "/spec/content", "from": "a", "to": "b"}]),
        ),
        2 => ("host.File", "delete", json!([])),
        3 => (
            "aws.autoscaling.Group",
            "update",
            json!([{"path": "/spec/desiredCapacity", "from": 4, "to": 4 + (i % 7)}]),
        ),
        4 => (
            "aws.ec2.SecurityGroup",
            "update",
            json!([{"path": "/spec/ingress",
                    "from": [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidr": "0.0.0.0/0"}],
                    "to": [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidr": "0.0.0.0/0"},
                           {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": if i % 2 == 0 { "0.0.0.0/0" } else { "10.0.0.0/8" }}]}]),
        ),
        _ => (
            "host.Process",
            "create",
            json!([{"path": "/spec/command", "from": null, "to": "app"}]),
        ),
    };
    json!({
        "action": {"type": ty, "target": {"kind": kind, "name": format!("r{i}")}, "changes": changes,
                   "risk": "low", "reversible": true},
        "resource": {"desired": {"kind": kind, "metadata": {"name": format!("r{i}"),
                     "labels": {"tier": if i % 10 == 0 { "critical" } else { "web" }}}, "spec": {}}, "live": null},
        "incident": null,
        "context": {"mode": "auto", "now": "2026-11-21T10:00:00Z", "in_maintenance_window": i % 25 == 0,
                    "recent_actions": [], "run": {"actions_planned": 3, "resources_total": 120}},
    })
}

fn bench(c: &mut Criterion) {
    let inputs: Vec<Value> = (0..10_000).map(input).collect();
    let policies = Policies::compile(&default_pack()).expect("the default pack compiles");
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.sample_size(10);
    for threads in [1, 2] {
        group.bench_function(format!("decide_10k_actions/{threads}_threads"), |b| {
            b.iter(|| {
                evaluate_all(&policies, &inputs, threads)
                    .iter()
                    .filter(|d| d.decision == Verdict::Auto)
                    .count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
