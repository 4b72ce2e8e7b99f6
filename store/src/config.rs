//! A webspace's config on one host: environment values its owner set (`ssh git@HOST
//! config:set blog KEY=VALUE`), kept apart from the resources because they may be secrets:
//! `DATA/secrets/<webspace>.json`, readable by Slipway's user only (the directory 0700, the
//! file 0600), written atomically. Never in a Webspace or Release, never in a log.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where a webspace's config lives.
fn path(data: &Path, webspace: &str) -> Option<PathBuf> {
    slipway_api::names::validate_label(webspace).ok()?;
    Some(data.join("secrets").join(format!("{webspace}.json")))
}

/// The config of `webspace` (empty when none was set).
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub fn read(data: &Path, webspace: &str) -> std::io::Result<BTreeMap<String, String>> {
    let Some(path) = path(data, webspace) else {
        return Ok(BTreeMap::new());
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the config of `webspace` (removes the file when it is empty).
///
/// # Errors
/// When it cannot be written.
pub fn write(
    data: &Path,
    webspace: &str,
    values: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let Some(path) = path(data, webspace) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a webspace name",
        ));
    };
    let dir = data.join("secrets");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    if values.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let partial = dir.join(format!(".{webspace}.json.partial"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(&serde_json::to_vec_pretty(values).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_private_and_round_trips() {
        let data = tempfile::tempdir().expect("tempdir");
        assert!(read(data.path(), "blog").expect("read").is_empty());
        let values = BTreeMap::from([("TOKEN".to_owned(), "s3cr3t".to_owned())]);
        write(data.path(), "blog", &values).expect("write");
        assert_eq!(read(data.path(), "blog").expect("read"), values);
        let file = data.path().join("secrets/blog.json");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&data.path().join("secrets")), 0o700);
        write(data.path(), "blog", &BTreeMap::new()).expect("clear");
        assert!(!file.exists());
        assert!(write(data.path(), "../x", &values).is_err());
    }
}
