//! Every `SLIPWAY_*` environment variable, in one place.
//!
//! Two kinds live here. Settings read by `slipway` commands through clap (`--data` or
//! `SLIPWAY_DATA`, ...). And the contract between the git server and the hooks: git runs
//! `slipway hook pre-receive` as a separate process, so everything the hook knows about the push
//! arrives through these variables, set by the git server from verified facts only (never from
//! anything the SSH client sent).

/// Data directory: resources, repositories, host key, logs. Default `./slipway-data`.
pub const DATA: &str = "SLIPWAY_DATA";
/// Address the SSH git server listens on, e.g. `127.0.0.1:2222`.
pub const SSH_LISTEN: &str = "SLIPWAY_SSH_LISTEN";
/// Address the HTTP router of `slipway up` listens on, e.g. `127.0.0.1:8080`.
pub const HTTP_LISTEN: &str = "SLIPWAY_HTTP_LISTEN";
/// Threads of the HTTP router of `slipway up` (default: half the CPUs, at least one).
pub const ROUTER_THREADS: &str = "SLIPWAY_ROUTER_THREADS";
/// Domain of app hosts (`WEBSPACE.DOMAIN`), default `localhost`.
pub const DOMAIN: &str = "SLIPWAY_DOMAIN";
/// Container registry images are pushed to (`HOST:PORT`); optional on a single host.
pub const REGISTRY: &str = "SLIPWAY_REGISTRY";
/// Log filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info,slipway_git_server=debug`.
pub const LOG: &str = "SLIPWAY_LOG";
/// SSH connections the git server serves at once, from all addresses.
pub const SSH_MAX_CONNECTIONS: &str = "SLIPWAY_SSH_MAX_CONNECTIONS";
/// SSH connections the git server serves at once from one source address.
pub const SSH_MAX_CONNECTIONS_PER_ADDRESS: &str = "SLIPWAY_SSH_MAX_CONNECTIONS_PER_ADDRESS";
/// SSH connections not yet authenticated that one source address may hold.
pub const SSH_MAX_UNAUTHENTICATED_PER_ADDRESS: &str = "SLIPWAY_SSH_MAX_UNAUTHENTICATED_PER_ADDRESS";

/// Hook contract: the webspace being pushed to (a validated DNS label).
pub const WEBSPACE: &str = "SLIPWAY_WEBSPACE";
/// Hook contract: the customer that owns the webspace and whose key signed in.
pub const CUSTOMER: &str = "SLIPWAY_CUSTOMER";
/// Hook contract: SHA256 fingerprint of the key whose signature was verified (`SHA256:...`).
pub const PUSHER: &str = "SLIPWAY_PUSHER";
/// Hook contract: absolute path of the `slipway` executable the repo's hook scripts exec.
pub const EXE: &str = "SLIPWAY_EXE";

/// Hook contract: `0` when the server was started with `--no-build` (a plain git host: pushes
/// are checked and accepted, nothing is built). Anything else, or unset, builds.
pub const BUILD: &str = "SLIPWAY_BUILD";
/// Hook contract: `1` when an operator on this host rolls releases out (`slipway up`): the
/// pre-receive hook then waits for the operator's verdict on each staged release, and the
/// post-receive hook waits until it serves.
pub const ROLLOUT: &str = "SLIPWAY_ROLLOUT";
/// Hook contract: seconds the operator gives a new release to answer (`slipway up
/// --health-timeout`); pre-receive waits about that long for its verdict.
pub const HEALTH_TIMEOUT: &str = "SLIPWAY_HEALTH_TIMEOUT";
/// Hook setting: builds running at once on this host, across pushes (default 2).
pub const MAX_BUILDS: &str = "SLIPWAY_MAX_BUILDS";
/// Hook setting: seconds a build may take (default 900).
pub const BUILD_TIMEOUT: &str = "SLIPWAY_BUILD_TIMEOUT";

/// Set by git for hooks: the repository.
pub const GIT_DIR: &str = "GIT_DIR";
/// Set by git for pre-receive: where the pushed objects wait until the hook accepts.
pub const GIT_QUARANTINE_PATH: &str = "GIT_QUARANTINE_PATH";

