//! Reconciles against a scripted API server: the calls each situation must make, in order.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::Client;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use slipway_api::{Release, Webspace};

use super::objects::tests::{customer, release, settings, webspace};
use super::objects::{self};
use super::reconcile::{Context, error_policy, reconcile};
use super::scripted::{Answer, Server};
use crate::desired;
use crate::metrics::Metrics;

const CUSTOMER: &str = "/apis/slipway.dev/v1alpha1/customers/alice";
const NAMESPACE: &str = "/api/v1/namespaces/slipway-alice";
const QUOTA: &str = "/api/v1/namespaces/slipway-alice/resourcequotas/slipway";
const POLICY: &str =
    "/apis/networking.k8s.io/v1/namespaces/slipway-alice/networkpolicies/slipway-isolation";
const LOGS_BINDING: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/slipway-alice/rolebindings/slipway-tenant-logs";
const RELEASES: &str = "/apis/slipway.dev/v1alpha1/releases";
const RUNTIMES: &str = "/apis/slipway.dev/v1alpha1/runtimes";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/slipway-alice/deployments";
const ALL_DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const PODS: &str = "/api/v1/namespaces/slipway-alice/pods";
const SERVICES: &str = "/api/v1/namespaces/slipway-alice/services";
const EVENTS: &str = "/api/v1/namespaces/default/events";
const STATUS: &str = "/apis/slipway.dev/v1alpha1/webspaces/blog/status";

/// The object name of blog's branch `label` (its Service and Ingress).
fn named(label: &str) -> String {
    objects::branch_object_name(&branch(label))
}

/// The Service of blog's branch `label` as the cluster would report it, selecting `release`.
fn service_of(label: &str, release: &str) -> Value {
    let wanted = crate::Deployment {
        label: label.into(),
        release: release.into(),
        ..branch(label)
    };
    json_of(&objects::service(
        &blog(),
        "slipway-alice",
        &wanted,
        release,
    ))
}

fn branch(label: &str) -> crate::Deployment {
    crate::Deployment {
        webspace: "blog".into(),
        branch: label.into(),
        label: label.into(),
        release: String::new(),
        image: String::new(),
        port: 8080,
        replicas: 1,
        env: Default::default(),
        hosts: vec![],
        max_body: None,
        config_keys: Vec::new(),
    }
}

fn deployment_path(name: &str) -> String {
    format!("{DEPLOYMENTS}/{name}")
}
fn service_path(name: &str) -> String {
    format!("/api/v1/namespaces/slipway-alice/services/{name}")
}
fn ingress_path(name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/slipway-alice/ingresses/{name}")
}
fn release_status(name: &str) -> String {
    format!("{RELEASES}/{name}/status")
}

fn list(kind: &str, items: Vec<Value>) -> Answer {
    Answer::Json(json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items}))
}

/// Release `name` of blog's `main`, staged just now by a push that waits for its verdict.
fn staged_now(name: &str) -> Release {
    let mut staged = release(name, "blog", "main", "Staged");
    staged.metadata.annotations = Some(
        [(
            slipway_api::resources::PUSHED_AT_ANNOTATION.to_owned(),
            k8s_openapi::jiff::Timestamp::now().to_string(),
        )]
        .into(),
    );
    staged
}

fn blog() -> Webspace {
    webspace("blog", json!({"customer": "alice"}))
}

/// The Deployment as the cluster would report it, running `release` of `branch`.
fn running(releases: &[Release], release: &str, branch: &str, status: Value) -> Value {
    let mut releases = releases.to_vec();
    for r in &mut releases {
        if r.metadata.name.as_deref() == Some(release) {
            r.status.get_or_insert_with(Default::default).phase = Some("Live".into());
        } else if r.spec.branch == branch {
            r.status.get_or_insert_with(Default::default).phase = Some("Failed".into());
        }
    }
    let wanted = desired(&[blog()], &releases, &[], &settings().hosts)
        .into_iter()
        .find(|d| d.branch == branch)
        .expect("wanted");
    let mut object = serde_json::to_value(objects::deployment(
        &blog(),
        "slipway-alice",
        &wanted,
        &settings(),
    ))
    .expect("json");
    object["metadata"]["generation"] = json!(2);
    object["status"] = status;
    object
}

fn complete() -> Value {
    json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
        "availableReplicas": 1})
}

fn json_of<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("json")
}

fn context(client: Client) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        settings(),
        Arc::new(Metrics::default()),
    ))
}

