//! `host.File`: a regular file's existence, content and mode.
//!
//! Reading never changes a file. Writing replaces the whole file atomically
//! and records ownership; deletion only removes files tend recorded. Paths
//! are resolved without following symbolic links (see [`nofollow`]): a link
//! where a managed file or one of its directories should be is shown as
//! drift and refused on apply, unless the resource sets
//! `spec.followSymlinks: true`.

mod nofollow;

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{record_names, write_atomic, HostRefs};
use crate::model::{Kind, ResourceKey};
use crate::provider::{Applied, LiveResource, ProviderError};
use crate::vocab::{Action, ActionType};
use nofollow::{Found, Parent, WalkError};

/// Files larger than this are compared by hash only and shown as such.
const MAX_TEXT: u64 = 16 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ownership {
    /// The path as declared (relative paths stay relative to the host root).
    path: String,
    /// The resource opted in to symbolic links when tend last wrote it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    follow_symlinks: bool,
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

/// Splits a declared path into a trusted base, whose links are followed
/// (the host root, or `/` for an absolute path outside it), and the rest,
/// in which no link is followed. With `follow`, links are resolved first
/// as far as the path exists.
fn split(refs: &HostRefs, declared: &str, follow: bool) -> (PathBuf, PathBuf) {
    let full = refs.resolve(declared);
    if follow {
        let mut existing = full.as_path();
        let mut rest = Vec::new();
        while let Some(parent) = existing.parent() {
            if let Ok(real) = std::fs::canonicalize(existing) {
                if rest.is_empty() {
                    if let (Some(dir), Some(name)) = (real.parent(), real.file_name()) {
                        return (dir.to_path_buf(), PathBuf::from(name));
                    }
                }
                return (real, rest.iter().rev().collect());
            }
            rest.extend(existing.file_name());
            existing = parent;
        }
    }
    let root = std::fs::canonicalize(&refs.root).unwrap_or_else(|_| refs.root.clone());
    if let Ok(rest) = full.strip_prefix(&refs.root) {
        return (root, rest.to_path_buf());
    }
    let rest: PathBuf = full
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect();
    (PathBuf::from("/"), rest)
}

fn open_parent(
    refs: &HostRefs,
    declared: &str,
    follow: bool,
    create: bool,
) -> Result<Option<Parent>, WalkError> {
    let (base, rest) = split(refs, declared, follow);
    nofollow::parent(&base, &rest, create)
}

/// A link where a managed file or one of its directories should be: drift
/// that shows no content, because nothing is read through the link.
fn link_live(declared: &str, link: &Path) -> (Value, Option<String>) {
    (
        json!({"path": declared, "content": Value::Null, "type": "symlink"}),
        Some(format!(
            "{} is a symbolic link; tend does not follow it",
            link.display()
        )),
    )
}

fn not_a_file(declared: &str, mode: u32, kind: &str) -> (Value, Option<String>) {
    (
        json!({
            "path": declared,
            "content": Value::Null,
            "mode": format!("{mode:04o}"),
            "type": kind,
        }),
        None,
    )
}

/// Reads one file without following links (unless `follow`); `None` when it
/// does not exist. The second value is a note for humans.
fn read_live(
    refs: &HostRefs,
    declared: &str,
    follow: bool,
) -> Result<Option<(Value, Option<String>)>, ProviderError> {
    let shown = refs.resolve(declared);
    let err = |e: std::io::Error| list_err(format!("{}: {e}", shown.display()));
    let parent = match open_parent(refs, declared, follow, false) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(WalkError::Link(link)) => return Ok(Some(link_live(declared, &link))),
        Err(e) => return Err(list_err(e)),
    };
    let (mode, len) = match parent.look().map_err(err)? {
        Found::Missing => return Ok(None),
        Found::Link => return Ok(Some(link_live(declared, &shown))),
        Found::Dir { mode } => return Ok(Some(not_a_file(declared, mode, "directory"))),
        Found::Other { mode } => return Ok(Some(not_a_file(declared, mode, "other"))),
        Found::File { mode, len } => (format!("{mode:04o}"), len),
    };
    let (content, sha) = if len <= MAX_TEXT {
        let bytes = match parent.read(MAX_TEXT) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            // Replaced by a link since it was looked at.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(Some(link_live(declared, &shown)))
            }
            Err(e) => return Err(err(e)),
        };
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
            Value::String(format!("<{len} bytes, not compared as text>")),
            String::new(),
        )
    };
    Ok(Some((
        json!({
            "path": declared,
            "content": content,
            "contentSha256": sha,
            "mode": mode,
        }),
        None,
    )))
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

fn live(
    refs: &HostRefs,
    name: &str,
    path: &str,
    owned: bool,
    follow: bool,
) -> Result<Option<LiveResource>, ProviderError> {
    Ok(read_live(refs, path, follow)?.map(|(mut spec, note)| {
        if follow {
            spec["followSymlinks"] = Value::Bool(true);
        }
        LiveResource {
            key: ResourceKey::new(Kind::HostFile, name.to_string()),
            spec,
            owned,
            id: refs.resolve(path).display().to_string(),
            note,
        }
    }))
}

