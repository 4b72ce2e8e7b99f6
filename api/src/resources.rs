//! The four resource kinds: Customer, Webspace, Runtime, Release.
//!
//! Defined once here with `kube::CustomResource`; the CRDs in `deploy/crds/` and the YAML files of
//! the single-host data directory are both this shape. Doc comments become `kubectl explain`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::keys::{self, KeyError};
use crate::names::{self, InvalidName, MAX_LABEL};

/// A DNS-1123 label, as [`names::validate_label`] checks it (with `maxLength` 63): the schema
/// pattern of `metadata.name` and of every field that names another resource.
pub const LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A DNS name, as [`names::validate_domain`] checks it (with `maxLength` 253): dot-separated
/// labels of 1 to 63 characters.
pub const DOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";

/// Longest DNS name (RFC 1123).
pub const MAX_DOMAIN: usize = 253;

/// A branch name as [`Validate`] accepts `spec.productionBranch`: no control characters, space,
/// `~^:?*[\`, no `..`, and not starting with `-`. Written as a sequence of tokens, each an
/// allowed character optionally after one `.`, so two dots never meet (RE2 has no lookahead).
pub const BRANCH_PATTERN: &str = concat!(
    r"^([^-.\x00-\x20\x7f-\x{9f}~^:?*\[\\]|\.[^.\x00-\x20\x7f-\x{9f}~^:?*\[\\]|\.$)",
    r"(\.?[^.\x00-\x20\x7f-\x{9f}~^:?*\[\\])*\.?$",
);

/// Text with at least one character that is not white space (Unicode `White_Space`, what
/// `str::trim` removes).
pub const NOT_BLANK_PATTERN: &str =
    r"[^\t-\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]";

/// A size as nginx's `client_max_body_size` takes it: bytes, or a number with `k`, `m` or `g`
/// (powers of 1024), as [`parse_size`] reads it.
pub const SIZE_PATTERN: &str = r"^[0-9]{1,12}[kKmMgG]?$";

/// Bytes in a size written as [`SIZE_PATTERN`] says: `512k`, `50m`, `2g`, `1048576`.
pub fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&text[..text.len() - 1], 1 << 20),
        b'g' | b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// A customer: who may push, identified only by their SSH keys.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "Customer",
    shortname = "cust",
    printcolumn = r#"{"name":"Email","type":"string","jsonPath":".spec.email"}"#,
    printcolumn = r#"{"name":"Display name","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Keys","type":"string","jsonPath":".status.conditions[?(@.type==\"KeysAvailable\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    status = "CustomerStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct CustomerSpec {
    /// Contact address of the customer.
    #[schemars(regex(pattern = "@"))]
    pub email: String,
    /// Human-readable name, shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`), one per entry, as in
    /// `authorized_keys` without options. A key whose signature the server verifies identifies
    /// this customer. DSA and RSA keys under 2048 bits are refused.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

/// Observed state of a Customer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerStatus {
    /// Number of usable keys: those that parse and that no earlier Customer lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u32>,
    /// `KeysAvailable`: `False` when a key is held by an earlier Customer (reason
    /// `KeyHeldByAnotherCustomer`, the message names the key and the holder), cannot be used
    /// (`KeyInvalid`), or none is listed (`NoKeys`). Written by the operator.
    // A map keyed by `type`, as on Webspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"],
    ))]
    pub conditions: Vec<Condition>,
}

