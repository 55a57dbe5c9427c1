//! Health objectives, failure signatures and runbooks as declared in Git.
//!
//! These are the typed forms of the `health` and `remediation` blocks of a
//! resource and of the `Signature` and `Runbook` kinds, plus the checks that
//! a JSON Schema cannot express (exactly one probe type, references between
//! documents, the command allowlist). Nothing here probes or acts.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Kind, Origin, Settings, Span};

/// Signals every resource of a kind has without declaring a probe.
pub fn builtin_signals(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::HostProcess => &["liveness", "status"],
        _ => &["status"],
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    #[serde(default)]
    pub probes: Vec<Probe>,
    #[serde(default)]
    pub slos: Vec<Slo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    pub name: String,
    #[serde(default)]
    pub http: Option<HttpProbe>,
    #[serde(default)]
    pub tcp: Option<TcpProbe>,
    #[serde(default)]
    pub prometheus: Option<PrometheusProbe>,
    #[serde(default)]
    pub host: Option<HostProbe>,
    #[serde(default)]
    pub forecast: Option<ForecastProbe>,
}

/// A forecast of another signal of the resource: the time until it
/// crosses `threshold`, from a robust linear fit over `over` (tend's own
/// samples, or a Prometheus range query for a Prometheus signal).
/// Unhealthy when that is less than `below`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForecastProbe {
    /// The signal whose value is forecast.
    pub of: String,
    pub threshold: f64,
    /// How much history the fit covers (default 6h).
    #[serde(default)]
    pub over: Option<Span>,
    /// Unhealthy when the crossing is nearer than this.
    pub below: Span,
    /// No crossing is forecast before the value is past this.
    #[serde(default)]
    pub floor: Option<f64>,
    /// The share of the variation the fit must explain (default 0.8).
    #[serde(default)]
    pub min_fit: Option<f64>,
    /// Whether the signal crosses by rising to the threshold (`up`) or
    /// falling to it (`down`); default: the side its history starts on.
    #[serde(default)]
    pub direction: Option<Direction>,
}

/// A signal read from the machine itself (no exporter needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostProbe {
    pub metric: HostMetric,
    #[serde(default, deserialize_with = "number_or_span")]
    pub above: Option<f64>,
    /// For `diskFullIn` and `memoryExhaustedIn`, a duration (`4h`).
    #[serde(default, deserialize_with = "number_or_span")]
    pub below: Option<f64>,
    /// `disk`, `diskFree`, `diskFullIn`: a path on the filesystem to measure.
    #[serde(default)]
    pub path: Option<String>,
    /// `logRate`: the log file (default: a `host.Process`'s own log).
    #[serde(default)]
    pub file: Option<String>,
    /// `logRate`: the lines to count (default: `(?i)error`).
    #[serde(default)]
    pub regex: Option<String>,
    /// `memoryGrowth`, `logRate`, `restarts`: the window (default 1m).
    #[serde(default)]
    pub window: Option<Span>,
    /// `disk`, `diskFree`, `diskFullIn`: the path's budget in MiB; usage
    /// is then the size of the files under it.
    #[serde(default)]
    pub quota: Option<f64>,
    /// `memoryExhaustedIn`: the process's limit in MiB (default: the
    /// host's memory).
    #[serde(default)]
    pub limit: Option<f64>,
    /// `diskFullIn`, `memoryExhaustedIn`: the history the fit covers
    /// (default 6h for disks, 1h for memory).
    #[serde(default)]
    pub over: Option<Span>,
    /// `diskFullIn`, `memoryExhaustedIn`: the share of the capacity in use
    /// before a forecast can be unhealthy (default 0.5).
    #[serde(default)]
    pub floor: Option<f64>,
    /// `diskFullIn`, `memoryExhaustedIn`: the share of the variation the
    /// fit must explain (default 0.8): a write/clean-up sawtooth does not.
    #[serde(default)]
    pub min_fit: Option<f64>,
}

impl HostProbe {
    /// The history a forecast metric fits (`over`, else its default).
    pub fn over(&self) -> std::time::Duration {
        self.over.map_or(self.metric.default_over(), |o| o.0)
    }
}

impl ForecastProbe {
    /// The history the fit covers (`over`, else 6h).
    pub fn over(&self) -> std::time::Duration {
        self.over
            .map_or(std::time::Duration::from_secs(6 * 3600), |o| o.0)
    }
}

