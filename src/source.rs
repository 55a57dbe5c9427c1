//! Where desired state comes from: a local directory or a Git repository.
//!
//! A Git source is fetched with git2 into a cache under the state directory
//! and read straight from the object database at the resolved commit, so a
//! dirty or half-written checkout can never leak into a plan. An unreachable
//! remote or an unknown ref is an error; the cache is never used as a
//! fallback, because acting on stale desired state is worse than not acting.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use git2::{FetchOptions, Oid, Repository};
use sha2::{Digest, Sha256};

use crate::model::yaml::Pos;
use crate::model::{Diagnostic, Refused, SourceFile, SourceFiles};

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
    #[error("invalid {name} `{value}`: expected a size in bytes such as 8388608, 8MiB or 512KiB")]
    Limit { name: &'static str, value: String },
}

/// The most bytes one file may have (`TEND_MAX_FILE_BYTES`).
pub const MAX_FILE_BYTES_ENV: &str = "TEND_MAX_FILE_BYTES";
/// The most bytes all read files of a source may have together
/// (`TEND_MAX_SOURCE_BYTES`).
pub const MAX_SOURCE_BYTES_ENV: &str = "TEND_MAX_SOURCE_BYTES";

/// How much a source may hand over. Sizes are checked from metadata (file
/// sizes, Git object headers) before any content is read, so an oversized
/// file costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_source_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 8 << 20,
            max_source_bytes: 256 << 20,
        }
    }
}

impl Limits {
    /// The defaults, overridden by `TEND_MAX_FILE_BYTES` and
    /// `TEND_MAX_SOURCE_BYTES`.
    pub fn from_env() -> Result<Limits, SourceError> {
        let mut limits = Limits::default();
        for (name, slot) in [
            (MAX_FILE_BYTES_ENV, &mut limits.max_file_bytes),
            (MAX_SOURCE_BYTES_ENV, &mut limits.max_source_bytes),
        ] {
            if let Some(value) = std::env::var_os(name) {
                let value = value.to_string_lossy().to_string();
                *slot = parse_size(&value).ok_or(SourceError::Limit { name, value })?;
            }
        }
        Ok(limits)
    }
}

/// "8388608", "8MiB", "8M", "512 KiB", "1GiB" (binary units).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// "8.0 MiB", "512 bytes".
fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
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
    /// Every `*.yaml`/`*.yml` file, and every file the source refused to
    /// read (reported by `model::load` with the other diagnostics).
    pub files: SourceFiles,
    /// Every `*.rego` file, with its path relative to the source root (to
    /// match the policy directories named in Settings).
    pub rego: Vec<(String, SourceFile)>,
}

impl Source {
    /// Reads every `*.yaml`/`*.yml` and `*.rego` file of the source, within
    /// the size limits of the environment. `cache_dir` holds fetched Git
    /// repositories.
    pub fn snapshot(&self, cache_dir: &Path) -> Result<Snapshot, SourceError> {
        self.snapshot_with(cache_dir, Limits::from_env()?)
    }

    /// [`Source::snapshot`] with explicit limits.
    pub fn snapshot_with(&self, cache_dir: &Path, limits: Limits) -> Result<Snapshot, SourceError> {
        match self {
            Source::Dir(dir) => read_dir_source(dir, limits),
            Source::Git {
                url,
                reference,
                path,
            } => read_git_source(
                cache_dir,
                url,
                reference.as_deref(),
                path.as_deref(),
                limits,
            ),
        }
    }
}

fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

fn is_wanted(name: &str) -> bool {
    is_yaml(name) || name.ends_with(".rego")
}

fn refuse(path: &str, message: impl Into<String>) -> Refused {
    Refused {
        diagnostic: Diagnostic::new(path, None, message),
        text: None,
    }
}

fn outside_root(link: &str) -> Refused {
    with_help(
        refuse(
            link,
            "symbolic link to a file outside the source root; it was not read",
        ),
        "a desired-state source may link only to files inside itself".to_string(),
    )
}