/// A webspace: one git repository (`<name>.git`) and the apps built from its branches.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "Webspace",
    shortname = "ws",
    status = "WebspaceStatus",
    printcolumn = r#"{"name":"Customer","type":"string","jsonPath":".spec.customer"}"#,
    printcolumn = r#"{"name":"Runtime","type":"string","jsonPath":".spec.runtime"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WebspaceSpec {
    /// Name of the Customer that owns this webspace; only their keys may push and clone.
    #[schemars(regex(pattern = LABEL_PATTERN), length(max = MAX_LABEL))]
    pub customer: String,
    /// Name of the Runtime whose Dockerfile template builds a repo without a `Dockerfile`.
    /// Optional when the repo has its own `Dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LABEL_PATTERN), length(max = MAX_LABEL))]
    pub runtime: Option<String>,
    /// Instances per branch, 0 to 100. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Port the app listens on (also passed as `PORT`). Default: the Runtime's port, else 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Branch served on the webspace's own host and `domains`. Default `main`.
    #[serde(default = "default_production_branch")]
    #[schemars(regex(pattern = BRANCH_PATTERN), length(min = 1))]
    pub production_branch: String,
    /// Extra host names that serve the production branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = DOMAIN_PATTERN), length(max = MAX_DOMAIN)))]
    pub domains: Vec<String>,
    /// Environment variables given to the app (besides `PORT`). Names are letters, digits and
    /// `_`, not starting with a digit.
    // The CRD cannot check the names: a schema constrains map values (`additionalProperties`),
    // not keys, on Kubernetes 1.20 (`propertyNames` is not allowed; CEL rules came in 1.25).
    // `Validate` checks them for `slipway apply`, the git server and the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Whether non-production branches get preview hosts. Default true.
    #[serde(default = "default_previews")]
    pub previews: bool,
    /// The largest request body the app gets, as nginx's `client_max_body_size`: `512k`,
    /// `50m`, `2g` or bytes. Larger requests get 413 from the router. Default: the router's
    /// (`slipway up --router-max-body`, 1g); on Kubernetes the ingress controller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub max_request_body: Option<String>,
}

impl WebspaceSpec {
    /// `maxRequestBody` in bytes; `None` when it is not set (or not valid, which
    /// [`Validate`] refuses).
    pub fn max_request_body_bytes(&self) -> Option<u64> {
        self.max_request_body.as_deref().and_then(parse_size)
    }
}

fn default_replicas() -> i32 {
    1
}
fn default_production_branch() -> String {
    "main".to_owned()
}
fn default_previews() -> bool {
    true
}

/// Observed state of a Webspace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebspaceStatus {
    /// `Pending`, `Progressing`, `Ready`, `Degraded` or `Failed`, summarising the branches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// URL of the production branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// One entry per deployed branch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<BranchStatus>,
    /// The last error, if the last reconcile failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `Built`, `Released` and `Ready`, in the Kubernetes convention, so
    /// `kubectl wait --for=condition=Ready webspace/NAME` works.
    // A map keyed by `type`, as `metav1.Condition` lists are: server-side apply merges entries
    // by type instead of replacing the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"],
    ))]
    pub conditions: Vec<Condition>,
}

/// One aspect of a resource's state, as in Kubernetes' `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// On a Webspace `Built`, `Released` or `Ready`; on a Customer `KeysAvailable`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word saying why.
    pub reason: String,
    /// A sentence for people.
    // Omitted when empty rather than defaulted in the schema: Kubernetes 1.20 refused the CRD
    // with `default: ''`. Conditions stored without it still read (as empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What runs for one branch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BranchStatus {
    /// Branch name as pushed.
    pub branch: String,
    /// URL the branch is served on.
    pub url: String,
    /// Name of the Release serving it.
    pub release: String,
    /// Image reference serving it.
    pub image: String,
    /// Instances answering their health check.
    pub ready_replicas: i32,
}

/// A runtime: how to build a repo that has no `Dockerfile`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "Runtime",
    shortname = "rt",
    printcolumn = r#"{"name":"Base image","type":"string","jsonPath":".spec.baseImage"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Description","type":"string","jsonPath":".spec.description"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Handlebars template of the Dockerfile, rendered in strict mode with `baseImage`, `port`,
    /// `webspace` and `branch`.
    pub dockerfile_template: String,
    /// Base image the template builds from (`{{baseImage}}`).
    #[schemars(regex(pattern = NOT_BLANK_PATTERN), length(min = 1))]
    pub base_image: String,
    /// Port the built app listens on. Default 8080.
    #[serde(default = "default_port")]
    pub port: u16,
    /// One line about the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_port() -> u16 {
    8080
}

