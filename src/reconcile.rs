//! One pass of the loop: load+validate → inventory → diff → health → plan →
//! decide → act → verify. Publishing is the caller's (`cli`, `watch`).
//!
//! Every stage before `act` is read-only. Any failure before a plan exists
//! (an unreadable source, invalid desired state, a failed inventory) ends
//! the pass with an error and no action at all. What a pass needs that
//! outlives it (providers with their SDK clients, compiled policies,
//! probers) is a [`Runtime`], built once per load of the desired state and
//! rebuilt only when what it was built from changes. See ARCHITECTURE.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures::StreamExt;

use crate::act::{ActionResult, Executor};
use crate::controller::Until;
use crate::diff::{self, DiffOptions};
use crate::heal::{self, Healed};
use crate::health::{self as health_stage, Prober};
use crate::model::health::StepAction;
use crate::model::{self, DesiredState, Invalid, Mode, ProviderName, Resource, Settings};
use crate::plan::{self, remedy::Prior, HealingInput, Plan, PlanInput, SourceInfo, Watched};
use crate::policy::{self, Context, Decider, Facts, GateError, Policies, PolicyFile};
use crate::provider::{
    aws::AwsProvider, host::HostProvider, BuiltIn, Listing, ProviderError, Providers,
};
use crate::rollout;
use crate::source::{Source, SourceError};
use crate::state::{
    ChangeStatus, Incident, IncidentStep, JournalRecord, NewRun, RunStatus, Scrubbing, StateError,
    Store,
};
use crate::vocab::{
    Decision, IncidentStatus, JournalOutcome, LiveResource, ResourceKey, Secrets, Status,
    StepOutcome,
};

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("failed to read the source: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("failed to read live state, so nothing was changed: {0}")]
    Inventory(#[from] ProviderError),
    #[error("failed to determine the working directory: {0}")]
    Cwd(std::io::Error),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    AwsConfig(#[from] crate::provider::aws::ConfigError),
}

/// Where tend keeps state, as given on the command line or in the
/// environment, before any desired state is read.
#[derive(Clone)]
pub struct Options {
    pub state_dir: Option<PathBuf>,
    /// A shared state database (`--state` or TEND_STATE_URL), and where
    /// its URL was given.
    pub state_url: Option<(String, crate::state::UrlSource)>,
    /// This member's node name (`--node`, default the host name).
    pub node: String,
    pub mode: Option<Mode>,
    /// The desired state is not trusted (a plan of a pull request, whose
    /// comment its author reads): live values are shown only where they
    /// equal the declared ones, as digests elsewhere, and no probe runs.
    pub untrusted: bool,
}

/// The state URL may carry a password (from TEND_STATE_URL): never shown.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("state_dir", &self.state_dir)
            .field("state_url", &self.state_url.as_ref().map(|(_, from)| from))
            .field("node", &self.node)
            .field("mode", &self.mode)
            .field("untrusted", &self.untrusted)
            .finish()
    }
}

/// Desired state read and validated, and where this pass keeps its state.
pub struct Loaded {
    pub origin: String,
    pub commit: Option<String>,
    pub desired: Arc<DesiredState>,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    /// The shared state database, when the fleet keeps one.
    pub shared: Option<Arc<crate::state::Target>>,
    /// The default pack and the repository's policies.
    pub policy_files: Vec<PolicyFile>,
    /// The secret values of the declared specs.
    pub secrets: Secrets,
}

impl Loaded {
    /// The mode of this pass: the flag, else Settings.
    pub fn mode(&self, opts: &Options) -> Mode {
        opts.mode.unwrap_or(self.desired.settings.mode)
    }

    fn source_info(&self) -> SourceInfo {
        SourceInfo {
            origin: self.origin.clone(),
            commit: self.commit.clone(),
        }
    }
}

/// The state directory before desired state is known (it holds the Git
/// cache): the flag or environment, else `.tend` in the working directory.
pub fn bootstrap_state_dir(opts: &Options) -> Result<PathBuf, PassError> {
    match &opts.state_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(std::env::current_dir()
            .map_err(PassError::Cwd)?
            .join(".tend")),
    }
}

/// Reads and validates desired state; nothing live is touched. Policies
/// are compiled by [`Runtime`] (or [`compile_policies`] to validate them).
pub fn load(source: &Source, opts: &Options) -> Result<Loaded, PassError> {
    let cache = bootstrap_state_dir(opts)?.join("sources");
    let snapshot = source.snapshot(&cache)?;
    let desired = model::load(&snapshot.files)?;
    let policy_files = policy::policy_files(&desired.settings.policies.dirs, &snapshot.rego);
    let root = host_root(&desired)?;
    let state_dir = match (&opts.state_dir, &desired.settings.state_dir) {
        (None, Some(d)) => root.join(d),
        _ => bootstrap_state_dir(opts)?,
    };
    let secrets = Secrets::collect(desired.resources.iter().map(|r| &r.spec));
    // An untrusted desired state (a pull request's) chooses no database
    // and names no password file: only the flag or environment do.
    let shared = if opts.untrusted {
        shared_state(opts, &Settings::default())?
    } else {
        shared_state(opts, &desired.settings)?
    };
    Ok(Loaded {
        origin: snapshot.origin,
        commit: snapshot.commit,
        desired: Arc::new(desired),
        root,
        state_dir,
        shared,
        policy_files,
        secrets,
    })
}

