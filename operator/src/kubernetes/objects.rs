//! The Kubernetes objects Slipway owns, as pure functions of the resources: per Customer a
//! Namespace with a ResourceQuota and a NetworkPolicy; per release a Deployment; per branch a
//! Service and an Ingress. A branch's Service selects the pods of one release: switching a
//! branch to a new release (blue/green) is one change of its selector. Snapshot tests pin every field; `scripts/check-manifests` validates the snapshots
//! against the official schemas.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment as KubeDeployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, LocalObjectReference, Namespace, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceQuota, ResourceQuotaSpec, ResourceRequirements, SeccompProfile,
    Secret, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use slipway_api::{Customer, Webspace};

use crate::{Deployment, Hosts};

/// Label on every object Slipway manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "slipway");
/// Label: the webspace an object belongs to.
pub const WEBSPACE_LABEL: &str = "slipway.dev/webspace";
/// Label: the branch (as a DNS label) an object serves.
pub const BRANCH_LABEL: &str = "slipway.dev/branch";
/// Label: the customer a namespace belongs to.
pub const CUSTOMER_LABEL: &str = "slipway.dev/customer";
/// Label on a pod: the Release it runs (a DNS label, so it fits a label value).
pub const RELEASE_LABEL: &str = "slipway.dev/release";
/// Annotation on a Deployment: the Release it runs.
pub const RELEASE_ANNOTATION: &str = "slipway.dev/release";
/// Name of the per-namespace ResourceQuota.
pub const QUOTA_NAME: &str = "slipway";
/// Seconds a stopping pod keeps serving before it gets SIGTERM (see [`deployment`]).
const PRE_STOP_SECONDS: &str = "3";
/// Name of the per-namespace NetworkPolicy.
pub const POLICY_NAME: &str = "slipway-isolation";

/// Limits of one customer's namespace: a number of pods; its CPU and memory totals are that
/// many times one app container's requests and limits, so the quota never refuses a pod while
/// fewer than `pods` run. Rollouts count: a push's staged release runs one pod beside the
/// branch's replicas, and once promoted the new release's replicas run beside the old ones
/// until the switch (and the old ones for [`super::reconcile::DRAIN_GRACE`] after it), so a
/// branch briefly needs twice its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Pods at most, surge pods of rollouts included.
    pub pods: u32,
}

impl Default for Quota {
    fn default() -> Self {
        Self { pods: 16 }
    }
}

/// `quantity` times `n`, in the quantity's own unit (`500m` × 16 = `8000m`); `None` when it is
/// not a plain number with an optional unit suffix.
fn times(quantity: &str, n: u32) -> Option<String> {
    let digits = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(digits);
    let number: u64 = number.parse().ok()?;
    if !["", "m", "k", "M", "G", "Ki", "Mi", "Gi"].contains(&unit) {
        return None;
    }
    Some(format!("{}{unit}", number.checked_mul(u64::from(n))?))
}

/// Settings of the Kubernetes driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Host names.
    pub hosts: Hosts,
    /// `spec.ingressClassName` of the Ingresses; the cluster default when unset.
    pub ingress_class: Option<String>,
    /// cert-manager ClusterIssuer: when set, Ingresses get TLS and URLs are `https://`.
    pub cluster_issuer: Option<String>,
    /// Registry the hook pushes to, as `HOST:PORT`, and the same registry as nodes pull from:
    /// images are rewritten from the first to the second.
    pub registry_rewrite: Option<(String, String)>,
    /// Path a pod must answer (HTTP 200-399) before it takes traffic.
    pub health_path: String,
    /// Seconds a rollout may take before it counts as failed.
    pub progress_deadline: i32,
    /// Namespace of the ingress controller, allowed through the tenant NetworkPolicy.
    pub ingress_namespace: String,
    /// The git server's ServiceAccount (namespace, name): each tenant namespace binds it
    /// [`LOGS_ROLE`], so an owner's `ssh ... logs` reads the pods there, and nowhere else.
    pub git_server_account: (String, String),
    /// Per-customer quota.
    pub quota: Quota,
    /// CPU and memory requested by each app container.
    pub requests: (String, String),
    /// CPU and memory limits of each app container.
    pub limits: (String, String),
    /// Local disk each app container requests and may use (its writable layer and logs); past
    /// the limit the kubelet evicts the pod, so one app cannot fill the node for every tenant.
    pub ephemeral_storage: (String, String),
    /// Docker client configuration (`{"auths": ...}`) the nodes pull apps' images with: copied
    /// into each tenant namespace as [`IMAGE_PULL_SECRET`] and named by every Deployment. None:
    /// the registry serves pulls without credentials.
    pub image_pull_config: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hosts: Hosts {
                domain: "apps.example.com".into(),
                style: crate::HostStyle::Nested,
            },
            ingress_class: None,
            cluster_issuer: None,
            registry_rewrite: None,
            health_path: "/".into(),
            progress_deadline: 120,
            ingress_namespace: "ingress-nginx".into(),
            git_server_account: ("slipway-system".into(), "slipway-git-server".into()),
            quota: Quota::default(),
            requests: ("50m".into(), "64Mi".into()),
            limits: ("500m".into(), "512Mi".into()),
            ephemeral_storage: ("64Mi".into(), "1Gi".into()),
            image_pull_config: None,
        }
    }
}

