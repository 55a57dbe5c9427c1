//! Managed paths opened without following symbolic links.
//!
//! Every directory below a trusted base is opened with
//! `openat(O_DIRECTORY | O_NOFOLLOW)` from the one above it, and the file
//! itself is read, written, renamed and removed relative to that directory
//! descriptor, so a directory or file replaced by a link (to `/etc`, to
//! another user's home) is reported, never written or read through. This
//! module never follows a link below the base; callers that opted in
//! resolve links before they get here.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a managed path could not be opened.
#[derive(Debug)]
pub enum WalkError {
    /// This component is a symbolic link.
    Link(PathBuf),
    Io(PathBuf, io::Error),
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkError::Link(p) => write!(
                f,
                "{} is a symbolic link; tend does not follow links in managed paths (set spec.followSymlinks: true to allow it)",
                p.display()
            ),
            WalkError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

/// What is at a managed path, looked at without following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Missing,
    File { mode: u32, len: u64 },
    Dir { mode: u32 },
    Link,
    Other { mode: u32 },
}

/// The directory that holds a managed file, and the file's name in it.
pub struct Parent {
    dir: OwnedFd,
    name: CString,
}

fn cstr(name: &OsStr, shown: &Path) -> Result<CString, WalkError> {
    CString::new(name.as_bytes()).map_err(|_| {
        WalkError::Io(
            shown.to_path_buf(),
            io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
        )
    })
}

fn openat(
    dir: libc::c_int,
    name: &CString,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the returned descriptor is owned
    // by the OwnedFd and closed once.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened by openat and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstatat(dir: libc::c_int, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid C string and `st` a valid out-parameter.
    let rc = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        return Ok(Some(st));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

fn is_link(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// Opens the directory holding `base/rest`, following links in `base` (the
/// trusted part) but in no component of `rest`. With `create`, missing
/// directories are made (0755); without it, `Ok(None)` means one is missing.
pub fn parent(base: &Path, rest: &Path, create: bool) -> Result<Option<Parent>, WalkError> {
    let shown = base.join(rest);
    let name = match rest.components().next_back() {
        Some(Component::Normal(n)) => n.to_os_string(),
        _ => {
            return Err(WalkError::Io(
                shown,
                io::Error::new(io::ErrorKind::InvalidInput, "not a path to a file"),
            ))
        }
    };
    let base_c = cstr(base.as_os_str(), base)?;
    let mut dir = openat(
        libc::AT_FDCWD,
        &base_c,
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| WalkError::Io(base.to_path_buf(), e))?;
    let mut at = base.to_path_buf();
    let dirs: Vec<Component<'_>> = rest
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for c in dirs {
        let part = match c {
            Component::Normal(p) => p,
            Component::ParentDir => OsStr::new(".."),
            Component::CurDir => continue,
            Component::RootDir | Component::Prefix(_) => {
                return Err(WalkError::Io(
                    shown,
                    io::Error::new(io::ErrorKind::InvalidInput, "not a relative path"),
                ))
            }
        };
        at.push(part);
        let part = cstr(part, &at)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let opened = match openat(dir.as_raw_fd(), &part, flags, 0) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                // SAFETY: `part` is a valid C string.
                let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), part.as_ptr(), 0o755) };
                let made = if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                };
                match made {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(WalkError::Io(at, e)),
                }
                openat(dir.as_raw_fd(), &part, flags, 0)
            }
            other => other,
        };
        dir = match opened {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                // ELOOP (or ENOTDIR on some systems) for a link: say so.
                if matches!(lstatat(dir.as_raw_fd(), &part), Ok(Some(st)) if is_link(&st)) {
                    return Err(WalkError::Link(at));
                }
                return Err(WalkError::Io(at, e));
            }
        };
    }
    let name = cstr(&name, &shown)?;
    Ok(Some(Parent { dir, name }))
}

