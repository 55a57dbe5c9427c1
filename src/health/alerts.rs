//! Alerts pushed by a monitoring system (Alertmanager's webhook): each
//! alert that names a resource becomes the signal `alert/<alertname>` of
//! that resource, unhealthy while it fires and healthy once resolved,
//! usable in SLOs and signatures like any probe. An alert names its
//! resources with a `tend_resource="<kind>/<name>"` label, or through a
//! Signature that reads `alert/<alertname>` and whose selector labels the
//! alert carries: then it concerns every resource that signature selects.

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

/// Where an alert without `tend_resource` goes: a signature that reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub alertname: String,
    /// The signature's selector labels; the alert must carry all of them.
    pub labels: BTreeMap<String, String>,
    /// The resources the signature selects.
    pub targets: Vec<ResourceKey>,
}

/// The routes of a desired state: one per signature condition on an
/// `alert/<name>` signal.
pub fn routes(desired: &crate::model::DesiredState) -> Vec<Route> {
    let mut out = Vec::new();
    for sig in &desired.signatures {
        let targets: Vec<ResourceKey> = desired
            .resources
            .iter()
            .filter(|r| sig.selects(r))
            .map(|r| r.key.clone())
            .collect();
        for c in sig.spec.all.iter().chain(&sig.spec.any) {
            if let Some(name) = c.signal.as_deref().and_then(|s| s.strip_prefix(PREFIX)) {
                out.push(Route {
                    alertname: name.to_string(),
                    labels: sig.spec.selector.labels.clone(),
                    targets: targets.clone(),
                });
            }
        }
    }
    out
}

/// The instances of one alert, by Alertmanager's fingerprint.
type Instances = BTreeMap<String, Alert>;

/// The most alert names kept for one resource.
const MAX_ALERTS_PER_RESOURCE: usize = 64;
/// The most instances kept of one alert of one resource.
const MAX_INSTANCES: usize = 256;
/// The longest summary kept, in characters.
const MAX_SUMMARY: usize = 512;

/// The latest state of every alert, by resource. Bounded: only declared
/// resources, at most [`MAX_ALERTS_PER_RESOURCE`] alert names each and
/// [`MAX_INSTANCES`] instances of each (resolved instances are evicted
/// first), summaries cut at [`MAX_SUMMARY`] characters.
#[derive(Debug, Default)]
pub struct AlertBook {
    /// By resource, alert name and instance (Alertmanager's fingerprint):
    /// one alert rule can fire for several instances at once.
    alerts: Mutex<HashMap<ResourceKey, BTreeMap<String, Instances>>>,
    routes: Mutex<Vec<Route>>,
    /// The declared resources, once a desired state is known: alerts for
    /// any other resource are dropped.
    declared: Mutex<Option<std::collections::HashSet<ResourceKey>>>,
}

impl AlertBook {
    pub fn new() -> AlertBook {
        AlertBook::default()
    }

    /// The routes of the desired state in use.
    pub fn set_routes(&self, routes: Vec<Route>) {
        if let Ok(mut r) = self.routes.lock() {
            *r = routes;
        }
    }

    /// The desired state in use: its routes, and the resources alerts may
    /// name (alerts of resources no longer declared are forgotten).
    pub fn set_desired(&self, desired: &crate::model::DesiredState) {
        self.set_routes(routes(desired));
        let keys: std::collections::HashSet<ResourceKey> =
            desired.resources.iter().map(|r| r.key.clone()).collect();
        if let Ok(mut alerts) = self.alerts.lock() {
            alerts.retain(|k, _| keys.contains(k));
        }
        if let Ok(mut d) = self.declared.lock() {
            *d = Some(keys);
        }
    }