/// A threshold: a number, or a duration read as seconds (`4h`).
fn number_or_span<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(f64),
        Text(String),
    }
    match Option::<Either>::deserialize(d)? {
        None => Ok(None),
        Some(Either::Number(n)) => Ok(Some(n)),
        Some(Either::Text(t)) => humantime::parse_duration(&t)
            .map(|d| Some(d.as_secs_f64()))
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{t}`: {e}"))),
    }
}

/// What a host probe measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HostMetric {
    Cpu,
    Memory,
    MemoryGrowth,
    Disk,
    DiskFree,
    LogRate,
    Restarts,
    DiskFullIn,
    MemoryExhaustedIn,
}

impl HostMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            HostMetric::Cpu => "cpu",
            HostMetric::Memory => "memory",
            HostMetric::MemoryGrowth => "memoryGrowth",
            HostMetric::Disk => "disk",
            HostMetric::DiskFree => "diskFree",
            HostMetric::LogRate => "logRate",
            HostMetric::Restarts => "restarts",
            HostMetric::DiskFullIn => "diskFullIn",
            HostMetric::MemoryExhaustedIn => "memoryExhaustedIn",
        }
    }

    /// The unit values are shown in.
    pub fn unit(self) -> &'static str {
        match self {
            HostMetric::Cpu => " cores",
            HostMetric::Memory | HostMetric::DiskFree => "MiB",
            HostMetric::MemoryGrowth => "MiB/min",
            HostMetric::Disk => "",
            HostMetric::LogRate => " lines/min",
            HostMetric::Restarts => " starts",
            HostMetric::DiskFullIn | HostMetric::MemoryExhaustedIn => "s",
        }
    }

    /// The history a forecast metric fits by default: hours for a disk,
    /// an hour for memory.
    pub fn default_over(self) -> std::time::Duration {
        match self {
            HostMetric::DiskFullIn => std::time::Duration::from_secs(6 * 3600),
            _ => std::time::Duration::from_secs(3600),
        }
    }

    /// A forecast (its value is the time left, in seconds).
    pub fn is_forecast(self) -> bool {
        matches!(self, HostMetric::DiskFullIn | HostMetric::MemoryExhaustedIn)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    pub url: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body_match: Option<String>,
    #[serde(default)]
    pub max_latency: Option<Span>,
    #[serde(default)]
    pub timeout: Option<Span>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    pub address: String,
    #[serde(default)]
    pub timeout: Option<Span>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusProbe {
    pub query: String,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slo {
    pub name: String,
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default, rename = "for")]
    pub for_: Option<Span>,
    #[serde(default)]
    pub recovery: Option<Span>,
    #[serde(default)]
    pub objective: Option<f64>,
    #[serde(default)]
    pub error_ratio: Option<String>,
    #[serde(default)]
    pub burn_rates: Vec<BurnRate>,
}

impl Slo {
    pub fn for_duration(&self) -> std::time::Duration {
        self.for_.unwrap_or_default().0
    }

    /// Hysteresis: how long the SLO must be met again before it counts as
    /// recovered. Defaults to the breach duration.
    pub fn recovery_duration(&self) -> std::time::Duration {
        self.recovery.map(|s| s.0).unwrap_or(self.for_duration())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurnRate {
    pub long: Span,
    pub short: Span,
    pub factor: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Remediation {
    pub runbook: String,
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Severity {
    #[default]
    Warning,
    Critical,
}

super::words!(Severity, StepAction);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default)]
    pub slo: Option<String>,
    #[serde(default, rename = "for")]
    pub for_: Option<Span>,
    /// Unhealthy when the signal is outside its learned band.
    #[serde(default)]
    pub anomaly: Option<Anomaly>,
}

impl Condition {
    /// The signal the condition is judged on: an anomaly condition reads
    /// the anomaly reading tend derives from its signal.
    pub fn judged_signal(&self) -> Option<String> {
        let s = self.signal.as_ref()?;
        Some(match &self.anomaly {
            Some(a) => a.signal_name(s),
            None => s.clone(),
        })
    }
}

/// A value far from what is usual for it at this time of day or week.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Anomaly {
    /// How many robust deviations from the median is unusual (default 3).
    #[serde(default = "default_sensitivity")]
    pub sensitivity: f64,
    #[serde(default)]
    pub direction: Direction,
    /// The history the band is learned from (default 7d).
    #[serde(default)]
    pub baseline: Option<Span>,
    #[serde(default)]
    pub seasonality: Seasonality,
    /// Unknown until the history covers this much (default 1h).
    #[serde(default)]
    pub min_history: Option<Span>,
}

fn default_sensitivity() -> f64 {
    3.0
}

impl Anomaly {
    pub fn baseline(&self) -> std::time::Duration {
        self.baseline
            .map_or(std::time::Duration::from_secs(7 * 86_400), |s| s.0)
    }

    pub fn min_history(&self) -> std::time::Duration {
        self.min_history
            .map_or(std::time::Duration::from_secs(3600), |s| s.0)
    }

    /// The name of the reading an anomaly condition on `signal` reads.
    pub fn signal_name(&self, signal: &str) -> String {
        format!(
            "anomaly/{signal}@{},{},{},{},{}",
            self.sensitivity,
            self.direction.as_str(),
            self.seasonality.as_str(),
            humantime::format_duration(self.baseline()),
            humantime::format_duration(self.min_history()),
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
    #[default]
    Both,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seasonality {
    #[default]
    Daily,
    Weekly,
    None,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Both => "both",
        }
    }
}

impl Seasonality {
    pub fn as_str(self) -> &'static str {
        match self {
            Seasonality::Daily => "daily",
            Seasonality::Weekly => "weekly",
            Seasonality::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureSpec {
    pub cause: String,
    pub runbook: String,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub all: Vec<Condition>,
    #[serde(default)]
    pub any: Vec<Condition>,
    /// How far tend trusts the signature: `shadow` (evaluated and
    /// recorded, never acted on), `recommend` (its steps wait for a
    /// human), `auto` (the default).
    #[serde(default)]
    pub trust: Trust,
}

/// The trust ladder of a signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    Shadow,
    Recommend,
    #[default]
    Auto,
}

impl Trust {
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Shadow => "shadow",
            Trust::Recommend => "recommend",
            Trust::Auto => "auto",
        }
    }

    pub fn is_auto(&self) -> bool {
        *self == Trust::Auto
    }
}

/// A known failure (kind `Signature`).
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub name: String,
    pub spec: SignatureSpec,
    pub origin: Origin,
}

impl Signature {
    /// More conditions make a signature more specific.
    pub fn specificity(&self) -> usize {
        self.spec.all.len() + usize::from(!self.spec.any.is_empty())
    }

    pub fn selects(&self, r: &super::Resource) -> bool {
        let sel = &self.spec.selector;
        sel.kind.as_deref().is_none_or(|k| k == r.key.kind.as_str())
            && (sel.names.is_empty() || sel.names.contains(&r.key.name))
            && sel
                .labels
                .iter()
                .all(|(k, v)| r.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum StepAction {
    Restart,
    Replace,
    Reapply,
    ReapplyLastGood,
    Scale,
    Command,
    Escalate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    pub action: StepAction,
    #[serde(default)]
    pub within: Option<Span>,
    #[serde(default)]
    pub hold: Option<Span>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub by: Option<i64>,
}

impl Step {
    pub fn within(&self) -> std::time::Duration {
        self.within
            .map(|s| s.0)
            .unwrap_or(std::time::Duration::from_secs(30))
    }

    pub fn hold(&self) -> std::time::Duration {
        self.hold
            .map(|s| s.0)
            .unwrap_or(std::time::Duration::from_secs(1))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunbookSpec {
    #[serde(default)]
    pub description: Option<String>,
    pub steps: Vec<Step>,
}

/// An approved procedure (kind `Runbook`).
#[derive(Debug, Clone, PartialEq)]
pub struct Runbook {
    pub name: String,
    pub spec: RunbookSpec,
    pub origin: Origin,
}

/// `Settings spec.healing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Healing {
    #[serde(default)]
    pub prometheus: Option<PrometheusSettings>,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default = "default_ineffective_after")]
    pub ineffective_after: u32,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default)]
    pub crash_loop: CrashLoop,
    /// How long the first step of a new incident opened by a symptom (an
    /// SLO, a dead process, a less specific signature) waits for a more
    /// specific signature whose signals are all unhealthy already and only
    /// wait on their `for`; never longer than the shortest `for` involved.
    #[serde(default = "default_diagnosis_grace")]
    pub diagnosis_grace: Span,
}