pub(super) fn list(
    refs: &HostRefs,
    desired: &[(String, String)],
) -> Result<Vec<LiveResource>, ProviderError> {
    let mut out = Vec::with_capacity(desired.len());
    let mut names: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (name, path) in desired {
        names.insert(name);
        let own = read_ownership(refs, name)?;
        // Links are followed only for a resource that opted in when tend
        // last wrote it at this path.
        let follow = own
            .as_ref()
            .is_some_and(|o| o.follow_symlinks && o.path == *path);
        out.extend(live(refs, name, path, own.is_some(), follow)?);
    }
    for name in record_names(&refs.files_dir).map_err(list_err)? {
        if names.contains(name.as_str()) {
            continue;
        }
        let Some(own) = read_ownership(refs, &name)? else {
            continue;
        };
        out.extend(live(refs, &name, &own.path, true, own.follow_symlinks)?);
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
            let parent = open_parent(refs, &own.path, own.follow_symlinks, false)
                .map_err(|e| fail(e.to_string()))?;
            if let Some(parent) = parent {
                parent
                    .unlink()
                    .map_err(|e| fail(format!("{}: {e}", path.display())))?;
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
            write(refs, action, spec).map_err(fail)
        }
    }
}

/// Makes the file what `spec` declares, through no link unless the spec
/// opts in.
fn write(refs: &HostRefs, action: &Action, spec: &Value) -> Result<Applied, String> {
    let declared = spec.get("path").and_then(Value::as_str).unwrap_or_default();
    let follow = spec.get("followSymlinks").and_then(Value::as_bool) == Some(true);
    let path = refs.resolve(declared);
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    let mode = spec
        .get("mode")
        .and_then(Value::as_str)
        .map(|m| u32::from_str_radix(m, 8))
        .transpose()
        .map_err(|e| format!("invalid mode: {e}"))?;
    let parent = open_parent(refs, declared, follow, true)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: a directory is missing", path.display()))?;
    if action.action_type == ActionType::Replace {
        parent.unlink().map_err(at)?;
    }
    let existing_mode = match parent.look().map_err(at)? {
        Found::Missing => None,
        Found::File { mode, .. } => Some(mode),
        Found::Dir { .. } => return Err(format!("{} is a directory", path.display())),
        Found::Link => return Err(WalkError::Link(path.clone()).to_string()),
        Found::Other { .. } => {
            return Err(format!(
                "{} is not a regular file; refusing to replace it",
                path.display()
            ))
        }
    };
    // Unmanaged modes survive a rewrite (which replaces the inode).
    let want = mode.or(existing_mode).unwrap_or(0o644);
    let mut did = Vec::new();
    let content = match spec.get("content").and_then(Value::as_str) {
        Some(c) => Some(c.as_bytes()),
        None if existing_mode.is_none() => Some(&b""[..]),
        None => None,
    };
    let mut mode_set = false;
    if let Some(content) = content {
        let current = match existing_mode {
            Some(_) => {
                parent
                    .read(content.len() as u64 + 1)
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::ELOOP) => WalkError::Link(path.clone()).to_string(),
                        _ => at(e),
                    })?
            }
            None => None,
        };
        if current.as_deref() != Some(content) {
            parent.write_atomic(content, want).map_err(at)?;
            mode_set = true;
            did.push(if existing_mode.is_none() && content.is_empty() {
                "created empty file".to_string()
            } else {
                format!("wrote {} bytes", content.len())
            });
        }
    }
    if !mode_set && existing_mode != Some(want) {
        parent.chmod(want).map_err(at)?;
        did.push(format!("mode {want:04o}"));
    } else if mode_set && existing_mode.is_some_and(|m| m != want) {
        did.push(format!("mode {want:04o}"));
    }
    let record = serde_json::to_vec(&Ownership {
        path: declared.to_string(),
        follow_symlinks: follow,
    })
    .map_err(|e| e.to_string())?;
    write_atomic(&record_path(refs, &action.target.name), &record).map_err(|e| e.to_string())?;
    if did.is_empty() {
        did.push("already as declared".to_string());
    }
    Ok(Applied {
        detail: format!("{}: {}", path.display(), did.join(", ")),
    })
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

    fn refs(root: &Path) -> HostRefs {
        HostRefs {
            root: root.to_path_buf(),
            files_dir: root.join(".state/files"),
            procs_dir: root.join(".state/processes"),
        }
    }

    #[test]
    fn a_linked_file_is_drift_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("x")).unwrap();
        let listed = list(&refs(dir.path()), &[("x".into(), "x".into())]).unwrap();
        assert_eq!(listed[0].spec["type"], "symlink");
        assert!(!listed[0].spec.to_string().contains("s3cret"));
    }

    #[test]
    fn following_links_is_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let r = refs(dir.path());
        let action = |action_type| Action {
            fingerprint: String::new(),
            action_type,
            target: ResourceKey::new(Kind::HostFile, "f"),
            changes: Vec::new(),
            risk: crate::vocab::Risk::Low,
            reversible: true,
            decision: crate::vocab::Decision::Auto,
            reasons: Vec::new(),
            note: None,
            contested: false,
            declared_at: None,
            incident: None,
            approval: None,
            rollback: None,
            change: None,
        };
        let spec = json!({"path": "link/f.txt", "content": "hi"});
        let err = apply(&r, &action(ActionType::Create), Some(&spec)).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert!(!real.join("f.txt").exists());
        let spec = json!({"path": "link/f.txt", "content": "hi", "followSymlinks": true});
        apply(&r, &action(ActionType::Create), Some(&spec)).unwrap();
        assert_eq!(std::fs::read_to_string(real.join("f.txt")).unwrap(), "hi");
        let listed = list(&r, &[("f".into(), "link/f.txt".into())]).unwrap();
        assert_eq!(listed[0].spec["content"], "hi");
        assert_eq!(listed[0].spec["followSymlinks"], true);
    }
}