    /// The resources an alert without `tend_resource` concerns: those of
    /// every signature that reads it and whose selector labels it carries.
    pub fn route(&self, alertname: &str, labels: &BTreeMap<String, String>) -> Vec<ResourceKey> {
        let Ok(routes) = self.routes.lock() else {
            return Vec::new();
        };
        let mut out: Vec<ResourceKey> = routes
            .iter()
            .filter(|r| {
                r.alertname == alertname && r.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .flat_map(|r| r.targets.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Records one instance of an alert as firing or resolved.
    pub fn set_instance(
        &self,
        key: ResourceKey,
        alertname: &str,
        instance: &str,
        firing: bool,
        summary: String,
    ) {
        let declared = self
            .declared
            .lock()
            .map(|d| d.as_ref().is_none_or(|d| d.contains(&key)))
            .unwrap_or(false);
        if !declared {
            tracing::debug!(resource = %key, alert = alertname, "An alert for an undeclared resource is ignored.");
            return;
        }
        let Ok(mut alerts) = self.alerts.lock() else {
            return;
        };
        let by_name = alerts.entry(key).or_default();
        if !by_name.contains_key(alertname) && by_name.len() >= MAX_ALERTS_PER_RESOURCE {
            tracing::warn!(
                alert = alertname,
                "Too many alert names for one resource; this one is ignored."
            );
            return;
        }
        let entry = by_name.entry(alertname.to_string()).or_default();
        if !entry.contains_key(instance) && entry.len() >= MAX_INSTANCES {
            let oldest_resolved = entry
                .iter()
                .filter(|(_, a)| !a.firing)
                .min_by_key(|(_, a)| a.since)
                .map(|(k, _)| k.clone());
            match oldest_resolved {
                Some(k) => {
                    entry.remove(&k);
                }
                None => {
                    tracing::warn!(
                        alert = alertname,
                        "Too many firing instances of one alert; this one is ignored."
                    );
                    return;
                }
            }
        }
        let summary: String = summary.chars().take(MAX_SUMMARY).collect();
        let changed = entry.get(instance).is_none_or(|a| a.firing != firing);
        let since = match entry.get(instance) {
            Some(a) if !changed => a.since,
            _ => Utc::now(),
        };
        entry.insert(
            instance.to_string(),
            Alert {
                firing,
                since,
                summary,
            },
        );
    }

    /// The alert signals of a resource: unhealthy while any instance
    /// fires.
    pub fn readings(&self, key: &ResourceKey) -> Vec<Reading> {
        let Ok(alerts) = self.alerts.lock() else {
            return Vec::new();
        };
        alerts
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|(name, instances)| {
                let a = instances
                    .values()
                    .filter(|a| a.firing)
                    .min_by_key(|a| a.since)
                    .or_else(|| instances.values().max_by_key(|a| a.since))?;
                Some((name, a))
            })
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
        book.set_instance(
            key.clone(),
            "HighErrorRate",
            "",
            true,
            "errors above 20%".into(),
        );
        let first = book.readings(&key);
        assert_eq!(first[0].signal, "alert/HighErrorRate");
        assert_eq!(first[0].status, Status::Unhealthy);
        assert!(first[0].detail.ends_with("errors above 20%"));
        book.set_instance(key.clone(), "HighErrorRate", "", true, String::new());
        assert_eq!(book.readings(&key)[0].detail[..27], first[0].detail[..27]);
        book.set_instance(key.clone(), "HighErrorRate", "", false, String::new());
        assert_eq!(book.readings(&key)[0].status, Status::Healthy);
        assert!(book
            .readings(&ResourceKey::new(Kind::HostFile, "web"))
            .is_empty());
    }

    /// Regression (M8): the book grew without bound, for resources that
    /// need not be declared (12,000 alerts a POST: 68 MB to 522 MB).
    #[test]
    fn m8_the_alert_book_is_bounded() {
        let files = [crate::model::SourceFile {
            path: "s.yaml".into(),
            text: "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata: {name: web}\nspec: {command: sleep}\n".into(),
        }];
        let desired = crate::model::load(&files).unwrap();
        let book = AlertBook::new();
        book.set_desired(&desired);
        let web = ResourceKey::new(Kind::HostProcess, "web");
        for i in 0..1000 {
            book.set_instance(
                ResourceKey::new(Kind::HostFile, format!("x-{i}")),
                "Flood",
                "",
                true,
                String::new(),
            );
        }
        for i in 0..1000 {
            book.set_instance(
                web.clone(),
                &format!("Flood{i}"),
                "",
                true,
                "s".repeat(10_000),
            );
            book.set_instance(web.clone(), "Many", &i.to_string(), true, String::new());
        }
        let alerts = book.alerts.lock().unwrap();
        assert_eq!(alerts.len(), 1, "only declared resources");
        let by_name = &alerts[&web];
        assert_eq!(by_name.len(), MAX_ALERTS_PER_RESOURCE);
        assert_eq!(by_name["Many"].len(), MAX_INSTANCES);
        assert!(by_name
            .values()
            .flat_map(|i| i.values())
            .all(|a| a.summary.chars().count() <= MAX_SUMMARY));
        drop(alerts);
        // A resolved instance makes room for a new one.
        book.set_instance(web.clone(), "Many", "0", false, String::new());
        book.set_instance(web.clone(), "Many", "new", true, String::new());
        assert!(book.alerts.lock().unwrap()[&web]["Many"].contains_key("new"));
    }

    #[test]
    fn an_alert_fires_while_any_instance_fires() {
        let book = AlertBook::new();
        let key = ResourceKey::new(Kind::HostProcess, "web");
        book.set_instance(key.clone(), "HighErrorRate", "a", true, String::new());
        book.set_instance(key.clone(), "HighErrorRate", "b", false, String::new());
        assert_eq!(book.readings(&key)[0].status, Status::Unhealthy);
        book.set_instance(key.clone(), "HighErrorRate", "a", false, String::new());
        assert_eq!(book.readings(&key)[0].status, Status::Healthy);
    }

    #[test]
    fn an_alert_without_a_resource_follows_the_signatures_that_read_it() {
        let files = [crate::model::SourceFile {
            path: "s.yaml".into(),
            text: "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata: {name: web, labels: {app: shop}}\nspec: {command: sleep}\n---\napiVersion: tend.dev/v1\nkind: host.Process\nmetadata: {name: db, labels: {app: other}}\nspec: {command: sleep}\n---\napiVersion: tend.dev/v1\nkind: Signature\nmetadata: {name: errors}\nspec:\n  cause: errors\n  runbook: r\n  selector: {labels: {app: shop}}\n  all: [{signal: alert/HighErrorRate}]\n---\napiVersion: tend.dev/v1\nkind: Runbook\nmetadata: {name: r}\nspec: {steps: [{action: restart}]}\n".into(),
        }];
        let desired = crate::model::load(&files).unwrap();
        let book = AlertBook::new();
        book.set_routes(routes(&desired));
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            book.route(
                "HighErrorRate",
                &labels(&[("app", "shop"), ("severity", "page")])
            ),
            vec![ResourceKey::new(Kind::HostProcess, "web")]
        );
        assert!(book
            .route("HighErrorRate", &labels(&[("app", "other")]))
            .is_empty());
        assert!(book
            .route("DiskFull", &labels(&[("app", "shop")]))
            .is_empty());
    }
}