fn default_diagnosis_grace() -> Span {
    Span(std::time::Duration::from_secs(5))
}

/// `Settings spec.healing.backoff`: how often tend restores the declared
/// state of a resource whose incident is escalated (a dead process is
/// started again): `initial` after the escalation, doubling after each
/// attempt up to `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_backoff_initial")]
    pub initial: Span,
    #[serde(default = "default_backoff_max")]
    pub max: Span,
}

fn default_backoff_initial() -> Span {
    Span(std::time::Duration::from_secs(10))
}

fn default_backoff_max() -> Span {
    Span(std::time::Duration::from_secs(300))
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

impl Backoff {
    /// The wait after attempt `n` (0: after the escalation itself).
    pub fn delay(&self, n: u32) -> std::time::Duration {
        let factor = 2u32.saturating_pow(n.min(31));
        self.initial
            .0
            .saturating_mul(factor)
            .min(self.max.0.max(self.initial.0))
    }
}

/// `Settings spec.healing.crashLoop`: the same problem on one resource
/// `incidents` times within `window` is a crash loop: the next incident is
/// escalated at once and the resource restored with backoff only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrashLoop {
    #[serde(default = "default_crash_loop_incidents")]
    pub incidents: usize,
    #[serde(default = "default_crash_loop_window")]
    pub window: Span,
}

fn default_crash_loop_incidents() -> usize {
    3
}

fn default_crash_loop_window() -> Span {
    Span(std::time::Duration::from_secs(600))
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            incidents: default_crash_loop_incidents(),
            window: default_crash_loop_window(),
        }
    }
}

fn default_ineffective_after() -> u32 {
    3
}

fn default_concurrency() -> usize {
    4
}

