//! `host.File`: a regular file's existence, content and mode.
//!
//! Reading never changes a file. Writing replaces the whole file atomically
//! and records ownership; deletion only removes files tend recorded.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{record_names, write_atomic, HostRefs};
use crate::model::{Kind, ResourceKey};
use crate::provider::{Applied, LiveResource, ProviderError};
use crate::vocab::{Action, ActionType};

/// Files larger than this are compared by hash only and shown as such.
const MAX_TEXT: u64 = 16 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Ownership {
    /// The path as declared (relative paths stay relative to the host root).
    path: String,
}

/// "644" and "0644" are the same mode.
pub fn normalize_mode(m: &str) -> String {
    format!("{:0>4}", m.trim_start_matches('0'))
}

fn list_err(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::List {
        kind: Kind::HostFile,
        message: e.to_string(),
    }
}

/// Reads one file; `None` when it does not exist.
fn read_live(refs: &HostRefs, declared: &str) -> Result<Option<Value>, ProviderError> {
    let path = refs.resolve(declared);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(list_err(format!("{}: {e}", path.display()))),
    };
    if !meta.is_file() {
        return Ok(Some(json!({
            "path": declared,
            "content": Value::Null,
            "mode": format!("{:04o}", meta.permissions().mode() & 0o7777),
            "type": if meta.is_dir() { "directory" } else { "other" },
        })));
    }
    let mode = format!("{:04o}", meta.permissions().mode() & 0o7777);
    let (content, sha) = if meta.len() <= MAX_TEXT {
        let bytes =
            std::fs::read(&path).map_err(|e| list_err(format!("{}: {e}", path.display())))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        match String::from_utf8(bytes) {
            Ok(text) => (Value::String(text), sha),
            Err(_) => (
                Value::String(format!("<binary content, sha256 {sha}>")),
                sha,
            ),
        }
    } else {
        (
            Value::String(format!("<{} bytes, not compared as text>", meta.len())),
            String::new(),
        )
    };
    Ok(Some(json!({
        "path": declared,
        "content": content,
        "contentSha256": sha,
        "mode": mode,
    })))
}

fn record_path(refs: &HostRefs, name: &str) -> PathBuf {
    refs.files_dir.join(format!("{name}.json"))
}

fn read_ownership(refs: &HostRefs, name: &str) -> Result<Option<Ownership>, ProviderError> {
    let path = record_path(refs, name);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| list_err(format!("corrupt ownership record for {name}: {e}"))),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(None),
        Err(e) => Err(list_err(format!("{}: {e}", path.display()))),
    }
}

pub(super) fn list(
    refs: &HostRefs,
    desired: &[(String, String)],
) -> Result<Vec<LiveResource>, ProviderError> {
    let mut out = Vec::with_capacity(desired.len());
    let mut names: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (name, path) in desired {
        names.insert(name);
        let owned = read_ownership(refs, name)?.is_some();
        if let Some(spec) = read_live(refs, path)? {
            out.push(LiveResource {
                key: ResourceKey::new(Kind::HostFile, name.clone()),
                spec,
                owned,
                id: refs.resolve(path).display().to_string(),
                note: None,
            });
        }
    }
    for name in record_names(&refs.files_dir).map_err(list_err)? {
        if names.contains(name.as_str()) {
            continue;
        }
        let Some(own) = read_ownership(refs, &name)? else {
            continue;
        };
        if let Some(spec) = read_live(refs, &own.path)? {
            out.push(LiveResource {
                key: ResourceKey::new(Kind::HostFile, name.clone()),
                spec,
                owned: true,
                id: refs.resolve(&own.path).display().to_string(),
                note: None,
            });
        }
    }
    Ok(out)
}

pub(super) fn apply(
    refs: &HostRefs,
    action: &Action,
    spec: Option<&Value>,
) -> Result<Applied, ProviderError> {
    let fail = |message: String| ProviderError::Apply {
        action: action.action_type.as_str(),
        target: action.target.clone(),
        message,
    };
    let name = &action.target.name;
    match action.action_type {
        ActionType::Delete => {
            let Some(own) = read_ownership(refs, name).map_err(|e| fail(e.to_string()))? else {
                return Err(fail(
                    "tend does not own this file; refusing to delete it".into(),
                ));
            };
            let path = refs.resolve(&own.path);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(fail(format!("{}: {e}", path.display()))),
            }
            std::fs::remove_file(record_path(refs, name)).map_err(|e| fail(e.to_string()))?;
            Ok(Applied {
                detail: format!("removed {}", path.display()),
            })
        }
        ActionType::Scale | ActionType::Command => Err(fail(format!(
            "a host.File has no {} action",
            action.action_type.as_str()
        ))),
        ActionType::Create
        | ActionType::Update
        | ActionType::Restart
        | ActionType::Stop
        | ActionType::Replace => {
            let spec = spec.ok_or_else(|| fail("no desired state for this file".into()))?;
            let declared = spec.get("path").and_then(Value::as_str).unwrap_or_default();
            let path = refs.resolve(declared);
            if action.action_type == ActionType::Replace {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        return Err(fail(format!("{}: {e}", path.display())))
                    }
                    _ => {}
                }
            }
            let mode = spec
                .get("mode")
                .and_then(Value::as_str)
                .map(|m| u32::from_str_radix(m, 8))
                .transpose()
                .map_err(|e| fail(format!("invalid mode: {e}")))?;
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                if meta.is_dir() {
                    return Err(fail(format!("{} is a directory", path.display())));
                }
            }
            // Unmanaged modes survive a rewrite (which replaces the inode).
            let existing_mode = std::fs::metadata(&path)
                .ok()
                .map(|m| m.permissions().mode() & 0o7777);
            let mut did = Vec::new();
            match spec.get("content").and_then(Value::as_str) {
                Some(content) => {
                    let current = std::fs::read(&path).ok();
                    if current.as_deref() != Some(content.as_bytes()) {
                        write_atomic(&path, content.as_bytes())
                            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
                        did.push(format!("wrote {} bytes", content.len()));
                    }
                }
                None => {
                    if !path.exists() {
                        write_atomic(&path, b"")
                            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
                        did.push("created empty file".to_string());
                    }
                }
            }
            let want = mode.or(existing_mode).unwrap_or(0o644);
            let have = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o7777)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            if have != want {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))
                    .map_err(|e| fail(format!("{}: {e}", path.display())))?;
                did.push(format!("mode {want:04o}"));
            }
            let record = serde_json::to_vec(&Ownership {
                path: declared.to_string(),
            })
            .map_err(|e| fail(e.to_string()))?;
            write_atomic(&record_path(refs, name), &record).map_err(|e| fail(e.to_string()))?;
            if did.is_empty() {
                did.push("already as declared".to_string());
            }
            Ok(Applied {
                detail: format!("{}: {}", path.display(), did.join(", ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_normalise() {
        assert_eq!(normalize_mode("644"), "0644");
        assert_eq!(normalize_mode("0600"), "0600");
        assert_eq!(normalize_mode("000"), "0000");
    }
}