/// The shared state database of a pass: the flag or environment, else
/// `Settings spec.state`; `None` keeps the embedded store.
pub fn shared_state(
    opts: &Options,
    settings: &Settings,
) -> Result<Option<Arc<crate::state::Target>>, PassError> {
    use crate::state::{Target, UrlSource};
    let password_file = settings
        .state
        .as_ref()
        .and_then(|s| s.password_file.as_deref())
        .map(std::path::Path::new);
    let target = match (&opts.state_url, &settings.state) {
        (Some((url, source)), _) => Target::parse(url, *source, password_file, &opts.node)?,
        (None, Some(s)) => match &s.url {
            Some(url) => Target::parse(url, UrlSource::Settings, password_file, &opts.node)?,
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    Ok(Some(Arc::new(target)))
}

/// Compiles the policies of a load; errors are located diagnostics.
pub fn compile_policies(files: &[PolicyFile]) -> Result<Policies, PassError> {
    Policies::compile(files).map_err(|diagnostics| {
        let mut sources = model::SourceTexts::default();
        for f in files {
            sources.insert(&f.path, &f.text);
        }
        PassError::Invalid(Invalid {
            diagnostics,
            sources,
        })
    })
}

fn host_root(desired: &DesiredState) -> Result<PathBuf, PassError> {
    let cwd = std::env::current_dir().map_err(PassError::Cwd)?;
    Ok(match &desired.settings.host.root {
        Some(r) => cwd.join(r),
        None => cwd,
    })
}

/// What passes share and reuse: providers (with their SDK clients),
/// compiled policies and the prober, each shared with the healing work
/// still under way. Built from a load; [`Runtime::refreshed`] rebuilds
/// only the parts whose inputs changed.
#[derive(Clone)]
pub struct Runtime {
    pub providers: Arc<Providers>,
    pub policies: Arc<Policies>,
    pub prober: Arc<Prober>,
    /// What the providers and prober were built from.
    settings: Settings,
    root: PathBuf,
    state_dir: PathBuf,
    /// What the policies were compiled from.
    policy_files: Vec<PolicyFile>,
    /// Alerts pushed to `tend watch`, read by the prober.
    alerts: Arc<crate::health::alerts::AlertBook>,
}

impl Runtime {
    /// Builds everything from a load; pushed alerts are read from `alerts`.
    pub async fn build(
        loaded: &Loaded,
        alerts: Arc<crate::health::alerts::AlertBook>,
    ) -> Result<Runtime, PassError> {
        let policies = compile_policies(&loaded.policy_files)?;
        let settings = &loaded.desired.settings;
        Ok(Runtime {
            providers: Arc::new(build_providers(settings, loaded).await?),
            prober: Arc::new(prober(loaded, &alerts)),
            policies: Arc::new(policies),
            settings: settings.clone(),
            root: loaded.root.clone(),
            state_dir: loaded.state_dir.clone(),
            policy_files: loaded.policy_files.clone(),
            alerts,
        })
    }

    /// This runtime brought up to date with a new load: providers and
    /// prober are rebuilt only when Settings (or where tend keeps state)
    /// changed, policies only when a policy file changed; the rest is
    /// shared. On an error nothing is built.
    pub async fn refreshed(&self, loaded: &Loaded) -> Result<Runtime, PassError> {
        let mut next = self.clone();
        if self.policy_files != loaded.policy_files {
            next.policies = Arc::new(compile_policies(&loaded.policy_files)?);
            next.policy_files = loaded.policy_files.clone();
        }
        let settings = &loaded.desired.settings;
        if self.settings != *settings
            || self.root != loaded.root
            || self.state_dir != loaded.state_dir
        {
            next.providers = Arc::new(build_providers(settings, loaded).await?);
            next.prober = Arc::new(prober(loaded, &self.alerts));
            next.settings = settings.clone();
            next.root = loaded.root.clone();
            next.state_dir = loaded.state_dir.clone();
        }
        if next.prober.signatures() != loaded.desired.signatures.as_slice() {
            // Same history and host state, new anomaly conditions.
            next.prober = Arc::new(
                (*next.prober)
                    .clone()
                    .with_signatures(&loaded.desired.signatures),
            );
        }
        Ok(next)
    }

    /// Brings every declared spec into its provider's canonical form, once
    /// per load, so that planning never edits desired state.
    fn normalize(&self, loaded: &mut Loaded) {
        self.providers
            .normalize_all(&mut Arc::make_mut(&mut loaded.desired).resources);
    }
}

fn prober(loaded: &Loaded, alerts: &Arc<crate::health::alerts::AlertBook>) -> Prober {
    Prober::new(&loaded.desired.settings.healing)
        .with_host(&loaded.state_dir, &loaded.root)
        .with_alerts(Arc::clone(alerts))
        .with_signatures(&loaded.desired.signatures)
}

/// Desired state loaded, validated and normalized by its providers, with
/// the runtime built for it: the only input `plan` and `apply` accept, so
/// a desired state that was not normalized can never reach them.
pub struct Prepared {
    loaded: Loaded,
    runtime: Runtime,
}

impl Prepared {
    /// Load → build the runtime → normalize, in one call.
    pub async fn new(
        source: &Source,
        opts: &Options,
        alerts: Arc<crate::health::alerts::AlertBook>,
    ) -> Result<Prepared, PassError> {
        Prepared::from_load(load(source, opts)?, alerts).await
    }

    /// A load already read (and looked at) becomes prepared.
    pub async fn from_load(
        mut loaded: Loaded,
        alerts: Arc<crate::health::alerts::AlertBook>,
    ) -> Result<Prepared, PassError> {
        let runtime = Runtime::build(&loaded, alerts).await?;
        runtime.normalize(&mut loaded);
        Ok(Prepared { loaded, runtime })
    }

    /// The source read again, with this runtime brought up to date.
    pub async fn reload(&self, source: &Source, opts: &Options) -> Result<Prepared, PassError> {
        let mut loaded = load(source, opts)?;
        let runtime = self.runtime.refreshed(&loaded).await?;
        runtime.normalize(&mut loaded);
        Ok(Prepared { loaded, runtime })
    }

    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }
}

async fn build_providers(settings: &Settings, loaded: &Loaded) -> Result<Providers, PassError> {
    let mut all = Vec::with_capacity(settings.providers.len());
    for p in &settings.providers {
        all.push(match p {
            ProviderName::Host => BuiltIn::Host(HostProvider::new(&loaded.root, &loaded.state_dir)),
            ProviderName::Aws => BuiltIn::Aws(Box::new(AwsProvider::new(&settings.aws).await?)),
        });
    }
    Ok(Providers { all })
}

/// What the journal says about recent passes, as the safety gates need it
/// (nothing before the first apply).
pub fn facts(
    store: Option<&dyn Store>,
    settings: &Settings,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Facts, PassError> {
    Ok(match store {
        Some(store) => Facts::read(store, settings, now)?,
        None => Facts::default(),
    })
}

/// Which resources a pass covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every declared resource; prune as Settings say.
    Full,
    /// Only the watched resources (health, remediation, signatures), with
    /// the desired state of the last full pass; never prunes.
    Healing,
}

/// A plan and what made it.
pub struct Planned {
    pub plan: Plan,
    pub live: HashMap<ResourceKey, LiveResource>,
    /// Unresolved incidents of resources that are healthy again.
    pub recovered: Vec<i64>,
    /// Every secret value the pass knows of: declared and live.
    pub secrets: Secrets,
    /// Where the fleet budgets stand (`Settings spec.safety.fleet`).
    pub fleet: Vec<crate::budget::Standing>,
}

/// Inventories, diffs, reads health and plans, undecided. Reads the state
/// store (signal history, incidents) but never writes it.
/// Who a pass is for: a plan shows every resource; a member of a fleet
/// acts only on its own (its node's, and the shared ones it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acting {
    Plan,
    Act,
}