impl Default for Healing {
    fn default() -> Self {
        Healing {
            prometheus: None,
            commands: Vec::new(),
            ineffective_after: default_ineffective_after(),
            concurrency: default_concurrency(),
            backoff: Backoff::default(),
            crash_loop: CrashLoop::default(),
            diagnosis_grace: default_diagnosis_grace(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusSettings {
    pub url: String,
    #[serde(default)]
    pub timeout: Option<Span>,
}

/// A problem found by the cross-document checks: the document, a JSON
/// Pointer into it, and what is wrong.
pub struct Problem {
    pub origin: Origin,
    pub pointer: String,
    pub message: String,
    pub help: Option<String>,
}

/// Turns a schema-valid document body into its typed form.
pub fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Checks what a schema cannot: one probe type each, references to signals,
/// SLOs and runbooks that exist, and commands on the allowlist.
pub fn check(
    settings: &Settings,
    resources: &[super::Resource],
    signatures: &[Signature],
    runbooks: &[Runbook],
) -> Vec<Problem> {
    let mut c = Checker {
        out: Vec::new(),
        runbook_names: runbooks.iter().map(|r| r.name.as_str()).collect(),
        prometheus: settings.healing.prometheus.is_some(),
    };
    for r in resources {
        c.resource(settings, r);
    }
    for s in signatures {
        c.signature(s);
    }
    let allowed: HashSet<&str> = settings
        .healing
        .commands
        .iter()
        .map(String::as_str)
        .collect();
    for rb in runbooks {
        c.runbook(rb, &allowed);
    }
    c.out
}

/// The checks of one desired state, collecting problems.
struct Checker<'a> {
    out: Vec<Problem>,
    runbook_names: HashSet<&'a str>,
    prometheus: bool,
}

impl Checker<'_> {
    fn problem(&mut self, origin: &Origin, pointer: String, message: String, help: Option<String>) {
        self.out.push(Problem {
            origin: origin.clone(),
            pointer,
            message,
            help,
        })
    }

    fn known_runbooks(&self) -> String {
        let mut names: Vec<&str> = self.runbook_names.iter().copied().collect();
        names.sort_unstable();
        if names.is_empty() {
            "no Runbook is declared".to_string()
        } else {
            format!("declared runbooks: {}", names.join(", "))
        }
    }

    fn resource(&mut self, settings: &Settings, r: &super::Resource) {
        if let Some(p) = r.key.kind.provider() {
            if !settings.providers.contains(&p) {
                self.problem(
                    &r.origin,
                    "/kind".into(),
                    format!(
                        "{} needs the {} provider, which is not enabled",
                        r.key.kind,
                        p.as_str()
                    ),
                    Some(format!("add `{}` to Settings spec.providers", p.as_str())),
                );
            }
        }
        if let Some(rem) = &r.remediation {
            if !self.runbook_names.contains(rem.runbook.as_str()) {
                let help = Some(self.known_runbooks());
                self.problem(
                    &r.origin,
                    "/remediation/runbook".into(),
                    format!("unknown runbook `{}`", rem.runbook),
                    help,
                );
            }
        }
        let Some(h) = &r.health else { return };
        let names = self.probes(r, h);
        self.slos(r, h, &names);
    }

    /// Checks the probes of a resource; returns their names.
    fn probes<'h>(&mut self, r: &super::Resource, h: &'h Health) -> HashMap<&'h str, usize> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, p) in h.probes.iter().enumerate() {
            let at = format!("/health/probes/{i}");
            let kinds = [
                p.http.is_some(),
                p.tcp.is_some(),
                p.prometheus.is_some(),
                p.host.is_some(),
                p.forecast.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if kinds != 1 {
                self.problem(
                    &r.origin,
                    at.clone(),
                    format!(
                        "probe `{}` must have exactly one of http, tcp, prometheus, host, forecast",
                        p.name
                    ),
                    None,
                );
            }
            if builtin_signals(r.key.kind).contains(&p.name.as_str()) {
                self.problem(
                    &r.origin,
                    format!("{at}/name"),
                    format!(
                        "`{}` is a built-in signal of {}; name the probe differently",
                        p.name, r.key.kind
                    ),
                    None,
                );
            }
            if let Some(first) = names.insert(p.name.as_str(), i) {
                self.problem(
                    &r.origin,
                    format!("{at}/name"),
                    format!(
                        "probe `{}` is declared twice (first at probes[{first}])",
                        p.name
                    ),
                    None,
                );
            }
            if let Some(f) = &p.forecast {
                self.forecast(r, h, &at, &p.name, f);
            }
            if let Some(host) = &p.host {
                self.host_probe(r, &at, &p.name, host);
                if host.metric.is_forecast() && host.below.is_none() {
                    self.problem(
                        &r.origin,
                        format!("{at}/host"),
                        format!(
                            "host probe `{}` is a forecast: it needs `below`, a duration such as 4h",
                            p.name
                        ),
                        None,
                    );
                } else if !host.metric.is_forecast() && host.above.is_some() == host.below.is_some()
                {
                    self.problem(
                        &r.origin,
                        format!("{at}/host"),
                        format!("host probe `{}` needs exactly one of above, below", p.name),
                        None,
                    );
                }
                if let Some(re) = &host.regex {
                    if let Err(e) = regex::Regex::new(re) {
                        self.problem(
                            &r.origin,
                            format!("{at}/host/regex"),
                            format!("host probe `{}` has an invalid regex: {e}", p.name),
                            None,
                        );
                    }
                }
            }
            if let Some(prom) = &p.prometheus {
                if prom.above.is_some() == prom.below.is_some() {
                    self.problem(
                        &r.origin,
                        format!("{at}/prometheus"),
                        format!(
                            "prometheus probe `{}` needs exactly one of above, below",
                            p.name
                        ),
                        None,
                    );
                }
                if !self.prometheus {
                    self.problem(
                        &r.origin,
                        format!("{at}/prometheus"),
                        format!("prometheus probe `{}` needs a Prometheus server", p.name),
                        no_prometheus(),
                    );
                }
            }
            if let Some(m) = p.http.as_ref().and_then(|h| h.body_match.as_ref()) {
                if let Err(e) = regex_check(m) {
                    self.problem(
                        &r.origin,
                        format!("{at}/http/bodyMatch"),
                        format!("invalid regular expression: {e}"),
                        None,
                    );
                }
            }
        }
        names
    }

