//! A scripted Kubernetes API server for tests (the kube-rs `tower-test` pattern): the expected
//! requests in order, each with its answer. A request out of order, or one too many, fails.

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The request's own body (what an apply or create returns).
    Echo,
    /// This object.
    Json(serde_json::Value),
    /// 404 NotFound.
    NotFound,
    /// A failure Status with this code.
    Status(u16),
}

/// The scripted server; [`Server::finish`] checks the script was played to its end.
#[derive(Debug)]
pub struct Server {
    task: tokio::task::JoinHandle<(Handle, Vec<serde_json::Value>)>,
}

fn status(code: u16, reason: &str) -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "code": code, "reason": reason, "message": reason})
}

impl Server {
    /// A client whose requests must be `script`, in order.
    pub fn start(script: Vec<(Method, &str, Answer)>) -> (Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let script: Vec<(Method, String, Answer)> = script
            .into_iter()
            .map(|(m, p, a)| (m, p.to_owned(), a))
            .collect();
        let task = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for (step, (method, path, answer)) in script.into_iter().enumerate() {
                let (request, send) = handle
                    .next_request()
                    .await
                    .unwrap_or_else(|| panic!("step {step}: no request, expected {method} {path}"));
                let seen = format!("{} {}", request.method(), request.uri().path());
                assert_eq!(seen, format!("{method} {path}"), "step {step}");
                if request
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v == "application/apply-patch+yaml")
                {
                    let query = request.uri().query().unwrap_or_default();
                    assert!(
                        query.contains("fieldManager=slipway-operator")
                            && query.contains("force=true"),
                        "step {step}: server-side apply as slipway-operator, got {query}"
                    );
                }
                let bytes = request.into_body().collect_bytes().await.expect("body");
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let (code, answer) = match answer {
                    Answer::Echo => (200, body.clone()),
                    Answer::Json(value) => (200, value),
                    Answer::NotFound => (404, status(404, "NotFound")),
                    Answer::Status(code) => (code, status(code, "Scripted")),
                };
                bodies.push(body);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                        .expect("response"),
                );
            }
            (handle, bodies)
        });
        (Client::new(service, "default"), Self { task })
    }

    /// Waits for the script's end and checks nothing more was asked; returns the request
    /// bodies in order.
    pub async fn finish(self) -> Vec<serde_json::Value> {
        let (mut handle, bodies) = self.task.await.expect("script played");
        let extra =
            tokio::time::timeout(std::time::Duration::from_millis(50), handle.next_request()).await;
        if let Ok(Some((request, _))) = extra {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
        bodies
    }
}
