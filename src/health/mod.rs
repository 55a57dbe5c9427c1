//! Health: reading signals, tracking SLOs and matching failure signatures.
//!
//! Every signal has three outcomes: healthy, unhealthy and unknown. Unknown
//! (a probe target down, Prometheus unreachable, a query that returned
//! nothing) is reported but never counts as a symptom, so it can never
//! trigger remediation. Durations (`for`, `recovery`) are measured against
//! signal states kept in the state database, so they hold across passes.
//! This module reads; it never acts.

pub mod alerts;
pub mod history;
pub mod host;
mod probe;
pub mod trend;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::health::{builtin_signals, Severity, Signature, Slo, Trust};
use crate::model::{Resource, ResourceKey};
use crate::state::SignalRow;
use crate::vocab::LiveResource;
use crate::vocab::PORT_CONFLICT;
pub use crate::vocab::{Remembered, Status};

pub use probe::Prober;

/// One reading of one signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub signal: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub detail: String,
}

/// A signal as tracked over time: the latest reading and since when its
/// status has been what it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracked {
    #[serde(flatten)]
    pub reading: Reading,
    pub since: DateTime<Utc>,
    /// The latest time this signal was seen healthy.
    #[serde(rename = "lastHealthy", skip_serializing_if = "Option::is_none")]
    pub last_healthy: Option<DateTime<Utc>>,
}

impl Tracked {
    /// Unhealthy without a break for at least `d`.
    pub fn unhealthy_for(&self, d: Duration, now: DateTime<Utc>) -> bool {
        self.reading.status == Status::Unhealthy && elapsed(self.since, now) >= d
    }
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

/// Folds a new reading into what was remembered: the `since` time moves only
/// when the status changes.
pub fn track(reading: Reading, before: Option<&Remembered>, now: DateTime<Utc>) -> Tracked {
    let since = match before {
        Some(b) if b.status == reading.status => b.since,
        _ => now,
    };
    let last_healthy = if reading.status == Status::Healthy {
        Some(now)
    } else {
        before.and_then(|b| b.last_healthy)
    };
    Tracked {
        reading,
        since,
        last_healthy,
    }
}

/// An SLO's state with hysteresis: it becomes breached after its signal has
/// been unhealthy for `for`, and met again only after the signal has been
/// healthy for `recovery`. An unknown signal leaves the state as it was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloState {
    pub name: String,
    pub breached: bool,
    pub since: DateTime<Utc>,
    pub signal: Tracked,
}

pub fn slo_state(
    slo: &Slo,
    signal: &Tracked,
    before: Option<&Remembered>,
    now: DateTime<Utc>,
) -> SloState {
    let was = before
        .map(|b| b.status == Status::Unhealthy)
        .unwrap_or(false);
    let since_before = before.map(|b| b.since).unwrap_or(now);
    let lasted = elapsed(signal.since, now);
    let breached = match (was, signal.reading.status) {
        (false, Status::Unhealthy) => lasted >= slo.for_duration(),
        (true, Status::Healthy) => lasted < slo.recovery_duration(),
        (was, _) => was,
    };
    SloState {
        name: slo.name.clone(),
        breached,
        since: if breached == was { since_before } else { now },
        signal: signal.clone(),
    }
}

/// What is wrong with a resource and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub cause: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    pub severity: Severity,
    /// The signals that make up the problem, with values and since when.
    pub symptoms: Vec<Tracked>,
    /// When the failure most likely began: the latest time its signals were
    /// all healthy, else when the first of them turned unhealthy.
    pub onset: DateTime<Utc>,
    /// Why this signature names the problem rather than the others that
    /// match too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// A more specific signature whose signals are all unhealthy already
    /// and only wait on their `for`: the first step of a new incident may
    /// wait for it (`Settings spec.healing.diagnosisGrace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// The trust of the signature that names it.
    #[serde(skip_serializing_if = "Trust::is_auto")]
    pub trust: Trust,
}

/// A signature about to match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub signature: String,
    /// How long until every one of its `for`s has held, if its signals stay
    /// unhealthy.
    pub ready_in_ms: u64,
    /// The shortest `for` involved (its waiting conditions', and a breached
    /// SLO's that opened the problem): the grace never exceeds it.
    pub shortest_for_ms: u64,
}