    /// A forecast reads another signal of the same resource, one that is
    /// not itself a forecast.
    fn forecast(
        &mut self,
        r: &super::Resource,
        h: &Health,
        at: &str,
        name: &str,
        f: &ForecastProbe,
    ) {
        let is_forecast = |p: &Probe| {
            p.forecast.is_some() || p.host.as_ref().is_some_and(|h| h.metric.is_forecast())
        };
        let target = h.probes.iter().find(|p| p.name == f.of);
        // Built-in signals (liveness, status) carry no value to fit.
        let forecastable = target.is_some_and(|p| !is_forecast(p));
        if !forecastable {
            let known: Vec<&str> = h
                .probes
                .iter()
                .filter(|p| !is_forecast(p))
                .map(|p| p.name.as_str())
                .collect();
            self.problem(
                &r.origin,
                format!("{at}/forecast/of"),
                match target {
                    Some(_) => format!(
                        "forecast `{name}` cannot forecast `{}`, itself a forecast",
                        f.of
                    ),
                    None => format!("forecast `{name}` refers to unknown signal `{}`", f.of),
                },
                Some(format!("signals it can forecast: {}", known.join(", "))),
            );
        }
        self.share(r, &format!("{at}/forecast/minFit"), "minFit", f.min_fit);
        if f.direction == Some(Direction::Both) {
            self.problem(
                &r.origin,
                format!("{at}/forecast/direction"),
                format!("forecast `{name}` crosses its threshold one way: up or down"),
                None,
            );
        }
        if f.over.is_some_and(|o| o.0.is_zero()) {
            self.problem(
                &r.origin,
                format!("{at}/forecast/over"),
                format!("forecast `{name}` needs an `over` longer than 0s"),
                None,
            );
        }
        if f.below.0.is_zero() {
            self.problem(
                &r.origin,
                format!("{at}/forecast/below"),
                format!("forecast `{name}` needs a `below` longer than 0s"),
                None,
            );
        }
    }

    fn host_probe(&mut self, r: &super::Resource, at: &str, name: &str, host: &HostProbe) {
        use HostMetric as M;
        let m = host.metric;
        // Each optional field and the metrics it means something for.
        let fields: [(&str, bool, &str); 9] = [
            ("path", host.path.is_some(), "disk, diskFree, diskFullIn"),
            ("quota", host.quota.is_some(), "disk, diskFree, diskFullIn"),
            ("limit", host.limit.is_some(), "memoryExhaustedIn"),
            ("over", host.over.is_some(), "diskFullIn, memoryExhaustedIn"),
            (
                "floor",
                host.floor.is_some(),
                "diskFullIn, memoryExhaustedIn",
            ),
            (
                "minFit",
                host.min_fit.is_some(),
                "diskFullIn, memoryExhaustedIn",
            ),
            (
                "window",
                host.window.is_some(),
                "memoryGrowth, logRate, restarts",
            ),
            ("file", host.file.is_some(), "logRate"),
            ("regex", host.regex.is_some(), "logRate"),
        ];
        let applies = |field: &str| match field {
            "path" | "quota" => matches!(m, M::Disk | M::DiskFree | M::DiskFullIn),
            "limit" => m == M::MemoryExhaustedIn,
            "over" | "floor" | "minFit" => m.is_forecast(),
            "window" => matches!(m, M::MemoryGrowth | M::LogRate | M::Restarts),
            _ => m == M::LogRate,
        };
        for (field, set, metrics) in fields {
            if set && !applies(field) {
                self.problem(
                    &r.origin,
                    format!("{at}/host/{field}"),
                    format!(
                        "host probe `{name}`: `{field}` does not apply to {}; it is for {metrics}",
                        m.as_str()
                    ),
                    None,
                );
            }
        }
        if host.metric.is_forecast() && host.above.is_some() {
            self.problem(
                &r.origin,
                format!("{at}/host/above"),
                format!(
                    "host probe `{name}` is a forecast (the time left): it takes `below`, a duration such as 4h"
                ),
                None,
            );
        }
        for (field, v) in [("quota", host.quota), ("limit", host.limit)] {
            if v.is_some_and(|v| v.is_nan() || v <= 0.0) {
                self.problem(
                    &r.origin,
                    format!("{at}/host/{field}"),
                    format!("host probe `{name}` needs a positive {field} (MiB)"),
                    None,
                );
            }
        }
        if host.metric.is_forecast() {
            if host.below.is_some_and(|b| !b.is_finite() || b < 0.0) {
                self.problem(
                    &r.origin,
                    format!("{at}/host/below"),
                    format!("host probe `{name}` needs a `below` duration such as 4h"),
                    None,
                );
            }
            if host.over.is_some_and(|o| o.0.is_zero()) {
                self.problem(
                    &r.origin,
                    format!("{at}/host/over"),
                    format!("host probe `{name}` needs an `over` longer than 0s"),
                    None,
                );
            }
        }
        self.share(r, &format!("{at}/host/floor"), "floor", host.floor);
        self.share(r, &format!("{at}/host/minFit"), "minFit", host.min_fit);
    }

