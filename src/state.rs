//! The daemon's state on disk: the data directory (mode 0700) and files written atomically with
//! mode 0600. Every state file (the identity key, published names, pins) goes through here.
//! This module knows where and how state is written, not what it means: each owner (the
//! identity, the publisher, the pins) chooses its file and format.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

use serde::{Serialize, de::DeserializeOwned};
use tracing::warn;

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

/// Writes `bytes` to `path` with mode 0600, atomically: a temporary file in the same
/// directory, synced, then renamed over the target. A crash or a full disk leaves either the
/// old file or the new one, never a torn one.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a TOML state file. A missing file is `None`; so is an unreadable one, with a warning:
/// state is rebuilt rather than stopping the daemon.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let text = fs::read_to_string(path).ok()?;
    match toml::from_str(&text) {
        Ok(value) => Some(value),
        Err(error) => {
            warn!(path = %path.display(), %error, "ignoring an unreadable state file");
            None
        }
    }
}

/// Writes `value` as TOML to `path` with [`write_private`].
pub fn write_toml<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let text = toml::to_string(value).map_err(io::Error::other)?;
    write_private(path, text.as_bytes())
}
