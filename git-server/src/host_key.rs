//! The server's ed25519 host key: generated once under the data directory and reused, so
//! clients' `known_hosts` entries stay valid across restarts.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::{HashAlg, PrivateKey};

/// File name of the host key inside the data directory.
pub const FILE_NAME: &str = "ssh_host_ed25519_key";

/// The host key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// Reading, writing or generating failed.
    #[error("{operation} host key {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The key file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not an OpenSSH private key.
    #[error("host key {path} is not an unencrypted OpenSSH private key")]
    Parse {
        /// The key file.
        path: String,
        /// The cause.
        #[source]
        source: russh::keys::ssh_key::Error,
    },
}

/// Loads `data/ssh_host_ed25519_key`, or generates it (mode 0600) when it does not exist.
///
/// # Errors
/// When the file cannot be read or written, or holds something that is not a key.
pub fn load_or_create(data: &Path) -> Result<PrivateKey, HostKeyError> {
    let path = data.join(FILE_NAME);
    let shown = path.display().to_string();
    let io = |operation| {
        let path = shown.clone();
        move |source| HostKeyError::Io {
            operation,
            path,
            source,
        }
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            return PrivateKey::from_openssh(text).map_err(|source| HostKeyError::Parse {
                path: shown.clone(),
                source,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read")(e)),
    }
    fs::create_dir_all(data).map_err(io("create directory for"))?;
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io("generate"))?;
    let key = PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        "slipway host key",
    )
    .map_err(|source| HostKeyError::Parse {
        path: shown.clone(),
        source,
    })?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|source| HostKeyError::Parse {
            path: shown.clone(),
            source,
        })?;
    // Written under a temporary name and renamed, so a crash never leaves half a key that
    // the next start would refuse.
    let temporary = data.join(format!(".{FILE_NAME}.tmp"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io("write"))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io("chmod"))?;
    file.write_all(text.as_bytes()).map_err(io("write"))?;
    file.sync_all().map_err(io("fsync"))?;
    fs::rename(&temporary, &path).map_err(io("rename"))?;
    Ok(key)
}

/// `SHA256:...` fingerprint of the host key, as `ssh-keygen -lf` and `known_hosts` prompts show.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_with_mode_0600() {
        let data = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(data.path()).expect("created");
        let mode = fs::metadata(data.path().join(FILE_NAME))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_create(data.path()).expect("loaded");
        assert_eq!(fingerprint(&first), fingerprint(&second));
    }
}