/// A release: one build of one branch of a webspace. Written by the pre-receive hook.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "Release",
    shortname = "rel",
    status = "ReleaseStatus",
    printcolumn = r#"{"name":"Webspace","type":"string","jsonPath":".spec.webspace"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Branch","type":"string","jsonPath":".spec.branch"}"#,
    printcolumn = r#"{"name":"Commit","type":"string","jsonPath":".spec.commit"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSpec {
    /// Webspace the release belongs to.
    #[schemars(regex(pattern = LABEL_PATTERN), length(max = MAX_LABEL))]
    pub webspace: String,
    /// Branch that was pushed, as pushed (not the DNS label).
    pub branch: String,
    /// Commit id that was pushed.
    pub commit: String,
    /// Tree id of that commit; the image tag.
    pub tree: String,
    /// Image reference, with `@sha256:...` digest when it was pushed to a registry.
    pub image: String,
    /// SHA256 fingerprint of the key that pushed.
    pub pusher: String,
    /// The port the image says it listens on (its one exposed TCP port, from `EXPOSE` in the
    /// Dockerfile or its base image); used when neither the Webspace nor its Runtime names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Its number among the webspace's releases (`v1`, `v2`, ...): one more than the highest
    /// before it. Releases recorded before versions existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<u32>,
    /// Why it exists when not a push of its commit: `rollback to v3`, `restart`,
    /// `config: set TOKEN` (names only, never values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The names (never the values) of the webspace's config when it was staged: on a cluster
    /// its pods take them from the webspace's config Secret, over `spec.env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_keys: Vec<String>,
}

/// Annotation on a Release: a digest of the port and environment it was verified with (see
/// the operator's `desired::runs_with`). When the Webspace's `port` or `env` changes, the
/// serving release keeps running as verified, and a new release of the same image is verified
/// with the new settings before it takes traffic.
pub const RUNS_WITH_ANNOTATION: &str = "slipway.dev/runs-with";

/// Annotation on a Release: the port it was verified on (routing keeps using it until a release
/// verified with the Webspace's new port replaces it).
pub const PORT_ANNOTATION: &str = "slipway.dev/port";

/// Annotation on a Release the operator made because the Webspace's settings changed: the
/// [`RUNS_WITH_ANNOTATION`] digest it is for. The operator promotes it itself once verified,
/// and makes no second one for the same settings after it failed.
pub const MADE_FOR_ANNOTATION: &str = "slipway.dev/made-for";

/// Annotation on a Release: when the hook staged it, to the nanosecond (RFC 3339). Releases
/// are ordered by it: `creationTimestamp` has whole seconds, and a fast push lands in the same
/// second as the one before.
pub const PUSHED_AT_ANNOTATION: &str = "slipway.dev/pushed-at";

impl Release {
    /// When it was pushed: the [`PUSHED_AT_ANNOTATION`], else `creationTimestamp`.
    pub fn pushed_at(&self) -> Option<k8s_openapi::jiff::Timestamp> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PUSHED_AT_ANNOTATION))
            .and_then(|t| t.parse().ok())
            .or_else(|| self.metadata.creation_timestamp.as_ref().map(|t| t.0))
    }

    /// `status.phase`, empty when it has none yet.
    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or_default()
    }

    /// Sorts releases oldest first: by [`Release::pushed_at`], then name.
    pub fn order(&self) -> (Option<k8s_openapi::jiff::Timestamp>, Option<&str>) {
        (self.pushed_at(), self.metadata.name.as_deref())
    }
}

/// Observed state of a Release.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStatus {
    /// One of [`phase`]'s: `Staged` (built, ref not moved yet), `Verified` (started without
    /// traffic and healthy), `Promoted` (ref moved), `Live` (serving), `Superseded`, `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// What the operator is doing with it (while `Staged`), what it found (`Verified`), or why
    /// it failed (`Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the pusher can do about a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The app's last log lines, when it failed to start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// Where it serves, once live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The phases of a Release, and who moves it into each:
///
/// ```text
/// Staged ──operator──▶ Verified ──post-receive──▶ Promoted ──operator──▶ Live ──operator──▶ Superseded
///    └──operator──▶ Failed (reason, hint, last log lines; pre-receive rejects the push)
/// ```
pub mod phase {
    /// Built and pushed by pre-receive, before the ref moved; the operator verifies it.
    pub const STAGED: &str = "Staged";
    /// Started without traffic and healthy: pre-receive accepts the push.
    pub const VERIFIED: &str = "Verified";
    /// The ref moved (post-receive): the operator routes traffic to it.
    pub const PROMOTED: &str = "Promoted";
    /// Serving its branch.
    pub const LIVE: &str = "Live";
    /// Replaced by a newer release, or its branch was deleted.
    pub const SUPERSEDED: &str = "Superseded";
    /// Did not start, did not become healthy, or its push was abandoned.
    pub const FAILED: &str = "Failed";
}

/// A resource that does not pass validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// `metadata.name` or a referenced name is not a DNS label.
    #[error("{field}")]
    Name {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        #[source]
        source: InvalidName,
    },
    /// An SSH key is unusable.
    #[error("spec.sshKeys")]
    Key(#[from] KeyError),
    /// Any other field.
    #[error("{field}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn name_field(field: &'static str, value: &str) -> Result<(), ValidationError> {
    names::validate_label(value).map_err(|source| ValidationError::Name { field, source })
}

fn metadata_name(name: Option<&str>) -> Result<(), ValidationError> {
    name_field("metadata.name", name.unwrap_or_default())
}

/// Checks that go beyond the schema: names are DNS labels, keys parse and are strong.
pub trait Validate {
    /// # Errors
    /// The first problem found.
    fn validate(&self) -> Result<(), ValidationError>;
}

impl Validate for Customer {
    fn validate(&self) -> Result<(), ValidationError> {
        metadata_name(self.metadata.name.as_deref())?;
        if !self.spec.email.contains('@') {
            return Err(ValidationError::Field {
                field: "spec.email",
                reason: "not an email address".into(),
            });
        }
        for (index, line) in self.spec.ssh_keys.iter().enumerate() {
            keys::parse_public_key(line, index + 1)?;
        }
        Ok(())
    }
}

impl Validate for Webspace {
    fn validate(&self) -> Result<(), ValidationError> {
        metadata_name(self.metadata.name.as_deref())?;
        name_field("spec.customer", &self.spec.customer)?;
        if let Some(runtime) = &self.spec.runtime {
            name_field("spec.runtime", runtime)?;
        }
        if !(0..=100).contains(&self.spec.replicas) {
            return Err(ValidationError::Field {
                field: "spec.replicas",
                reason: "must be between 0 and 100".into(),
            });
        }
        if self.spec.port == Some(0) {
            return Err(ValidationError::Field {
                field: "spec.port",
                reason: "must be between 1 and 65535".into(),
            });
        }
        let branch = &self.spec.production_branch;
        if branch.is_empty()
            || branch.starts_with('-')
            || branch.contains("..")
            || branch
                .chars()
                .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
        {
            return Err(ValidationError::Field {
                field: "spec.productionBranch",
                reason: format!("`{}` is not a valid branch name", branch.escape_default()),
            });
        }
        if let Some(size) = &self.spec.max_request_body
            && parse_size(size).is_none()
        {
            return Err(ValidationError::Field {
                field: "spec.maxRequestBody",
                reason: format!(
                    "`{}` is not a size: bytes, or a number with k, m or g (50m)",
                    size.escape_default()
                ),
            });
        }
        for domain in &self.spec.domains {
            names::validate_domain(domain).map_err(|source| ValidationError::Name {
                field: "spec.domains",
                source,
            })?;
        }
        for name in self.spec.env.keys() {
            if !names::is_env_name(name) {
                return Err(ValidationError::Field {
                    field: "spec.env",
                    reason: format!("`{}` is not a valid variable name", name.escape_default()),
                });
            }
        }
        Ok(())
    }
}

