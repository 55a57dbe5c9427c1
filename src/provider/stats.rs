//! Counts of provider calls, failures and client-side throttling, kept
//! for the life of the process and read by `metrics`. Counting never
//! changes what a provider does.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::ProviderName;

#[derive(Default)]
pub struct CallStats {
    /// API calls (aws) or listings and actions (host).
    pub calls: AtomicU64,
    /// Listings and actions that failed.
    pub errors: AtomicU64,
    /// Calls that waited for tend's own rate limit.
    pub throttled: AtomicU64,
}

static HOST: CallStats = CallStats {
    calls: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    throttled: AtomicU64::new(0),
};
static AWS: CallStats = CallStats {
    calls: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    throttled: AtomicU64::new(0),
};

pub fn of(p: ProviderName) -> &'static CallStats {
    match p {
        ProviderName::Host => &HOST,
        ProviderName::Aws => &AWS,
    }
}

/// (provider, calls, errors, throttled) of every provider so far.
pub fn snapshot() -> Vec<(ProviderName, u64, u64, u64)> {
    [ProviderName::Host, ProviderName::Aws]
        .into_iter()
        .map(|p| {
            let s = of(p);
            (
                p,
                s.calls.load(Ordering::Relaxed),
                s.errors.load(Ordering::Relaxed),
                s.throttled.load(Ordering::Relaxed),
            )
        })
        .collect()
}