async fn survey(
    prepared: &Prepared,
    desired: &DesiredState,
    opts: &Options,
    store: Option<&dyn Store>,
    (scope, acting): (Scope, Acting),
    under_way: &dyn Fn(&ResourceKey) -> bool,
) -> Result<Planned, PassError> {
    let (loaded, rt) = (&prepared.loaded, &prepared.runtime);
    let member = store.filter(|s| acting == Acting::Act && s.fleet().is_some());
    let owned_only: Vec<Resource>;
    let declared = match member {
        Some(s) => {
            owned_only = desired
                .resources
                .iter()
                .filter(|r| crate::fleet::owns(s, &r.key))
                .cloned()
                .collect();
            &owned_only
        }
        None => &desired.resources,
    };
    let healing_only: Vec<Resource>;
    let resources: &[Resource] = match scope {
        Scope::Full => declared,
        Scope::Healing => {
            healing_only = declared
                .iter()
                .filter(|r| health_stage::watched(r, &desired.signatures))
                .cloned()
                .collect();
            &healing_only
        }
    };
    let status = resources
        .iter()
        .any(|r| health_stage::watched(r, &desired.signatures));
    let listing = match member {
        Some(s) if !crate::fleet::publishes(s) => Listing::Mine { status },
        _ => Listing::Everything { status },
    };
    let mut live = rt.providers.inventory(resources, listing).await?;
    if opts.untrusted {
        conceal_live(resources, &mut live);
    }
    let index = desired.index();
    if let Some(s) = member {
        // Another member's shared resources are not this pass's to read,
        // and what nobody declared is the publisher's to report.
        let publishes = crate::fleet::publishes(s);
        live.retain(|k, _| {
            !crate::fleet::shared(k)
                || if index.contains_key(k) {
                    crate::fleet::owns(s, k)
                } else {
                    publishes
                }
        });
    }
    let prune = scope == Scope::Full && desired.settings.prune.enabled;
    let diff = diff::diff(resources, &live, DiffOptions { prune });
    let resource_mode = |k: &ResourceKey| index.get(k).and_then(|r| r.mode);
    let mut plan = plan::plan(
        &diff,
        PlanInput {
            source: loaded.source_info(),
            mode: loaded.mode(opts),
            resources: resources.len(),
            resource_mode: &resource_mode,
        },
    );
    for action in &mut plan.actions {
        action.note = live.get(&action.target).and_then(|l| l.note.clone());
        action.declared_at = index.get(&action.target).map(|r| r.origin.clone());
    }
    let watched = if opts.untrusted {
        Vec::new()
    } else {
        read_health(desired, resources, &live, store, &rt.prober).await?
    };
    let fleet = fleet_budgets(store, desired, &watched, &|k| live.contains_key(k), acting)?;
    let me = store
        .and_then(|s| s.fleet())
        .map(|f| f.node().to_string())
        .unwrap_or_default();
    let budget_hold = |r: &Resource| {
        crate::budget::stops(&fleet, desired, r).map(|s| {
            let first = s
                .first
                .as_ref()
                .is_some_and(|(node, key)| *node == me && *key == r.key)
                && !s.waiting;
            (s.stop.clone().unwrap_or_default(), first)
        })
    };
    let failures = |cause: &str, runbook: &str, step: usize| {
        store
            .and_then(|s| s.consecutive_failures(cause, runbook, step as u32).ok())
            .unwrap_or(0)
    };
    let healing = &desired.settings.healing;
    let now = chrono::Utc::now();
    let window_start =
        now - chrono::Duration::from_std(healing.crash_loop.window.0).unwrap_or_default();
    let recurrences = |key: &ResourceKey, cause: &str| {
        store
            .and_then(|s| s.incidents_of(key, window_start).ok())
            .map_or(0, |list| {
                list.iter()
                    .filter(|i| {
                        crate::vocab::cause_kind(&i.cause) == crate::vocab::cause_kind(cause)
                    })
                    .count()
            })
    };
    let last_good = |key: &ResourceKey| {
        store
            .and_then(|s| s.last_good(key).ok().flatten())
            .map(|g| crate::vocab::Rollback {
                commit: g.commit,
                spec: g.spec,
            })
    };
    let recovered = plan::add_health(
        &mut plan,
        watched,
        &live,
        &HealingInput {
            runbooks: &desired.runbooks,
            failures: &failures,
            ineffective_after: healing.ineffective_after,
            backoff: &healing.backoff,
            crash_loop: &healing.crash_loop,
            recurrences: &recurrences,
            healing: under_way,
            last_good: &last_good,
            signatures: &desired.signatures,
            storm: &desired.settings.safety.storm,
            fleet: &budget_hold,
            now,
        },
    );
    // Live secrets only of declared resources, at declared secret fields:
    // whoever can tag an unmanaged resource chooses nothing tend masks.
    let mut secrets = loaded.secrets.clone();
    for r in resources {
        if let Some(l) = live.get(&r.key) {
            secrets.add_live(&r.spec, &l.spec);
        }
    }
    Ok(Planned {
        plan,
        live,
        recovered,
        secrets,
        fleet,
    })
}

