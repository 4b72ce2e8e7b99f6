//! Registry credentials from the standard Docker client configuration (`config.json`), so an
//! operator's `docker login` is all a protected registry needs.

use std::path::Path;

use base64::Engine;
use bollard::auth::DockerCredentials;

/// The credentials `config.json` in `config_dir` holds for `registry` (`HOST:PORT`), if any.
/// Credential helpers (`credsStore`) are not run: the hook never executes programs named by
/// configuration.
pub fn for_registry(config_dir: &Path, registry: &str) -> Option<DockerCredentials> {
    let text = std::fs::read_to_string(config_dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let entry = auths
        .get(registry)
        .or_else(|| auths.get(&format!("https://{registry}")))
        .or_else(|| auths.get(&format!("http://{registry}")))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.get("auth")?.as_str()?)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some(DockerCredentials {
        username: Some(username.to_owned()),
        password: Some(password.to_owned()),
        serveraddress: Some(registry.to_owned()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_auth_entry_of_the_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        // "ci:s3cret"
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"registry.internal:5000": {"auth": "Y2k6czNjcmV0"}}}"#,
        )
        .expect("write");
        let credentials = for_registry(dir.path(), "registry.internal:5000").expect("found");
        assert_eq!(credentials.username.as_deref(), Some("ci"));
        assert_eq!(credentials.password.as_deref(), Some("s3cret"));
        assert!(for_registry(dir.path(), "other:5000").is_none());
        assert!(for_registry(&dir.path().join("missing"), "registry.internal:5000").is_none());
    }
}
