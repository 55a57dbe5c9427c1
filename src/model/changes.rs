//! How tend rolls out the changes it applies (`Settings spec.changes`, and
//! a resource's own `changes`): a verification window after each change to
//! a watched resource, what a regression inside it does, and waves.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::health::{longest_range, Signature};
use super::{Resource, Span};

/// What a regression inside a change's verification window does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRegression {
    /// Apply the last good spec, decided and verified like a runbook step.
    #[default]
    Rollback,
    /// Change nothing and escalate (for what cannot be rolled back safely).
    Freeze,
}

impl OnRegression {
    pub fn as_str(self) -> &'static str {
        match self {
            OnRegression::Rollback => "rollback",
            OnRegression::Freeze => "freeze",
        }
    }
}

/// `Settings spec.changes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Changes {
    /// Verify each change tend applies to a watched resource.
    #[serde(default = "yes")]
    pub verify: bool,
    /// The verification window; default: per resource (see [`window`]).
    #[serde(default)]
    pub window: Option<Span>,
    #[serde(default)]
    pub on_regression: OnRegression,
    /// At most this many automatic rollbacks of one resource within
    /// `rollbackWindow`; then the next regression freezes.
    #[serde(default = "default_max_rollbacks")]
    pub max_consecutive_rollbacks: u32,
    #[serde(default = "default_rollback_window")]
    pub rollback_window: Span,
    #[serde(default)]
    pub waves: Vec<Waves>,
}

fn yes() -> bool {
    true
}

fn default_max_rollbacks() -> u32 {
    3
}

fn default_rollback_window() -> Span {
    Span(Duration::from_secs(3600))
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            verify: true,
            window: None,
            on_regression: OnRegression::default(),
            max_consecutive_rollbacks: default_max_rollbacks(),
            rollback_window: default_rollback_window(),
            waves: Vec::new(),
        }
    }
}

/// Changes to more than one resource a selector picks go out in waves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Waves {
    /// The labels every resource of the rollout carries.
    pub selector: WaveSelector,
    /// Each wave's size, cumulative: a count of resources or a percentage
    /// of the rollout; the last one should reach 100%.
    pub steps: Vec<WaveStep>,
    /// How long after a wave has passed verification the next one starts;
    /// default: none beyond the verification window itself.
    #[serde(default)]
    pub bake: Option<Span>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaveSelector {
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl WaveSelector {
    pub fn selects(&self, r: &Resource) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| r.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// One wave: `count` resources, or `percent` of the rollout (rounded up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaveStep {
    #[serde(default)]
    pub count: Option<usize>,
    #[serde(default)]
    pub percent: Option<u32>,
}

impl Waves {
    /// How many of `total` resources have the change once waves 1..=`n`
    /// went out (cumulative, never more than `total`, never fewer than the
    /// wave before); the last wave takes the rest.
    pub fn reached(&self, n: usize, total: usize) -> usize {
        if n >= self.steps.len() {
            return total;
        }
        let mut reached = 0;
        for s in &self.steps[..=n] {
            let size = match (s.count, s.percent) {
                (Some(c), _) => c,
                (None, Some(p)) => (total * p as usize).div_ceil(100),
                (None, None) => total,
            };
            reached = reached.max(size.min(total));
        }
        reached.max(1).min(total)
    }

    /// How many waves a rollout of `total` resources takes.
    pub fn count(&self, total: usize) -> usize {
        (0..self.steps.len())
            .find(|&n| self.reached(n, total) >= total)
            .map_or(self.steps.len() + 1, |n| n + 1)
    }
}

/// A resource's own `changes`: overrides of `Settings spec.changes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceChanges {
    #[serde(default)]
    pub verify: Option<bool>,
    #[serde(default)]
    pub window: Option<Span>,
    #[serde(default)]
    pub on_regression: Option<OnRegression>,
}

/// The shortest verification window.
pub const MIN_WINDOW: Duration = Duration::from_secs(30);

/// A resource's verification window: its own, else the Settings', else the
/// longest `for` plus query range of the conditions that read it (its
/// SLOs, and the conditions of the signatures that select it), at least
/// [`MIN_WINDOW`].
pub fn window(r: &Resource, settings: &Changes, signatures: &[Signature]) -> Duration {
    if let Some(w) = r.changes.as_ref().and_then(|c| c.window) {
        return w.0;
    }
    if let Some(w) = settings.window {
        return w.0;
    }
    let range = |signal: &str| -> Duration {
        r.health
            .iter()
            .flat_map(|h| h.probes.iter())
            .filter(|p| p.name == signal)
            .filter_map(|p| p.prometheus.as_ref())
            .filter_map(|p| longest_range(&p.query))
            .max()
            .unwrap_or_default()
    };
    let mut longest = Duration::ZERO;
    for slo in r.health.iter().flat_map(|h| h.slos.iter()) {
        let signal = slo.signal.as_deref().map(range).unwrap_or_default();
        let burn = slo
            .error_ratio
            .as_deref()
            .map(|_| {
                slo.burn_rates
                    .iter()
                    .map(|b| b.short.0)
                    .min()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        longest = longest.max(slo.for_duration() + signal.max(burn));
    }
    for sig in signatures.iter().filter(|s| s.selects(r)) {
        for c in sig.spec.all.iter().chain(sig.spec.any.iter()) {
            let signal = c.signal.as_deref().map(range).unwrap_or_default();
            longest = longest.max(c.for_.unwrap_or_default().0 + signal);
        }
    }
    longest.max(MIN_WINDOW)
}

/// Whether changes to `r` are verified, and what a regression does.
pub fn policy_of(r: &Resource, settings: &Changes) -> (bool, OnRegression) {
    let own = r.changes.as_ref();
    (
        own.and_then(|c| c.verify).unwrap_or(settings.verify),
        own.and_then(|c| c.on_regression)
            .unwrap_or(settings.on_regression),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waves(steps: &[(Option<usize>, Option<u32>)]) -> Waves {
        Waves {
            selector: WaveSelector::default(),
            steps: steps
                .iter()
                .map(|(count, percent)| WaveStep {
                    count: *count,
                    percent: *percent,
                })
                .collect(),
            bake: None,
        }
    }

    #[test]
    fn waves_are_cumulative_and_the_last_takes_the_rest() {
        let w = waves(&[(Some(1), None), (None, Some(25)), (None, Some(100))]);
        let sizes: Vec<usize> = (0..4).map(|n| w.reached(n, 10)).collect();
        assert_eq!(sizes, [1, 3, 10, 10]);
        assert_eq!(w.count(10), 3);
        // Two resources: one, then both (25% of 2 rounds up to 1).
        let sizes: Vec<usize> = (0..3).map(|n| w.reached(n, 2)).collect();
        assert_eq!(sizes, [1, 1, 2]);
        // A plan that never reaches 100% still ends with everything.
        let w = waves(&[(Some(2), None)]);
        assert_eq!((w.reached(0, 5), w.reached(1, 5), w.count(5)), (2, 5, 2));
    }
}