impl Pending {
    /// How long the first step of a new incident waits for this signature:
    /// the grace, never longer than the shortest `for` involved.
    pub fn grace(&self, grace: Duration) -> Duration {
        grace.min(Duration::from_millis(self.shortest_for_ms))
    }
}

/// The health of one resource in one pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    pub target: ResourceKey,
    pub signals: Vec<Tracked>,
    pub slos: Vec<SloState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// Signatures in shadow that match: recorded, never acted on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowMatch>,
}

/// A signature in shadow that matches a resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowMatch {
    pub signature: String,
    pub cause: String,
    pub runbook: String,
}

impl Assessment {
    pub fn unknown(&self) -> impl Iterator<Item = &Tracked> {
        self.signals
            .iter()
            .filter(|s| s.reading.status == Status::Unknown)
    }
}

/// Whether tend watches a resource's health at all: it declares health or
/// remediation, or a signature selects it.
pub fn watched(r: &Resource, signatures: &[Signature]) -> bool {
    r.health.is_some() || r.remediation.is_some() || signatures.iter().any(|s| s.selects(r))
}

/// The shared sources a resource's signals read, by signal: an HTTP
/// probe's host and port, a TCP address, Prometheus, the route of a pushed
/// alert an SLO reads. Resources that read
/// one source fail together when it does. A process's liveness is no
/// shared source.
pub fn sources(r: &Resource) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(h) = &r.health else {
        return out;
    };
    for p in &h.probes {
        let source = if let Some(http) = &p.http {
            reqwest::Url::parse(&http.url).ok().and_then(|u| {
                Some(format!(
                    "HTTP {}:{}",
                    u.host_str()?,
                    u.port_or_known_default()?
                ))
            })
        } else if let Some(tcp) = &p.tcp {
            Some(format!("TCP {}", tcp.address))
        } else {
            p.prometheus.as_ref().map(|_| "Prometheus".to_string())
        };
        if let Some(s) = source {
            out.push((p.name.clone(), s));
        }
    }
    for slo in &h.slos {
        if slo.error_ratio.is_some() {
            out.push((format!("burn-rate/{}", slo.name), "Prometheus".to_string()));
        }
        // A pushed alert: its route (the alert) is the shared source.
        if let Some(alert) = slo.signal.as_deref().filter(|s| s.starts_with("alert/")) {
            out.push((alert.to_string(), format!("the alert route {alert}")));
        }
    }
    out
}

/// Why a declared process is down, in words that stay the same from one
/// crash to the next (the pid and details are in the symptom). A process
/// that could not bind its address is a port conflict, whatever its health
/// probe reads from the process that holds the address.
pub fn process_down_cause(detail: &str) -> String {
    match detail.strip_prefix(PORT_CONFLICT) {
        Some(rest) => format!("port conflict: {}", rest.trim_start_matches([':', ' '])),
        None => "the process is not running".to_string(),
    }
}

/// The signals of a resource that are not probes.
pub fn builtin_readings(r: &Resource, live: Option<&LiveResource>) -> Vec<Reading> {
    builtin_signals(r.key.kind)
        .iter()
        .map(|name| {
            let (status, detail) = match (*name, live) {
                (_, None) => (Status::Unhealthy, "not found".to_string()),
                ("liveness", Some(l)) => match l.spec.get("state").and_then(|s| s.as_str()) {
                    Some("running") => (Status::Healthy, format!("running as {}", l.id)),
                    _ => (
                        Status::Unhealthy,
                        l.note.clone().unwrap_or_else(|| "not running".into()),
                    ),
                },
                (_, Some(l)) => match &l.note {
                    Some(n) => (Status::Unhealthy, n.clone()),
                    None => (Status::Healthy, format!("present as {}", l.id)),
                },
            };
            Reading {
                signal: name.to_string(),
                status,
                value: None,
                detail,
            }
        })
        .collect()
}