    /// A share must lie between 0 and 1.
    fn share(&mut self, r: &super::Resource, at: &str, field: &str, v: Option<f64>) {
        if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
            self.problem(
                &r.origin,
                at.to_string(),
                format!("{field} is a share between 0 and 1"),
                None,
            );
        }
    }

    fn slos(&mut self, r: &super::Resource, h: &Health, names: &HashMap<&str, usize>) {
        // `alert/<name>`: an alert pushed to `tend watch` for this resource.
        let signals = |name: &str| {
            builtin_signals(r.key.kind).contains(&name)
                || names.contains_key(name)
                || name.starts_with("alert/")
        };
        let known_signals = || {
            let mut all: Vec<&str> = builtin_signals(r.key.kind).to_vec();
            all.extend(h.probes.iter().map(|p| p.name.as_str()));
            format!("signals of {}: {}", r.key, all.join(", "))
        };
        let mut slo_names = HashSet::new();
        for (i, slo) in h.slos.iter().enumerate() {
            let at = format!("/health/slos/{i}");
            if !slo_names.insert(slo.name.as_str()) {
                self.problem(
                    &r.origin,
                    format!("{at}/name"),
                    format!("SLO `{}` is declared twice", slo.name),
                    None,
                );
            }
            let burn =
                slo.objective.is_some() || slo.error_ratio.is_some() || !slo.burn_rates.is_empty();
            match (&slo.signal, burn) {
                (Some(s), false) => {
                    if !signals(s) {
                        self.problem(
                            &r.origin,
                            format!("{at}/signal"),
                            format!("SLO `{}` refers to unknown signal `{s}`", slo.name),
                            Some(known_signals()),
                        );
                    }
                }
                (None, true) => {
                    if slo.objective.is_none()
                        || slo.error_ratio.is_none()
                        || slo.burn_rates.is_empty()
                    {
                        self.problem(
                            &r.origin,
                            at.clone(),
                            format!(
                                "burn-rate SLO `{}` needs objective, errorRatio and burnRates",
                                slo.name
                            ),
                            None,
                        );
                    }
                    if slo
                        .error_ratio
                        .as_deref()
                        .is_some_and(|q| !q.contains("$window"))
                    {
                        self.problem(
                            &r.origin,
                            format!("{at}/errorRatio"),
                            "errorRatio must use `$window` where the range goes, e.g. rate(errors[$window])".into(),
                            None,
                        );
                    }
                    if !self.prometheus {
                        self.problem(
                            &r.origin,
                            at.clone(),
                            format!("burn-rate SLO `{}` needs a Prometheus server", slo.name),
                            no_prometheus(),
                        );
                    }
                }
                _ => self.problem(
                    &r.origin,
                    at.clone(),
                    format!(
                        "SLO `{}` needs either a signal, or objective, errorRatio and burnRates",
                        slo.name
                    ),
                    None,
                ),
            }
        }
    }

    fn signature(&mut self, s: &Signature) {
        if !self.runbook_names.contains(s.spec.runbook.as_str()) {
            let help = Some(self.known_runbooks());
            self.problem(
                &s.origin,
                "/spec/runbook".into(),
                format!("unknown runbook `{}`", s.spec.runbook),
                help,
            );
        }
        if let Some(k) = &s.spec.selector.kind {
            if Kind::parse(k).is_none_or(|k| k.provider().is_none()) {
                self.problem(
                    &s.origin,
                    "/spec/selector/kind".into(),
                    format!("unknown resource kind `{k}`"),
                    None,
                );
            }
        }
        if s.spec.all.is_empty() && s.spec.any.is_empty() {
            self.problem(
                &s.origin,
                "/spec".into(),
                "a signature needs at least one condition in `all` or `any`".into(),
                None,
            );
        }
        for (list, conds) in [("all", &s.spec.all), ("any", &s.spec.any)] {
            for (i, c) in conds.iter().enumerate() {
                if c.signal.is_some() == c.slo.is_some() {
                    self.problem(
                        &s.origin,
                        format!("/spec/{list}/{i}"),
                        "a condition names exactly one of signal, slo".into(),
                        None,
                    );
                }
                if let Some(a) = &c.anomaly {
                    if c.signal.is_none() {
                        self.problem(
                            &s.origin,
                            format!("/spec/{list}/{i}/anomaly"),
                            "an anomaly condition is on a signal (an SLO has its own objective)"
                                .into(),
                            None,
                        );
                    }
                    if a.sensitivity.is_nan() || a.sensitivity <= 0.0 {
                        self.problem(
                            &s.origin,
                            format!("/spec/{list}/{i}/anomaly/sensitivity"),
                            "sensitivity is a positive number of deviations".into(),
                            None,
                        );
                    }
                    if a.seasonality == Seasonality::Weekly
                        && a.baseline() < std::time::Duration::from_secs(14 * 86_400)
                    {
                        self.problem(
                            &s.origin,
                            format!("/spec/{list}/{i}/anomaly/baseline"),
                            "a weekly baseline needs at least two weeks (14d): the values at this time of the week come from earlier weeks".into(),
                            None,
                        );
                    }
                    if a.min_history() > a.baseline() {
                        self.problem(
                            &s.origin,
                            format!("/spec/{list}/{i}/anomaly/minHistory"),
                            "minHistory cannot be longer than the baseline".into(),
                            None,
                        );
                    }
                }
            }
        }
    }

    fn runbook(&mut self, rb: &Runbook, allowed: &HashSet<&str>) {
        for (i, step) in rb.spec.steps.iter().enumerate() {
            let at = format!("/spec/steps/{i}");
            match step.action {
                StepAction::Command => match step.command.first() {
                    None => self.problem(
                        &rb.origin,
                        at,
                        "a command step needs `command`".into(),
                        None,
                    ),
                    Some(prog) if !allowed.contains(prog.as_str()) => self.problem(
                        &rb.origin,
                        format!("{at}/command/0"),
                        format!("`{prog}` is not an allowed command"),
                        Some("list it in Settings spec.healing.commands".into()),
                    ),
                    Some(_) => {}
                },
                StepAction::Scale if step.by.is_none() => {
                    self.problem(&rb.origin, at, "a scale step needs `by`".into(), None)
                }
                _ if !step.command.is_empty() => self.problem(
                    &rb.origin,
                    format!("{at}/command"),
                    format!(
                        "`command` belongs to command steps, not {}",
                        step.action.as_str()
                    ),
                    None,
                ),
                _ => {}
            }
        }
    }
}