/// A member's findings that need a human, for the publisher: the drift
/// corrections of a full pass a policy sent to review, scrubbed of every
/// secret this member knows of (the publisher does not know them).
fn keep_findings(store: &Scrubbing<'_>, plan: &Plan) -> Result<(), PassError> {
    let found: Vec<crate::state::Finding> = plan
        .actions
        .iter()
        .filter(|a| a.decision == crate::vocab::Decision::Review && a.incident.is_none())
        .filter_map(|a| {
            let action = serde_json::to_value(a).ok()?;
            Some(crate::state::Finding {
                node: String::new(),
                key: a.target.clone(),
                fingerprint: a.fingerprint.clone(),
                action: store.json(&action),
                at: chrono::Utc::now(),
            })
        })
        .collect();
    store.fleet_rows().save_findings(&found)?;
    Ok(())
}

/// Where the fleet budgets stand for this pass. A pass that acts first
/// reports its selected resources' health for the other members; a plan
/// only reads (and a store too old to keep budgets has none to read).
fn fleet_budgets(
    store: Option<&dyn Store>,
    desired: &DesiredState,
    watched: &[Watched<'_>],
    exists: &dyn Fn(&ResourceKey) -> bool,
    acting: Acting,
) -> Result<Vec<crate::budget::Standing>, PassError> {
    let Some(store) = store.filter(|_| !desired.settings.safety.fleet.is_empty()) else {
        return Ok(Vec::new());
    };
    let now = chrono::Utc::now();
    Ok(match acting {
        Acting::Act => {
            let onsets = crate::budget::report(store, desired, watched, exists)?;
            crate::budget::standing(store, desired, &onsets, now)?
        }
        Acting::Plan => crate::budget::standing(store, desired, &Default::default(), now)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "Could not read where the fleet budgets stand.");
                Vec::new()
            }),
    })
}

/// Reads the signals of every watched resource and what the store
/// remembers of them and of their open incidents.
/// Live state as an untrusted desired state may see it: a live value is
/// kept where it equals the declared one (its author wrote it), and is
/// otherwise a digest; live resources that are not declared keep no spec.
/// A declaration of `.git/config` or of another workload's environment
/// then tells its author only that the value differs.
fn conceal_live(resources: &[Resource], live: &mut HashMap<ResourceKey, LiveResource>) {
    fn conceal(declared: Option<&serde_json::Value>, live: &mut serde_json::Value) {
        use serde_json::Value;
        match (declared, live) {
            (Some(Value::Object(d)), Value::Object(l)) => {
                l.retain(|k, _| d.contains_key(k));
                for (k, v) in l.iter_mut() {
                    conceal(d.get(k), v);
                }
            }
            (Some(Value::Array(d)), Value::Array(l)) => {
                for (i, v) in l.iter_mut().enumerate() {
                    conceal(d.get(i), v);
                }
            }
            (Some(d), l) if d == l => {}
            (_, l @ (Value::String(_) | Value::Object(_) | Value::Array(_))) => {
                use sha2::{Digest, Sha256};
                let digest = hex::encode(&Sha256::digest(l.to_string().as_bytes())[..8]);
                *l = Value::from(format!(
                    "<not shown in a plan of a pull request; sha256 {digest}>"
                ));
            }
            _ => {}
        }
    }
    let declared: HashMap<&ResourceKey, &serde_json::Value> =
        resources.iter().map(|r| (&r.key, &r.spec)).collect();
    for (key, l) in live.iter_mut() {
        match declared.get(key) {
            Some(d) => conceal(Some(d), &mut l.spec),
            None => l.spec = serde_json::json!({}),
        }
        l.note = None;
    }
}