impl Settings {
    /// The URL a deployment is served on, if it has a host.
    pub fn url(&self, deployment: &Deployment) -> Option<String> {
        let scheme = if self.cluster_issuer.is_some() {
            "https"
        } else {
            "http"
        };
        deployment
            .hosts
            .first()
            .map(|host| format!("{scheme}://{host}"))
    }

    /// The image as nodes pull it.
    pub fn node_image(&self, image: &str) -> String {
        if let Some((pushed, pulled)) = &self.registry_rewrite
            && let Some(rest) = image.strip_prefix(&format!("{pushed}/"))
        {
            return format!("{pulled}/{rest}");
        }
        image.to_owned()
    }
}

pub use slipway_api::names::{config_secret_name, namespace_name, object_name};

/// The name of a branch's Deployment, Service and Ingress: `WEBSPACE-LABEL-HASH`, the hash
/// over the pair. Webspace names and branch labels may both contain `-`, so without it
/// `shop` + `api-main` and `shop-api` + `main` would share `shop-api-main` in one customer's
/// namespace.
pub fn branch_object_name(deployment: &Deployment) -> String {
    let pair = format!("{}/{}", deployment.webspace, deployment.label);
    let hash = format!("{:x}", Sha256::digest(pair.as_bytes()));
    object_name(&format!(
        "{}-{}-{}",
        deployment.webspace,
        deployment.label,
        hash.get(..6).unwrap_or(&hash)
    ))
}