fn too_large(path: &str, size: u64, limits: &Limits) -> Refused {
    with_help(
        refuse(
            path,
            format!(
                "file is {}, more than the {} a desired-state file may have; it was not read",
                human_size(size),
                human_size(limits.max_file_bytes)
            ),
        ),
        format!("raise the limit with {MAX_FILE_BYTES_ENV} (bytes, or e.g. 16MiB)"),
    )
}

fn source_too_large(origin: &str, size: u64, limits: &Limits) -> Refused {
    with_help(
        refuse(
            origin,
            format!(
                "the source holds {} of YAML and Rego files, more than the {} allowed; nothing was read",
                human_size(size),
                human_size(limits.max_source_bytes)
            ),
        ),
        format!("raise the limit with {MAX_SOURCE_BYTES_ENV} (bytes, or e.g. 1GiB)"),
    )
}

fn with_help(mut refused: Refused, help: String) -> Refused {
    refused.diagnostic = refused.diagnostic.with_help(help);
    refused
}

/// Text for a file's bytes, or the refusal that locates its first byte that
/// is not UTF-8 (quoting the line with that byte replaced).
fn decode(path: String, bytes: Vec<u8>) -> Result<SourceFile, Box<Refused>> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile { path, text }),
        Err(e) => {
            let bytes = e.as_bytes();
            let at = e.utf8_error().valid_up_to();
            // The prefix is valid UTF-8 by definition of `valid_up_to`.
            let before = String::from_utf8_lossy(&bytes[..at]);
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line = before.matches('\n').count() + 1;
            let col = before[line_start..].chars().count() + 1;
            let bad = bytes.get(at).copied().unwrap_or_default();
            let diagnostic = Diagnostic::new(
                &path,
                Some(Pos::new(line as u32, col as u32, 1)),
                format!("file is not valid UTF-8: byte 0x{bad:02X} is not part of a UTF-8 character"),
            )
            .with_help("desired-state files must be UTF-8; convert it, e.g. with `iconv -f LATIN1 -t UTF-8`");
            Err(Box::new(Refused {
                diagnostic,
                text: Some(String::from_utf8_lossy(bytes).into_owned()),
            }))
        }
    }
}

/// A file found by the walk, to be read once every size is known.
struct Found {
    /// Path relative to the source root, as the user sees it (the link's
    /// path for a followed symbolic link).
    rel: PathBuf,
    /// Where to open it: the file itself, or a link's target in the root.
    open: PathBuf,
    size: u64,
}

fn read_dir_source(dir: &Path, limits: Limits) -> Result<Snapshot, SourceError> {
    let display = dir.display().to_string();
    let read_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| SourceError::Read { path, source }
    };
    let meta = std::fs::metadata(dir).map_err(read_err(dir))?;
    if !meta.is_dir() {
        return Err(SourceError::NotADirectory(display));
    }
    let root = std::fs::canonicalize(dir).map_err(read_err(dir))?;
    let shown = |rel: &Path| Path::new(&display).join(rel).display().to_string();
    let mut found = Vec::new();
    let mut refused = Vec::new();
    walk(dir, &root, Path::new(""), &shown, &mut found, &mut refused)?;
    found.sort_by(|a, b| a.rel.cmp(&b.rel));

    let total: u64 = found
        .iter()
        .map(|f| f.size.min(limits.max_file_bytes))
        .sum();
    if total > limits.max_source_bytes {
        return Ok(Snapshot {
            files: SourceFiles {
                files: Vec::new(),
                refused: vec![source_too_large(&display, total, &limits)],
                root: shown(Path::new("")),
            },
            origin: display,
            commit: None,
            rego: Vec::new(),
        });
    }
    let mut files = Vec::with_capacity(found.len());
    let mut rego = Vec::new();
    for f in found {
        let path = shown(&f.rel);
        if f.size > limits.max_file_bytes {
            refused.push(too_large(&path, f.size, &limits));
            continue;
        }
        let bytes = match read_limited(&f.open, limits.max_file_bytes) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(why)) => {
                refused.push(refuse(&path, why));
                continue;
            }
            Err(source) => return Err(SourceError::Read { path, source }),
        };
        let file = match decode(path, bytes) {
            Ok(file) => file,
            Err(r) => {
                refused.push(*r);
                continue;
            }
        };
        let rel = f.rel.to_string_lossy().to_string();
        if is_yaml(&rel) {
            files.push(file);
        } else {
            rego.push((rel, file));
        }
    }
    let root = shown(Path::new(""));
    Ok(Snapshot {
        origin: display,
        commit: None,
        files: SourceFiles {
            files,
            refused,
            root,
        },
        rego,
    })
}