/// The calls every reconcile of blog starts with, up to listing its Deployments and Services.
fn preamble(
    releases: &[Release],
    deployments: Vec<Value>,
    services: Vec<Value>,
) -> Vec<(Method, String, Answer)> {
    vec![
        (
            Method::GET,
            CUSTOMER.into(),
            Answer::Json(json_of(&customer("alice"))),
        ),
        (Method::PATCH, NAMESPACE.into(), Answer::Echo),
        (Method::PATCH, QUOTA.into(), Answer::Echo),
        (Method::PATCH, POLICY.into(), Answer::Echo),
        (Method::PATCH, LOGS_BINDING.into(), Answer::Echo),
        (
            Method::GET,
            RELEASES.into(),
            list("ReleaseList", releases.iter().map(json_of).collect()),
        ),
        (Method::GET, RUNTIMES.into(), list("RuntimeList", vec![])),
        (
            Method::GET,
            ALL_DEPLOYMENTS.into(),
            list("DeploymentList", deployments),
        ),
        (Method::GET, SERVICES.into(), list("ServiceList", services)),
    ]
}

/// The applies of branch `label` running `release`: its Deployment, Service and Ingress.
fn applies(label: &str, release: &str) -> Vec<(Method, String, Answer)> {
    let name = &named(label);
    vec![
        (Method::PATCH, deployment_path(release), Answer::Echo),
        (Method::PATCH, service_path(name), Answer::Echo),
        (Method::PATCH, ingress_path(name), Answer::Echo),
    ]
}

async fn play(
    webspace: Webspace,
    script: Vec<(Method, String, Answer)>,
) -> (Result<Action, super::reconcile::Error>, Vec<Value>) {
    let script: Vec<(Method, &str, Answer)> = script
        .iter()
        .map(|(m, p, a)| (m.clone(), p.as_str(), a.clone()))
        .collect();
    let (client, server) = Server::start(script);
    let result = reconcile(Arc::new(webspace), context(client)).await;
    (result, server.finish().await)
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .expect("condition")
}

#[tokio::test]
async fn first_deploy_applies_namespace_quota_policy_and_the_branch_objects() {
    let releases = [release("r1", "blog", "main", "Promoted")];
    let mut script = preamble(&releases, vec![], vec![]);
    script.extend(applies("main", "r1"));
    script.push((Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))));
    let (result, bodies) = play(blog(), script).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(5))
    );
    let deployment = &bodies[9];
    assert_eq!(
        deployment["metadata"]["name"], "r1",
        "one Deployment per release"
    );
    assert_eq!(
        deployment["metadata"]["annotations"]["slipway.dev/release"],
        "r1"
    );
    assert!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("localhost:30500/blog@sha256:")),
        "{deployment}"
    );
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["uid"],
        "uid-webspace-blog"
    );
    assert_eq!(
        bodies[1]["metadata"]["ownerReferences"][0]["kind"],
        "Customer"
    );
    let service = &bodies[10];
    assert_eq!(service["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(
        service["spec"]["selector"]["slipway.dev/release"], "r1",
        "nothing served before: the Service selects the new release at once"
    );
    let status = &bodies[12];
    assert_eq!(status["kind"], "Webspace", "status by server-side apply");
    assert_eq!(status["status"]["phase"], "Progressing");
    assert_eq!(condition(status, "Built")["status"], "True");
    assert_eq!(condition(status, "Ready")["status"], "False");
}

#[tokio::test]
async fn a_staged_release_starts_one_pod_without_traffic() {
    let releases = [release("r1", "blog", "main", "Live"), staged_now("r3")];
    let live = running(&releases, "r1", "main", complete());
    let mut script = preamble(&releases, vec![live], vec![service_of("main", "r1")]);
    script.push((
        Method::PATCH,
        release_status("r3"),
        Answer::Json(json_of(&releases[1])),
    ));
    script.push((Method::PATCH, deployment_path("r3"), Answer::Echo));
    script.extend(applies("main", "r1"));
    script.push((Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))));
    let (result, bodies) = play(blog(), script).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(5)),
        "watched until its verdict"
    );
    assert_eq!(bodies[9]["status"]["phase"], "Staged");
    assert!(
        bodies[9]["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no answer yet on port 8080")),
        "what the push waits for: {}",
        bodies[9]
    );
    let staged = &bodies[10];
    assert_eq!(staged["spec"]["replicas"], 1);
    assert_eq!(
        staged["spec"]["selector"]["matchLabels"]["slipway.dev/release"],
        "r3"
    );
    assert_eq!(
        bodies[12]["spec"]["selector"]["slipway.dev/release"], "r1",
        "the Service stays on the live release"
    );
}

#[tokio::test]
async fn a_staged_release_whose_pod_is_ready_is_verified_and_kept() {
    let releases = [release("r1", "blog", "main", "Live"), staged_now("r3")];
    let live = running(&releases, "r1", "main", complete());
    let staged = running(&releases, "r3", "main", complete());
    let mut script = preamble(
        &releases,
        vec![live, staged],
        vec![service_of("main", "r1")],
    );
    script.push((
        Method::PATCH,
        release_status("r3"),
        Answer::Json(json_of(&releases[1])),
    ));
    script.extend(applies("main", "r1"));
    script.push((Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))));
    let (result, bodies) = play(blog(), script).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(
        bodies[9],
        json!({"status": {"phase": "Verified", "reason": "answers `/` (its readiness probe passed)"}})
    );
}