fn owner<K: Resource<DynamicType = ()>>(resource: &K) -> OwnerReference {
    let meta = resource.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    std::iter::once(MANAGED_BY)
        .chain(pairs.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}

/// The customer's Namespace: owned by the Customer (deleting it deletes the apps), Pod
/// Security `baseline` enforced.
pub fn namespace(customer: &Customer) -> Namespace {
    let name = customer.metadata.name.as_deref().unwrap_or_default();
    let mut labels = labels(&[(CUSTOMER_LABEL, name)]);
    labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "baseline".into(),
    );
    Namespace {
        metadata: ObjectMeta {
            name: Some(namespace_name(name)),
            labels: Some(labels),
            owner_references: Some(vec![owner(customer)]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The customer's quota: pods, CPU, memory and local disk, and no LoadBalancer or NodePort
/// Services.
pub fn quota(namespace: &str, settings: &Settings) -> ResourceQuota {
    let pods = settings.quota.pods;
    let total = |per_pod: &str| times(per_pod, pods).unwrap_or_else(|| per_pod.to_owned());
    let (requests_cpu, requests_memory) =
        (total(&settings.requests.0), total(&settings.requests.1));
    let (limits_cpu, limits_memory) = (total(&settings.limits.0), total(&settings.limits.1));
    let (requests_disk, limits_disk) = (
        total(&settings.ephemeral_storage.0),
        total(&settings.ephemeral_storage.1),
    );
    ResourceQuota {
        metadata: ObjectMeta {
            name: Some(QUOTA_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(&[])),
            ..Default::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some(quantities(&[
                ("pods", &pods.to_string()),
                ("requests.cpu", &requests_cpu),
                ("requests.memory", &requests_memory),
                ("limits.cpu", &limits_cpu),
                ("limits.memory", &limits_memory),
                ("requests.ephemeral-storage", &requests_disk),
                ("limits.ephemeral-storage", &limits_disk),
                ("services.loadbalancers", "0"),
                ("services.nodeports", "0"),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ClusterRole (in `deploy/rbac.yaml`) a tenant namespace binds to the git server: read its
/// pods and their logs, and keep its webspaces' config Secrets (an owner's `logs` and
/// `config:set`).
pub const LOGS_ROLE: &str = "slipway-tenant-logs";

/// Lets the git server read the pods and logs of this tenant namespace only ([`LOGS_ROLE`]).
pub fn logs_binding(namespace: &str, settings: &Settings) -> RoleBinding {
    let (account_namespace, account) = &settings.git_server_account;
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(LOGS_ROLE.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(&[])),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: LOGS_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account.clone(),
            namespace: Some(account_namespace.clone()),
            ..Default::default()
        }]),
    }
}

/// The Secret in each tenant namespace that the nodes pull its apps' images with.
pub const IMAGE_PULL_SECRET: &str = "slipway-image-pull";

/// [`IMAGE_PULL_SECRET`] in `namespace`: the registry's read-only credentials. The apps cannot
/// read it (they get no API access); the kubelet uses it for their pulls.
pub fn image_pull_secret(namespace: &str, config: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(IMAGE_PULL_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(&[])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            k8s_openapi::ByteString(config.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// Keeps tenants apart: pods take connections only from their own namespace and from the
/// ingress controller's.
pub fn network_policy(namespace: &str, settings: &Settings) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(POLICY_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(&[])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector::default()),
                        ..Default::default()
                    },
                    NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "kubernetes.io/metadata.name".to_owned(),
                                settings.ingress_namespace.clone(),
                            )])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn branch_meta(
    webspace: &Webspace,
    namespace: &str,
    deployment: &Deployment,
    annotations: Option<BTreeMap<String, String>>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(branch_object_name(deployment)),
        namespace: Some(namespace.into()),
        labels: Some(selector(deployment)),
        annotations,
        owner_references: Some(vec![owner(webspace)]),
        ..Default::default()
    }
}

/// The name of a release's Deployment: its Release's name, a DNS label unique per webspace,
/// branch and commit.
pub fn release_object_name(deployment: &Deployment) -> String {
    object_name(&deployment.release)
}

/// The labels of a branch's objects.
pub fn selector(deployment: &Deployment) -> BTreeMap<String, String> {
    labels(&[
        (WEBSPACE_LABEL, &deployment.webspace),
        (BRANCH_LABEL, &deployment.label),
    ])
}

/// A pod's labels: the branch's and the Release it runs. They select a release's pods for its
/// Deployment and for the branch's Service while that release serves.
pub fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    let mut labels = selector(deployment);
    labels.insert(RELEASE_LABEL.to_owned(), deployment.release.clone());
    labels
}

/// A release's Deployment: the release's image (by digest), `PORT` and `spec.env`, a readiness
/// probe on the HTTP port, a rolling update (for a change of env or replicas) that never drops
/// below the wanted replicas, and a progress deadline that marks a rollout failed.
pub fn deployment(
    webspace: &Webspace,
    namespace: &str,
    wanted: &Deployment,
    settings: &Settings,
) -> KubeDeployment {
    // Config values come from the webspace's Secret, over `spec.env` (`PORT` stays Slipway's).
    let secret = config_secret_name(&wanted.webspace);
    let from_config = |name: &String| name != "PORT" && wanted.config_keys.contains(name);
    let env = wanted
        .env
        .iter()
        .filter(|(name, _)| !from_config(name))
        .map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..Default::default()
        })
        .chain(
            wanted
                .config_keys
                .iter()
                .filter(|n| from_config(n))
                .map(|name| EnvVar {
                    name: name.clone(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret.clone(),
                            key: name.clone(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
        )
        .collect();
    let container = Container {
        name: "app".into(),
        image: Some(settings.node_image(&wanted.image)),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(wanted.port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(settings.health_path.clone()),
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            // Probed every second: a new pod takes traffic (and a push returns) about a
            // second after it answers, not two.
            period_seconds: Some(1),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[
                ("cpu", &settings.requests.0),
                ("memory", &settings.requests.1),
                ("ephemeral-storage", &settings.ephemeral_storage.0),
            ])),
            limits: Some(quantities(&[
                ("cpu", &settings.limits.0),
                ("memory", &settings.limits.1),
                ("ephemeral-storage", &settings.ephemeral_storage.1),
            ])),
            ..Default::default()
        }),
        // A stopping pod keeps serving for a moment: its Service drops it only once kube-proxy
        // saw it terminating, and an app that exits on SIGTERM at once would refuse the
        // requests routed to it meanwhile. An image without `sleep` fails the hook, and the
        // kubelet stops it right away, as without one.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["sleep".into(), PRE_STOP_SECONDS.into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // As on one host: no raw sockets (no forged packets to neighbours), no setuid gains.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["NET_RAW".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut metadata = branch_meta(
        webspace,
        namespace,
        wanted,
        Some(BTreeMap::from([(
            RELEASE_ANNOTATION.to_owned(),
            wanted.release.clone(),
        )])),
    );
    metadata.name = Some(release_object_name(wanted));
    metadata.labels = Some(pod_labels(wanted));
    KubeDeployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(wanted.replicas),
            selector: LabelSelector {
                match_labels: Some(pod_labels(wanted)),
                ..Default::default()
            },
            revision_history_limit: Some(5),
            progress_deadline_seconds: Some(settings.progress_deadline),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(wanted)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    image_pull_secrets: settings.image_pull_config.as_ref().map(|_| {
                        vec![LocalObjectReference {
                            name: IMAGE_PULL_SECRET.into(),
                        }]
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A branch's Service: port 80 to the HTTP port of the pods of release `serving` (the
/// branch's wanted release once it is ready, the one before until then).
pub fn service(
    webspace: &Webspace,
    namespace: &str,
    wanted: &Deployment,
    serving: &str,
) -> Service {
    let mut selected = selector(wanted);
    selected.insert(RELEASE_LABEL.to_owned(), serving.to_owned());
    Service {
        metadata: branch_meta(webspace, namespace, wanted, None),
        spec: Some(ServiceSpec {
            selector: Some(selected),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                // Kubernetes defaults it, but server-side apply before 1.21 refuses a port
                // without it (the list's key is `port` + `protocol`; kubernetes#98576).
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A branch's Ingress for its hosts, with TLS through cert-manager when an issuer is set;
/// `None` when the branch has no host (a preview with previews off).
pub fn ingress(
    webspace: &Webspace,
    namespace: &str,
    wanted: &Deployment,
    settings: &Settings,
) -> Option<Ingress> {
    if wanted.hosts.is_empty() {
        return None;
    }
    let name = branch_object_name(wanted);
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: name.clone(),
            port: Some(ServiceBackendPort {
                name: Some("http".into()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let rules = wanted
        .hosts
        .iter()
        .map(|host| IngressRule {
            host: Some(host.clone()),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some("/".into()),
                    path_type: "Prefix".into(),
                    backend: backend.clone(),
                }],
            }),
        })
        .collect();
    let mut annotations = BTreeMap::new();
    if let Some(issuer) = &settings.cluster_issuer {
        annotations.insert("cert-manager.io/cluster-issuer".to_owned(), issuer.clone());
    }
    // ingress-nginx's name for `spec.maxRequestBody` (the same syntax).
    if let Some(size) = &webspace.spec.max_request_body {
        annotations.insert(
            "nginx.ingress.kubernetes.io/proxy-body-size".to_owned(),
            size.clone(),
        );
    }
    let annotations = (!annotations.is_empty()).then_some(annotations);
    let tls = settings.cluster_issuer.as_ref().map(|_| {
        vec![IngressTLS {
            hosts: Some(wanted.hosts.clone()),
            secret_name: Some(format!("{name}-tls")),
        }]
    });
    Some(Ingress {
        metadata: branch_meta(webspace, namespace, wanted, annotations),
        spec: Some(IngressSpec {
            ingress_class_name: settings.ingress_class.clone(),
            rules: Some(rules),
            tls,
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::desired;
    use slipway_api::resources::ReleaseStatus;
    use slipway_api::{CustomerSpec, Release, ReleaseSpec, WebspaceSpec};

    pub(crate) fn customer(name: &str) -> Customer {
        let mut customer = Customer::new(
            name,
            CustomerSpec {
                email: format!("{name}@example.com"),
                display_name: None,
                ssh_keys: vec![],
            },
        );
        customer.metadata.uid = Some(format!("uid-customer-{name}"));
        customer
    }

    pub(crate) fn webspace(name: &str, spec: serde_json::Value) -> Webspace {
        let spec: WebspaceSpec = serde_json::from_value(spec).expect("spec");
        let mut webspace = Webspace::new(name, spec);
        webspace.metadata.uid = Some(format!("uid-webspace-{name}"));
        webspace.metadata.generation = Some(1);
        webspace
    }

    pub(crate) fn release(name: &str, webspace: &str, branch: &str, phase: &str) -> Release {
        let mut release = Release::new(
            name,
            ReleaseSpec {
                webspace: webspace.into(),
                branch: branch.into(),
                commit: "0123456789abcdef".into(),
                tree: "fedcba9876543210".into(),
                image: format!(
                    "registry.slipway-system.svc:5000/{webspace}@sha256:{:0>64}",
                    name.len()
                ),
                pusher: "SHA256:key".into(),
                port: None,
                version: None,
                cause: None,
                config_keys: Vec::new(),
            },
        );
        release.metadata.creation_timestamp = Some(
            serde_json::from_value(serde_json::json!(format!(
                "2026-01-01T00:00:{:02}Z",
                name.bytes().last().unwrap_or(b'0') - b'0'
            )))
            .expect("time"),
        );
        release.status = Some(ReleaseStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        release
    }

    pub(crate) fn settings() -> Settings {
        Settings {
            registry_rewrite: Some((
                "registry.slipway-system.svc:5000".into(),
                "localhost:30500".into(),
            )),
            ingress_class: Some("nginx".into()),
            ..Settings::default()
        }
    }

    /// Every object for `webspaces` (with a promoted main release each, and a feature-x
    /// release for the first), as a YAML list, in apply order.
    fn objects(webspaces: &[(&str, &Webspace)], settings: &Settings) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (index, (customer_name, webspace)) in webspaces.iter().enumerate() {
            let customer = customer(customer_name);
            let namespace_name = namespace_name(customer_name);
            if seen.insert(namespace_name.clone()) {
                out.push(serde_json::to_value(namespace(&customer)).expect("json"));
                out.push(serde_json::to_value(quota(&namespace_name, settings)).expect("json"));
                out.push(
                    serde_json::to_value(network_policy(&namespace_name, settings)).expect("json"),
                );
                if let Some(config) = &settings.image_pull_config {
                    out.push(
                        serde_json::to_value(image_pull_secret(&namespace_name, config))
                            .expect("json"),
                    );
                }
            }
            let name = webspace.metadata.name.as_deref().unwrap_or_default();
            let mut releases = vec![release("r1", name, "main", "Live")];
            if index == 0 {
                releases.push(release("r2", name, "feature-x", "Promoted"));
            }
            for wanted in desired(
                std::slice::from_ref(*webspace),
                &releases,
                &[],
                &settings.hosts,
            ) {
                out.push(
                    serde_json::to_value(deployment(webspace, &namespace_name, &wanted, settings))
                        .expect("json"),
                );
                out.push(
                    serde_json::to_value(service(
                        webspace,
                        &namespace_name,
                        &wanted,
                        &wanted.release,
                    ))
                    .expect("json"),
                );
                if let Some(ingress) = ingress(webspace, &namespace_name, &wanted, settings) {
                    out.push(serde_json::to_value(ingress).expect("json"));
                }
            }
        }
        out
    }

    #[test]
    fn production_only() {
        let blog = webspace(
            "blog",
            serde_json::json!({"customer": "alice", "previews": false}),
        );
        insta::assert_yaml_snapshot!(objects(&[("alice", &blog)], &settings()));
    }

    #[test]
    fn previews_custom_domains_env_replicas_and_tls() {
        let blog = webspace(
            "blog",
            serde_json::json!({
                "customer": "alice",
                "replicas": 3,
                "port": 3000,
                "domains": ["www.example.org"],
                "env": {"DATABASE_URL": "postgres://db/blog", "MODE": "production"},
            }),
        );
        let settings = Settings {
            cluster_issuer: Some("letsencrypt".into()),
            // The nodes pull with the registry's read-only credentials: a Secret in the
            // namespace, named by the Deployments.
            image_pull_config: Some(
                r#"{"auths":{"localhost:30500":{"auth":"cHVsbGVyOnNlY3JldA=="}}}"#.into(),
            ),
            ..settings()
        };
        insta::assert_yaml_snapshot!(objects(&[("alice", &blog)], &settings));
    }

    #[test]
    fn two_customers_get_two_namespaces() {
        let blog = webspace("blog", serde_json::json!({"customer": "alice"}));
        let shop = webspace("shop", serde_json::json!({"customer": "bob"}));
        let objects = objects(&[("alice", &blog), ("bob", &shop)], &settings());
        let namespaces: Vec<_> = objects
            .iter()
            .filter(|o| o["kind"] == "Namespace")
            .map(|o| o["metadata"]["name"].clone())
            .collect();
        assert_eq!(namespaces, ["slipway-alice", "slipway-bob"]);
        insta::assert_yaml_snapshot!(objects);
    }

    #[test]
    fn long_names_stay_valid_and_distinct() {
        let long = "a".repeat(63);
        let one = object_name(&format!("{long}-main"));
        let two = object_name(&format!("{long}-dev"));
        assert!(one.len() <= 63 && two.len() <= 63);
        assert_ne!(one, two);
        assert!(object_name("1blog-main").starts_with("s-blog-main-"));
        assert_eq!(object_name("blog-main"), "blog-main");
    }

    #[test]
    fn the_quota_admits_exactly_its_pods_at_their_limits() {
        assert_eq!(times("500m", 16).as_deref(), Some("8000m"));
        assert_eq!(times("512Mi", 16).as_deref(), Some("8192Mi"));
        assert_eq!(times("1", 3).as_deref(), Some("3"));
        assert_eq!(times("1.5", 2), None);
        let settings = Settings::default();
        let quota = quota("ns", &settings);
        let hard = quota.spec.and_then(|s| s.hard).expect("hard");
        let get = |key: &str| hard.get(key).map(|q| q.0.clone()).expect(key);
        assert_eq!(get("pods"), "16");
        assert_eq!(get("limits.cpu"), "8000m", "16 pods × 500m");
        assert_eq!(get("limits.memory"), "8192Mi");
        assert_eq!(get("requests.cpu"), "800m");
        assert_eq!(get("requests.memory"), "1024Mi");
        // Local disk too: one app cannot fill the node (16 pods × 1Gi at most).
        assert_eq!(get("limits.ephemeral-storage"), "16Gi");
        assert_eq!(get("requests.ephemeral-storage"), "1024Mi");
    }

    #[test]
    fn names_of_two_webspaces_never_collide_in_one_namespace() {
        let named = |webspace: &str, label: &str| {
            branch_object_name(&Deployment {
                webspace: webspace.into(),
                branch: label.into(),
                label: label.into(),
                release: "r".into(),
                image: "i".into(),
                port: 8080,
                replicas: 1,
                env: Default::default(),
                hosts: vec![],
                max_body: None,
                config_keys: Vec::new(),
            })
        };
        assert_ne!(named("shop", "api-main"), named("shop-api", "main"));
        assert!(named("shop", "api-main").starts_with("shop-api-main-"));
        assert!(named(&"w".repeat(63), &"b".repeat(63)).len() <= 63);
    }

    #[test]
    fn images_are_pulled_from_the_nodes_registry() {
        let settings = settings();
        assert_eq!(
            settings.node_image("registry.slipway-system.svc:5000/blog@sha256:ab"),
            "localhost:30500/blog@sha256:ab"
        );
        assert_eq!(settings.node_image("other/blog:1"), "other/blog:1");
    }
}
