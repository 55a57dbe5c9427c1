//! tend: a GitOps reconciler that keeps infrastructure in its declared state
//! and heals known failures by itself.
//!
//! One module per stage of the loop, over a shared vocabulary (`vocab`):
//! `source` → `model` (load + validate) → `provider` (inventory) → `diff` →
//! `health` → `plan` → `policy` (decide) → `act` → `heal` (verify), run as
//! one pass by `reconcile`; `state` is the store every stage records in;
//! `report` renders and `publish` hands the result to the outside world,
//! called from `cli` and `watch`. ARCHITECTURE.md describes each module,
//! what it must never do, and where each safety invariant is enforced.

pub mod act;
pub mod actions;
pub mod cli;
pub mod controller;
pub mod diff;
pub mod heal;
pub mod health;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod policy;
pub mod provider;
pub mod publish;
pub mod reconcile;
pub mod report;
pub mod review;
pub mod sample;
pub mod serve;
pub mod source;
pub mod state;
pub mod vocab;
pub mod watch;

pub use diff::{diff, Change, Diff, DiffOptions};
pub use model::{load, DesiredState, Kind, Mode, Resource, ResourceKey, Settings, SourceFile};
pub use plan::{plan, Plan};
pub use vocab::{Action, ActionType, Decision, FieldChange, LiveResource};