#[tokio::test]
async fn a_new_release_goes_live_when_its_rollout_completes() {
    let releases = [
        release("r1", "blog", "main", "Live"),
        release("r2", "blog", "main", "Promoted"),
    ];
    let old = running(&releases, "r1", "main", complete());
    let new = running(&releases, "r2", "main", complete());
    let mut script = preamble(&releases, vec![old, new], vec![service_of("main", "r1")]);
    script.extend(applies("main", "r2"));
    // The previous release's Deployment is kept for the drain grace, marked when it left.
    script.push((Method::PATCH, deployment_path("r1"), Answer::Echo));
    script.push((
        Method::PATCH,
        release_status("r1"),
        Answer::Json(json_of(&releases[0])),
    ));
    script.push((
        Method::PATCH,
        release_status("r2"),
        Answer::Json(json_of(&releases[1])),
    ));
    script.push((Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))));
    let (result, bodies) = play(blog(), script).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(super::reconcile::DRAIN_GRACE),
        "back when the previous release's grace is over"
    );
    assert_eq!(
        bodies[10]["spec"]["selector"]["slipway.dev/release"], "r2",
        "blue/green: the Service switches to the ready release"
    );
    assert!(
        bodies[12]["metadata"]["annotations"]["slipway.dev/unrouted-at"].is_string(),
        "{}",
        bodies[12]
    );
    assert_eq!(
        bodies[13],
        json!({"status": {"phase": "Superseded", "url": null, "reason": null}})
    );
    assert_eq!(
        bodies[14],
        json!({"status": {"phase": "Live", "url": "http://blog.apps.example.com", "reason": null}})
    );
    let status = &bodies[15];
    assert_eq!(status["status"]["phase"], "Ready");
    assert_eq!(status["status"]["url"], "http://blog.apps.example.com");
    assert_eq!(status["status"]["branches"][0]["readyReplicas"], 1);
    assert_eq!(condition(status, "Ready")["status"], "True");
}

#[tokio::test]
async fn a_promoted_release_takes_traffic_only_once_ready() {
    let releases = [
        release("r1", "blog", "main", "Live"),
        release("r2", "blog", "main", "Promoted"),
    ];
    let old = running(&releases, "r1", "main", complete());
    let new = running(
        &releases,
        "r2",
        "main",
        json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0,
            "availableReplicas": 0}),
    );
    let mut script = preamble(&releases, vec![old, new], vec![service_of("main", "r1")]);
    script.push((Method::GET, PODS.into(), list("PodList", vec![])));
    script.extend(applies("main", "r2"));
    script.push((Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))));
    let (result, bodies) = play(blog(), script).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        bodies[11]["spec"]["selector"]["slipway.dev/release"], "r1",
        "the Service stays on the serving release, whose Deployment stays"
    );
}

#[tokio::test]
async fn a_deleted_branch_loses_its_deployment_service_and_ingress() {
    let releases = [release("r1", "blog", "main", "Live")];
    let main = running(&releases, "r1", "main", complete());
    let with_feature = [
        release("r1", "blog", "main", "Live"),
        release("r2", "blog", "feature-x", "Live"),
    ];
    let feature = running(&with_feature, "r2", "feature-x", complete());
    let mut script = preamble(
        &releases,
        vec![main, feature],
        vec![service_of("main", "r1"), service_of("feature-x", "r2")],
    );
    script.extend(applies("main", "r1"));
    script.extend([
        (Method::DELETE, deployment_path("r2"), Answer::Status(200)),
        (
            Method::DELETE,
            ingress_path(&named("feature-x")),
            Answer::NotFound,
        ),
        (
            Method::DELETE,
            service_path(&named("feature-x")),
            Answer::Status(200),
        ),
    ]);
    script.push((Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))));
    let (result, _) = play(blog(), script).await;
    result.expect("reconciled");
}

