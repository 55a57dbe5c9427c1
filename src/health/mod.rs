//! Health: reading signals, tracking SLOs and matching failure signatures.
//!
//! Every signal has three outcomes: healthy, unhealthy and unknown. Unknown
//! (a probe target down, Prometheus unreachable, a query that returned
//! nothing) is reported but never counts as a symptom, so it can never
//! trigger remediation. Durations (`for`, `recovery`) are measured against
//! signal states kept in the state database, so they hold across passes.
//! This module reads; it never acts.

pub mod alerts;
pub mod host;
mod probe;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::health::{builtin_signals, Severity, Signature, Slo};
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
}

/// The health of one resource in one pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    pub target: ResourceKey,
    pub signals: Vec<Tracked>,
    pub slos: Vec<SloState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
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
    let problem = diagnose(r, &by_name, &slos, signatures, now);
    Assessment {
        target: r.key.clone(),
        signals,
        slos,
        problem,
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

fn diagnose(
    r: &Resource,
    signals: &HashMap<&str, &Tracked>,
    slos: &[SloState],
    signatures: &[Signature],
    now: DateTime<Utc>,
) -> Option<Problem> {
    let slo_by_name: HashMap<&str, &SloState> = slos.iter().map(|s| (s.name.as_str(), s)).collect();
    let holds = |c: &crate::model::health::Condition| -> Option<Tracked> {
        if let Some(sig) = &c.signal {
            let t = signals.get(sig.as_str())?;
            t.unhealthy_for(c.for_.unwrap_or_default().0, now)
                .then(|| (*t).clone())
        } else {
            let s = slo_by_name.get(c.slo.as_deref()?)?;
            s.breached.then(|| s.signal.clone())
        }
    };
    // Signatures are sorted by name, so among equally specific ones the
    // first name wins.
    let mut best: Option<(&Signature, Vec<Tracked>)> = None;
    for sig in signatures.iter().filter(|s| s.selects(r)) {
        let mut symptoms = Vec::new();
        let all_hold = sig.spec.all.iter().all(|c| match holds(c) {
            Some(t) => {
                symptoms.push(t);
                true
            }
            None => false,
        });
        if !all_hold {
            continue;
        }
        if !sig.spec.any.is_empty() {
            let any: Vec<Tracked> = sig.spec.any.iter().filter_map(holds).collect();
            if any.is_empty() {
                continue;
            }
            symptoms.extend(any);
        }
        if best
            .as_ref()
            .is_none_or(|(b, _)| sig.specificity() > b.specificity())
        {
            best = Some((sig, symptoms));
        }
    }
    let runbook = r.remediation.as_ref().map(|m| m.runbook.clone());
    let (cause, signature, runbook, severity, mut symptoms) = if let Some((sig, symptoms)) = best {
        (
            sig.spec.cause.clone(),
            Some(sig.name.clone()),
            Some(sig.spec.runbook.clone()),
            sig.spec.severity,
            symptoms,
        )
    } else if let Some(s) = slos.iter().find(|s| s.breached) {
        (
            format!("SLO `{}` is breached", s.name),
            None,
            runbook,
            Severity::Warning,
            vec![s.signal.clone()],
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
        )
    } else {
        return None;
    };
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
