//! `slipway apply -f`: multi-document YAML in, validated resources stored.

use std::collections::HashMap;

use serde::Deserialize;
use slipway_api::keys::{fingerprint, parse_public_key};
use slipway_api::{API_VERSION, Customer, Release, Runtime, Webspace};

use crate::{Kind, Store, StoreError};

/// The four kinds, as named on the command line (`slipway get ws`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// `customers`, `customer`, `cust`
    Customer,
    /// `webspaces`, `webspace`, `ws`
    Webspace,
    /// `runtimes`, `runtime`, `rt`
    Runtime,
    /// `releases`, `release`, `rel`
    Release,
}

/// Parses a kind as `kubectl` would accept it: plural, singular, short name or `Kind`.
pub fn kind_of(word: &str) -> Option<TableKind> {
    match word.to_ascii_lowercase().as_str() {
        "customer" | "customers" | "cust" => Some(TableKind::Customer),
        "webspace" | "webspaces" | "ws" => Some(TableKind::Webspace),
        "runtime" | "runtimes" | "rt" => Some(TableKind::Runtime),
        "release" | "releases" | "rel" => Some(TableKind::Release),
        _ => None,
    }
}

/// What `apply` did to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and was replaced.
    Configured,
}

/// One applied document, for the `customer.slipway.dev/alice created` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Lowercase kind.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
        };
        write!(
            f,
            "{}.{}/{} {outcome}",
            self.kind,
            slipway_api::GROUP,
            self.name
        )
    }
}