#[tokio::test]
async fn a_rollout_past_its_deadline_fails_its_release_and_the_previous_one_keeps_serving() {
    let releases = [
        release("r1", "blog", "main", "Live"),
        release("r2", "blog", "main", "Promoted"),
    ];
    let old = running(&releases, "r1", "main", complete());
    let stuck = running(
        &releases,
        "r2",
        "main",
        json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0,
            "availableReplicas": 0, "conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"r2-7d\" has timed out progressing."}]}),
    );
    let mut script = preamble(&releases, vec![old, stuck], vec![service_of("main", "r1")]);
    // A rollout under way: its pods are read, to fail it early if they cannot start.
    script.push((Method::GET, PODS.into(), list("PodList", vec![])));
    script.push((
        Method::PATCH,
        release_status("r2"),
        Answer::Json(json_of(&releases[1])),
    ));
    // Warning Events on the Webspace and on the Release.
    script.push((Method::POST, EVENTS.into(), Answer::Echo));
    script.push((Method::POST, EVENTS.into(), Answer::Echo));
    script.extend(applies("main", "r1"));
    script.push((Method::DELETE, deployment_path("r2"), Answer::Status(200)));
    script.push((Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))));
    let (result, bodies) = play(blog(), script).await;
    result.expect("reconciled");
    assert_eq!(bodies[10]["status"]["phase"], "Failed");
    assert!(
        bodies[10]["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("progress deadline")),
        "{}",
        bodies[10]
    );
    assert_eq!(bodies[11]["reason"], "ReleaseFailed");
    assert_eq!(bodies[11]["type"], "Warning");
    assert_eq!(bodies[11]["involvedObject"]["kind"], "Webspace");
    assert!(
        bodies[11].get("eventTime").is_none(),
        "1.20 refuses new-style events about cluster-scoped objects outside kube-system"
    );
    let restored = &bodies[13];
    assert_eq!(
        restored["metadata"]["annotations"]["slipway.dev/release"],
        "r1"
    );
    let image = restored["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(
        image,
        json!(settings().node_image(&releases[0].spec.image)),
        "the previous release is wanted again"
    );
    assert_eq!(bodies[14]["spec"]["selector"]["slipway.dev/release"], "r1");
    let released = condition(&bodies[17], "Released");
    assert_eq!(released["reason"], "RolloutFailed");
}

#[tokio::test]
async fn a_webspace_being_deleted_is_left_to_owner_references() {
    let mut doomed = blog();
    doomed.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).expect("time"));
    let (result, bodies) = play(doomed, vec![]).await;
    assert_eq!(result.expect("reconciled"), Action::await_change());
    assert!(bodies.is_empty());
}

#[tokio::test]
async fn a_missing_customer_is_reported_in_the_status() {
    let releases = [release("r1", "blog", "main", "Live")];
    let script = vec![
        (Method::GET, CUSTOMER.to_owned(), Answer::NotFound),
        (
            Method::GET,
            RELEASES.into(),
            list("ReleaseList", releases.iter().map(json_of).collect()),
        ),
        (Method::POST, EVENTS.into(), Answer::Echo),
        (Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))),
    ];
    let (result, bodies) = play(blog(), script).await;
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(60))
    );
    assert_eq!(bodies[2]["reason"], "CustomerMissing");
    assert_eq!(
        condition(&bodies[3], "Built")["status"],
        "True",
        "what was pushed still counts"
    );
    let ready = condition(&bodies[3], "Ready");
    assert_eq!(ready["reason"], "ReconcileError");
    assert_eq!(ready["message"], "customer `alice` does not exist");
}

#[tokio::test]
async fn an_api_error_is_reported_requeues_with_backoff_and_other_branches_and_webspaces_go_on() {
    let releases = [
        release("r1", "blog", "main", "Promoted"),
        release("r2", "blog", "feature-x", "Promoted"),
    ];
    let mut script = preamble(&releases, vec![], vec![]);
    // feature-x's Deployment is refused; main's objects are applied all the same.
    script.push((Method::PATCH, deployment_path("r2"), Answer::Status(500)));
    script.extend(applies("main", "r1"));
    script.push((Method::POST, EVENTS.into(), Answer::Echo));
    script.push((Method::PATCH, STATUS.into(), Answer::Json(json_of(&blog()))));
    let script: Vec<(Method, &str, Answer)> = script
        .iter()
        .map(|(m, p, a)| (m.clone(), p.as_str(), a.clone()))
        .collect();
    let (client, server) = Server::start(script);
    let context = context(client);
    let blog = Arc::new(blog());
    let error = reconcile(blog.clone(), context.clone())
        .await
        .expect_err("the apply failed");
    assert_eq!(error.to_string(), "cannot apply Deployment r2");
    let bodies = server.finish().await;
    assert_eq!(bodies[13]["reason"], "ReconcileError");
    let ready = condition(&bodies[14], "Ready");
    assert_eq!(ready["reason"], "ReconcileError");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("Deployment r2")),
        "{ready}"
    );
    assert_eq!(
        error_policy(blog.clone(), &error, context.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(blog.clone(), &error, context.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    // Another webspace keeps its own count.
    let shop = Arc::new(webspace("shop", json!({"customer": "alice"})));
    assert_eq!(
        error_policy(shop, &error, context.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert!(context.metrics.render().contains("failures_total 1\n"));
}