/// Something valid that likely does not do what its author meant.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub origin: Origin,
    /// A JSON Pointer into the document.
    pub pointer: String,
    pub message: String,
}

/// `for` shorter than the range window of a Prometheus signal's query does
/// not filter noise: a burst shorter than `for` stays visible in the query
/// for up to the window longer, so it outlasts `for` and acts anyway.
pub fn noise_warnings(resources: &[super::Resource], signatures: &[Signature]) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut check = |origin: &Origin,
                     pointer: String,
                     signal: &str,
                     for_: Option<Span>,
                     window: Option<std::time::Duration>| {
        let Some(window) = window else { return };
        let f = for_.unwrap_or_default().0;
        if f < window {
            out.push(Warning {
                origin: origin.clone(),
                pointer,
                message: format!(
                    "`for: {}` is shorter than the {} range window of signal `{signal}`'s query: a burst shorter than `for` stays visible for up to {} longer, so `for` does not filter it; use `for` of at least {} plus the shortest burst to ignore, or a shorter window",
                    humantime::format_duration(f),
                    humantime::format_duration(window),
                    humantime::format_duration(window),
                    humantime::format_duration(window),
                ),
            });
        }
    };
    let window_of = |r: &super::Resource, signal: &str| -> Option<std::time::Duration> {
        let h = r.health.as_ref()?;
        let p = h.probes.iter().find(|p| p.name == signal)?;
        longest_range(&p.prometheus.as_ref()?.query)
    };
    for r in resources {
        let Some(h) = &r.health else { continue };
        for (i, slo) in h.slos.iter().enumerate() {
            if let Some(sig) = &slo.signal {
                check(
                    &r.origin,
                    format!("/health/slos/{i}/for"),
                    sig,
                    slo.for_,
                    window_of(r, sig),
                );
            }
        }
    }
    for s in signatures {
        for (list, conds) in [("all", &s.spec.all), ("any", &s.spec.any)] {
            for (i, c) in conds.iter().enumerate() {
                let Some(sig) = &c.signal else { continue };
                let window = resources
                    .iter()
                    .filter(|r| s.selects(r))
                    .filter_map(|r| window_of(r, sig))
                    .max();
                check(
                    &s.origin,
                    format!("/spec/{list}/{i}/for"),
                    sig,
                    c.for_,
                    window,
                );
            }
        }
    }
    out
}

