//! `tend adopt`: a resource's pending changes, written back as the live
//! values in its declaration.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{print, Global};
use crate::model;
use crate::reconcile::{self, Prepared};
use crate::report;
use crate::source::Source;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The resource, as KIND/NAME (e.g. host.File/motd).
    resource: String,
    /// The desired-state directory. Default: the working directory.
    dir: Option<PathBuf>,
    /// Change the file instead of only printing the diff.
    #[arg(long)]
    write: bool,
}

pub async fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let Args {
        resource,
        dir,
        write,
    } = args;
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let opts = global.options(None);
    let (kind, name) = resource
        .split_once('/')
        .and_then(|(k, n)| Some((model::Kind::parse(k)?, n)))
        .with_context(|| {
            format!("invalid resource `{resource}`: expected KIND/NAME, such as host.File/motd")
        })?;
    let key = model::ResourceKey::new(kind, name);
    let loaded = reconcile::load(&Source::Dir(dir.clone()), &opts)?;
    let Some(declared) = loaded.desired.resources.iter().find(|r| r.key == key) else {
        anyhow::bail!("{key} is not declared in {}", dir.display());
    };
    let origin = declared.origin.clone();
    let prepared = Prepared::from_load(loaded, Default::default()).await?;
    let loaded = prepared.loaded();
    let now = chrono::Utc::now();
    let store = crate::state::open_existing(&loaded.state_dir, loaded.shared.as_deref())?;
    let facts = reconcile::facts(store.as_deref(), &loaded.desired.settings, now)?;
    let planned = reconcile::plan(&prepared, &opts, &facts, store.as_deref(), now).await?;
    let actions: Vec<&crate::vocab::Action> = planned
        .plan
        .actions
        .iter()
        .filter(|a| a.target == key && a.incident.is_none())
        .collect();
    if actions.is_empty() {
        print(&format!(
            "{key} matches its declaration: nothing to adopt.\n"
        ))?;
        return Ok(0);
    }
    crate::review::keep_live_offer(&actions)
        .map_err(|why| anyhow::anyhow!("cannot adopt the live state of {key}: {why}"))?;
    let path = Path::new(&*origin.file);
    let old = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let edits: Vec<(String, serde_json::Value)> = actions
        .iter()
        .flat_map(|a| a.changes.iter())
        .map(|c| (c.path.clone(), c.from.clone()))
        .collect();
    let new = model::edit::set_values_of(&old, key.kind.as_str(), &key.name, &edits)
        .with_context(|| format!("cannot edit {} in place", path.display()))?;
    print(
        &planned
            .secrets
            .scrub(&report::render_file_diff(&origin.file, &old, &new)),
    )?;
    if write {
        std::fs::write(path, &new)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!(
            "tend: wrote the live state of {key} into {}",
            path.display()
        );
    }
    Ok(0)
}
