//! The single-host HTTP router: one listener, the backend chosen by the `Host` header.
//!
//! # Guarantees
//! - Route changes are atomic: a request sees the whole old table or the whole new one.
//! - Bodies stream both ways (no whole-body buffering); connections to clients and to backends
//!   are kept alive; method, path, query and end-to-end headers are kept; hop-by-hop headers
//!   are dropped and `X-Forwarded-For`, `-Proto` and `-Host` are set.
//! - An unknown host gets 404 with a short page; a backend that does not answer gets 502.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Host name (lowercase, without port) → backend address.
pub type Routes = HashMap<String, SocketAddr>;

/// The route table, shared between the router and whoever decides the routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    current: Arc<RwLock<Arc<Routes>>>,
}

impl RouteTable {
    /// Replaces every route at once.
    pub fn replace(&self, routes: Routes) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }

    /// The table as it is now; later changes do not affect it.
    pub fn snapshot(&self) -> Arc<Routes> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type Body = BoxBody<Bytes, hyper::Error>;

fn page(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The `Host` of a request, lowercase and without port.
fn host_of(request: &Request<Incoming>) -> Option<String> {
    let raw = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())?;
    let host = raw.rsplit_once(':').map_or(raw, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            raw
        }
    });
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

async fn proxy(
    client: Client<HttpConnector, Incoming>,
    routes: Arc<Routes>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(host) = host_of(&request) else {
        return Ok(page(StatusCode::BAD_REQUEST, "400: no Host header\n"));
    };
    let Some(backend) = routes.get(&host).copied() else {
        return Ok(page(
            StatusCode::NOT_FOUND,
            "404: no app is deployed on this host\n",
        ));
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = format!("http://{backend}{path}").parse::<Uri>() else {
        return Ok(page(StatusCode::BAD_REQUEST, "400: bad request target\n"));
    };
    *request.uri_mut() = uri;
    let original_host = request.headers().get(HOST).cloned();
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    match client.request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(error) => {
            tracing::info!(%host, %backend, %error, "backend did not answer");
            Ok(page(
                StatusCode::BAD_GATEWAY,
                "502: the app is not answering\n",
            ))
        }
    }
}

/// Serves HTTP on `listener`, routing by `table`, until `shutdown` is cancelled; then stops
/// accepting and lets open connections finish their current request.
pub async fn run(listener: TcpListener, table: RouteTable, shutdown: CancellationToken) {
    let mut connector = HttpConnector::new();
    // Small responses must not wait for delayed ACKs on the backend side either.
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(connector);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "router accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let table = table.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service =
                service_fn(move |request| proxy(client.clone(), table.snapshot(), peer, request));
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "router connection ended");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
