//! tend's own metrics, in the Prometheus exposition format through the
//! `prometheus-client` crate: a publish sink that counts what each pass of
//! `tend watch` did. Served by `serve` at `GET /metrics`. It only counts;
//! it never changes what a pass does. See ARCHITECTURE.md.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::act::Outcome;
use crate::publish::{PublishError, Published, Sink};
use crate::vocab::IncidentStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    kind: String,
    sync: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    r#type: String,
    decision: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IncidentLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    origin: String,
    commit: String,
}

/// Every metric tend exposes, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    passes: Family<PassLabels, Counter>,
    pass_duration: Histogram,
    last_success: Gauge<f64, AtomicU64>,
    resources: Family<ResourceLabels, Gauge>,
    pending: Gauge,
    actions: Family<ActionLabels, Counter>,
    incidents: Family<IncidentLabels, Gauge>,
    time_to_detect: Histogram,
    time_to_recover: Histogram,
    source: Family<SourceLabels, Gauge>,
    provider_calls: Family<ProviderLabels, Counter>,
    provider_errors: Family<ProviderLabels, Counter>,
    provider_throttled: Family<ProviderLabels, Counter>,
    policy_evaluations: Counter,
    policy_seconds: Counter<f64, AtomicU64>,
    fleet_members: Gauge,
    fleet_leases: Gauge,
    fleet_publisher: Gauge,
    fleet_failed_rounds: Counter,
    /// Incidents whose times were observed already.
    seen: Mutex<HashSet<i64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tend");
        let m = Metrics {
            passes: Family::default(),
            pass_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            last_success: Gauge::default(),
            resources: Family::default(),
            pending: Gauge::default(),
            actions: Family::default(),
            incidents: Family::default(),
            time_to_detect: Histogram::new(exponential_buckets(0.25, 2.0, 12)),
            time_to_recover: Histogram::new(exponential_buckets(0.25, 2.0, 12)),
            source: Family::default(),
            provider_calls: Family::default(),
            provider_errors: Family::default(),
            provider_throttled: Family::default(),
            policy_evaluations: Counter::default(),
            policy_seconds: Counter::default(),
            fleet_members: Gauge::default(),
            fleet_leases: Gauge::default(),
            fleet_publisher: Gauge::default(),
            fleet_failed_rounds: Counter::default(),
            seen: Mutex::new(HashSet::new()),
            registry: Registry::default(),
        };
        registry.register(
            "passes",
            "Passes by kind (full, healing) and result (ok, failed, escalated, error)",
            m.passes.clone(),
        );
        registry.register(
            "pass_duration_seconds",
            "How long a pass took",
            m.pass_duration.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the last pass that read its source and live state succeeded (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "resources",
            "Declared resources by kind and sync status (in_sync, pending)",
            m.resources.clone(),
        );
        registry.register(
            "pending_drift",
            "Actions the last full pass planned",
            m.pending.clone(),
        );
        registry.register(
            "actions",
            "Actions by type, decision and outcome",
            m.actions.clone(),
        );
        registry.register(
            "incidents",
            "Unresolved incidents by status (open, escalated)",
            m.incidents.clone(),
        );
        registry.register(
            "time_to_detect_seconds",
            "From an incident's onset to its detection",
            m.time_to_detect.clone(),
        );
        registry.register(
            "time_to_recover_seconds",
            "From an incident's detection to verified recovery",
            m.time_to_recover.clone(),
        );
        registry.register(
            "provider_calls",
            "Provider API calls (aws), or listings and actions (host)",
            m.provider_calls.clone(),
        );
        registry.register(
            "provider_errors",
            "Provider listings and actions that failed",
            m.provider_errors.clone(),
        );
        registry.register(
            "provider_throttled",
            "Provider calls that waited for tend's client-side rate limit",
            m.provider_throttled.clone(),
        );
        registry.register(
            "policy_evaluations",
            "Policy decisions made",
            m.policy_evaluations.clone(),
        );
        registry.register(
            "policy_evaluation_seconds",
            "Time spent evaluating policies (divide by policy_evaluations for the mean)",
            m.policy_seconds.clone(),
        );
        registry.register(
            "fleet_members",
            "Live members of the fleet this watcher belongs to, itself included (0 outside a fleet)",
            m.fleet_members.clone(),
        );
        registry.register(
            "fleet_leases",
            "Leases this member holds: shared resources, and the publisher's role",
            m.fleet_leases.clone(),
        );
        registry.register(
            "fleet_publisher",
            "1 while this member is the fleet's publisher",
            m.fleet_publisher.clone(),
        );
        registry.register(
            "fleet_failed_rounds",
            "Heartbeat and lease rounds that failed (the member acts on no shared resource until one succeeds)",
            m.fleet_failed_rounds.clone(),
        );
        registry.register(
            "source_info",
            "The desired state in use: its origin and commit",
            m.source.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The exposition text of every metric.
    pub fn encode(&self) -> String {
        self.sync_process_counters();
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Brings the counters kept by providers and policies into the registry.
    fn sync_process_counters(&self) {
        let up = |c: &Counter, now: u64| c.inc_by(now.saturating_sub(c.get()));
        for (p, calls, errors, throttled) in crate::provider::stats::snapshot() {
            let l = ProviderLabels {
                provider: p.as_str().into(),
            };
            up(&self.provider_calls.get_or_create(&l), calls);
            up(&self.provider_errors.get_or_create(&l), errors);
            up(&self.provider_throttled.get_or_create(&l), throttled);
        }
        use std::sync::atomic::Ordering;
        up(
            &self.policy_evaluations,
            crate::policy::EVALUATIONS.load(Ordering::Relaxed) as u64,
        );
        if let Some(f) = crate::fleet::seen() {
            self.fleet_members.set(f.members as i64);
            self.fleet_leases.set(f.leases as i64);
            self.fleet_publisher.set(i64::from(f.publisher));
            up(&self.fleet_failed_rounds, f.failed_rounds);
        }
        let secs = crate::policy::EVALUATION_NANOS.load(Ordering::Relaxed) as f64 / 1e9;
        let delta = secs - self.policy_seconds.get();
        if delta > 0.0 {
            self.policy_seconds.inc_by(delta);
        }
    }

    /// Unix time of the last successful pass, 0 before the first.
    pub fn last_success(&self) -> f64 {
        self.last_success.get()
    }

    fn pass(&self, kind: &str, result: &str, seconds: f64) {
        self.passes
            .get_or_create(&PassLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
        self.pass_duration.observe(seconds);
    }

    fn applied(&self, a: &crate::reconcile::Applied, full: bool) {
        let kind = if full { "full" } else { "healing" };
        let result = if a.failed() {
            "failed"
        } else if a.escalated() > 0 {
            "escalated"
        } else {
            "ok"
        };
        self.pass(kind, result, a.duration.as_secs_f64());
        let now = chrono::Utc::now();
        self.last_success
            .set(now.timestamp_millis() as f64 / 1000.0);
        if full {
            self.resources.clear();
            for (k, n) in &a.declared {
                let pending = a
                    .plan
                    .actions
                    .iter()
                    .filter(|x| x.target.kind.as_str() == k)
                    .map(|x| &x.target)
                    .collect::<HashSet<_>>()
                    .len();
                let label = |sync: &str| ResourceLabels {
                    kind: k.clone(),
                    sync: sync.into(),
                };
                self.resources
                    .get_or_create(&label("pending"))
                    .set(pending as i64);
                self.resources
                    .get_or_create(&label("in_sync"))
                    .set(n.saturating_sub(pending) as i64);
            }
            self.pending.set(a.plan.pending() as i64);
            self.source.clear();
            self.source
                .get_or_create(&SourceLabels {
                    origin: a.plan.source.origin.clone(),
                    commit: a.plan.source.commit.clone().unwrap_or_default(),
                })
                .set(1);
        }
        for action in &a.plan.actions {
            let outcome = a
                .results
                .iter()
                .find(|r| r.fingerprint == action.fingerprint)
                .map_or("not-run", |r| match r.outcome {
                    Outcome::Synced { .. } => "synced",
                    Outcome::Failed { .. } => "failed",
                    Outcome::Skipped { .. } => "skipped",
                });
            let outcome = if action.incident.is_some() {
                "runbook-step"
            } else {
                outcome
            };
            self.actions
                .get_or_create(&ActionLabels {
                    r#type: action.action_type.as_str().into(),
                    decision: action.decision.as_str().into(),
                    outcome: outcome.into(),
                })
                .inc();
        }
        self.incidents(a);
    }

    fn incidents(&self, a: &crate::reconcile::Applied) {
        let count = |s: IncidentStatus| a.incidents.iter().filter(|i| i.status == s).count() as i64;
        for s in [IncidentStatus::Open, IncidentStatus::Escalated] {
            self.incidents
                .get_or_create(&IncidentLabels {
                    status: s.as_str().into(),
                })
                .set(count(s));
        }
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        for i in &a.incidents {
            if seen.insert(i.id) {
                self.time_to_detect
                    .observe(i.time_to_detect_ms as f64 / 1000.0);
            }
            if let Some(ms) = i.time_to_recover_ms {
                if seen.insert(-i.id) {
                    self.time_to_recover.observe(ms as f64 / 1000.0);
                }
            }
        }
    }
}

/// The sink that keeps [`Metrics`] up to date.
pub struct MetricsSink(pub std::sync::Arc<Metrics>);

impl Sink for MetricsSink {
    fn publish<'a>(
        &'a mut self,
        what: &'a Published<'a>,
    ) -> futures::future::BoxFuture<'a, Result<(), PublishError>> {
        match what {
            Published::Pass { applied, full } => self.0.applied(applied, *full),
            Published::Failed(_) => self.0.pass("full", "error", 0.0),
            Published::Plan { .. } => {}
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
