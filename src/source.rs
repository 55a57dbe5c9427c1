//! Where desired state comes from: a local directory or a Git repository.
//!
//! A Git source is fetched with git2 into a cache under the state directory
//! and read straight from the object database at the resolved commit, so a
//! dirty or half-written checkout can never leak into a plan. An unreachable
//! remote or an unknown ref is an error; the cache is never used as a
//! fallback, because acting on stale desired state is worse than not acting.

use std::path::{Path, PathBuf};

use git2::{FetchOptions, Oid, Repository};
use sha2::{Digest, Sha256};

use crate::model::SourceFile;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("failed to fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("failed to open the source cache at {path}: {message}")]
    Cache { path: String, message: String },
    #[error("unknown ref `{reference}` in {url}")]
    UnknownRef { url: String, reference: String },
    #[error("path `{path}` does not exist at commit {commit} of {url}")]
    MissingPath {
        url: String,
        commit: String,
        path: String,
    },
    #[error("failed to read {path} at commit {commit}: {message}")]
    Object {
        path: String,
        commit: String,
        message: String,
    },
    #[error("{path} is not valid UTF-8")]
    NotUtf8 { path: String },
}

/// What the user asked to reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    Git {
        url: String,
        reference: Option<String>,
        path: Option<String>,
    },
}

/// The files of a source at one point in time, and where they came from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// A human description: the directory, or `url@ref`.
    pub origin: String,
    /// The commit the files were read at; `None` for a plain directory.
    pub commit: Option<String>,
    /// Every `*.yaml`/`*.yml` file.
    pub files: Vec<SourceFile>,
    /// Every `*.rego` file, with its path relative to the source root (to
    /// match the policy directories named in Settings).
    pub rego: Vec<(String, SourceFile)>,
}

impl Source {
    /// Reads every `*.yaml`/`*.yml` file of the source. `cache_dir` holds
    /// fetched Git repositories.
    pub fn snapshot(&self, cache_dir: &Path) -> Result<Snapshot, SourceError> {
        match self {
            Source::Dir(dir) => read_dir_source(dir),
            Source::Git {
                url,
                reference,
                path,
            } => read_git_source(cache_dir, url, reference.as_deref(), path.as_deref()),
        }
    }

    /// The local directory, when the source is one (watched for changes).
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Source::Dir(d) => Some(d),
            Source::Git { .. } => None,
        }
    }
}

fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

fn is_wanted(name: &str) -> bool {
    is_yaml(name) || name.ends_with(".rego")
}

fn read_dir_source(dir: &Path) -> Result<Snapshot, SourceError> {
    let display = dir.display().to_string();
    let meta = std::fs::metadata(dir).map_err(|source| SourceError::Read {
        path: display.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SourceError::NotADirectory(display));
    }
    let mut paths = Vec::new();
    collect_yaml(dir, &mut paths)?;
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    let mut rego = Vec::new();
    for p in paths {
        let text = std::fs::read(&p).map_err(|source| SourceError::Read {
            path: p.display().to_string(),
            source,
        })?;
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        let shown = Path::new(&display).join(rel).display().to_string();
        let text = String::from_utf8(text).map_err(|_| SourceError::NotUtf8 {
            path: shown.clone(),
        })?;
        let file = SourceFile { path: shown, text };
        if is_yaml(&rel.to_string_lossy()) {
            files.push(file);
        } else {
            rego.push((rel.to_string_lossy().to_string(), file));
        }
    }
    Ok(Snapshot {
        origin: display,
        commit: None,
        files,
        rego,
    })
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SourceError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| SourceError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ty = entry.file_type().map_err(|source| SourceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        if ty.is_dir() {
            collect_yaml(&path, out)?;
        } else if is_wanted(&name) {
            out.push(path);
        }
    }
    Ok(())
}

/// The cache directory for one remote URL.
fn cache_path(cache_dir: &Path, url: &str) -> PathBuf {
    let digest = Sha256::digest(url.as_bytes());
    cache_dir.join(hex::encode(&digest[..8]))
}