async fn read_health<'a>(
    desired: &DesiredState,
    resources: &'a [Resource],
    live: &HashMap<ResourceKey, LiveResource>,
    store: Option<&dyn Store>,
    prober: &Prober,
) -> Result<Vec<Watched<'a>>, PassError> {
    let watched: Vec<&Resource> = resources
        .iter()
        .filter(|r| health_stage::watched(r, &desired.signatures))
        .collect();
    feed_restarts(&watched, store, prober)?;
    load_history(&watched, &desired.signatures, store, prober);
    let readings: Vec<_> =
        futures::stream::iter(watched.iter().map(|r| prober.read(r, live.get(&r.key))))
            .buffered(16)
            .collect()
            .await;
    let now = chrono::Utc::now();
    let mut out = Vec::with_capacity(watched.len());
    for (r, readings) in watched.into_iter().zip(readings) {
        let remembered = match store {
            Some(s) => s.remembered(&r.key)?,
            None => HashMap::new(),
        };
        let active = match store {
            Some(s) => s.active_incident(&r.key)?,
            None => None,
        };
        out.push(Watched {
            resource: r,
            assessment: health_stage::assess(r, readings, &remembered, &desired.signatures, now),
            prior: active.as_ref().map(prior_of),
        });
    }
    Ok(out)
}

/// Loads from the store, once per series, the samples forecasts and
/// anomaly baselines of the watched resources learn from. A store that
/// cannot give them (read-only and older than samples) costs history:
/// the series learns from what is read from now on.
fn load_history(
    watched: &[&Resource],
    signatures: &[crate::model::health::Signature],
    store: Option<&dyn Store>,
    prober: &Prober,
) {
    let Some(store) = store else { return };
    let history = prober.history();
    let now = chrono::Utc::now();
    for r in watched {
        for want in crate::health::history::wanted(r, signatures) {
            if !history.needs_load(&r.key, &want.signal) {
                continue;
            }
            let since = now - chrono::Duration::from_std(want.keep).unwrap_or_default();
            match store.samples(&r.key, &want.signal, since) {
                Ok(stored) => history.load(&r.key, &want, stored),
                Err(e) => {
                    tracing::warn!(
                        "could not read the samples of {} {}: {e}",
                        r.key,
                        want.signal
                    );
                    return;
                }
            }
        }
    }
}

/// The starts the journal knows of each resource that reads `restarts`.
fn feed_restarts(
    watched: &[&Resource],
    store: Option<&dyn Store>,
    prober: &Prober,
) -> Result<(), PassError> {
    use crate::model::health::HostMetric;
    let Some(store) = store else { return Ok(()) };
    let windows: Vec<(&Resource, std::time::Duration)> = watched
        .iter()
        .filter_map(|r| {
            let w = r
                .health
                .as_ref()?
                .probes
                .iter()
                .filter_map(|p| p.host.as_ref().filter(|h| h.metric == HostMetric::Restarts))
                .map(|h| h.window.map_or(std::time::Duration::from_secs(60), |w| w.0))
                .max()?;
            Some((*r, w))
        })
        .collect();
    let Some(longest) = windows.iter().map(|(_, w)| *w).max() else {
        return Ok(());
    };
    let now = chrono::Utc::now();
    let since = chrono::Duration::from_std(longest)
        .ok()
        .and_then(|w| now.checked_sub_signed(w))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let outcomes = store.outcomes_since(since)?;
    for (r, _) in windows {
        let starts = outcomes
            .iter()
            .filter(|e| {
                e.key == r.key && e.outcome == Some(JournalOutcome::Synced) && e.action.starts()
            })
            .map(|e| e.at)
            .collect();
        prober.host().set_starts(&r.key, starts);
    }
    Ok(())
}

/// What an open incident says for planning: where its runbook stands, and
/// the attempts to restore the declared state since it was escalated.
fn prior_of(i: &Incident) -> Prior {
    let escalated_at = i
        .steps
        .iter()
        .rposition(|s| s.outcome == StepOutcome::Escalated);
    let after: &[IncidentStep] = escalated_at.map_or(&[], |at| &i.steps[at..]);
    let attempts: Vec<&IncidentStep> = after
        .iter()
        .filter(|s| {
            s.step.is_none() && matches!(s.outcome, StepOutcome::Restored | StepOutcome::Failed)
        })
        .collect();
    Prior {
        id: i.id,
        escalated: i.status == IncidentStatus::Escalated,
        next_step: i.next_step as usize,
        attempts: attempts.len() as u32,
        last_change: attempts
            .last()
            .copied()
            .or(after.first())
            .map(|s| s.finished_at),
        cause: i.cause.clone(),
        signature: i.signature.clone(),
        runbook: i.runbook.clone(),
    }
}

