//! One pass of the loop: source → load+validate → inventory → diff → plan,
//! then (for `apply`) act and report.
//!
//! Every stage before `act` is read-only. Any failure before a plan exists —
//! an unreadable source, invalid desired state, a failed inventory — ends the
//! pass with an error and no action at all.

use std::path::PathBuf;

use crate::diff::{self, DiffOptions};
use crate::model::{self, DesiredState, Invalid, Mode, ProviderName};
use crate::plan::{self, Plan, PlanInput, SourceInfo};
use crate::policy::{self, Facts, GateError, Policies};
use crate::provider::{host::HostProvider, BuiltIn, ProviderError, Providers};
use crate::source::{Source, SourceError};
use crate::state::{State, StateError};

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
}

/// Where tend keeps state, as given on the command line or in the
/// environment, before any desired state is read.
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: Option<PathBuf>,
    pub mode: Option<Mode>,
}

/// Desired state read and validated, and where this pass keeps its state.
pub struct Loaded {
    pub origin: String,
    pub commit: Option<String>,
    pub desired: DesiredState,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    /// The default pack and the repository's policies, compiled once.
    pub policies: Policies,
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

/// Reads and validates desired state; nothing live is touched.
pub fn load(source: &Source, opts: &Options) -> Result<Loaded, PassError> {
    let cache = bootstrap_state_dir(opts)?.join("sources");
    let snapshot = source.snapshot(&cache)?;
    let desired = model::load(&snapshot.files)?;
    let policy_files = policy::policy_files(&desired.settings.policies.dirs, &snapshot.rego);
    let policies = Policies::compile(&policy_files).map_err(|diagnostics| {
        let mut sources = model::SourceTexts::default();
        for f in &policy_files {
            sources.insert(&f.path, &f.text);
        }
        PassError::Invalid(Invalid {
            diagnostics,
            sources,
        })
    })?;
    let root = host_root(&desired)?;
    let state_dir = match (&opts.state_dir, &desired.settings.state_dir) {
        (None, Some(d)) => root.join(d),
        _ => bootstrap_state_dir(opts)?,
    };
    Ok(Loaded {
        origin: snapshot.origin,
        commit: snapshot.commit,
        desired,
        root,
        state_dir,
        policies,
    })
}

/// What the journal says about recent passes, as the safety gates need it.
pub fn facts(
    state: Option<&State>,
    settings: &model::Settings,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Facts, PassError> {
    let Some(state) = state else {
        return Ok(Facts::default());
    };
    let parse = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let back = |d: std::time::Duration| {
        (now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let safety = &settings.safety;
    let horizon = safety
        .cooldown
        .0
        .max(safety.circuit_breaker.window.0)
        .max(std::time::Duration::from_secs(24 * 3600));
    let outcomes = state
        .outcomes_since(&back(horizon))?
        .into_iter()
        .filter_map(|e| {
            Some(policy::PastOutcome {
                key: model::ResourceKey::new(model::Kind::parse(&e.kind)?, e.name),
                action: e.action,
                outcome: e.outcome?,
                at: parse(&e.at)?,
            })
        })
        .collect();
    let corrections = state
        .corrections_since(&back(safety.fight_detection.window.0))?
        .into_iter()
        .filter_map(|(at, kind, name, path)| {
            Some(policy::Correction {
                key: model::ResourceKey::new(model::Kind::parse(&kind)?, name),
                path,
                at: parse(&at)?,
            })
        })
        .collect();
    Ok(Facts {
        corrections,
        outcomes,
    })
}

fn host_root(desired: &DesiredState) -> Result<PathBuf, PassError> {
    let cwd = std::env::current_dir().map_err(PassError::Cwd)?;
    Ok(match &desired.settings.host.root {
        Some(r) => cwd.join(r),
        None => cwd,
    })
}

/// A plan and what made it.
pub struct Planned {
    pub providers: Providers,
    pub plan: Plan,
}

/// Inventories, diffs, plans and decides. Normalises the declared specs in
/// place.
pub async fn plan(
    loaded: &mut Loaded,
    opts: &Options,
    facts: &Facts,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Planned, PassError> {
    let desired = &mut loaded.desired;
    let providers = Providers {
        all: desired
            .settings
            .providers
            .iter()
            .map(|p| match p {
                ProviderName::Host => {
                    BuiltIn::Host(HostProvider::new(&loaded.root, &loaded.state_dir))
                }
            })
            .collect(),
    };
    providers.normalize_all(&mut desired.resources);
    let live = providers.inventory(&desired.resources).await?;
    let diff = diff::diff(
        &desired.resources,
        &live,
        DiffOptions {
            prune: desired.settings.prune.enabled,
        },
    );
    let mode = opts.mode.unwrap_or(desired.settings.mode);
    let desired = &loaded.desired;
    let index = desired.index();
    let resource_mode = |k: &model::ResourceKey| index.get(k).and_then(|r| r.mode);
    let mut plan = plan::plan(
        &diff,
        PlanInput {
            source: SourceInfo {
                origin: loaded.origin.clone(),
                commit: loaded.commit.clone(),
            },
            mode,
            resources: desired.resources.len(),
            resource_mode: &resource_mode,
        },
    );
    for action in &mut plan.actions {
        action.note = live.get(&action.target).and_then(|l| l.note.clone());
        action.declared_at = index.get(&action.target).map(|r| r.origin.clone());
    }
    policy::decide(
        &mut plan,
        &mut loaded.policies,
        &policy::Context {
            desired,
            index: &index,
            live: &live,
            facts,
            now,
        },
    )?;
    Ok(Planned { providers, plan })
}
