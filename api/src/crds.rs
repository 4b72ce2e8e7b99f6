//! The CustomResourceDefinitions, rendered from the Rust types. `deploy/crds/` holds this
//! output; a test fails when the files drift from the types.
//!
//! # Guarantees
//! The schemas refuse what [`Validate`](crate::resources::Validate) refuses, so `kubectl apply`
//! cannot store a resource that `slipway apply` would not, except `Webspace.spec.env` names
//! (a schema cannot constrain map keys on Kubernetes 1.20). They are structural schemas that a
//! Kubernetes 1.20 `apiextensions.k8s.io/v1` API server accepts: no empty-string defaults, no
//! defaults on nullable fields or inside list maps, every node typed.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::names::MAX_LABEL;
use crate::resources::LABEL_PATTERN;
use crate::{Customer, Release, Runtime, Webspace};

/// Every CRD, in a stable order, with the constraints the derive cannot express added.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    [
        Customer::crd(),
        Webspace::crd(),
        Runtime::crd(),
        Release::crd(),
    ]
    .into_iter()
    .map(constrain_name)
    .collect()
}

/// Every CRD as `(file name, YAML)`, in a stable order.
pub fn documents() -> Vec<(String, String)> {
    definitions()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(&crd).unwrap_or_default();
            (format!("{name}.yaml"), yaml)
        })
        .collect()
}