/// Reads a regular file without following a symbolic link in its last
/// component and without blocking on a FIFO. `Ok(Err(why))` when it is not
/// a regular file or grew past `max` since its size was checked.
fn read_limited(path: &Path, max: u64) -> std::io::Result<Result<Vec<u8>, String>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Err(
                "became a symbolic link while the source was read; it was not read".into(),
            ))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err("not a regular file; it was not read".into()));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(Err(format!(
            "file grew past {} while it was read; it was not read",
            human_size(max)
        )));
    }
    Ok(Ok(bytes))
}

/// Finds the wanted files under `dir`. A symbolic link is followed only
/// when it resolves to a file inside `root`; one that leads out is refused
/// at the link and its target is never opened. Links to directories are
/// not followed.
fn walk(
    dir: &Path,
    root: &Path,
    rel: &Path,
    shown: &dyn Fn(&Path) -> String,
    out: &mut Vec<Found>,
    refused: &mut Vec<Refused>,
) -> Result<(), SourceError> {
    let read_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| SourceError::Read { path, source }
    };
    let entries = std::fs::read_dir(dir).map_err(read_err(dir))?;
    for entry in entries {
        let entry = entry.map_err(read_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel = rel.join(&*name);
        let ty = entry.file_type().map_err(read_err(&path))?;
        if ty.is_dir() {
            walk(&path, root, &rel, shown, out, refused)?;
            continue;
        }
        if !is_wanted(&name) {
            continue;
        }
        if ty.is_symlink() {
            let target = match std::fs::canonicalize(&path) {
                Ok(t) => t,
                Err(e) => {
                    refused.push(refuse(
                        &shown(&rel),
                        format!("symbolic link that cannot be followed: {e}"),
                    ));
                    continue;
                }
            };
            if !target.starts_with(root) {
                refused.push(outside_root(&shown(&rel)));
                continue;
            }
            match std::fs::metadata(&target) {
                Ok(m) if m.is_file() => out.push(Found {
                    rel,
                    open: target,
                    size: m.len(),
                }),
                Ok(m) if m.is_dir() => {}
                Ok(_) => refused.push(refuse(&shown(&rel), "not a regular file; it was not read")),
                Err(e) => {
                    return Err(SourceError::Read {
                        path: shown(&rel),
                        source: e,
                    })
                }
            }
            continue;
        }
        if !ty.is_file() {
            refused.push(refuse(&shown(&rel), "not a regular file; it was not read"));
            continue;
        }
        let size = entry.metadata().map_err(read_err(&path))?.len();
        out.push(Found {
            rel,
            open: path,
            size,
        });
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
    limits: Limits,
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
            let missing = || SourceError::MissingPath {
                url: shown_url.clone(),
                commit: commit.to_string(),
                path: s.to_string(),
            };
            let entry = root_tree.get_path(Path::new(s)).map_err(|_| missing())?;
            repo.find_tree(entry.id()).map_err(|_| missing())?
        }
    };

    let mut entries: Vec<(String, Oid, i32)> = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or_default();
        if name.starts_with('.') {
            return git2::TreeWalkResult::Skip;
        }
        if entry.kind() == Some(git2::ObjectType::Blob) && is_wanted(name) {
            entries.push((format!("{dir}{name}"), entry.id(), entry.filemode()));
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(|e| obj_err("/", e))?;
    entries.sort();

    let prefix = sub.map(|s| format!("{s}/")).unwrap_or_default();
    let origin = format!("{shown_url}@{}", reference.unwrap_or("HEAD"));
    let odb = repo.odb().map_err(|e| obj_err("/", e))?;
    let size_of = |oid: Oid, shown: &str| {
        odb.read_header(oid)
            .map(|(size, _)| size as u64)
            .map_err(|e| obj_err(shown, e))
    };
    // Sizes come from object headers: nothing is read before every size is
    // known to be within the limits.
    let mut blobs: Vec<(String, Oid, u64)> = Vec::with_capacity(entries.len());
    let mut refused = Vec::new();
    for (rel, oid, mode) in entries {
        let shown = format!("{prefix}{rel}");
        let oid = if mode == LINK_MODE {
            match follow_git_link(&repo, &tree, &rel, oid, &odb) {
                Ok(oid) => oid,
                Err(LinkEnd::Refused(why)) => {
                    refused.push(why(&shown));
                    continue;
                }
                Err(LinkEnd::Directory) => continue,
                Err(LinkEnd::Git(e)) => return Err(obj_err(&shown, e)),
            }
        } else {
            oid
        };
        let size = size_of(oid, &shown)?;
        blobs.push((rel, oid, size));
    }
    let total: u64 = blobs
        .iter()
        .map(|(_, _, size)| (*size).min(limits.max_file_bytes))
        .sum();
    if total > limits.max_source_bytes {
        return Ok(Snapshot {
            files: SourceFiles {
                files: Vec::new(),
                refused: vec![source_too_large(&origin, total, &limits)],
                root: prefix.clone(),
            },
            origin,
            commit: Some(commit.to_string()),
            rego: Vec::new(),
        });
    }

    let mut files = Vec::with_capacity(blobs.len());
    let mut rego = Vec::new();
    for (rel, oid, size) in blobs {
        let shown = format!("{prefix}{rel}");
        if size > limits.max_file_bytes {
            refused.push(too_large(&shown, size, &limits));
            continue;
        }
        let blob = repo.find_blob(oid).map_err(|e| obj_err(&shown, e))?;
        let file = match decode(shown, blob.content().to_vec()) {
            Ok(file) => file,
            Err(r) => {
                refused.push(*r);
                continue;
            }
        };
        if is_yaml(&rel) {
            files.push(file);
        } else {
            rego.push((rel, file));
        }
    }
    Ok(Snapshot {
        origin,
        commit: Some(commit.to_string()),
        files: SourceFiles {
            files,
            refused,
            root: prefix,
        },
        rego,
    })
}

