//! The `host` provider: files and processes on the machine tend runs on.
//!
//! It needs nothing installed. Ownership is recorded in the state directory
//! (`host/files/<name>.json`, `host/processes/<name>.json`), because files and
//! processes carry no tags; only recorded resources are ever pruned.

mod file;
mod process;

pub use process::RESTART_PATH;

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Applied, ListRequest, LiveResource, Provider, ProviderError};
use crate::model::{Kind, ProviderName, Resource};
use crate::vocab::Action;

pub use process::{process_alive, read_record, ProcessRecord};

/// The pid of a declared `host.Process` that tend started and that is
/// still running as tend started it (never a reused pid).
pub fn started_pid(state_dir: &Path, name: &str) -> Option<i32> {
    let rec = read_record(&state_dir.join("host").join("processes"), name).ok()??;
    matches!(process_alive(&rec), process::Liveness::Ours).then_some(rec.pid)
}

pub struct HostProvider {
    refs: HostRefs,
    tend_exe: PathBuf,
}

impl HostProvider {
    /// `root` resolves relative paths; `state_dir` is tend's state directory.
    pub fn new(root: &Path, state_dir: &Path) -> Self {
        HostProvider {
            refs: HostRefs {
                root: root.to_path_buf(),
                files_dir: state_dir.join("host").join("files"),
                procs_dir: state_dir.join("host").join("processes"),
            },
            tend_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tend")),
        }
    }
}

/// Names of the JSON records in a directory (`<name>.json`).
fn record_names(dir: &Path) -> std::io::Result<Vec<String>> {
    use std::io::ErrorKind;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // No records kept there (yet): nothing tend owns.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(Vec::new())
        }
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", dir.display()),
            ))
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_suffix(".json") {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Writes a file by renaming a complete temporary copy over it, so a crash
/// never leaves a half-written record or managed file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    // Unique per write: two threads of this tend writing one record at
    // once (a restart and the exit watcher) must not rename each other's
    // temporary file away.
    let tmp = dir.join(format!(
        ".{name}.tend-tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

impl Provider for HostProvider {
    fn name(&self) -> ProviderName {
        ProviderName::Host
    }

    fn kinds(&self) -> &'static [Kind] {
        &[Kind::HostFile, Kind::HostProcess]
    }

    async fn list(&self, req: &ListRequest<'_>) -> Result<Vec<LiveResource>, ProviderError> {
        let files: Vec<(String, String)> = req
            .desired
            .iter()
            .filter(|r| r.key.kind == Kind::HostFile)
            .map(|r| (r.key.name.clone(), spec_str(&r.spec, "path")))
            .collect();
        let procs: Vec<(String, Value)> = req
            .desired
            .iter()
            .filter(|r| r.key.kind == Kind::HostProcess)
            .map(|r| (r.key.name.clone(), r.spec.clone()))
            .collect();
        let want_files = req.kinds.contains(&Kind::HostFile);
        let want_procs = req.kinds.contains(&Kind::HostProcess);
        let this = self.refs.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            if want_files {
                out.extend(file::list(&this, &files)?);
            }
            if want_procs {
                out.extend(process::list(&this, &procs)?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| ProviderError::List {
            kind: Kind::HostFile,
            message: e.to_string(),
        })?
    }

    async fn apply(
        &self,
        action: &Action,
        desired: Option<&Resource>,
    ) -> Result<Applied, ProviderError> {
        let action = action.clone();
        let spec = desired.map(|r| r.spec.clone());
        let refs = self.refs.clone();
        let exe = self.tend_exe.clone();
        let target = action.target.clone();
        tokio::task::spawn_blocking(move || match action.target.kind {
            Kind::HostFile => file::apply(&refs, &action, spec.as_ref()),
            Kind::HostProcess => process::apply(&refs, &exe, &action, spec.as_ref()),
            _ => Err(ProviderError::Apply {
                action: action.action_type.as_str(),
                target: action.target.clone(),
                message: "not a host resource".into(),
            }),
        })
        .await
        .map_err(|e| ProviderError::Apply {
            action: "apply",
            target,
            message: e.to_string(),
        })?
    }

    fn normalize(&self, kind: Kind, spec: &mut Value) {
        let Some(obj) = spec.as_object_mut() else {
            return;
        };
        match kind {
            Kind::HostFile => {
                if let Some(Value::String(m)) = obj.get_mut("mode") {
                    *m = file::normalize_mode(m);
                }
            }
            Kind::HostProcess => {
                obj.entry("state").or_insert_with(|| Value::from("running"));
            }
            _ => {}
        }
    }
}

/// The paths a blocking host operation needs, owned so it can move to a
/// blocking thread.
#[derive(Clone)]
struct HostRefs {
    root: PathBuf,
    files_dir: PathBuf,
    procs_dir: PathBuf,
}

impl HostRefs {
    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }
}

fn spec_str(spec: &Value, field: &str) -> String {
    spec.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
