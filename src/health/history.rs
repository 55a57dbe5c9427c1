//! The samples forecasts and anomaly baselines learn from, for signals
//! tend reads itself (host signals, probes): kept in memory between looks,
//! loaded from the state store the first time a series is needed, and
//! handed back to the store in batches. Each series keeps only what its
//! longest reader covers, at a spacing that bounds it to about
//! `PER_SERIES` samples.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::trend::Sample;
use crate::model::health::Signature;
use crate::model::{Resource, ResourceKey};
use crate::state::SampleRow;

/// About how many samples one series keeps.
const PER_SERIES: u32 = 2000;
const MIN_SPACING: Duration = Duration::from_secs(1);
const MAX_SPACING: Duration = Duration::from_secs(300);

/// A series tend records, and how much of it its readers need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Want {
    pub signal: String,
    pub keep: Duration,
}

#[derive(Default)]
struct Series {
    samples: VecDeque<Sample>,
    keep: Duration,
    loaded: bool,
}

impl Series {
    fn spacing(&self) -> Duration {
        (self.keep / PER_SERIES).clamp(MIN_SPACING, MAX_SPACING)
    }
}

#[derive(Default)]
pub struct History {
    series: Mutex<HashMap<(ResourceKey, String), Series>>,
    unsaved: Mutex<Vec<SampleRow>>,
}

impl History {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<(ResourceKey, String), Series>) -> T) -> T {
        f(&mut self.series.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Adds a sample of a series kept for `keep` (once per spacing).
    pub fn push(&self, key: &ResourceKey, signal: &str, keep: Duration, at: DateTime<Utc>, v: f64) {
        if !v.is_finite() {
            return;
        }
        let added = self.with(|all| {
            let s = all.entry((key.clone(), signal.to_string())).or_default();
            s.keep = s.keep.max(keep);
            let spacing = chrono::Duration::from_std(s.spacing()).unwrap_or_default();
            if s.samples.back().is_some_and(|(t, _)| at - *t < spacing) {
                return false;
            }
            s.samples.push_back((at, v));
            let oldest = at - chrono::Duration::from_std(s.keep).unwrap_or_default();
            while s.samples.front().is_some_and(|(t, _)| *t < oldest) {
                s.samples.pop_front();
            }
            true
        });
        if added {
            self.unsaved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(SampleRow {
                    key: key.clone(),
                    signal: signal.to_string(),
                    at,
                    value: v,
                });
        }
    }

    /// The series' samples at or after `since`, oldest first.
    pub fn since(&self, key: &ResourceKey, signal: &str, since: DateTime<Utc>) -> Vec<Sample> {
        self.with(|all| {
            all.get(&(key.clone(), signal.to_string()))
                .map(|s| {
                    s.samples
                        .iter()
                        .filter(|(t, _)| *t >= since)
                        .copied()
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Whether the series still has to be loaded from the store.
    pub fn needs_load(&self, key: &ResourceKey, signal: &str) -> bool {
        self.with(|all| {
            all.get(&(key.clone(), signal.to_string()))
                .is_none_or(|s| !s.loaded)
        })
    }

    /// Puts stored samples before the ones read since.
    pub fn load(&self, key: &ResourceKey, want: &Want, stored: Vec<Sample>) {
        self.with(|all| {
            let s = all.entry((key.clone(), want.signal.clone())).or_default();
            s.keep = s.keep.max(want.keep);
            let first = s.samples.front().map(|(t, _)| *t);
            let mut merged: VecDeque<Sample> = stored
                .into_iter()
                .filter(|(t, _)| first.is_none_or(|f| *t < f))
                .collect();
            merged.extend(s.samples.drain(..));
            s.samples = merged;
            s.loaded = true;
        })
    }

    /// The samples not yet in the store.
    pub fn take_unsaved(&self) -> Vec<SampleRow> {
        std::mem::take(&mut *self.unsaved.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The series of `r` that tend records for its forecasts and anomaly
/// conditions (not Prometheus signals: Prometheus keeps their history).
pub fn wanted(r: &Resource, signatures: &[Signature]) -> Vec<Want> {
    let Some(h) = &r.health else {
        return Vec::new();
    };
    let prometheus = |name: &str| {
        h.probes
            .iter()
            .any(|p| p.name == name && p.prometheus.is_some())
    };
    let mut out: HashMap<String, Duration> = HashMap::new();
    let mut want = |signal: String, keep: Duration| {
        let k = out.entry(signal).or_default();
        *k = (*k).max(keep);
    };
    for p in &h.probes {
        if let Some(host) = p.host.as_ref().filter(|h| h.metric.is_forecast()) {
            want(level_signal(&p.name), host.over());
        }
        if let Some(f) = p.forecast.as_ref().filter(|f| !prometheus(&f.of)) {
            want(f.of.clone(), f.over());
        }
    }
    for sig in signatures.iter().filter(|s| s.selects(r)) {
        for c in sig.spec.all.iter().chain(&sig.spec.any) {
            if let (Some(signal), Some(a)) = (&c.signal, &c.anomaly) {
                if !prometheus(signal) {
                    want(signal.clone(), a.baseline());
                }
            }
        }
    }
    let mut v: Vec<Want> = out
        .into_iter()
        .map(|(signal, keep)| Want { signal, keep })
        .collect();
    v.sort_by(|a, b| a.signal.cmp(&b.signal));
    v
}

/// The series a forecast host metric keeps its level under.
pub fn level_signal(probe: &str) -> String {
    format!("{probe}/level")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn key() -> ResourceKey {
        ResourceKey::new(Kind::HostProcess, "app")
    }

    #[test]
    fn a_series_is_spaced_bounded_and_merged_with_what_was_stored() {
        let h = History::default();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let keep = Duration::from_secs(600);
        for i in 0..2000 {
            h.push(
                &key(),
                "disk",
                keep,
                t0 + chrono::Duration::milliseconds(250 * i),
                1.0,
            );
        }
        // One per second over 500 s.
        let all = h.since(&key(), "disk", t0);
        assert_eq!(all.len(), 500);
        assert_eq!(h.take_unsaved().len(), 500);
        assert!(h.take_unsaved().is_empty());
        assert!(h.needs_load(&key(), "disk"));
        let want = Want {
            signal: "disk".into(),
            keep,
        };
        h.load(
            &key(),
            &want,
            vec![(t0 - chrono::Duration::seconds(60), 0.5), (t0, 0.7)],
        );
        let all = h.since(&key(), "disk", t0 - chrono::Duration::seconds(3600));
        assert_eq!(all.len(), 501, "the stored sample at t0 is not doubled");
        assert_eq!(all[0].1, 0.5);
        assert!(!h.needs_load(&key(), "disk"));
        // Older than `keep` goes.
        h.push(
            &key(),
            "disk",
            keep,
            t0 + chrono::Duration::seconds(900),
            1.0,
        );
        let all = h.since(&key(), "disk", t0 - chrono::Duration::seconds(3600));
        assert!(
            all[0].0 >= t0 + chrono::Duration::seconds(300),
            "{:?}",
            all[0]
        );
    }
}