/// The Git file mode of a symbolic link.
const LINK_MODE: i32 = 0o120000;

/// Why a symbolic link in a Git tree gave no file to read.
enum LinkEnd {
    /// Refused, with the refusal for the link's shown path.
    Refused(fn(&str) -> Refused),
    /// It names a directory; directories behind links are not followed.
    Directory,
    Git(git2::Error),
}

/// Follows a symbolic link stored in a Git tree (its blob holds the target
/// path) to a file of the same tree. A link that leads outside the tree,
/// absolute or through `..`, is refused without looking at its target.
fn follow_git_link(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    rel: &str,
    oid: Oid,
    odb: &git2::Odb<'_>,
) -> Result<Oid, LinkEnd> {
    let mut at = PathBuf::from(rel);
    let mut oid = oid;
    for _ in 0..16 {
        let (size, _) = odb.read_header(oid).map_err(LinkEnd::Git)?;
        if size > 4096 {
            return Err(LinkEnd::Refused(outside_root));
        }
        let blob = repo.find_blob(oid).map_err(LinkEnd::Git)?;
        let target = String::from_utf8_lossy(blob.content()).into_owned();
        let Some(next) = within(at.parent().unwrap_or(Path::new("")), Path::new(&target)) else {
            return Err(LinkEnd::Refused(outside_root));
        };
        let entry = match tree.get_path(&next) {
            Ok(e) => e,
            Err(_) => return Err(LinkEnd::Refused(dangling_link)),
        };
        match entry.kind() {
            Some(git2::ObjectType::Blob) if entry.filemode() == LINK_MODE => {
                at = next;
                oid = entry.id();
            }
            Some(git2::ObjectType::Blob) => return Ok(entry.id()),
            _ => return Err(LinkEnd::Directory),
        }
    }
    Err(LinkEnd::Refused(link_loop))
}

