//! `/healthz`, `/readyz` and `/metrics` over HTTP, for Kubernetes probes and Prometheus.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the probe endpoints report.
#[derive(Clone)]
pub struct Probe {
    /// Whether `/readyz` may answer 200.
    pub ready: Arc<AtomicBool>,
    /// Watches that must be current for `/readyz` to answer 200: while one is down, what the
    /// process knows of the cluster (keys, webspaces) may be stale.
    pub watches: Option<slipway_store::WatchHealth>,
    /// The `/metrics` text.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn route(probe: &Probe, path: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" => answer(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if !probe.ready.load(Ordering::Relaxed) => {
            answer(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into())
        }
        "/readyz" => match probe.watches.as_ref().map_or(Ok(()), |w| w.check()) {
            Ok(()) => answer(StatusCode::OK, TEXT, "ready\n".into()),
            Err(stale) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {stale}\n"),
            ),
        },
        "/metrics" => answer(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            (probe.metrics)(),
        ),
        _ => answer(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Serves the probe endpoints on `listener` until `stop`.
pub async fn serve(listener: TcpListener, probe: Probe, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "probe listener");
                    continue;
                }
            },
        };
        let probe = probe.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = route(&probe, request.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_flag_and_metrics_render() {
        let probe = Probe {
            ready: Arc::new(AtomicBool::new(false)),
            watches: None,
            metrics: Arc::new(|| "up 1\n".to_owned()),
        };
        assert_eq!(route(&probe, "/healthz").status(), StatusCode::OK);
        assert_eq!(
            route(&probe, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        probe.ready.store(true, Ordering::Relaxed);
        assert_eq!(route(&probe, "/readyz").status(), StatusCode::OK);
        assert_eq!(route(&probe, "/metrics").status(), StatusCode::OK);
        assert_eq!(route(&probe, "/nope").status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn readiness_fails_with_a_reason_while_a_watch_is_stale() {
        // Never contacted: its watches have not started, so they are not current.
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("a URL"),
        ))
        .expect("a client");
        let store = slipway_store::KubeStore::new(client, slipway_store::GIT_SERVER_FIELD_MANAGER);
        let probe = Probe {
            ready: Arc::new(AtomicBool::new(true)),
            watches: Some(store.watch_health()),
            metrics: Arc::new(String::new),
        };
        let response = route(&probe, "/readyz");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = String::from_utf8(
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("a body")
                .to_bytes()
                .to_vec(),
        )
        .expect("text");
        assert!(
            body.starts_with("not ready: watches not current: customers"),
            "{body}"
        );
        assert_eq!(body.lines().count(), 1, "{body}");
        let directory = Probe {
            watches: Some(slipway_store::WatchHealth::default()),
            ..probe
        };
        assert_eq!(route(&directory, "/readyz").status(), StatusCode::OK);
    }
}