/// Plans and decides, for `tend plan`: nothing is written anywhere.
pub async fn plan(
    prepared: &Prepared,
    opts: &Options,
    facts: &Facts,
    store: Option<&dyn Store>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Planned, PassError> {
    let (loaded, rt) = (&prepared.loaded, &prepared.runtime);
    let known = match store {
        Some(s) => rollout::read(s, &loaded.desired, now, None)?,
        None => rollout::Known {
            rows: Vec::new(),
            holds: Vec::new(),
            fleet: None,
        },
    };
    let desired = rollout::pinned(&loaded.desired, &known.holds);
    let mut planned = survey(
        prepared,
        &desired,
        opts,
        store,
        (Scope::Full, Acting::Plan),
        &|_| false,
    )
    .await?;
    let index = desired.index();
    let facts = &Facts {
        fleet: planned.fleet.clone(),
        ..facts.clone()
    };
    let good = |k: &ResourceKey| {
        store
            .and_then(|s| s.last_good(k).ok().flatten())
            .map(|g| crate::vocab::spec_digest(&g.spec))
    };
    let held_back = rollout::prepare(
        &mut planned.plan,
        &desired,
        &known,
        loaded.commit.as_deref(),
        &good,
        now,
    );
    let decider = Decider::new(
        &rt.policies,
        Context {
            desired: &desired,
            index: &index,
            live: &planned.live,
            facts,
            now,
            secrets: &planned.secrets,
        },
    );
    decider.decide_plan(&mut planned.plan)?;
    rollout::restrain(&mut planned.plan, &loaded.desired, &known, &held_back);
    planned.plan.paused = facts.pauses.clone();
    Ok(planned)
}

/// Everything one `apply` pass did.
pub struct Applied {
    pub plan: Plan,
    pub results: Vec<ActionResult>,
    pub healed: Vec<Healed>,
    /// Every incident this pass touched, and every one still escalated.
    pub incidents: Vec<Incident>,
    /// Every secret value the pass knows of, to scrub from what is published.
    pub secrets: Secrets,
    /// Declared resources by kind.
    pub declared: Vec<(String, usize)>,
    /// The merged approvals of the desired state.
    pub approvals: Vec<model::Approval>,
    /// Where changes that need a human are proposed (`Settings
    /// spec.review.github`).
    pub review: Option<model::GithubReview>,
    /// Where on-call is told (`Settings spec.notify`).
    pub notify: Option<model::Notify>,
    /// The pass's state directory.
    pub state_dir: PathBuf,
    /// The shared state database, when the fleet keeps one.
    pub shared: Option<Arc<crate::state::Target>>,
    /// The fleet's lease (`Settings spec.state.lease`).
    pub lease: std::time::Duration,
    /// How long the pass took.
    pub duration: std::time::Duration,
}

impl Applied {
    pub fn failed(&self) -> bool {
        self.results.iter().any(|r| r.outcome.failed())
    }

    pub fn escalated(&self) -> usize {
        self.incidents
            .iter()
            .filter(|i| i.status == IncidentStatus::Escalated)
            .count()
    }
}

/// How a pass hands its healing work on.
pub struct Healing<'a> {
    pub runner: &'a Arc<heal::Runner>,
    /// Set on SIGINT/SIGTERM: the action in flight finishes, no new one
    /// starts.
    pub stop: &'a Arc<AtomicBool>,
    /// `tend apply`: the healing runs to its end (every step verified,
    /// held or escalated) before the pass returns. `tend watch`: it goes on
    /// in the runner while the next passes run.
    pub to_the_end: bool,
}

/// One `apply` pass: plan, decide, act on drift, hand unhealthy resources
/// to the healing runner, and record it all.
pub async fn apply(
    prepared: &Prepared,
    opts: &Options,
    store: &Arc<dyn Store>,
    command: &str,
    scope: Scope,
    healing: Healing<'_>,
) -> Result<Applied, PassError> {
    let loaded = &prepared.loaded;
    let run_id = store.begin_run(&NewRun {
        command,
        origin: &loaded.origin,
        commit: loaded.commit.as_deref(),
        mode: loaded.mode(opts),
    })?;
    let started = std::time::Instant::now();
    let mut result = apply_run(prepared, opts, store, run_id, scope, healing).await;
    if let Ok(a) = &mut result {
        a.duration = started.elapsed();
    }
    let status = match &result {
        Err(_) => RunStatus::Error,
        Ok(a) if a.failed() => RunStatus::Failed,
        Ok(a) if a.escalated() > 0 => RunStatus::Escalated,
        Ok(_) => RunStatus::Ok,
    };
    store.finish_run(run_id, status)?;
    result
}

