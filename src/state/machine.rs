//! The run lock of one machine's state directory, for a store a fleet
//! shares: the database's lock is per node name, and two tends on one
//! machine under different names would otherwise both act on the same
//! host files and processes. An exclusive `flock` on `<state-dir>/run.lock`,
//! held while the process lives (the kernel releases it when it dies).

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::StateError;

/// Held while it lives.
#[derive(Debug)]
pub(super) struct MachineLock {
    _file: std::fs::File,
}

/// Takes the lock of `dir` for `command`, or reports who holds it.
pub(super) fn take(dir: &Path, command: &str) -> Result<MachineLock, StateError> {
    super::sqlite::private_dir(dir)?;
    let path = dir.join("run.lock");
    let io = |cause| StateError::Dir {
        path: path.display().to_string(),
        cause,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on the descriptor `file` owns, which outlives the call.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !taken {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let mut lines = text.lines();
        return Err(StateError::Locked {
            path: path.display().to_string(),
            pid: lines.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            host: lines.next().unwrap_or_default().to_string(),
            command: lines.next().unwrap_or("tend").to_string(),
            since: lines.next().unwrap_or_default().to_string(),
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(
        file,
        "{}\n{}\n{command}\n{}",
        std::process::id(),
        super::hostname(),
        super::now()
    )
    .map_err(io)?;
    Ok(MachineLock { _file: file })
}
