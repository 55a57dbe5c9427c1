//! tend: a GitOps reconciler that keeps infrastructure in its declared state
//! and heals known failures by itself.
//!
//! One module per stage of the loop: `source` → `model` (load + validate) →
//! `provider` (inventory) → `diff` → `plan` → `act` → `report`, with `state`
//! holding the journal and the run lock and `reconcile` running one pass.

pub mod act;
pub mod cli;
pub mod diff;
pub mod health;
pub mod model;
pub mod plan;
pub mod policy;
pub mod provider;
pub mod reconcile;
pub mod report;
pub mod sample;
pub mod source;
pub mod state;
pub mod verify;
pub mod watch;

pub use diff::{diff, Change, Diff, DiffOptions, FieldChange};
pub use model::{load, DesiredState, Kind, Mode, Resource, ResourceKey, Settings, SourceFile};
pub use plan::{plan, Action, ActionType, Decision, Plan};
pub use provider::LiveResource;