fn dangling_link(link: &str) -> Refused {
    refuse(
        link,
        "symbolic link to a file that is not in the source; nothing was read",
    )
}

fn link_loop(link: &str) -> Refused {
    refuse(link, "too many levels of symbolic links; nothing was read")
}

/// `target` taken relative to `dir`, both inside one tree, with `.` and
/// `..` resolved; `None` when it is absolute or climbs out of the tree.
fn within(dir: &Path, target: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in dir.components().chain(target.components()) {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
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
    if !url.contains("://") {
        // A path or scp-like `git@host:repo`: no password can be in it.
        return url.to_string();
    }
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                // Both setters only fail for URLs that cannot have
                // credentials, which then have none to hide.
                let _ = u.set_password(None);
                let _ = u.set_username("***");
            }
            u.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
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

    /// Regression (L7): a password with `/` or `@` was shown, or shown in
    /// part.
    #[test]
    fn l7_credentials_with_slash_or_at_are_redacted() {
        for url in [
            "http://user:se/cret@127.0.0.1:9/r.git",
            "http://user:pa@ss@127.0.0.1:9/r.git",
            "https://tok%2Fen@127.0.0.1/r.git",
        ] {
            let shown = redact_url(url);
            assert!(
                !shown.contains("cret") && !shown.contains("ss@") && !shown.contains("tok"),
                "{url} → {shown}"
            );
            assert!(
                shown.contains("***@127.0.0.1") || shown == "<unparseable URL>",
                "{url} → {shown}"
            );
        }
        assert_eq!(
            redact_url("git@github.com:a/b.git"),
            "git@github.com:a/b.git"
        );
        assert_eq!(redact_url("http://[bad"), "<unparseable URL>");
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

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("8MiB"), Some(8 << 20));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("16k"), Some(16 << 10));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(human_size(8 << 20), "8.0 MiB");
    }

    #[test]
    fn git_links_stay_inside_the_tree() {
        let at = |dir: &str, target: &str| within(Path::new(dir), Path::new(target));
        assert_eq!(at("a/b", "../x.yaml"), Some(PathBuf::from("a/x.yaml")));
        assert_eq!(at("a", "./b/../c.yaml"), Some(PathBuf::from("a/c.yaml")));
        assert_eq!(at("a", "../../x.yaml"), None);
        assert_eq!(at("", "/etc/passwd"), None);
    }

    #[test]
    fn links_out_of_the_tree_and_special_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("s.yaml"), "secret: 1").unwrap();
        std::os::unix::fs::symlink(outside.path().join("s.yaml"), dir.path().join("out.yaml"))
            .unwrap();
        std::fs::write(dir.path().join("real.txt"), "a: 1").unwrap();
        std::os::unix::fs::symlink("real.txt", dir.path().join("in.yaml")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("fifo.yaml").to_str().unwrap()).unwrap();
        // SAFETY: `fifo` is a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let snap = Source::Dir(dir.path().to_path_buf())
            .snapshot_with(dir.path(), Limits::default())
            .unwrap();
        let texts: Vec<&str> = snap.files.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, vec!["a: 1"]);
        let mut refused: Vec<(&str, &str)> = snap
            .files
            .refused
            .iter()
            .map(|r| {
                let file = r.diagnostic.file.rsplit('/').next().unwrap_or_default();
                (file, r.diagnostic.message.as_str())
            })
            .collect();
        refused.sort();
        assert_eq!(
            refused,
            vec![
                ("fifo.yaml", "not a regular file; it was not read"),
                (
                    "out.yaml",
                    "symbolic link to a file outside the source root; it was not read"
                ),
            ]
        );
    }
}
