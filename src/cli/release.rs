//! `tend release`: a human lifts the hold on a resource whose declared
//! spec failed verification; the next pass applies that spec once more
//! (and verifies it again).

use anyhow::Context as _;

use super::{print, Global};
use crate::model::{Kind, Mode, ResourceKey};
use crate::state::{ChangeStatus, NewRun, RunStatus};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The resource, as KIND/NAME (e.g. host.Process/sample-app).
    resource: String,
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let resource = &args.resource;
    let key = resource
        .split_once('/')
        .and_then(|(k, n)| Some(ResourceKey::new(Kind::parse(k)?, n)))
        .with_context(|| {
            format!("invalid resource `{resource}`: expected KIND/NAME, such as host.Process/web")
        })?;
    let store: std::sync::Arc<dyn crate::state::Store> =
        global.existing_store("state database")?.into();
    let _lock = crate::state::lock(&store, "tend release")?;
    let held: Vec<_> = store
        .changes(chrono::DateTime::<chrono::Utc>::MAX_UTC)?
        .into_iter()
        .filter(|c| c.key == key && c.status == ChangeStatus::Failed)
        .collect();
    if held.is_empty() {
        anyhow::bail!("{key} is not held: no declared spec of it failed verification");
    }
    let run_id = store.begin_run(&NewRun {
        command: "tend release",
        origin: "the command line",
        commit: None,
        mode: Mode::Auto,
    })?;
    let who = std::env::var("USER").unwrap_or_else(|_| "a human".into());
    let mut out = String::new();
    for row in &held {
        crate::rollout::settle(
            &*store,
            row,
            ChangeStatus::Released,
            &format!("released by {who} with `tend release`"),
            run_id,
            row.commit.as_deref(),
        )?;
        out.push_str(&format!(
            "released {key}: the spec {} of commit {} may be applied once more; the next pass applies and verifies it\n",
            row.digest,
            row.commit.as_deref().unwrap_or("unknown")
        ));
    }
    store.finish_run(run_id, RunStatus::Ok)?;
    print(&out)?;
    Ok(0)
}
