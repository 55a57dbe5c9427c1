//! Alerts pushed by a monitoring system (Alertmanager's webhook): each
//! alert that names a resource becomes the signal `alert/<alertname>` of
//! that resource, unhealthy while it fires and healthy once resolved,
//! usable in SLOs and signatures like any probe.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::{Reading, Status};
use crate::vocab::ResourceKey;

/// The prefix of alert signals.
pub const PREFIX: &str = "alert/";

#[derive(Debug, Clone, PartialEq)]
struct Alert {
    firing: bool,
    since: DateTime<Utc>,
    summary: String,
}

/// The latest state of every alert, by resource.
#[derive(Debug, Default)]
pub struct AlertBook {
    alerts: Mutex<HashMap<ResourceKey, BTreeMap<String, Alert>>>,
}

impl AlertBook {
    pub fn new() -> AlertBook {
        AlertBook::default()
    }

    /// Records an alert as firing or resolved.
    pub fn set(&self, key: ResourceKey, alertname: &str, firing: bool, summary: String) {
        let Ok(mut alerts) = self.alerts.lock() else {
            return;
        };
        let entry = alerts.entry(key).or_default();
        let changed = entry.get(alertname).is_none_or(|a| a.firing != firing);
        let since = match entry.get(alertname) {
            Some(a) if !changed => a.since,
            _ => Utc::now(),
        };
        entry.insert(
            alertname.to_string(),
            Alert {
                firing,
                since,
                summary,
            },
        );
    }

    /// The alert signals of a resource.
    pub fn readings(&self, key: &ResourceKey) -> Vec<Reading> {
        let Ok(alerts) = self.alerts.lock() else {
            return Vec::new();
        };
        alerts
            .get(key)
            .into_iter()
            .flatten()
            .map(|(name, a)| Reading {
                signal: format!("{PREFIX}{name}"),
                status: if a.firing {
                    Status::Unhealthy
                } else {
                    Status::Healthy
                },
                value: None,
                detail: format!(
                    "{} since {}{}",
                    if a.firing { "firing" } else { "resolved" },
                    a.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    if a.summary.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", a.summary)
                    }
                ),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Kind;

    #[test]
    fn an_alert_reads_unhealthy_while_it_fires_and_keeps_its_since() {
        let book = AlertBook::new();
        let key = ResourceKey::new(Kind::HostProcess, "web");
        book.set(
            key.clone(),
            "HighErrorRate",
            true,
            "errors above 20%".into(),
        );
        let first = book.readings(&key);
        assert_eq!(first[0].signal, "alert/HighErrorRate");
        assert_eq!(first[0].status, Status::Unhealthy);
        assert!(first[0].detail.ends_with("errors above 20%"));
        book.set(key.clone(), "HighErrorRate", true, String::new());
        assert_eq!(book.readings(&key)[0].detail[..27], first[0].detail[..27]);
        book.set(key.clone(), "HighErrorRate", false, String::new());
        assert_eq!(book.readings(&key)[0].status, Status::Healthy);
        assert!(book
            .readings(&ResourceKey::new(Kind::HostFile, "web"))
            .is_empty());
    }
}