/// The only variable a client may set (through an SSH `env` request): git's wire protocol
/// version. Ignoring it silently downgrades clients to protocol v0.
pub const GIT_PROTOCOL: &str = "GIT_PROTOCOL";

/// The engine's builder for pushes: `buildkit` (default) or `classic` (slower; the only one
/// that applies memory and CPU limits to build steps).
pub const BUILDER: &str = "SLIPWAY_BUILDER";
/// Where resources live: `directory` (the data directory) or `kube` (the Kubernetes API).
pub const STORE: &str = "SLIPWAY_STORE";
/// Address of the HTTP server for `/healthz`, `/readyz` and `/metrics`.
pub const PROBE_LISTEN: &str = "SLIPWAY_PROBE_LISTEN";
/// Ingress class of the generated Ingresses.
pub const INGRESS_CLASS: &str = "SLIPWAY_INGRESS_CLASS";
/// cert-manager ClusterIssuer for the apps' TLS certificates; empty for none.
pub const CLUSTER_ISSUER: &str = "SLIPWAY_CLUSTER_ISSUER";
/// The registry as the cluster's nodes pull from it (`HOST:PORT`).
pub const IMAGE_REGISTRY: &str = "SLIPWAY_IMAGE_REGISTRY";
/// Operator: namespace of the ingress controller, let through tenants' NetworkPolicies
/// (`ingress-nginx`; k3s runs Traefik in `kube-system`).
pub const INGRESS_NAMESPACE: &str = "SLIPWAY_INGRESS_NAMESPACE";

/// Variables of [`PASSED_FROM_SERVER`] that name files: a relative one is made absolute
/// against the server's directory by [`anchored`], since hooks run in the repository.
pub const PATHS_FROM_SERVER: &[&str] = &["KUBECONFIG", "DOCKER_CONFIG", "DOCKER_CERT_PATH"];

/// `value` of the variable `name` as a hook needs it: for [`PATHS_FROM_SERVER`], each relative
/// path (`KUBECONFIG` is a `:`-separated list) joined to `cwd`; anything else unchanged.
/// (`KUBECONFIG=git.kubeconfig slipway git-server` left every hook without a cluster.)
pub fn anchored(
    name: &std::ffi::OsStr,
    value: &std::ffi::OsStr,
    cwd: &std::path::Path,
) -> std::ffi::OsString {
    if !PATHS_FROM_SERVER.iter().any(|p| name == *p) {
        return value.to_owned();
    }
    let Some(text) = value.to_str() else {
        return value.to_owned();
    };
    let parts: Vec<String> = text
        .split(':')
        .map(|part| {
            let path = std::path::Path::new(part);
            if part.is_empty() || path.is_absolute() {
                part.to_owned()
            } else {
                cwd.join(path).display().to_string()
            }
        })
        .collect();
    parts.join(":").into()
}

/// Variables the server passes from its own environment to git and its hooks, and nothing
/// else: git needs a `PATH` to find its helpers and a `HOME` to not complain; locale and `TZ`
/// only shape messages; the `DOCKER_*` ones tell the hook where the engine and its registry
/// credentials are; the `KUBERNETES_*` ones and `KUBECONFIG` let a hook on a cluster reach its
/// API; the hook settings above let an operator tune builds.
pub const PASSED_FROM_SERVER: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBECONFIG",
    MAX_BUILDS,
    BUILD_TIMEOUT,
    BUILDER,
];

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::path::Path;

    use super::anchored;

    #[test]
    fn relative_paths_for_hooks_are_anchored_to_the_server_directory() {
        let cwd = Path::new("/srv/slipway");
        let at = |name: &str, value: &str| anchored(OsStr::new(name), OsStr::new(value), cwd);
        assert_eq!(
            at("KUBECONFIG", "git.kubeconfig"),
            "/srv/slipway/git.kubeconfig"
        );
        assert_eq!(
            at("KUBECONFIG", "/etc/k:rel/k"),
            "/etc/k:/srv/slipway/rel/k"
        );
        assert_eq!(at("DOCKER_CONFIG", "/root/.docker"), "/root/.docker");
        assert_eq!(at("PATH", "bin"), "bin", "only file variables change");
    }
}
