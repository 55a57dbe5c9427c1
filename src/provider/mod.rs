//! Providers: where live state is read from and corrections are applied.
//!
//! One small trait with defaulted extras; the binary chooses among the
//! built-in providers with a closed enum. A provider that cannot list must
//! return an error, never an empty inventory: missing data is never read as
//! "deleted".

pub mod aws;
pub mod host;
pub mod stats;

use std::collections::HashMap;
use std::future::Future;

use serde_json::Value;

use crate::model::{Kind, ProviderName, Resource, ResourceKey};
use crate::vocab::Action;
pub use crate::vocab::LiveResource;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("failed to list {kind}: {message}")]
    List { kind: Kind, message: String },
    #[error("failed to {action} {target}: {message}")]
    Apply {
        action: &'static str,
        target: ResourceKey,
        message: String,
    },
}

/// What a provider needs to list: the kinds in play and the declared
/// resources (some providers, like `host`, can only look up what is named).
pub struct ListRequest<'a> {
    pub kinds: &'a [Kind],
    pub desired: &'a [&'a Resource],
    /// Whether to read status checks too (extra calls for some kinds), for
    /// the healing loop's `status` signal.
    pub status: bool,
    /// Whether only the declared resources are wanted (a re-read while a
    /// fix is verified): providers may then skip everything else, and
    /// nothing is learnt about unmanaged resources.
    pub only_declared: bool,
}

/// How much an inventory lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Every kind of every provider, so that unmanaged resources are found
    /// too; status checks only when some resource's health is watched.
    Everything { status: bool },
    /// Only the kinds of the given resources, with their status: a
    /// re-read while a fix is verified.
    Declared,
    /// Only the given resources, status checks as for `Everything`: a
    /// member of a fleet reads what it owns, and leaves what nobody
    /// declared to the publisher.
    Mine { status: bool },
}

/// What an applied action did, for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub detail: String,
}

pub trait Provider {
    fn name(&self) -> ProviderName;

    /// The kinds this provider manages.
    fn kinds(&self) -> &'static [Kind];

    /// Lists live resources of the requested kinds. Fully or not at all.
    fn list(
        &self,
        req: &ListRequest<'_>,
    ) -> impl Future<Output = Result<Vec<LiveResource>, ProviderError>> + Send;

    /// Carries out one action. Must be idempotent: applying an action whose
    /// effect is already live changes nothing.
    fn apply(
        &self,
        action: &Action,
        desired: Option<&Resource>,
    ) -> impl Future<Output = Result<Applied, ProviderError>> + Send;

    /// Brings a desired spec into the provider's canonical form (defaults,
    /// casing, set ordering) so that diffing compares like with like.
    fn normalize(&self, _kind: Kind, _spec: &mut Value) {}
}

/// The built-in providers, chosen by `Settings`.
pub enum BuiltIn {
    Host(host::HostProvider),
    Aws(Box<aws::AwsProvider>),
}

impl BuiltIn {
    pub fn name(&self) -> ProviderName {
        match self {
            BuiltIn::Host(h) => h.name(),
            BuiltIn::Aws(a) => a.name(),
        }
    }

    pub fn kinds(&self) -> &'static [Kind] {
        match self {
            BuiltIn::Host(h) => h.kinds(),
            BuiltIn::Aws(a) => a.kinds(),
        }
    }

    pub async fn list(&self, req: &ListRequest<'_>) -> Result<Vec<LiveResource>, ProviderError> {
        let r = match self {
            BuiltIn::Host(h) => h.list(req).await,
            BuiltIn::Aws(a) => a.list(req).await,
        };
        self.count(r.is_err());
        r
    }

    pub async fn apply(
        &self,
        action: &Action,
        desired: Option<&Resource>,
    ) -> Result<Applied, ProviderError> {
        let r = match self {
            BuiltIn::Host(h) => h.apply(action, desired).await,
            BuiltIn::Aws(a) => a.apply(action, desired).await,
        };
        self.count(r.is_err());
        r
    }

    /// Counts a listing or an action; the host provider's calls are these
    /// (its API is the machine), the aws provider counts its API calls
    /// itself.
    fn count(&self, failed: bool) {
        let s = stats::of(self.name());
        if self.name() == ProviderName::Host {
            s.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if failed {
            s.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn normalize(&self, kind: Kind, spec: &mut Value) {
        match self {
            BuiltIn::Host(h) => h.normalize(kind, spec),
            BuiltIn::Aws(a) => a.normalize(kind, spec),
        }
    }
}

/// The providers of one pass.
pub struct Providers {
    pub all: Vec<BuiltIn>,
}

impl Providers {
    pub fn for_kind(&self, kind: Kind) -> Option<&BuiltIn> {
        self.all.iter().find(|p| p.kinds().contains(&kind))
    }

    /// Normalises every declared spec in place.
    pub fn normalize_all(&self, resources: &mut [Resource]) {
        aws::prepare(resources);
        for r in resources {
            if let Some(p) = self.for_kind(r.key.kind) {
                p.normalize(r.key.kind, &mut r.spec);
            }
        }
    }

    /// Lists every provider concurrently. Any failure fails the whole
    /// inventory.
    pub async fn inventory(
        &self,
        desired: &[Resource],
        listing: Listing,
    ) -> Result<HashMap<ResourceKey, LiveResource>, ProviderError> {
        let per_provider: Vec<(Vec<&Resource>, &BuiltIn)> = self
            .all
            .iter()
            .map(|p| {
                let mine = desired
                    .iter()
                    .filter(|r| p.kinds().contains(&r.key.kind))
                    .collect();
                (mine, p)
            })
            .collect();
        let futures = per_provider.iter().map(|(mine, p)| async move {
            let only_declared = !matches!(listing, Listing::Everything { .. });
            let declared_kinds = || {
                let mut kinds: Vec<Kind> = mine.iter().map(|r| r.key.kind).collect();
                kinds.sort();
                kinds.dedup();
                kinds
            };
            let (kinds, status) = match listing {
                Listing::Everything { status } => (p.kinds().to_vec(), status),
                Listing::Declared => (declared_kinds(), true),
                // A node's own resources are never shared: it reads all of
                // them, what nobody declared too.
                Listing::Mine { status } if !p.kinds().iter().any(|k| k.shared_by_fleet()) => {
                    (p.kinds().to_vec(), status)
                }
                Listing::Mine { status } => (declared_kinds(), status),
            };
            let only_declared = only_declared && p.kinds().iter().any(|k| k.shared_by_fleet());
            if kinds.is_empty() {
                return Ok(Vec::new());
            }
            p.list(&ListRequest {
                kinds: &kinds,
                desired: mine,
                status,
                only_declared,
            })
            .await
        });
        let results = futures::future::join_all(futures).await;
        let mut out = HashMap::with_capacity(desired.len());
        for r in results {
            for live in r? {
                out.insert(live.key.clone(), live);
            }
        }
        Ok(out)
    }
}
