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
    /// Whether `/readyz` answers 200.
    pub ready: Arc<AtomicBool>,
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
        "/readyz" if probe.ready.load(Ordering::Relaxed) => {
            answer(StatusCode::OK, TEXT, "ready\n".into())
        }
        "/readyz" => answer(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into()),
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
}
