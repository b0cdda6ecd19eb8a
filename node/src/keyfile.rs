//! Secrets on disk, readable by their owner only: the node's identity key (one ed25519 secret seed in a
//! small text file) and the local API's token (64 hex digits on one line, so that
//! `curl -H "Authorization: Bearer $(cat HOME/api.token)"` works).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fleetmesh_protocol::NodeKey;

const HEADER: &str = "# fleetmesh node key: ed25519 secret seed. Keep this file private (mode 0600).";
const PREFIX: &str = "fleetmesh-ed25519-v1 ";

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// No file at the path.
    #[error("no key file at {0} (create one with `fleetmesh keys generate`)")]
    Missing(PathBuf),
    /// A file exists and `--force` was not given.
    #[error("key file {0} already exists; pass --force to replace it (the old identity is lost)")]
    Exists(PathBuf),
    /// Group or other users may access the file.
    #[error("key file {path} is accessible by other users (mode {mode:04o}); run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a key file.
    #[error("key file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The system could not read or write the file.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the local API's token at `path`, refusing a file that other users can access.
pub fn load_token(path: &Path) -> Result<String, KeyFileError> {
    let bytes = read_private(path)?;
    let malformed = |reason| KeyFileError::Malformed {
        path: path.into(),
        reason,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| malformed("not UTF-8 text"))?;
    let token = text.trim();
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("an API token is 64 hex digits"));
    }
    Ok(token.to_ascii_lowercase())
}

/// [`load_token`], creating a random token (mode 0600) when there is none.
pub fn load_or_create_token(path: &Path) -> Result<String, KeyFileError> {
    match load_token(path) {
        Err(KeyFileError::Missing(_)) => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| io_err(path)(std::io::Error::other(e.to_string())))?;
            let token = hex::encode(secret);
            write_private(path, &format!("{token}\n"), true)?;
            Ok(token)
        }
        other => other,
    }
}

/// The bytes of a small file that only its owner may access.
fn read_private(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyFileError::Missing(path.into())),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.into(),
            mode,
        });
    }
    if meta.len() > 4096 {
        return Err(KeyFileError::Malformed {
            path: path.into(),
            reason: "larger than 4 KiB",
        });
    }
    fs::read(path).map_err(io_err(path))
}

/// Reads the key at `path`, refusing files that other users can access.
pub fn load(path: &Path) -> Result<NodeKey, KeyFileError> {
    let bytes = read_private(path)?;
    let malformed = |reason| KeyFileError::Malformed {
        path: path.into(),
        reason,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| malformed("not UTF-8 text"))?;
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = keys.next().ok_or_else(|| malformed("no key line"))?;
    if keys.next().is_some() {
        return Err(malformed("more than one key line"));
    }
    let hex_seed = line
        .strip_prefix(PREFIX.trim_end())
        .map(str::trim)
        .ok_or_else(|| malformed("unknown key type"))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(hex_seed, &mut seed).map_err(|_| malformed("seed is not 64 hex digits"))?;
    Ok(NodeKey::from_seed(seed))
}

/// Writes `key` to `path` with mode 0600, creating parent folders. Refuses to replace a file unless `force`.
pub fn save(path: &Path, key: &NodeKey, force: bool) -> Result<(), KeyFileError> {
    let content = format!("{HEADER}\n{PREFIX}{}\n", hex::encode(key.seed()));
    write_private(path, &content, !force)
}

/// Writes `content` to `path` with mode 0600 (creating parent folders): as a new file when `create_new`
/// (refusing to replace one), else replacing the file atomically.
fn write_private(path: &Path, content: &str, create_new: bool) -> Result<(), KeyFileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let write = |target: &Path, create_new: bool| -> Result<(), KeyFileError> {
        let mut opts = OpenOptions::new();
        opts.write(true).mode(0o600);
        if create_new {
            opts.create_new(true);
        } else {
            opts.create(true).truncate(true);
        }
        let mut file = opts.open(target).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists(target.into()),
            _ => io_err(target)(e),
        })?;
        file.write_all(content.as_bytes()).map_err(io_err(target))?;
        file.sync_all().map_err(io_err(target))
    };
    if create_new {
        return write(path, true);
    }
    // Replace atomically: a crash leaves either the old file or the new one, never half a file.
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write(&tmp, true)?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_gives_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let key = NodeKey::from_seed([9; 32]);
        save(&path, &key, false).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load(&path).unwrap().node_id(), key.node_id());
        assert!(matches!(save(&path, &key, false), Err(KeyFileError::Exists(_))));
        let other = NodeKey::from_seed([10; 32]);
        save(&path, &other, true).unwrap();
        assert_eq!(load(&path).unwrap().node_id(), other.node_id());
    }

    #[test]
    fn an_api_token_is_created_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        assert!(matches!(load_token(&path), Err(KeyFileError::Missing(_))));
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_token(&path), Err(KeyFileError::TooOpen { .. })));
    }

    #[test]
    fn refuses_open_permissions_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        save(&path, &NodeKey::from_seed([1; 32]), false).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(&path),
            Err(KeyFileError::TooOpen { mode: 0o644, .. })
        ));
        fs::write(&path, "fleetmesh-ed25519-v1 nothex\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Malformed { .. })));
        assert!(matches!(
            load(&dir.path().join("none")),
            Err(KeyFileError::Missing(_))
        ));
    }
}