async fn apply_run(
    prepared: &Prepared,
    opts: &Options,
    shared: &Arc<dyn Store>,
    run_id: i64,
    scope: Scope,
    healing: Healing<'_>,
) -> Result<Applied, PassError> {
    let store: &dyn Store = &**shared;
    let controller = healing.runner.handle();
    let under_way = |k: &ResourceKey| controller.holds(k);
    // What a stop of tend cut short; never what the controller is still
    // working on.
    close_dangling_intents(store, run_id, &under_way)?;
    heal::close_running_steps(store, run_id, &under_way)?;
    let now = chrono::Utc::now();
    let (loaded, rt) = (&prepared.loaded, &prepared.runtime);
    let commit = loaded.commit.as_deref();
    let known = rollout::read(store, &loaded.desired, now, Some((run_id, commit)))?;
    // Held resources are kept at their last good spec.
    let desired = &rollout::pinned(&loaded.desired, &known.holds);
    let mut facts = facts(Some(store), &desired.settings, now)?;
    let mut planned = survey(
        prepared,
        desired,
        opts,
        Some(store),
        (scope, Acting::Act),
        &under_way,
    )
    .await?;
    facts.fleet = std::mem::take(&mut planned.fleet);
    // The samples forecasts and baselines learn from (numbers only): a
    // failure to keep them costs history, never the pass.
    if let Err(e) = store.add_samples(&rt.prober.history().take_unsaved()) {
        tracing::warn!("could not keep the signal samples: {e}");
    }
    // From here on, every text written to the store is scrubbed.
    let store = &Scrubbing {
        inner: store,
        secrets: &planned.secrets,
    };
    let index = desired.index();
    let decider = Decider::new(
        &rt.policies,
        Context {
            desired,
            index: &index,
            live: &planned.live,
            facts: &facts,
            now,
            secrets: &planned.secrets,
        },
    );
    let good = |k: &ResourceKey| {
        store
            .last_good(k)
            .ok()
            .flatten()
            .map(|g| crate::vocab::spec_digest(&g.spec))
    };
    let held_back = rollout::prepare(&mut planned.plan, desired, &known, commit, &good, now);
    decider.decide_plan(&mut planned.plan)?;
    rollout::restrain(&mut planned.plan, &loaded.desired, &known, &held_back);
    planned.plan.paused = facts.pauses.clone();
    for a in &planned.plan.health {
        store.remember(&a.target, &health_stage::rows_of(a))?;
    }
    if scope == Scope::Full && store.fleet().is_some() {
        keep_findings(store, &planned.plan)?;
    }
    record_shadow(store, desired, &planned.plan, now)?;
    let executor = Executor {
        providers: &rt.providers,
        store,
        run_id,
        commit: loaded.commit.as_deref(),
        secrets: &planned.secrets,
    };
    let plan = &planned.plan;
    let results = executor
        .run_plan(
            plan,
            desired,
            desired.settings.safety.circuit_breaker.failures,
            healing.stop,
            Some(&controller),
        )
        .await?;
    record_baseline_attempts(store, plan, &results, &desired.settings.healing.backoff)?;
    let mut windows = rollout::record(store, desired, plan, &results, commit)?;
    let changed: std::collections::HashSet<ResourceKey> =
        windows.iter().map(|w| w.key.clone()).collect();
    windows.extend(rollout::resume(store, &loaded.desired, &known, &|k| {
        controller.holds(k) || changed.contains(k) || !crate::fleet::owns(store, k)
    })?);
    let work: Vec<heal::Work> = plan
        .remedies
        .iter()
        .map(|r| heal::Work {
            remedy: r.clone(),
            action: plan
                .actions
                .iter()
                .find(|a| a.target == r.target && a.incident.is_some())
                .cloned(),
        })
        .collect();
    let ctx = Arc::new(heal::Ctx {
        desired: Arc::clone(desired),
        providers: Arc::clone(&rt.providers),
        prober: Arc::clone(&rt.prober),
        policies: Arc::clone(&rt.policies),
        store: Arc::clone(shared),
        secrets: planned.secrets.clone(),
        run_id,
        commit: loaded.commit.clone(),
        stop: Arc::clone(healing.stop),
    });
    healing.runner.submit(&ctx, work);
    healing.runner.watch(&ctx, windows);
    if healing.to_the_end {
        healing
            .runner
            .run(desired.settings.healing.concurrency, Until::Idle)
            .await;
    }
    let healed = healing.runner.take_healed();
    // Holds this pass's changes ended in, too.
    let held_now = rollout::held_list(
        &rollout::read(store, &loaded.desired, chrono::Utc::now(), None)?.holds,
        &loaded.desired,
    );
    resolve_recovered(store, &planned.recovered)?;
    // Never a spec under verification or held: only a change healthy for
    // its whole window is last good (the runner records it).
    let unsettled: std::collections::HashSet<&ResourceKey> = known
        .rows
        .iter()
        .filter(|r| matches!(r.status, ChangeStatus::Verifying | ChangeStatus::Failed))
        .map(|r| &r.key)
        .chain(changed.iter())
        .collect();
    remember_last_good(store, loaded, plan, &|k| {
        under_way(k) || unsettled.contains(k)
    })?;
    let incidents = touched_incidents(store, &healed, &planned.recovered)?;
    planned.plan.held = held_now;
    Ok(Applied {
        plan: planned.plan,
        results,
        healed,
        incidents,
        secrets: planned.secrets,
        declared: declared_kinds(desired),
        approvals: desired.approvals.clone(),
        review: desired.settings.review.github.clone(),
        notify: desired.settings.notify.clone(),
        state_dir: loaded.state_dir.clone(),
        shared: loaded.shared.clone(),
        lease: desired.settings.lease(),
        duration: std::time::Duration::ZERO,
    })
}

fn declared_kinds(desired: &DesiredState) -> Vec<(String, usize)> {
    let mut by_kind = std::collections::BTreeMap::new();
    for r in &desired.resources {
        *by_kind.entry(r.key.kind.as_str().to_string()).or_insert(0) += 1;
    }
    by_kind.into_iter().collect()
}

/// An earlier run died between calling a provider and recording what
/// happened. Live state is re-read by this pass, so the action is
/// re-planned from facts, never repeated blindly.
fn close_dangling_intents(
    store: &dyn Store,
    run_id: i64,
    under_way: &dyn Fn(&ResourceKey) -> bool,
) -> Result<(), StateError> {
    for d in store.dangling_intents()? {
        if under_way(&d.key) || !crate::fleet::owns(store, &d.key) {
            continue;
        }
        store.outcome(&JournalRecord {
            run_id: d.run_id,
            fingerprint: &d.fingerprint,
            action: d.action,
            key: &d.key,
            commit: d.commit.as_deref(),
            outcome: Some(JournalOutcome::Interrupted),
            detail: &format!(
                "run {} ended before recording an outcome; live state re-read by run {run_id}",
                d.run_id
            ),
        })?;
    }
    Ok(())
}

