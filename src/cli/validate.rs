//! `tend validate`: desired state checked against the schemas, and its
//! policies compiled; nothing changes.

use super::{print, Global, SourceArgs};
use crate::model;
use crate::reconcile;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let loaded = reconcile::load(&args.source.source(), &global.options(None))?;
    reconcile::compile_policies(&loaded.policy_files)?;
    let desired = &loaded.desired;
    let warnings = model::health::noise_warnings(&desired.resources, &desired.signatures)
        .into_iter()
        .chain(model::health::signal_warnings(
            &desired.resources,
            &desired.signatures,
        ));
    for w in warnings {
        eprintln!(
            "warning: {}\n  --> {}:{}:{} (at {})",
            w.message, w.origin.file, w.origin.line, w.origin.col, w.pointer
        );
    }
    let commit = loaded
        .commit
        .as_deref()
        .map(|c| format!(" at commit {c}"))
        .unwrap_or_default();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    print(&format!(
        "{} valid: {} document{} in {} file{}{commit}.\n",
        loaded.origin,
        loaded.desired.documents,
        plural(loaded.desired.documents),
        loaded.desired.files,
        plural(loaded.desired.files),
    ))?;
    Ok(0)
}