/// Assesses one resource from fresh readings and remembered states. Pure.
pub fn assess(
    r: &Resource,
    readings: Vec<Reading>,
    remembered: &HashMap<String, Remembered>,
    signatures: &[Signature],
    now: DateTime<Utc>,
) -> Assessment {
    let signals: Vec<Tracked> = readings
        .into_iter()
        .map(|rd| {
            let before = remembered.get(&rd.signal);
            track(rd, before, now)
        })
        .collect();
    let by_name: HashMap<&str, &Tracked> = signals
        .iter()
        .map(|t| (t.reading.signal.as_str(), t))
        .collect();
    let slos: Vec<SloState> = r
        .health
        .iter()
        .flat_map(|h| h.slos.iter())
        .filter_map(|slo| {
            let signal = by_name.get(slo_signal_name(slo).as_str())?;
            Some(slo_state(
                slo,
                signal,
                remembered.get(&slo_key(&slo.name)),
                now,
            ))
        })
        .collect();
    // Signatures in shadow never name a problem: what they would have
    // matched is recorded beside it.
    let (shadowed, trusted): (Vec<Signature>, Vec<Signature>) = signatures
        .iter()
        .filter(|s| s.selects(r))
        .cloned()
        .partition(|s| s.spec.trust == Trust::Shadow);
    let problem = diagnose(r, &by_name, &slos, &trusted, now);
    let slo_by_name: HashMap<&str, &SloState> = slos.iter().map(|s| (s.name.as_str(), s)).collect();
    let shadow = shadowed
        .iter()
        .filter(|sig| {
            matches!(
                match_signature(sig, &by_name, &slo_by_name, now),
                Match::Holds(_)
            )
        })
        .map(|sig| ShadowMatch {
            signature: sig.name.clone(),
            cause: sig.spec.cause.clone(),
            runbook: sig.spec.runbook.clone(),
        })
        .collect();
    Assessment {
        target: r.key.clone(),
        signals,
        slos,
        problem,
        shadow,
    }
}

/// The signal an SLO is judged on: its declared signal, or for a burn-rate
/// SLO the burn-rate reading tend makes under the SLO's own name.
pub fn slo_signal_name(slo: &Slo) -> String {
    slo.signal
        .clone()
        .unwrap_or_else(|| format!("burn-rate/{}", slo.name))
}

/// The key under which an SLO's breach state is remembered.
pub fn slo_key(name: &str) -> String {
    format!("slo/{name}")
}

/// A tracked signal as the state store remembers it.
pub fn signal_row(t: &Tracked) -> SignalRow {
    SignalRow {
        signal: t.reading.signal.clone(),
        status: t.reading.status,
        since: t.since,
        last_healthy: t.last_healthy,
        value: t.reading.value,
        detail: t.reading.detail.clone(),
    }
}

/// An SLO's breach state, remembered under `slo/<name>`.
pub fn slo_row(name: &str, breached: bool, since: DateTime<Utc>) -> SignalRow {
    SignalRow {
        signal: slo_key(name),
        status: if breached {
            Status::Unhealthy
        } else {
            Status::Healthy
        },
        since,
        last_healthy: None,
        value: None,
        detail: String::new(),
    }
}

/// Every signal and SLO state of one assessment, to remember.
pub fn rows_of(a: &Assessment) -> Vec<SignalRow> {
    let mut rows: Vec<SignalRow> = a.signals.iter().map(signal_row).collect();
    rows.extend(a.slos.iter().map(|s| slo_row(&s.name, s.breached, s.since)));
    rows
}

/// How one signature stands against this pass's signals.
enum Match {
    /// Every condition holds: these are its symptoms.
    Holds(Vec<Tracked>),
    /// Every condition's signal is unhealthy, but some have not been for
    /// their `for` yet.
    Waiting(Pending),
    No,
}

/// How one condition stands: held (its symptom), unhealthy but not for
/// long enough (how much longer, and its `for`), or not at all.
enum Cond {
    Holds(Tracked),
    Waits(Duration, Duration),
    No,
}

