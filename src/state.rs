//! The daemon's state on disk: the data directory (mode 0700, used by one process at a time)
//! and the files in it, written atomically and durably with mode 0600. Every state file (the
//! identity key, published names, pins, tunnel addresses and services, the P2P port) goes
//! through here.
//! This module knows where and how state is written, not what it means: each owner (the
//! identity, the publisher, the pins, the tunnel tables) chooses its file and format, and is
//! that file's only writer.
//!
//! What it promises its owners:
//! - a write is durable once it returns: the data is synced, renamed over the file, and the
//!   directory synced, so that the rename itself survives a power cut ([`save_toml`]);
//! - a crash leaves the old file or the new one, never a torn one; the temporary files a crash
//!   leaves are removed at the next start ([`remove_stale_temp_files`]);
//! - a damaged file is never overwritten: it is moved aside (`names.toml.corrupt-<unix time>`)
//!   and the log says where it went and how to get it back ([`load_toml`]); a file of which
//!   only some entries are refused is copied aside whole before its owner writes the rest
//!   back ([`set_aside_damaged`]);
//! - a full disk is named as such ([`SaveError::Full`]);
//! - one process per data directory ([`lock_data_dir`]): two would overwrite each other's
//!   files and share one identity.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Serialize, de::DeserializeOwned};
use tracing::{error, info, warn};

/// The lock file inside the data directory; it holds the pid of the process using the directory.
pub const LOCK_FILE: &str = "p2pdns.lock";
/// What a temporary file's name holds between the state file's name and the writer's pid.
const TEMP_INFIX: &str = ".tmp-";
/// What names a moved-aside damaged file, between the file's name and the Unix time.
const CORRUPT_INFIX: &str = ".corrupt-";

/// Writes in this process so far: each temporary file gets a name of its own.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Errors saving a state file. The file is unchanged after each of them.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The file system holding the data directory has no space left (ENOSPC).
    #[error("no space left on device to save {path}; free some space, then try again")]
    Full {
        /// The state file.
        path: PathBuf,
    },
    /// Writing, syncing or renaming failed otherwise (permissions, a quota, an I/O error).
    #[error("failed to save {path}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// The failed step's error.
        #[source]
        source: io::Error,
    },
}

impl SaveError {
    fn new(path: &Path, source: io::Error) -> Self {
        let path = path.to_owned();
        match source.kind() {
            io::ErrorKind::StorageFull => Self::Full { path },
            _ => Self::Io { path, source },
        }
    }
}

/// For owners whose errors carry an `io::Error`: the kind is kept (`StorageFull` for a full
/// disk) and the message is this one's.
impl From<SaveError> for io::Error {
    fn from(error: SaveError) -> Self {
        let kind = match &error {
            SaveError::Full { .. } => io::ErrorKind::StorageFull,
            SaveError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, error)
    }
}

/// Errors reading a state file at start. After each of them the file is where it was,
/// untouched, and its owner must not overwrite it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file exists but could not be read (permissions, an I/O error).
    #[error("failed to read {path}")]
    Read {
        /// The state file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: io::Error,
    },
    /// The file is damaged and could not be moved aside.
    #[error("{path} is damaged and could not be moved aside")]
    Quarantine {
        /// The state file.
        path: PathBuf,
        /// Why the rename failed.
        #[source]
        source: io::Error,
    },
}

/// Errors taking the data directory for this process.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the directory's lock.
    #[error(
        "another p2pdns process ({holder}) uses the data directory {dir}; stop it, or give each \
         process its own --data-dir (they would overwrite each other's state and share one identity)"
    )]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// "pid N" as the holder wrote it, or "unknown pid".
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("failed to lock the data directory {dir}")]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Reads the text file at `path`, refusing one longer than `max` bytes: configuration and
/// resolv.conf may name anything (`/dev/zero`), and reading must stay bounded.
///
/// # Errors
/// As [`read_bounded`], and when the file is not UTF-8.
pub fn read_text_bounded(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Reads the regular file at `path` (symbolic links followed), refusing one longer than `max`
/// bytes. Anything else is refused before it is opened: a FIFO would block the reading thread
/// (and the daemon's shutdown) until a writer came, a device such as `/dev/zero` never ends.
///
/// # Errors
/// The file cannot be read, is not a regular file ([`io::ErrorKind::InvalidInput`]), or is
/// longer than `max` bytes ([`io::ErrorKind::FileTooLarge`]).
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    if !fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Creates `dir` (and parents) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// The data directory, held by this process while the value lives (an advisory lock on
/// [`LOCK_FILE`], released by the kernel when the process dies, even by kill -9).
#[derive(Debug)]
pub struct DataDirLock {
    _file: fs::File,
}

/// Takes the data directory `dir` (which must exist) for this process.
///
/// # Errors
/// [`LockError::Held`] when another process (or another daemon in this one) holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, LockError> {
    let io_error = |source| LockError::Io {
        dir: dir.to_owned(),
        source,
    };
    let path = dir.join(LOCK_FILE);
    let mut file = private_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "unknown pid".to_owned(),
                pid => format!("pid {pid}"),
            };
            return Err(LockError::Held {
                dir: dir.to_owned(),
                holder,
            });
        }
        Err(fs::TryLockError::Error(source)) => return Err(io_error(source)),
    }
    // Only the holder writes the pid: what another process reads is the holder's.
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(io_error)?;
    Ok(DataDirLock { _file: file })
}