impl Parent {
    /// What is at the file's place, without following a link.
    pub fn look(&self) -> io::Result<Found> {
        let Some(st) = lstatat(self.dir.as_raw_fd(), &self.name)? else {
            return Ok(Found::Missing);
        };
        let mode = st.st_mode & 0o7777;
        Ok(match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Found::File {
                mode,
                len: st.st_size as u64,
            },
            libc::S_IFDIR => Found::Dir { mode },
            libc::S_IFLNK => Found::Link,
            _ => Found::Other { mode },
        })
    }

    /// Opens the file for reading; fails (ELOOP) if it is a link, and never
    /// blocks on a FIFO.
    pub fn open_read(&self) -> io::Result<File> {
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        openat(self.dir.as_raw_fd(), &self.name, flags, 0).map(File::from)
    }

    /// Reads at most `max` bytes of the file; `None` when it is missing.
    pub fn read(&self, max: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        match self.open_read() {
            Ok(f) => {
                let mut bytes = Vec::new();
                f.take(max).read_to_end(&mut bytes)?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the file with `bytes` and `mode` by renaming a complete
    /// temporary file over it in the same directory: a link at the file's
    /// place is replaced, never written through.
    pub fn write_atomic(&self, bytes: &[u8], mode: u32) -> io::Result<()> {
        let tmp = CString::new(format!(
            ".{}.tend-tmp-{}",
            String::from_utf8_lossy(self.name.as_bytes()),
            std::process::id()
        ))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        let dir = self.dir.as_raw_fd();
        // A stale temporary file of ours from a crash is replaced.
        // SAFETY: `tmp` is a valid C string relative to `dir`.
        unsafe { libc::unlinkat(dir, tmp.as_ptr(), 0) };
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let result = (|| -> io::Result<()> {
            let mut f = File::from(openat(dir, &tmp, flags, 0o600)?);
            f.write_all(bytes)?;
            fchmod(&f, mode)?;
            f.sync_all()?;
            // SAFETY: both names are valid C strings relative to `dir`.
            let rc = unsafe { libc::renameat(dir, tmp.as_ptr(), dir, self.name.as_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })();
        if result.is_err() {
            // SAFETY: `tmp` is a valid C string relative to `dir`.
            unsafe { libc::unlinkat(dir, tmp.as_ptr(), 0) };
        }
        result
    }

    /// Sets the permission bits of the (regular) file.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        fchmod(&self.open_read()?, mode)
    }

    /// Removes the file (a link is removed itself, never its target);
    /// a missing file is not an error.
    pub fn unlink(&self) -> io::Result<()> {
        // SAFETY: `name` is a valid C string relative to `dir`.
        let rc = unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(e)
        }
    }
}

fn fchmod(f: &File, mode: u32) -> io::Result<()> {
    // SAFETY: `f` is an open descriptor.
    if unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_directory_is_never_entered() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        let err = parent(dir.path(), Path::new("sub/x.txt"), true)
            .err()
            .unwrap();
        assert!(
            matches!(err, WalkError::Link(ref p) if p.ends_with("sub")),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_linked_file_is_seen_as_a_link_and_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "s3cret").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("x")).unwrap();
        let p = parent(dir.path(), Path::new("x"), false).unwrap().unwrap();
        assert_eq!(p.look().unwrap(), Found::Link);
        assert!(p.open_read().is_err());
        p.write_atomic(b"new", 0o640).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "s3cret");
        assert_eq!(
            p.look().unwrap(),
            Found::File {
                mode: 0o640,
                len: 3
            }
        );
    }

    #[test]
    fn missing_directories_are_made_or_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(parent(dir.path(), Path::new("a/b/c"), false)
            .unwrap()
            .is_none());
        let p = parent(dir.path(), Path::new("a/b/c"), true)
            .unwrap()
            .unwrap();
        p.write_atomic(b"x", 0o644).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b/c")).unwrap(),
            "x"
        );
    }
}