fn condition(
    c: &crate::model::health::Condition,
    signals: &HashMap<&str, &Tracked>,
    slos: &HashMap<&str, &SloState>,
    now: DateTime<Utc>,
) -> Cond {
    if let Some(sig) = c.judged_signal() {
        let Some(t) = signals.get(sig.as_str()) else {
            return Cond::No;
        };
        if t.reading.status != Status::Unhealthy {
            return Cond::No;
        }
        let need = c.for_.unwrap_or_default().0;
        let lasted = elapsed(t.since, now);
        if lasted >= need {
            Cond::Holds((*t).clone())
        } else {
            Cond::Waits(need - lasted, need)
        }
    } else {
        match c.slo.as_deref().and_then(|n| slos.get(n)) {
            Some(s) if s.breached => Cond::Holds(s.signal.clone()),
            _ => Cond::No,
        }
    }
}

fn match_signature(
    sig: &Signature,
    signals: &HashMap<&str, &Tracked>,
    slos: &HashMap<&str, &SloState>,
    now: DateTime<Utc>,
) -> Match {
    let mut symptoms = Vec::new();
    // (longest remaining wait, shortest `for` among the waiting ones)
    let mut wait: Option<(Duration, Duration)> = None;
    let mut waits = |left: Duration, need: Duration| {
        let w = wait.get_or_insert((left, need));
        *w = (w.0.max(left), w.1.min(need));
    };
    for c in &sig.spec.all {
        match condition(c, signals, slos, now) {
            Cond::Holds(t) => symptoms.push(t),
            Cond::Waits(left, need) => waits(left, need),
            Cond::No => return Match::No,
        }
    }
    if !sig.spec.any.is_empty() {
        let mut held = Vec::new();
        let mut soonest: Option<(Duration, Duration)> = None;
        for c in &sig.spec.any {
            match condition(c, signals, slos, now) {
                Cond::Holds(t) => held.push(t),
                Cond::Waits(left, need) => {
                    if soonest.is_none_or(|(l, _)| left < l) {
                        soonest = Some((left, need));
                    }
                }
                Cond::No => {}
            }
        }
        match (held.is_empty(), soonest) {
            (false, _) => symptoms.extend(held),
            (true, Some((left, need))) => waits(left, need),
            (true, None) => return Match::No,
        }
    }
    match wait {
        None => Match::Holds(symptoms),
        Some((ready_in, shortest_for)) => Match::Waiting(Pending {
            signature: sig.name.clone(),
            ready_in_ms: ready_in.as_millis() as u64,
            shortest_for_ms: shortest_for.as_millis() as u64,
        }),
    }
}

/// How many conditions, in words.
fn conditions(n: usize) -> String {
    if n == 1 {
        "1 condition".to_string()
    } else {
        format!("{n} conditions")
    }
}

/// Why `chosen` names the problem rather than the other signatures that
/// match too: the most specific one (the most conditions), then the first
/// by name.
fn why_chosen(chosen: &Signature, others: &[&Signature]) -> String {
    let mine = chosen.specificity();
    if others.is_empty() {
        return format!(
            "`{}` ({}) is the only signature that matches",
            chosen.name,
            conditions(mine)
        );
    }
    let over: Vec<String> = others
        .iter()
        .map(|o| {
            let theirs = o.specificity();
            let reason = if theirs < mine {
                "less specific"
            } else {
                "as specific, later by name"
            };
            format!("`{}` ({}, {reason})", o.name, conditions(theirs))
        })
        .collect();
    format!(
        "`{}` ({}) was chosen over {}",
        chosen.name,
        conditions(mine),
        over.join(", ")
    )
}

/// How specific a diagnosis is: a signature (by its number of conditions)
/// is more specific than an SLO or a dead process, which name a symptom.
/// A signature that is no longer declared still outranks a symptom.
pub fn rank(signature: Option<&str>, signatures: &[Signature]) -> usize {
    match signature {
        None => 0,
        Some(name) => {
            1 + signatures
                .iter()
                .find(|s| s.name == name)
                .map_or(0, Signature::specificity)
        }
    }
}

/// What an assessment leaves to remember, as the next assessment reads it
/// (the store's remembered rows, kept in memory between looks).
pub fn memory_of(a: &Assessment) -> HashMap<String, Remembered> {
    rows_of(a)
        .into_iter()
        .map(|r| {
            (
                r.signal,
                Remembered {
                    status: r.status,
                    since: r.since,
                    last_healthy: r.last_healthy,
                },
            )
        })
        .collect()
}