/// Each attempt to restore the declared state of an escalated resource is
/// recorded on its incident, with the backoff before the next one.
fn record_baseline_attempts(
    store: &dyn Store,
    plan: &Plan,
    results: &[ActionResult],
    backoff: &crate::model::health::Backoff,
) -> Result<(), StateError> {
    for remedy in &plan.remedies {
        let (Some(id), Some(b)) = (remedy.incident, &remedy.baseline) else {
            continue;
        };
        // Restarts only: other drift (a fix committed to Git) is applied as
        // usual and is no attempt of the backoff.
        let restarts = results
            .iter()
            .filter(|r| r.target == remedy.target && r.action_type == "restart");
        for r in restarts {
            let (outcome, detail) = match &r.outcome {
                crate::act::Outcome::Synced { detail } => (StepOutcome::Restored, detail),
                crate::act::Outcome::Failed { error } => (StepOutcome::Failed, error),
                crate::act::Outcome::Skipped { .. } => continue,
            };
            let wait = humantime::format_duration(backoff.delay(b.attempt));
            store.add_step(
                id,
                &IncidentStep::ended_now(
                    None,
                    Some(StepAction::Restart),
                    Some(Decision::Auto),
                    outcome,
                    format!(
                        "attempt {} to restore the declared state while escalated: {detail}; the next attempt waits {wait}",
                        b.attempt
                    ),
                    chrono::Utc::now() - chrono::Duration::milliseconds(r.duration_ms as i64),
                ),
            )?;
        }
    }
    Ok(())
}

fn resolve_recovered(store: &dyn Store, recovered: &[i64]) -> Result<(), StateError> {
    for id in recovered {
        store.add_step(
            *id,
            &IncidentStep::ended_now(
                None,
                None,
                None,
                StepOutcome::Recovered,
                "every signal of the problem is healthy again".into(),
                chrono::Utc::now(),
            ),
        )?;
        if let Some(i) = store.incident(*id)? {
            heal::transition(store, *id, i.status, &heal::lifecycle::Event::Recovered)?;
        }
    }
    Ok(())
}

/// Signatures in shadow: each match is recorded once while it lasts
/// (with the runbook step it would have run), and when it ends, whether the
/// problem went away on its own: within that step's `within`, with no
/// incident opened on the resource meanwhile.
fn record_shadow(
    store: &dyn Store,
    desired: &DesiredState,
    plan: &Plan,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StateError> {
    let open: Vec<crate::state::ShadowRow> = store
        .shadow_matches()?
        .into_iter()
        .filter(|r| r.ended_at.is_none())
        .collect();
    for a in &plan.health {
        for m in &a.shadow {
            let (_, spec) = crate::plan::remedy::runbook_for(
                a.target.kind,
                Some(&m.runbook),
                &desired.runbooks,
            );
            let step = spec
                .steps
                .first()
                .map_or(StepAction::Escalate, |s| s.action);
            store.shadow_match(&crate::state::ShadowRow {
                signature: m.signature.clone(),
                key: a.target.clone(),
                cause: m.cause.clone(),
                step,
                started_at: now,
                ended_at: None,
                on_its_own: None,
            })?;
        }
        for row in open.iter().filter(|r| r.key == a.target) {
            if a.shadow.iter().any(|m| m.signature == row.signature) {
                continue;
            }
            let within = desired
                .signatures
                .iter()
                .find(|s| s.name == row.signature)
                .map(|s| {
                    crate::plan::remedy::runbook_for(
                        a.target.kind,
                        Some(&s.spec.runbook),
                        &desired.runbooks,
                    )
                    .1
                    .steps
                    .first()
                    .map_or(std::time::Duration::from_secs(30), |s| s.within())
                })
                .unwrap_or(std::time::Duration::from_secs(30));
            let quick = (now - row.started_at).to_std().unwrap_or_default() <= within;
            let acted = !store.incidents_of(&a.target, row.started_at)?.is_empty();
            store.shadow_end(&row.signature, &a.target, now, quick && !acted)?;
        }
    }
    Ok(())
}

/// Healthy and in sync: a resource's spec is its last known good one.
fn remember_last_good(
    store: &dyn Store,
    loaded: &Loaded,
    plan: &Plan,
    under_way: &dyn Fn(&ResourceKey) -> bool,
) -> Result<(), StateError> {
    let index = loaded.desired.index();
    for a in plan.health.iter().filter(|a| !under_way(&a.target)) {
        let in_sync = !plan.actions.iter().any(|x| x.target == a.target);
        let healthy = a
            .signals
            .iter()
            .all(|s| s.reading.status == Status::Healthy);
        if in_sync && healthy && a.problem.is_none() {
            if let Some(r) = index.get(&a.target) {
                store.set_last_good(&r.key, loaded.commit.as_deref(), &r.spec)?;
            }
        }
    }
    Ok(())
}

/// Every incident this pass touched, and every one still escalated.
fn touched_incidents(
    store: &dyn Store,
    healed: &[Healed],
    recovered: &[i64],
) -> Result<Vec<Incident>, StateError> {
    let mut ids: Vec<i64> = healed.iter().map(|h| h.incident).collect();
    ids.extend(recovered);
    for i in store.incidents(false, 1000)? {
        if i.status == IncidentStatus::Escalated && crate::fleet::owns(store, &i.key) {
            ids.push(i.id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut incidents = Vec::with_capacity(ids.len());
    for id in ids {
        incidents.extend(store.incident(id)?);
    }
    Ok(incidents)
}