/// Takes the data directory `dir` (which must exist) for this process ([`lock_data_dir`]) and
/// removes what interrupted writes left in it ([`remove_stale_temp_files`]): what a process
/// does first with its data directory, before it reads any state.
///
/// # Errors
/// [`LockError`], as [`lock_data_dir`].
pub fn take_data_dir(dir: &Path) -> Result<DataDirLock, LockError> {
    let lock = lock_data_dir(dir)?;
    remove_stale_temp_files(dir);
    Ok(lock)
}

/// Removes the temporary files that writes interrupted by a crash left in `dir` (only names of
/// [`save_toml`]'s pattern, `.<file>.tmp-<pid>-<n>`, and of its predecessor,
/// `.<file>.tmp<pid>`). Call it holding the directory's lock: no write is under way then.
/// Returns how many were removed.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && is_temp_name(name) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) => {
                    warn!(file = %entry.path().display(), %error, "failed to remove a stale temporary file")
                }
            }
        }
    }
    if removed > 0 {
        info!(dir = %dir.display(), removed, "removed temporary files left by an interrupted write");
    }
    removed
}

/// Is `name` a temporary file of ours: `.<file>.tmp-<pid>-<n>` or `.<file>.tmp<pid>`?
fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((file, tail)) = rest.rsplit_once(TEMP_INFIX) {
        return !file.is_empty()
            && tail
                .split_once('-')
                .is_some_and(|(pid, n)| digits(pid) && digits(n));
    }
    rest.rsplit_once(".tmp")
        .is_some_and(|(file, pid)| !file.is_empty() && digits(pid))
}

fn private_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Writes `bytes` to `path` with mode 0600, atomically and durably: a temporary file of its
/// own in the same directory, synced, renamed over the target, then the directory synced. A
/// crash or a full disk leaves either the old file or the new one, never a torn one; once this
/// returns `Ok`, the new one survives a crash or a power cut.
///
/// # Errors
/// [`SaveError::Full`] on a full disk, [`SaveError::Io`] otherwise; the file is unchanged.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SaveError> {
    let dir = parent_dir(path);
    let (mut file, tmp) = create_temporary(path).map_err(|source| SaveError::new(path, source))?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(SaveError::new(path, source));
    }
    sync_dir(dir).map_err(|source| SaveError::new(path, source))
}