fn diagnose(
    r: &Resource,
    signals: &HashMap<&str, &Tracked>,
    slos: &[SloState],
    signatures: &[Signature],
    now: DateTime<Utc>,
) -> Option<Problem> {
    let slo_by_name: HashMap<&str, &SloState> = slos.iter().map(|s| (s.name.as_str(), s)).collect();
    // Signatures are sorted by name, so among equally specific ones the
    // first name wins.
    let mut matched: Vec<(&Signature, Vec<Tracked>)> = Vec::new();
    let mut waiting: Vec<(&Signature, Pending)> = Vec::new();
    for sig in signatures.iter().filter(|s| s.selects(r)) {
        match match_signature(sig, signals, &slo_by_name, now) {
            Match::Holds(symptoms) => matched.push((sig, symptoms)),
            Match::Waiting(p) => waiting.push((sig, p)),
            Match::No => {}
        }
    }
    let most_specific = |list: &[&Signature]| -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, s) in list.iter().enumerate() {
            if best.is_none_or(|b| s.specificity() > list[b].specificity()) {
                best = Some(i);
            }
        }
        best
    };
    let names: Vec<&Signature> = matched.iter().map(|(s, _)| *s).collect();
    let best = most_specific(&names).map(|i| {
        let others: Vec<&Signature> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| *s)
            .collect();
        let why = why_chosen(names[i], &others);
        (names[i], matched.swap_remove(i).1, why)
    });
    let runbook = r.remediation.as_ref().map(|m| m.runbook.clone());
    let mut slo_for = None;
    let trust = best.as_ref().map_or(Trust::Auto, |(s, _, _)| s.spec.trust);
    let (cause, signature, runbook, severity, mut symptoms, why) =
        if let Some((sig, symptoms, why)) = best {
            (
                sig.spec.cause.clone(),
                Some(sig.name.clone()),
                Some(sig.spec.runbook.clone()),
                sig.spec.severity,
                symptoms,
                Some(why),
            )
        } else if let Some(s) = slos.iter().find(|s| s.breached) {
            slo_for = r
                .health
                .iter()
                .flat_map(|h| h.slos.iter())
                .find(|d| d.name == s.name)
                .map(Slo::for_duration);
            (
                format!("SLO `{}` is breached", s.name),
                None,
                runbook,
                Severity::Warning,
                vec![s.signal.clone()],
                None,
            )
        } else if let Some(t) = signals
            .get("liveness")
            .filter(|t| t.reading.status == Status::Unhealthy)
        {
            (
                process_down_cause(&t.reading.detail),
                None,
                runbook,
                Severity::Warning,
                vec![(*t).clone()],
                None,
            )
        } else {
            return None;
        };
    // The most specific signature about to match, if it would name the
    // problem more precisely than what matches now.
    let mine = rank(signature.as_deref(), signatures);
    let candidates: Vec<&Signature> = waiting
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| 1 + s.specificity() > mine)
        .collect();
    let pending = most_specific(&candidates).map(|i| {
        let name = &candidates[i].name;
        let mut p = waiting
            .iter()
            .find(|(s, _)| &s.name == name)
            .map(|(_, p)| p.clone())
            .expect("a candidate is waiting");
        if let Some(f) = slo_for.filter(|f| !f.is_zero()) {
            p.shortest_for_ms = p.shortest_for_ms.min(f.as_millis() as u64);
        }
        p
    });
    symptoms.dedup_by(|a, b| a.reading.signal == b.reading.signal);
    let onset = symptoms
        .iter()
        .map(|t| t.last_healthy.unwrap_or(t.since))
        .max()
        .unwrap_or(now);
    Some(Problem {
        cause,
        signature,
        runbook,
        severity,
        symptoms,
        onset,
        why,
        pending,
        trust,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health::Health;
    use crate::model::Span;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn reading(status: Status) -> Reading {
        Reading {
            signal: "http".into(),
            status,
            value: None,
            detail: String::new(),
        }
    }

    fn slo(for_s: u64, recovery_s: u64) -> Slo {
        Slo {
            name: "avail".into(),
            signal: Some("http".into()),
            for_: Some(Span(Duration::from_secs(for_s))),
            recovery: Some(Span(Duration::from_secs(recovery_s))),
            objective: None,
            error_ratio: None,
            burn_rates: vec![],
        }
    }

    fn remember(t: &Tracked) -> Remembered {
        Remembered {
            status: t.reading.status,
            since: t.since,
            last_healthy: t.last_healthy,
        }
    }

    fn remember_slo(s: &SloState) -> Remembered {
        Remembered {
            status: if s.breached {
                Status::Unhealthy
            } else {
                Status::Healthy
            },
            since: s.since,
            last_healthy: None,
        }
    }

    /// Drives an SLO through a sequence of (second, status) readings and
    /// returns whether it was breached after each.
    fn run(slo: &Slo, seq: &[(i64, Status)]) -> Vec<bool> {
        let (mut sig, mut st): (Option<Remembered>, Option<Remembered>) = (None, None);
        seq.iter()
            .map(|(s, status)| {
                let t = track(reading(*status), sig.as_ref(), at(*s));
                let state = slo_state(slo, &t, st.as_ref(), at(*s));
                sig = Some(remember(&t));
                st = Some(remember_slo(&state));
                state.breached
            })
            .collect()
    }

    #[test]
    fn an_slo_breaches_only_after_its_for_duration() {
        use Status::*;
        let got = run(
            &slo(5, 5),
            &[(0, Unhealthy), (3, Unhealthy), (6, Unhealthy)],
        );
        assert_eq!(got, vec![false, false, true]);
    }

    #[test]
    fn a_flapping_signal_never_breaches() {
        use Status::*;
        let seq: Vec<(i64, Status)> = (0..20)
            .map(|i| (i * 2, if i % 2 == 0 { Unhealthy } else { Healthy }))
            .collect();
        assert!(run(&slo(5, 5), &seq).iter().all(|b| !b));
    }

    #[test]
    fn recovery_needs_the_recovery_duration_and_unknown_changes_nothing() {
        use Status::*;
        let got = run(
            &slo(0, 10),
            &[
                (0, Unhealthy),
                (1, Healthy),
                (5, Unknown),
                (8, Healthy),
                (12, Healthy),
            ],
        );
        // healthy since 8 after the unknown reading; met again at 18 at
        // the earliest
        assert_eq!(got, vec![true, true, true, true, true]);
        let got = run(&slo(0, 3), &[(0, Unhealthy), (1, Healthy), (5, Healthy)]);
        assert_eq!(got, vec![true, true, false]);
    }

    fn resource() -> Resource {
        let mut r: Resource = crate::model::load(&[crate::model::SourceFile {
            path: "a.yaml".into(),
            text: "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata: {name: web, labels: {app: web}}\nspec: {command: x}\n".into(),
        }])
        .unwrap()
        .resources
        .remove(0);
        r.health = Some(Box::new(Health::default()));
        r
    }

    fn signature(name: &str, all: &[&str]) -> Signature {
        Signature {
            name: name.into(),
            spec: serde_json::from_value(serde_json::json!({
                "cause": name, "runbook": "rb",
                "all": all.iter().map(|s| serde_json::json!({"signal": s})).collect::<Vec<_>>()
            }))
            .unwrap(),
            origin: resource().origin,
        }
    }

    fn with_for(mut sig: Signature, secs: u64) -> Signature {
        for c in &mut sig.spec.all {
            c.for_ = Some(Span(Duration::from_secs(secs)));
        }
        sig
    }

    /// An SLO breached before a signature's `for` has held: the problem is
    /// the SLO, and the signature is pending with how long it has left;
    /// once its `for` holds it names the problem, and says why.
    #[test]
    fn a_signature_waiting_on_its_for_is_pending_then_named_with_why() {
        let mut r = resource();
        r.health = Some(Box::new(Health {
            slos: vec![slo(5, 20)],
            ..Health::default()
        }));
        let read = |name: &str| Reading {
            signal: name.into(),
            status: Status::Unhealthy,
            value: Some(0.9),
            detail: String::new(),
        };
        let sigs = vec![
            with_for(signature("errors", &["errors"]), 10),
            with_for(signature("leak", &["errors", "memory"]), 10),
        ];
        // http unhealthy since 0, errors since 3; at 6 the SLO (for 5s) is
        // breached and `errors` has 7 s of its 10 s left.
        let mut memory = HashMap::new();
        for (s, signal) in [(0, "http"), (3, "errors")] {
            memory.insert(
                signal.to_string(),
                Remembered {
                    status: Status::Unhealthy,
                    since: at(s),
                    last_healthy: Some(at(s - 1)),
                },
            );
        }
        memory.insert(
            slo_key("avail"),
            Remembered {
                status: Status::Unhealthy,
                since: at(5),
                last_healthy: None,
            },
        );
        let readings = vec![read("http"), read("errors")];
        let a = assess(&r, readings.clone(), &memory, &sigs, at(6));
        let p = a.problem.unwrap();
        assert_eq!(p.cause, "SLO `avail` is breached");
        assert_eq!(p.why, None);
        let pending = p.pending.unwrap();
        assert_eq!(pending.signature, "errors");
        assert_eq!(pending.ready_in_ms, 7_000);
        // The shortest `for` involved is the SLO's 5 s.
        assert_eq!(pending.shortest_for_ms, 5_000);
        assert_eq!(
            pending.grace(Duration::from_secs(8)),
            Duration::from_secs(5)
        );

        let a = assess(&r, readings, &memory, &sigs, at(13));
        let p = a.problem.unwrap();
        assert_eq!(p.signature.as_deref(), Some("errors"));
        assert_eq!(p.pending, None, "nothing more specific is waiting");
        assert_eq!(
            p.why.as_deref(),
            Some("`errors` (1 condition) is the only signature that matches")
        );
        assert!(rank(Some("errors"), &sigs) > rank(None, &sigs));
        assert!(rank(Some("leak"), &sigs) > rank(Some("errors"), &sigs));

        // With memory unhealthy too, `leak` matches and says why.
        memory.insert("memory".into(), memory["errors"].clone());
        let readings = vec![read("http"), read("errors"), read("memory")];
        let p = assess(&r, readings.clone(), &memory, &sigs, at(13))
            .problem
            .unwrap();
        assert_eq!(p.signature.as_deref(), Some("leak"));
        assert_eq!(
            p.why.as_deref(),
            Some("`leak` (2 conditions) was chosen over `errors` (1 condition, less specific)")
        );
        // Before the `for`s hold, `leak` is the one pending.
        let p = assess(&r, readings, &memory, &sigs, at(6)).problem.unwrap();
        assert_eq!(p.pending.unwrap().signature, "leak");
    }

    #[test]
    fn the_most_specific_signature_wins_then_the_first_name() {
        let r = resource();
        let read = |name: &str, status| Reading {
            signal: name.into(),
            status,
            value: None,
            detail: String::new(),
        };
        let readings = vec![
            read("errors", Status::Unhealthy),
            read("memory", Status::Unhealthy),
            read("latency", Status::Unknown),
        ];
        let mut sigs = vec![
            signature("b-errors", &["errors"]),
            signature("a-errors", &["errors"]),
            signature("leak", &["errors", "memory"]),
            signature("slow-leak", &["errors", "memory", "latency"]),
        ];
        sigs.sort_by(|a, b| a.name.cmp(&b.name));
        let a = assess(&r, readings.clone(), &HashMap::new(), &sigs, at(0));
        assert_eq!(a.problem.unwrap().signature.as_deref(), Some("leak"));
        let a = assess(&r, readings[..1].to_vec(), &HashMap::new(), &sigs, at(0));
        assert_eq!(a.problem.unwrap().signature.as_deref(), Some("a-errors"));
        let a = assess(
            &r,
            vec![read("errors", Status::Unknown)],
            &HashMap::new(),
            &sigs,
            at(0),
        );
        assert_eq!(a.problem, None, "unknown is never a symptom");
    }
}