fn read_git_source(
    cache_dir: &Path,
    url: &str,
    reference: Option<&str>,
    sub: Option<&str>,
) -> Result<Snapshot, SourceError> {
    let shown_url = redact_url(url);
    let path = cache_path(cache_dir, url);
    let cache_err = |e: git2::Error| SourceError::Cache {
        path: path.display().to_string(),
        message: e.message().to_string(),
    };
    let repo = match Repository::open_bare(&path) {
        Ok(r) => r,
        Err(_) => {
            std::fs::create_dir_all(&path).map_err(|source| SourceError::Read {
                path: path.display().to_string(),
                source,
            })?;
            Repository::init_bare(&path).map_err(cache_err)?
        }
    };
    fetch(&repo, url, &shown_url)?;

    let commit = resolve(&repo, reference).ok_or_else(|| SourceError::UnknownRef {
        url: shown_url.clone(),
        reference: reference.unwrap_or("HEAD").to_string(),
    })?;
    let commit_obj = repo.find_commit(commit).map_err(|e| SourceError::Object {
        path: String::new(),
        commit: commit.to_string(),
        message: e.message().to_string(),
    })?;
    let obj_err = |p: &str, e: git2::Error| SourceError::Object {
        path: p.to_string(),
        commit: commit.to_string(),
        message: e.message().to_string(),
    };
    let root_tree = commit_obj.tree().map_err(|e| obj_err("/", e))?;
    let sub = sub.map(|s| s.trim_matches('/')).filter(|s| !s.is_empty());
    let tree = match sub {
        None => root_tree,
        Some(s) => {
            let entry = root_tree
                .get_path(Path::new(s))
                .map_err(|_| SourceError::MissingPath {
                    url: shown_url.clone(),
                    commit: commit.to_string(),
                    path: s.to_string(),
                })?;
            repo.find_tree(entry.id())
                .map_err(|_| SourceError::MissingPath {
                    url: shown_url.clone(),
                    commit: commit.to_string(),
                    path: s.to_string(),
                })?
        }
    };

    let mut blobs: Vec<(String, Oid)> = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or_default();
        if name.starts_with('.') {
            return git2::TreeWalkResult::Skip;
        }
        if entry.kind() == Some(git2::ObjectType::Blob) && is_wanted(name) {
            blobs.push((format!("{dir}{name}"), entry.id()));
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(|e| obj_err("/", e))?;
    blobs.sort();

    let prefix = sub.map(|s| format!("{s}/")).unwrap_or_default();
    let mut files = Vec::with_capacity(blobs.len());
    let mut rego = Vec::new();
    for (rel, oid) in blobs {
        let shown = format!("{prefix}{rel}");
        let blob = repo.find_blob(oid).map_err(|e| obj_err(&shown, e))?;
        let text =
            String::from_utf8(blob.content().to_vec()).map_err(|_| SourceError::NotUtf8 {
                path: shown.clone(),
            })?;
        let file = SourceFile { path: shown, text };
        if is_yaml(&rel) {
            files.push(file);
        } else {
            rego.push((rel, file));
        }
    }
    Ok(Snapshot {
        origin: format!("{shown_url}@{}", reference.unwrap_or("HEAD")),
        commit: Some(commit.to_string()),
        files,
        rego,
    })
}

fn fetch(repo: &Repository, url: &str, shown_url: &str) -> Result<(), SourceError> {
    let fetch_err = |e: git2::Error| SourceError::Fetch {
        url: shown_url.to_string(),
        message: e.message().to_string(),
    };
    let mut remote = repo.remote_anonymous(url).map_err(fetch_err)?;
    let mut opts = FetchOptions::new();
    opts.download_tags(git2::AutotagOption::All);
    let mut callbacks = git2::RemoteCallbacks::new();
    callbacks.credentials(|_url, username, allowed| {
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            if let Ok(token) =
                std::env::var("TEND_GIT_TOKEN").or_else(|_| std::env::var("GITHUB_TOKEN"))
            {
                return git2::Cred::userpass_plaintext("x-access-token", &token);
            }
        }
        if allowed.contains(git2::CredentialType::DEFAULT) {
            return git2::Cred::default();
        }
        let _ = username;
        Err(git2::Error::from_str(
            "no credentials available (set TEND_GIT_TOKEN)",
        ))
    });
    opts.remote_callbacks(callbacks);
    remote
        .fetch(
            &[
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
                "+HEAD:refs/remotes/origin/HEAD",
            ],
            Some(&mut opts),
            None,
        )
        .map_err(fetch_err)
}

fn resolve(repo: &Repository, reference: Option<&str>) -> Option<Oid> {
    let peel = |name: &str| -> Option<Oid> {
        let r = repo.find_reference(name).ok()?;
        r.peel_to_commit().ok().map(|c| c.id())
    };
    let Some(reference) = reference else {
        return peel("refs/remotes/origin/HEAD");
    };
    let candidates = [
        format!("refs/remotes/origin/{reference}"),
        format!("refs/tags/{reference}"),
        reference
            .strip_prefix("refs/heads/")
            .map(|b| format!("refs/remotes/origin/{b}"))
            .unwrap_or_else(|| reference.to_string()),
    ];
    for c in &candidates {
        if let Some(oid) = peel(c) {
            return Some(oid);
        }
    }
    if reference.len() >= 7 && reference.chars().all(|c| c.is_ascii_hexdigit()) {
        let obj = repo.revparse_single(reference).ok()?;
        return obj.peel_to_commit().ok().map(|c| c.id());
    }
    None
}

/// Removes credentials from a URL before it is shown anywhere.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if !userinfo.contains('/') {
                return format!("{scheme}://***@{host}");
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_shown() {
        assert_eq!(
            redact_url("https://user:tok@github.com/a/b"),
            "https://***@github.com/a/b"
        );
        assert_eq!(redact_url("git://127.0.0.1/repo"), "git://127.0.0.1/repo");
    }

    #[test]
    fn reads_yaml_files_sorted_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("b/x.yml"), "a: 1").unwrap();
        std::fs::write(dir.path().join("a.yaml"), "a: 1").unwrap();
        std::fs::write(dir.path().join(".git/c.yaml"), "a: 1").unwrap();
        std::fs::write(dir.path().join("readme.md"), "").unwrap();
        let snap = Source::Dir(dir.path().to_path_buf())
            .snapshot(dir.path())
            .unwrap();
        let names: Vec<_> = snap
            .files
            .iter()
            .map(|f| f.path.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["a.yaml", "x.yml"]);
    }
}