/// Creates a new temporary file beside `path`, `.<file>.tmp-<pid>-<n>`, never opening one
/// that exists: a name taken (a file left by a process of the same id before a reboot, or
/// put there by another user of a directory others may write to) is passed over for the next
/// number, and never removed, as it is not ours.
fn create_temporary(path: &Path) -> io::Result<(fs::File, PathBuf)> {
    /// Names tried before giving up: more taken ones than this are no accident.
    const TRIES: usize = 64;
    let dir = parent_dir(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let mut last = None;
    for _ in 0..TRIES {
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}{TEMP_INFIX}{}-{n}", std::process::id()));
        match private_options().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary file name left")))
}

/// Makes a rename in `dir` durable (POSIX leaves a directory entry in memory until then).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The largest state file read, in bytes: 64 MiB holds hundreds of thousands of pins, far
/// more than `p2p.max_pins` allows by default; a larger file is not the daemon's.
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// Reads a state file's bytes: `None` when it does not exist.
///
/// # Errors
/// [`LoadError::Read`] when the file exists but cannot be read, is not a regular file or is
/// over [`MAX_STATE_BYTES`]: it is left where it is and its owner must not save over it.
pub fn read_state(path: &Path) -> Result<Option<Vec<u8>>, LoadError> {
    match read_bounded(path, MAX_STATE_BYTES) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LoadError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads a TOML state file: `None` when it does not exist. A damaged file (not UTF-8, not
/// TOML, not the owner's schema) is moved aside to `<file>.corrupt-<unix time>` and reported
/// as an error in the log with the way back; the owner starts without it and its next save
/// writes a new file, never over the damaged one.
///
/// # Errors
/// [`LoadError`] when the file cannot be read, or is damaged and cannot be moved aside: it is
/// left where it is and the owner must not save over it.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, LoadError> {
    let Some(bytes) = read_state(path)? else {
        return Ok(None);
    };
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str(text).map_err(|e| e.to_string()));
    let reason = match parsed {
        Ok(value) => return Ok(Some(value)),
        Err(reason) => reason,
    };
    let aside = quarantine(path).map_err(|source| LoadError::Quarantine {
        path: path.to_owned(),
        source,
    })?;
    error!(
        file = %path.display(),
        moved_to = %aside.display(),
        reason = %reason.lines().next().unwrap_or_default(),
        "a state file is damaged: moved it aside and started without it. To recover, stop the \
         daemon, repair the moved file (or take it from a backup), move it back and start again"
    );
    Ok(None)
}

/// For a state file of which only parts are damaged (entries its owner refuses): keeps a
/// copy of the whole file as it was, `original`, at a free `<file>.corrupt-<unix time>[-n]`
/// (written durably, mode 0600), then puts `repaired` (what its owner keeps of it) in its
/// place, or removes it when nothing is kept. A crash in between leaves the original in
/// place. Returns where the copy is.
///
/// # Errors
/// [`LoadError::Quarantine`]: the copy or the replacement failed; if the copy was made, the
/// original is still in place, and its owner must not save over it.
pub fn set_aside_damaged(
    path: &Path,
    original: &[u8],
    repaired: Option<&[u8]>,
) -> Result<PathBuf, LoadError> {
    let failed = |source| LoadError::Quarantine {
        path: path.to_owned(),
        source,
    };
    let aside = free_aside_path(path);
    write_private(&aside, original).map_err(|e| failed(e.into()))?;
    match repaired {
        Some(bytes) => write_private(path, bytes).map_err(|e| failed(e.into()))?,
        None => {
            fs::remove_file(path).map_err(failed)?;
            sync_dir(parent_dir(path)).map_err(failed)?;
        }
    }
    Ok(aside)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A free `<path>.corrupt-<unix time>[-n]`: no file of that name exists.
fn free_aside_path(path: &Path) -> PathBuf {
    let now = crate::record::unix_now();
    let mut name = path.as_os_str().to_owned();
    name.push(format!("{CORRUPT_INFIX}{now}"));
    let base = PathBuf::from(name);
    let mut aside = base.clone();
    let mut n = 1;
    while fs::symlink_metadata(&aside).is_ok() {
        let mut next = base.clone().into_os_string();
        next.push(format!("-{n}"));
        aside = PathBuf::from(next);
        n += 1;
    }
    aside
}

/// Moves `path` to a free `<path>.corrupt-<unix time>[-n]` and syncs the directory.
fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let aside = free_aside_path(path);
    fs::rename(path, &aside)?;
    sync_dir(parent_dir(path))?;
    Ok(aside)
}

/// [`load_toml`] for owners that start empty whatever happened: a file that cannot be read
/// or moved aside is logged as an error and `None` is returned.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Option<T> {
    load_toml(path).unwrap_or_else(|error| {
        error!("{}; starting without it", crate::error::one_line(&error));
        None
    })
}

/// Writes `value` as TOML to `path` with [`write_private`].
///
/// # Errors
/// [`SaveError`], as [`write_private`]; the file is unchanged.
pub fn save_toml<T: Serialize>(path: &Path, value: &T) -> Result<(), SaveError> {
    let text = toml::to_string(value).map_err(|e| SaveError::new(path, io::Error::other(e)))?;
    write_private(path, text.as_bytes())
}

/// [`save_toml`] for owners whose errors carry an `io::Error`.
pub fn write_toml<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    save_toml(path, value).map_err(io::Error::from)
}

#[cfg(test)]
mod tests;
