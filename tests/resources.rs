//! Managing resources in the data directory with `slipway apply`, `get` and `delete`.

mod common;

use std::process::Command;

use common::*;

fn slipway(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(SLIPWAY)
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("slipway")
}

#[test]
fn apply_get_delete_round_trip() {
    let scratch = Scratch::new();
    let key = keygen(&scratch, "alice");
    let data = scratch.data();
    let applied = apply(
        &data,
        &(customer_yaml("alice", &[&key]) + &webspace_yaml("blog", "alice")),
    );
    assert_ok(&applied);
    assert_eq!(
        String::from_utf8_lossy(&applied.stdout),
        "customer.slipway.dev/alice created\nwebspace.slipway.dev/blog created\n"
    );

    let table = slipway(&data, &["get", "ws"]);
    assert_ok(&table);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("blog") && l.contains("alice")),
        "{table}"
    );

    // Every column has a name of its own (the display name is not a second NAME).
    let customers = slipway(&data, &["get", "customers"]);
    assert_ok(&customers);
    let header = String::from_utf8_lossy(&customers.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let columns: Vec<&str> = header
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let mut distinct = columns.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), columns.len(), "{header}");
    // The internal hook command is not offered to people.
    let help = std::process::Command::new(SLIPWAY)
        .arg("--help")
        .output()
        .expect("slipway --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("apply") && !help.contains("hook"), "{help}");

    let yaml = slipway(&data, &["get", "customer", "alice", "-o", "yaml"]);
    assert_ok(&yaml);
    let yaml = String::from_utf8_lossy(&yaml.stdout).into_owned();
    assert!(
        yaml.contains("kind: Customer") && yaml.contains(&key.public_line),
        "{yaml}"
    );

    let json = slipway(&data, &["get", "webspaces", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(list["items"][0]["spec"]["productionBranch"], "main");

    assert_ok(&slipway(&data, &["delete", "webspace", "blog"]));
    let missing = slipway(&data, &["get", "webspace", "blog"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("webspace `blog` not found"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn invalid_resources_are_refused_with_the_reason_and_store_nothing() {
    let scratch = Scratch::new();
    let data = scratch.data();
    let weak = "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: bob}\nspec:\n  email: bob@example.com\n  sshKeys: [\"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDHd6B1 short\"]\n";
    for (yaml, reason) in [
        (weak, "spec.sshKeys"),
        (
            "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: ../x}\nspec: {customer: a}\n",
            "metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n",
            "unknown apiVersion/kind",
        ),
        ("{{{", "document 1"),
    ] {
        let output = apply(&data, yaml);
        assert!(!output.status.success(), "{yaml}");
        assert!(
            stderr(&output).contains(reason),
            "{yaml}: {}",
            stderr(&output)
        );
    }
    let listing = slipway(&data, &["get", "customers"]);
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "No customers found.\n"
    );
}

#[test]
fn crds_command_prints_the_generated_definitions() {
    let output = Command::new(SLIPWAY)
        .arg("crds")
        .output()
        .expect("slipway crds");
    assert_ok(&output);
    let text = String::from_utf8_lossy(&output.stdout);
    for name in [
        "customers.slipway.dev",
        "webspaces.slipway.dev",
        "runtimes.slipway.dev",
        "releases.slipway.dev",
    ] {
        assert!(text.contains(&format!("name: {name}")), "{name}");
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/crds")
            .join(format!("{name}.yaml"));
        let on_disk = std::fs::read_to_string(file).expect("deploy/crds file");
        assert!(text.contains(&on_disk), "deploy/crds/{name}.yaml drifted");
    }
}
