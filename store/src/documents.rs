//! `slipway apply -f`: multi-document YAML in, validated resources stored.

use serde::Deserialize;
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
    /// Writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Document {
    Customer(Customer),
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

/// Parses every document of `text`, validates all of them, then stores them in order.
///
/// # Errors
/// The first document that does not parse or validate (then nothing is stored), or a store
/// failure.
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
            "Customer" => Document::Customer(typed(index, value, "Customer")?),
            "Webspace" => Document::Webspace(typed(index, value, "Webspace")?),
            "Runtime" => Document::Runtime(typed(index, value, "Runtime")?),
            "Release" => Document::Release(typed(index, value, "Release")?),
            _ => return Err(unknown()),
        });
    }
    let mut applied = Vec::with_capacity(documents.len());
    for document in &documents {
        applied.push(match document {
            Document::Customer(r) => put(store, r).await?,
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
}