/// How many days of the samples it reads itself tend keeps (forecasts
/// and anomaly baselines learn from them).
pub const SAMPLE_DAYS: i64 = 15;

/// A signature condition on a signal none of the resources it selects has
/// (a typo stays quiet forever otherwise), and an anomaly baseline longer
/// than the history tend keeps of a signal it samples itself.
pub fn signal_warnings(resources: &[super::Resource], signatures: &[Signature]) -> Vec<Warning> {
    let mut out = Vec::new();
    let has = |r: &super::Resource, signal: &str| {
        builtin_signals(r.key.kind).contains(&signal)
            || signal.starts_with("alert/")
            || r.health
                .as_ref()
                .is_some_and(|h| h.probes.iter().any(|p| p.name == signal))
    };
    let prometheus = |r: &super::Resource, signal: &str| {
        r.health.as_ref().is_some_and(|h| {
            h.probes
                .iter()
                .any(|p| p.name == signal && p.prometheus.is_some())
        })
    };
    let kept = std::time::Duration::from_secs(SAMPLE_DAYS as u64 * 86_400);
    for s in signatures {
        let selected: Vec<&super::Resource> = resources.iter().filter(|r| s.selects(r)).collect();
        if selected.is_empty() {
            continue;
        }
        for (list, conds) in [("all", &s.spec.all), ("any", &s.spec.any)] {
            for (i, c) in conds.iter().enumerate() {
                let Some(signal) = &c.signal else { continue };
                if !selected.iter().any(|r| has(r, signal)) {
                    let mut known: Vec<&str> = builtin_signals(selected[0].key.kind).to_vec();
                    if let Some(h) = &selected[0].health {
                        known.extend(h.probes.iter().map(|p| p.name.as_str()));
                    }
                    out.push(Warning {
                        origin: s.origin.clone(),
                        pointer: format!("/spec/{list}/{i}/signal"),
                        message: format!(
                            "none of the resources signature `{}` selects has a signal `{signal}`, so this condition never holds (signals of {}: {})",
                            s.name,
                            selected[0].key,
                            known.join(", ")
                        ),
                    });
                }
                let Some(a) = &c.anomaly else { continue };
                let sampled = selected
                    .iter()
                    .any(|r| has(r, signal) && !prometheus(r, signal));
                if sampled && a.baseline() > kept {
                    out.push(Warning {
                        origin: s.origin.clone(),
                        pointer: format!("/spec/{list}/{i}/anomaly/baseline"),
                        message: format!(
                            "tend keeps {} days of the samples it reads itself: the baseline of `{signal}` covers at most that (a prometheus probe can look further back)",
                            SAMPLE_DAYS
                        ),
                    });
                }
            }
        }
    }
    out
}

/// The longest range window (`[5m]`, `[1h30m]`, a subquery's `[10m:1m]`)
/// in a PromQL query.
pub fn longest_range(query: &str) -> Option<std::time::Duration> {
    let mut longest = None;
    let mut rest = query;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inside = after[..close].split(':').next().unwrap_or_default().trim();
        if let Some(d) = prom_duration(inside) {
            longest = longest.max(Some(d));
        }
        rest = &after[close..];
    }
    longest
}

/// A Prometheus duration: `1h30m`, `15s`, `500ms`.
fn prom_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        let secs = match unit {
            "ms" => {
                total += std::time::Duration::from_millis(n);
                continue;
            }
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86400,
            "w" => n * 7 * 86400,
            _ => n * 365 * 86400,
        };
        total += std::time::Duration::from_secs(secs);
    }
    Some(total)
}

fn no_prometheus() -> Option<String> {
    Some("set Settings spec.healing.prometheus.url".to_string())
}

fn regex_check(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restore of an escalated resource waits `initial`, doubling
    /// after each attempt up to `max` (a pure function of the attempt
    /// count; the pass's clock decides when it is due).
    #[test]
    fn the_backoff_doubles_up_to_its_max() {
        let b = Backoff {
            initial: Span(std::time::Duration::from_secs(4)),
            max: Span(std::time::Duration::from_secs(20)),
        };
        let waits: Vec<u64> = (0..5).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(waits, [4, 8, 16, 20, 20]);
        assert_eq!(b.delay(u32::MAX).as_secs(), 20);
    }

    #[test]
    fn range_windows_are_read_from_queries() {
        let q = r#"sum(rate(x{code=~"5.."}[15s])) / sum(rate(x[1m])) + max_over_time(y[1h30m:1m])"#;
        assert_eq!(longest_range(q), Some(std::time::Duration::from_secs(5400)));
        assert_eq!(longest_range("up"), None);
        assert_eq!(
            longest_range("x[500ms]"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(longest_range("x[$window]"), None);
    }
}
