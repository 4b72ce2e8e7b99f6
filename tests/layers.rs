//! The dependency rules of DESIGN.md, checked on the workspace's manifests: the hook records
//! and the operator acts (they meet in the store), the git server knows neither containers nor
//! the operator, and the operator knows no SSH.

use std::collections::BTreeMap;

/// Direct dependencies of each workspace package, as `cargo metadata` reads the manifests.
fn dependencies() -> BTreeMap<String, Vec<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("name").to_owned();
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("name").to_owned())
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn the_crates_keep_their_layers() {
    let all = dependencies();
    let forbidden = [
        ("slipway-hook", "slipway-operator"),
        ("slipway-git-server", "slipway-operator"),
        ("slipway-git-server", "bollard"),
        ("slipway-git-server", "slipway-hook"),
        ("slipway-operator", "russh"),
        ("slipway-operator", "slipway-hook"),
        ("slipway-operator", "slipway-git-server"),
        ("slipway-api", "tokio"),
        ("slipway-api", "slipway-store"),
    ];
    for package in [
        "slipway-hook",
        "slipway-git-server",
        "slipway-operator",
        "slipway-api",
    ] {
        assert!(all.contains_key(package), "{package} is in the workspace");
    }
    for (package, dependency) in forbidden {
        assert!(
            !all[package].iter().any(|d| d == dependency),
            "{package} must not depend on {dependency}: {:?}",
            all[package]
        );
    }
}