/// A document that cannot be applied. Nothing is stored when any document fails.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Not YAML, or not the shape of its kind.
    #[error("document {index}")]
    Parse {
        /// Position in the input, from 1.
        index: usize,
        /// The cause.
        #[source]
        source: serde_yaml::Error,
    },
    /// `apiVersion`/`kind` is not one of Slipway's.
    #[error(
        "document {index}: unknown apiVersion/kind `{api_version}`/`{kind}` (expected {API_VERSION} Customer, Webspace, Runtime or Release)"
    )]
    UnknownKind {
        /// Position in the input, from 1.
        index: usize,
        /// What the document said.
        api_version: String,
        /// What the document said.
        kind: String,
    },
    /// `spec` has a field the kind does not have (usually a typo).
    #[error("document {index}: {kind} has no field `spec.{field}`")]
    UnknownField {
        /// Position in the input, from 1.
        index: usize,
        /// Kind of the resource.
        kind: &'static str,
        /// The field, escaped.
        field: String,
    },
    /// The resource does not validate.
    #[error("document {index}: {kind} `{name}`")]
    Invalid {
        /// Position in the input, from 1.
        index: usize,
        /// Kind of the resource.
        kind: &'static str,
        /// `metadata.name`, escaped.
        name: String,
        /// What is wrong.
        #[source]
        source: slipway_api::resources::ValidationError,
    },
    /// A Customer lists a key another Customer already holds. A key identifies one customer;
    /// taking it over would lock its owner out.
    #[error(
        "document {index}: Customer `{customer}`: ssh key #{key} is already held by customer `{holder}`\nhint: a key identifies one customer; remove it from `{holder}` first, or use another key (`ssh-keygen -t ed25519`)"
    )]
    KeyHeld {
        /// Position in the input, from 1.
        index: usize,
        /// The Customer being applied.
        customer: String,
        /// Position of the key in its `sshKeys`, from 1.
        key: usize,
        /// The Customer that holds the key.
        holder: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Document {
    /// With its position in the input.
    Customer(usize, Customer),
    Webspace(Webspace),
    Runtime(Runtime),
    Release(Release),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// The first field of `value.spec` that the CRD schema of `K` does not know: a typo that would
/// otherwise be dropped silently (`runtme: static`). kubectl's strict field validation refuses
/// these too.
fn unknown_spec_field<K: kube::CustomResourceExt>(value: &serde_yaml::Value) -> Option<String> {
    let crd = K::crd();
    let known = crd
        .spec
        .versions
        .first()?
        .schema
        .as_ref()?
        .open_api_v3_schema
        .as_ref()?
        .properties
        .as_ref()?
        .get("spec")?
        .properties
        .clone()?;
    value
        .get("spec")?
        .as_mapping()?
        .keys()
        .filter_map(|k| k.as_str())
        .find(|k| !known.contains_key(*k))
        .map(|k| k.escape_default().to_string())
}

fn typed<K: Kind + kube::CustomResourceExt>(
    index: usize,
    value: serde_yaml::Value,
    kind: &'static str,
) -> Result<K, ApplyError> {
    if let Some(field) = unknown_spec_field::<K>(&value) {
        return Err(ApplyError::UnknownField { index, kind, field });
    }
    let resource: K =
        serde_yaml::from_value(value).map_err(|source| ApplyError::Parse { index, source })?;
    resource.validate().map_err(|source| ApplyError::Invalid {
        index,
        kind,
        name: resource
            .meta()
            .name
            .clone()
            .unwrap_or_default()
            .escape_default()
            .to_string(),
        source,
    })?;
    Ok(resource)
}

async fn put<S: Store, K: Kind>(store: &S, resource: &K) -> Result<Applied, ApplyError> {
    let existed = store.put(resource).await?;
    Ok(Applied {
        kind: K::kind(&()).to_ascii_lowercase(),
        name: resource.meta().name.clone().unwrap_or_default(),
        outcome: if existed {
            Outcome::Configured
        } else {
            Outcome::Created
        },
    })
}

/// Refuses a Customer that lists a key another Customer holds: one already stored (and not
/// replaced by this apply), or one earlier in the same input.
async fn refuse_held_keys<S: Store>(store: &S, documents: &[Document]) -> Result<(), ApplyError> {
    let applied: Vec<(usize, &Customer)> = documents
        .iter()
        .filter_map(|d| match d {
            Document::Customer(index, customer) => Some((*index, customer)),
            _ => None,
        })
        .collect();
    if applied.is_empty() {
        return Ok(());
    }
    let name = |c: &Customer| c.metadata.name.clone().unwrap_or_default();
    let replaced: Vec<String> = applied.iter().map(|(_, c)| name(c)).collect();
    let mut holders: HashMap<String, String> = HashMap::new();
    let stored = store.list::<Customer>().await?;
    let kept = stored.iter().filter(|c| !replaced.contains(&name(c)));
    for customer in kept {
        for key in fingerprints(customer) {
            holders.entry(key).or_insert_with(|| name(customer));
        }
    }
    for (index, customer) in applied {
        let this = name(customer);
        for (position, line) in customer.spec.ssh_keys.iter().enumerate() {
            let Ok(key) = parse_public_key(line, position + 1) else {
                continue;
            };
            let holder = holders
                .entry(fingerprint(&key))
                .or_insert_with(|| this.clone());
            if *holder != this {
                return Err(ApplyError::KeyHeld {
                    index,
                    customer: this.escape_default().to_string(),
                    key: position + 1,
                    holder: holder.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The fingerprints of the keys a Customer lists (those that parse).
fn fingerprints(customer: &Customer) -> Vec<String> {
    customer
        .spec
        .ssh_keys
        .iter()
        .enumerate()
        .filter_map(|(position, line)| parse_public_key(line, position + 1).ok())
        .map(|key| fingerprint(&key))
        .collect()
}

/// Parses every document of `text`, validates all of them, then stores them in order.
///
/// # Errors
/// The first document that does not parse or validate, or a Customer listing a key another
/// Customer holds (then nothing is stored); or a store failure.
pub async fn apply_documents<S: Store>(store: &S, text: &str) -> Result<Vec<Applied>, ApplyError> {
    let mut documents = Vec::new();
    for (position, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = position + 1;
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|source| ApplyError::Parse { index, source })?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta = serde_yaml::from_value(value.clone())
            .map_err(|source| ApplyError::Parse { index, source })?;
        let unknown = || ApplyError::UnknownKind {
            index,
            api_version: meta.api_version.escape_default().to_string(),
            kind: meta.kind.escape_default().to_string(),
        };
        if meta.api_version != API_VERSION {
            return Err(unknown());
        }
        documents.push(match meta.kind.as_str() {
            "Customer" => Document::Customer(index, typed(index, value, "Customer")?),
            "Webspace" => Document::Webspace(typed(index, value, "Webspace")?),
            "Runtime" => Document::Runtime(typed(index, value, "Runtime")?),
            "Release" => Document::Release(typed(index, value, "Release")?),
            _ => return Err(unknown()),
        });
    }
    refuse_held_keys(store, &documents).await?;
    let mut applied = Vec::with_capacity(documents.len());
    for document in &documents {
        applied.push(match document {
            Document::Customer(_, r) => put(store, r).await?,
            Document::Webspace(r) => put(store, r).await?,
            Document::Runtime(r) => put(store, r).await?,
            Document::Release(r) => put(store, r).await?,
        });
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DirectoryStore;

    #[tokio::test]
    async fn multi_document_apply_is_all_or_nothing() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = DirectoryStore::open(data.path()).expect("opens");
        let good = "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: alice}\nspec: {email: a@example.com}\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: blog}\nspec: {customer: alice}\n";
        let bad = format!(
            "{good}---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {{name: Bad_Name}}\nspec: {{customer: alice}}\n"
        );
        let err = apply_documents(&store, &bad).await.expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("document 3: Webspace `Bad_Name`"),
            "{err}"
        );
        assert!(store.list::<Customer>().await.expect("list").is_empty());

        let applied = apply_documents(&store, good).await.expect("applies");
        let lines: Vec<String> = applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "customer.slipway.dev/alice created",
                "webspace.slipway.dev/blog created"
            ]
        );
        let again = apply_documents(&store, good).await.expect("applies");
        assert_eq!(again[0].outcome, Outcome::Configured);
    }

    #[tokio::test]
    async fn misspelled_fields_are_refused() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = DirectoryStore::open(data.path()).expect("opens");
        let err = apply_documents(
            &store,
            "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: w}\nspec: {customer: a, runtme: static}\n",
        )
        .await
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "document 1: Webspace has no field `spec.runtme`"
        );
    }

    #[tokio::test]
    async fn foreign_kinds_are_refused() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = DirectoryStore::open(data.path()).expect("opens");
        let err = apply_documents(&store, "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
            .await
            .expect_err("refused");
        assert!(matches!(err, ApplyError::UnknownKind { .. }), "{err}");
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbfO2R8HNnKRTcsKxq2EnNjxUIU6+xPO5NZTxPa0Cb6 a";

    fn customer(name: &str, keys: &[&str]) -> String {
        let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        format!(
            "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {{name: {name}}}\nspec: {{email: {name}@example.com, sshKeys: [{}]}}\n---\n",
            keys.join(", ")
        )
    }

    #[tokio::test]
    async fn a_key_held_by_another_customer_cannot_be_claimed() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = DirectoryStore::open(data.path()).expect("opens");
        apply_documents(&store, &customer("alice", &[KEY]))
            .await
            .expect("applies");
        let err = apply_documents(&store, &customer("mallory", &[KEY]))
            .await
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "document 1: Customer `mallory`: ssh key #1 is already held by customer `alice`\nhint: a key identifies one customer; remove it from `alice` first, or use another key (`ssh-keygen -t ed25519`)"
        );
        assert!(
            store
                .get::<Customer>("mallory")
                .await
                .expect("get")
                .is_none()
        );
        // Two claims in one input: the later is refused, and nothing is stored.
        let both = customer("bob", &[KEY]) + &customer("carol", &[KEY]);
        let data = tempfile::tempdir().expect("tempdir");
        let fresh = DirectoryStore::open(data.path()).expect("opens");
        let err = apply_documents(&fresh, &both).await.expect_err("refused");
        assert!(matches!(err, ApplyError::KeyHeld { index: 2, .. }), "{err}");
        assert!(fresh.list::<Customer>().await.expect("list").is_empty());
        // The owner may re-apply, and may hand the key over in the same apply.
        apply_documents(&store, &customer("alice", &[KEY]))
            .await
            .expect("the owner re-applies");
        apply_documents(
            &store,
            &(customer("alice", &[]) + &customer("mallory", &[KEY])),
        )
        .await
        .expect("handed over");
    }
}
