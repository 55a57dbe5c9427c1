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
//!
//! The library is not meant for other crates; its public API is what the
//! binary, the benchmarks and the integration tests drive, and nothing
//! more: `cli` (the binary's entry point, `cli::main`), and the stages the
//! benchmarks and tests run directly, without a process: `model` (load
//! and validate desired state), `provider` (inventory), `plan` and
//! `policy`, and `state` (whose backends, SQLite and PostgreSQL, pass one
//! shared suite), with `diff` and the shared vocabulary reached through
//! the re-exports below. Every other module is private to the crate.

// Lint policy, on top of `cargo clippy --all-targets -- -D warnings`:
// unsafe code only talks to the operating system (libc calls, raw file
// descriptors, pre_exec), every unsafe block says why it is sound in a
// `SAFETY:` comment, and an unsafe fn would still have to mark each unsafe
// operation in it; the Rust 2018 idioms (no hidden lifetime parameters, no
// bare trait objects) are errors.
#![deny(
    unsafe_op_in_unsafe_fn,
    rust_2018_idioms,
    clippy::undocumented_unsafe_blocks
)]

mod act;
mod actions;
pub mod budget;
pub mod cli;
mod controller;
mod diff;
mod fleet;
mod heal;
mod health;
mod metrics;
pub mod model;
mod notify;
pub mod plan;
pub mod policy;
pub mod provider;
mod publish;
mod reconcile;
mod report;
mod review;
mod rollout;
mod sample;
mod serve;
mod source;
pub mod state;
mod vocab;
mod watch;

pub use diff::{diff, Change, Diff, DiffOptions};
/// The forecast fit and the anomaly band (pure), for the benchmarks.
pub use health::trend;
pub use model::{load, DesiredState, Kind, Mode, Resource, ResourceKey, Settings, SourceFile};
pub use plan::{plan, Plan};
pub use vocab::{Action, ActionType, Decision, FieldChange, LiveResource};
/// The words the state store's rows are written in.
pub use vocab::{
    IncidentStatus, JournalAction, JournalOutcome, JournalPhase, Remembered, Status, StepOutcome,
};