/// Adds `metadata.name` as a DNS-1123 label to every version's schema. `kube::CustomResource`
/// leaves `metadata` out; a structural schema may constrain only its `name` and
/// `generateName`, with nothing else on `metadata` itself (not even a description).
fn constrain_name(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let name = JSONSchemaProps {
        type_: Some("string".into()),
        pattern: Some(LABEL_PATTERN.into()),
        max_length: Some(i64::try_from(MAX_LABEL).unwrap_or(i64::MAX)),
        ..Default::default()
    };
    let metadata = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some(BTreeMap::from([("name".to_owned(), name)])),
        ..Default::default()
    };
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .properties
                .get_or_insert_with(BTreeMap::new)
                .insert("metadata".to_owned(), metadata.clone());
        }
    }
    crd
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::*;
    use crate::names;
    use crate::resources::{BRANCH_PATTERN, DOMAIN_PATTERN, NOT_BLANK_PATTERN};

    #[test]
    fn deploy_crds_match_the_rust_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        for (file, yaml) in super::documents() {
            let on_disk = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                on_disk == yaml,
                "deploy/crds/{file} is out of date: run `cargo run -- crds --write deploy/crds`"
            );
        }
    }

    /// The `openAPIV3Schema` of each CRD, as JSON, with its kind.
    fn schemas() -> Vec<(String, Value)> {
        definitions()
            .into_iter()
            .map(|crd| {
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.clone())
                    .expect("every CRD has a schema");
                (
                    crd.spec.names.kind,
                    serde_json::to_value(schema).expect("a schema serializes"),
                )
            })
            .collect()
    }

    fn schema_of(kind: &str) -> Value {
        schemas()
            .into_iter()
            .find(|(k, _)| k == kind)
            .map(|(_, schema)| schema)
            .expect("a CRD of that kind")
    }

    /// The schema of the property at `path` (`["spec", "replicas"]`).
    fn property<'a>(schema: &'a Value, path: &[&str]) -> &'a Value {
        path.iter()
            .fold(schema, |node, key| &node["properties"][*key])
    }

    /// Every schema node below `node` (itself included), with its path.
    fn walk<'a>(path: String, node: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        out.push((path.clone(), node));
        if let Some(properties) = node.get("properties").and_then(Value::as_object) {
            for (key, child) in properties {
                walk(format!("{path}.{key}"), child, out);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = node.get(key).filter(|c| c.is_object()) {
                walk(format!("{path}[{key}]"), child, out);
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for (index, child) in node
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                walk(format!("{path}.{key}[{index}]"), child, out);
            }
        }
    }

    #[test]
    fn no_crd_has_an_empty_string_default() {
        for (file, yaml) in documents() {
            assert!(!yaml.contains("default: ''"), "{file}:\n{yaml}");
            assert!(!yaml.contains("default: \"\""), "{file}:\n{yaml}");
        }
        for (kind, schema) in schemas() {
            let mut nodes = Vec::new();
            walk(kind, &schema, &mut nodes);
            for (path, node) in nodes {
                assert_ne!(node.get("default"), Some(&Value::from("")), "{path}");
            }
        }
    }

    /// What a Kubernetes 1.20 `apiextensions.k8s.io/v1` API server checks of a structural
    /// schema, and the rules it is stricter about than later versions.
    #[test]
    fn crd_schemas_are_structural_for_kubernetes_1_20() {
        for (kind, schema) in schemas() {
            let mut nodes = Vec::new();
            walk(kind.clone(), &schema, &mut nodes);
            for (path, node) in &nodes {
                // Every node has a type; `nullable` and the value validations need one.
                assert!(
                    node.get("type").is_some_and(Value::is_string),
                    "{path}: no type"
                );
                // No `$ref`, `definitions` or JSON-Schema-only keywords.
                for forbidden in [
                    "$ref",
                    "definitions",
                    "$schema",
                    "uniqueItems",
                    "additionalItems",
                    "patternProperties",
                    "propertyNames",
                    "const",
                    "examples",
                ] {
                    assert!(node.get(forbidden).is_none(), "{path}: {forbidden}");
                }
                // A default must not need null handling, and must itself be valid.
                if let Some(default) = node.get("default") {
                    assert_ne!(
                        node.get("nullable"),
                        Some(&Value::Bool(true)),
                        "{path}: nullable with default"
                    );
                    match default {
                        Value::String(text) => assert!(matches(node, text), "{path}: {default}"),
                        Value::Number(number) => {
                            let number = number.as_f64().expect("a number");
                            assert!(
                                node["minimum"].as_f64().is_none_or(|min| number >= min),
                                "{path}"
                            );
                            assert!(
                                node["maximum"].as_f64().is_none_or(|max| number <= max),
                                "{path}"
                            );
                        }
                        Value::Bool(_) | Value::Array(_) | Value::Object(_) => {}
                        Value::Null => panic!("{path}: null default"),
                    }
                }
                // `properties` and `additionalProperties` are exclusive.
                assert!(
                    !(node.get("properties").is_some()
                        && node.get("additionalProperties").is_some()),
                    "{path}"
                );
                if node.get("x-kubernetes-list-type") == Some(&Value::from("map")) {
                    let items = &node["items"];
                    assert_eq!(items["type"], "object", "{path}");
                    let required: Vec<&str> = items["required"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let keys = node["x-kubernetes-list-map-keys"]
                        .as_array()
                        .expect("map keys");
                    assert!(!keys.is_empty(), "{path}");
                    for key in keys.iter().filter_map(Value::as_str) {
                        let field = &items["properties"][key];
                        assert!(field["type"].is_string(), "{path}: key {key}");
                        assert!(
                            required.contains(&key),
                            "{path}: key {key} must be required"
                        );
                        assert!(
                            field.get("nullable").is_none(),
                            "{path}: key {key} nullable"
                        );
                    }
                    // No defaults anywhere inside a list map's items.
                    let mut inside = Vec::new();
                    walk(path.clone(), items, &mut inside);
                    for (inner, node) in inside {
                        assert!(
                            node.get("default").is_none(),
                            "{inner}: default in a list map"
                        );
                    }
                }
            }
            // At the root (status subresource on): only these, and `metadata` constrains
            // nothing but `name`.
            let root = schema.as_object().expect("an object");
            for key in root.keys() {
                assert!(
                    ["type", "properties", "required", "description", "title"]
                        .contains(&key.as_str()),
                    "{kind}: {key} at the root"
                );
            }
            let keys = |path: &[&str]| {
                let mut keys: Vec<String> = property(&schema, path)
                    .as_object()
                    .expect("an object")
                    .keys()
                    .cloned()
                    .collect();
                keys.sort();
                keys
            };
            assert_eq!(keys(&["metadata"]), ["properties", "type"], "{kind}");
            assert_eq!(
                keys(&["metadata", "name"]),
                ["maxLength", "pattern", "type"],
                "{kind}"
            );
            assert_eq!(
                property(&schema, &["metadata"])["properties"]
                    .as_object()
                    .map(|p| p.len()),
                Some(1)
            );
        }
    }

    #[test]
    fn conditions_are_a_map_keyed_by_type() {
        let conditions = property(&schema_of("Webspace"), &["status", "conditions"]).clone();
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }

    fn matches(schema: &Value, value: &str) -> bool {
        let pattern = schema["pattern"]
            .as_str()
            .map(|p| regex::Regex::new(p).expect("a valid pattern"));
        let length = value.chars().count();
        pattern.is_none_or(|p| p.is_match(value))
            && schema["maxLength"]
                .as_u64()
                .is_none_or(|max| length as u64 <= max)
            && schema["minLength"]
                .as_u64()
                .is_none_or(|min| length as u64 >= min)
    }

    fn names() -> Vec<String> {
        let mut names: Vec<String> = [
            "a", "blog", "my-site", "a1", "0", "", "-a", "a-", "A", "a_b", "a.b", "a b", "ä",
            "blog\n", "\nblog",
        ]
        .map(str::to_owned)
        .into();
        names.extend(["x".repeat(63), "x".repeat(64)]);
        names
    }

    #[test]
    fn every_name_field_is_a_dns_label_as_validate_checks() {
        let fields: &[(&str, &[&str])] = &[
            ("Customer", &["metadata", "name"]),
            ("Webspace", &["metadata", "name"]),
            ("Runtime", &["metadata", "name"]),
            ("Release", &["metadata", "name"]),
            ("Webspace", &["spec", "customer"]),
            ("Webspace", &["spec", "runtime"]),
            ("Release", &["spec", "webspace"]),
        ];
        for (kind, path) in fields {
            let schema = schema_of(kind);
            let field = property(&schema, path);
            assert_eq!(field["pattern"], LABEL_PATTERN, "{kind} {path:?}");
            for name in &names() {
                assert_eq!(
                    matches(field, name),
                    names::validate_label(name).is_ok(),
                    "{kind} {path:?}: `{}`",
                    name.escape_default()
                );
            }
        }
    }

    #[test]
    fn webspace_numbers_domains_and_branch_are_bounded_as_validate_checks() {
        let schema = schema_of("Webspace");
        let replicas = property(&schema, &["spec", "replicas"]);
        assert_eq!(
            (replicas["minimum"].as_f64(), replicas["maximum"].as_f64()),
            (Some(0.0), Some(100.0))
        );
        let port = property(&schema, &["spec", "port"]);
        assert_eq!(
            (port["minimum"].as_f64(), port["maximum"].as_f64()),
            (Some(1.0), Some(65535.0))
        );

        let domain = &property(&schema, &["spec", "domains"])["items"];
        assert_eq!(domain["pattern"], DOMAIN_PATTERN);
        let long_label = format!("{}.example.com", "a".repeat(64));
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        let too_long = format!("{longest}e");
        for value in [
            "example.com",
            "a.b.c",
            "localhost",
            "x-1.example.com",
            "",
            ".",
            "example.com.",
            ".example.com",
            "a..b",
            "Example.com",
            "-a.com",
            "a-.com",
            "a_b.com",
            "*.example.com",
            &long_label,
            &longest,
            &too_long,
        ] {
            assert_eq!(
                matches(domain, value),
                names::validate_domain(value).is_ok(),
                "`{}`",
                value.escape_default()
            );
        }

        let branch = property(&schema, &["spec", "productionBranch"]);
        assert_eq!(branch["pattern"], BRANCH_PATTERN);
        let accepted = |branch: &str| {
            let mut webspace: Webspace = serde_yaml::from_str(
                "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: blog}\nspec: {customer: alice}\n",
            )
            .expect("parses");
            webspace.spec.production_branch = branch.to_owned();
            crate::resources::Validate::validate(&webspace).is_ok()
        };
        for value in [
            "main",
            "feature/x",
            "release-1.2",
            "a.b",
            ".hidden",
            "x.",
            ".",
            "ünïcode",
            "a-b",
            "",
            "-x",
            "..",
            "a..b",
            "a b",
            "a~b",
            "a^b",
            "a:b",
            "a?b",
            "a*b",
            "a[b",
            "a\\b",
            "a\tb",
            "a\u{7f}",
            "a\u{85}b",
            "a\u{9f}",
            "a\u{a0}b",
            ".-x",
            "x..",
            "...",
        ] {
            assert_eq!(
                matches(branch, value),
                accepted(value),
                "`{}`",
                value.escape_default()
            );
        }
    }

    #[test]
    fn customer_email_and_runtime_image_are_checked_as_validate_checks() {
        let email = property(&schema_of("Customer"), &["spec", "email"]).clone();
        for (value, ok) in [
            ("a@example.com", true),
            ("@", true),
            ("alice", false),
            ("", false),
        ] {
            assert_eq!(matches(&email, value), ok, "`{value}`");
        }
        let image = property(&schema_of("Runtime"), &["spec", "baseImage"]).clone();
        assert_eq!(image["pattern"], NOT_BLANK_PATTERN);
        for value in [
            "nginx:1", " x ", "", " ", "\t\n", "\u{a0}", "\u{3000}", "\u{2028}",
        ] {
            assert_eq!(
                matches(&image, value),
                !value.trim().is_empty(),
                "`{}`",
                value.escape_default()
            );
        }
    }
}