impl Validate for Runtime {
    fn validate(&self) -> Result<(), ValidationError> {
        metadata_name(self.metadata.name.as_deref())?;
        if self.spec.base_image.trim().is_empty() {
            return Err(ValidationError::Field {
                field: "spec.baseImage",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

impl Validate for Release {
    fn validate(&self) -> Result<(), ValidationError> {
        metadata_name(self.metadata.name.as_deref())?;
        name_field("spec.webspace", &self.spec.webspace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn sizes_read_as_nginx_reads_them_and_nonsense_is_refused() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("50M"), Some(50 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        for bad in [
            "",
            "m",
            "-1",
            "1.5m",
            "1t",
            " 1m",
            "1m ",
            "0x10",
            "9999999999999",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        let regex = regex::Regex::new(SIZE_PATTERN).expect("pattern");
        for good in ["1048576", "512k", "50M", "2g"] {
            assert!(regex.is_match(good), "{good}");
        }
        let mut webspace: Webspace = serde_yaml::from_str(
            "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: blog}\nspec: {customer: alice, maxRequestBody: 50m}\n",
        )
        .expect("YAML");
        assert_eq!(webspace.spec.max_request_body_bytes(), Some(50 << 20));
        webspace.validate().expect("valid");
        webspace.spec.max_request_body = Some("lots".into());
        let error = webspace.validate().expect_err("refused").to_string();
        assert!(error.contains("spec.maxRequestBody"), "{error}");
    }

    fn customer(yaml: &str) -> Customer {
        serde_yaml::from_str(yaml).expect("test YAML parses")
    }

    #[test]
    fn customer_yaml_round_trips_in_camel_case() {
        let c = customer(
            "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: alice}\nspec:\n  email: a@example.com\n  displayName: Alice\n  sshKeys: []\n",
        );
        assert_eq!(c.spec.display_name.as_deref(), Some("Alice"));
        let out = serde_yaml::to_string(&c).expect("serializes");
        assert!(out.contains("displayName: Alice"), "{out}");
        assert!(out.contains("sshKeys"), "{out}");
    }

    #[test]
    fn validation_rejects_bad_names_and_keys() {
        let mut c = customer(
            "apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: Alice}\nspec: {email: a@example.com}\n",
        );
        assert!(matches!(c.validate(), Err(ValidationError::Name { .. })));
        c.metadata.name = Some("alice".into());
        assert_eq!(c.validate(), Ok(()));
        c.spec.ssh_keys.push("ssh-rsa nonsense".into());
        assert!(matches!(c.validate(), Err(ValidationError::Key(_))));
    }

    #[test]
    fn webspace_defaults_apply() {
        let w: Webspace = serde_yaml::from_str(
            "apiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: blog}\nspec: {customer: alice}\n",
        )
        .expect("parses");
        assert_eq!(w.spec.production_branch, "main");
        assert_eq!(w.spec.replicas, 1);
        assert!(w.spec.previews);
        assert_eq!(w.validate(), Ok(()));
    }

    #[test]
    fn a_condition_without_a_message_reads_and_an_empty_one_is_not_written() {
        let condition: Condition =
            serde_yaml::from_str("type: Ready\nstatus: 'True'\nreason: Serving\n").expect("parses");
        assert_eq!(condition.message, "");
        let out = serde_yaml::to_string(&condition).expect("serializes");
        assert!(!out.contains("message"), "{out}");
    }

    #[test]
    fn crds_are_cluster_scoped_with_short_names() {
        for crd in [
            Customer::crd(),
            Webspace::crd(),
            Runtime::crd(),
            Release::crd(),
        ] {
            assert_eq!(crd.spec.scope, "Cluster");
            assert_eq!(crd.spec.group, crate::GROUP);
            assert!(crd.spec.names.short_names.is_some_and(|s| !s.is_empty()));
        }
    }
}
