//! The node's identity: an Ed25519 key made on first start and kept in the data directory
//! (mode 0600), reused after. It is the libp2p peer identity and the owner key of every name
//! the node publishes.

use std::{
    io,
    path::{Path, PathBuf},
};

use libp2p::identity::{Keypair, ed25519};
use tracing::info;

use crate::state::{SaveError, create_private_dir, write_private};

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "identity.key";

/// Errors with the identity key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data directory (or a parent) could not be created.
    #[error("failed to create the data directory {path}")]
    CreateDir {
        /// The data directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The key file exists but could not be read (permissions, I/O).
    #[error("failed to read the identity key {path}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The key file is not a libp2p protobuf-encoded Ed25519 key pair (damaged, truncated,
    /// or another program's file). The daemon stops rather than make a new key: a new identity
    /// would own none of the names published so far.
    #[error(
        "the identity key {path} is damaged (not a libp2p Ed25519 key pair); restore it from a \
         backup. Only if none exists, move it away and start again: that makes a new identity, \
         which does not own the names published with the old one (they expire, and other nodes \
         keep them pinned to the old key until then)"
    )]
    Invalid {
        /// The key file.
        path: PathBuf,
    },
    /// A new key could not be written (mode 0600): nothing was written, a full disk included.
    #[error(transparent)]
    Write(#[from] SaveError),
}

/// Creates the data directory (and parents), readable by the owner only.
pub fn create_data_dir(dir: &Path) -> Result<(), IdentityError> {
    create_private_dir(dir).map_err(|source| IdentityError::CreateDir {
        path: dir.to_owned(),
        source,
    })
}

/// Loads the key from `data_dir`, or makes and saves a new one.
pub fn load_or_create(data_dir: &Path) -> Result<ed25519::Keypair, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    // An Ed25519 key in libp2p's protobuf encoding is 68 bytes; the bound keeps a key file
    // that links to a device or a huge file from being read whole.
    match crate::state::read_bounded(&path, 4096) {
        Ok(bytes) => {
            let keypair = Keypair::from_protobuf_encoding(&bytes)
                .ok()
                .and_then(|k| k.try_into_ed25519().ok())
                .ok_or_else(|| IdentityError::Invalid { path: path.clone() })?;
            warn_if_exposed(data_dir, &path);
            Ok(keypair)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_data_dir(data_dir)?;
            let keypair = ed25519::Keypair::generate();
            let encoded = Keypair::from(keypair.clone())
                .to_protobuf_encoding()
                .expect("Ed25519 keys always encode");
            write_private(&path, &encoded)?;
            info!(path = %path.display(), "created a new identity key");
            Ok(keypair)
        }
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Warns when others may read the key or write the data directory: whoever reads the key
/// can publish as this node, and whoever writes the directory can replace its files. The
/// daemon makes both private (0600, 0700); a copy or an operator may have loosened them.
fn warn_if_exposed(data_dir: &Path, key: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).map(|m| m.permissions().mode()).ok();
        if let Some(mode) = mode(key)
            && mode & 0o077 != 0
        {
            tracing::warn!(path = %key.display(), mode = format!("{:o}", mode & 0o777), "the identity key can be read by other users, who could publish as this node; chmod 600 it");
        }
        // The sticky bit (as on /tmp) keeps others from replacing files they do not own.
        if let Some(mode) = mode(data_dir)
            && mode & 0o002 != 0
            && mode & 0o1000 == 0
        {
            tracing::warn!(path = %data_dir.display(), mode = format!("{:o}", mode & 0o7777), "the data directory can be written by every user, who could replace its files; chmod 700 it");
        }
    }
    #[cfg(not(unix))]
    let _ = (data_dir, key);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A key others may read and a directory everyone may write are each warned about once
    /// per start; private ones are not.
    #[test]
    fn an_exposed_key_or_data_directory_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("p2pdns-id-{}", rand::random::<u64>()));
        load_or_create(&dir).unwrap();
        let logs = crate::log_limit::LogLines::count();
        load_or_create(&dir).unwrap();
        assert_eq!(logs.lines(), 0, "private: no warning");
        let chmod = |path: &Path, mode| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        };
        chmod(&dir.join(KEY_FILE), 0o644);
        chmod(&dir, 0o777);
        load_or_create(&dir).unwrap();
        assert_eq!(logs.lines(), 2, "the key and the directory");
        chmod(&dir, 0o1777);
        load_or_create(&dir).unwrap();
        assert_eq!(logs.lines(), 3, "sticky directory: the key only");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("p2pdns-id-{}", rand::random::<u64>()));
        let first = load_or_create(&dir).unwrap();
        let second = load_or_create(&dir).unwrap();
        assert_eq!(first.public(), second.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A damaged key stops the node and stays as it is: a new key would own none of the
        // names published with this one.
        let good = fs::read(dir.join(KEY_FILE)).unwrap();
        for damaged in [&b"garbage"[..], b"", &good[..good.len() - 1]] {
            fs::write(dir.join(KEY_FILE), damaged).unwrap();
            let error = load_or_create(&dir).unwrap_err();
            assert!(matches!(error, IdentityError::Invalid { .. }), "{error}");
            assert!(
                error.to_string().contains("restore it from a backup"),
                "{error}"
            );
            assert_eq!(fs::read(dir.join(KEY_FILE)).unwrap(), damaged);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
