//! The single-host HTTP router: one listener, the backend chosen by the `Host` header.
//!
//! # Guarantees
//! - Route changes are atomic: a request sees the whole old table or the whole new one.
//! - Bodies stream both ways (no whole-body buffering); connections to clients and to backends
//!   are kept alive; method, path, query and end-to-end headers are kept; hop-by-hop headers
//!   are dropped and `X-Forwarded-For`, `-Proto` and `-Host` are set.
//! - An unknown host gets 404 with a short page; a backend that does not answer gets 502.
//!
//! Each client connection keeps its own connection to the backend it last used and reuses it
//! for its next request to that backend: no shared pool to lock or hand connections through.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as upstream;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
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

/// A client connection's connection to a backend, kept between its requests.
type Affinity = Arc<std::sync::Mutex<Option<(SocketAddr, upstream::SendRequest<Incoming>)>>>;

/// A ready connection to `backend`: the client connection's own when it still works, else a
/// new one (driven by a task of its own).
async fn connect(
    affinity: &Affinity,
    backend: SocketAddr,
) -> std::io::Result<upstream::SendRequest<Incoming>> {
    let kept = affinity.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((address, mut sender)) = kept
        && address == backend
        && sender.ready().await.is_ok()
    {
        return Ok(sender);
    }
    let stream = tokio::net::TcpStream::connect(backend).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = upstream::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "backend connection ended");
        }
    });
    sender.ready().await.map_err(std::io::Error::other)?;
    Ok(sender)
}

async fn proxy(
    affinity: Affinity,
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
    // Origin form (`/path?query`): the backend gets the client's Host header.
    let target = request.uri().path_and_query().cloned();
    *request.uri_mut() = target.map_or_else(|| Uri::from_static("/"), Uri::from);
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
    let sent = match connect(&affinity, backend).await {
        Ok(mut sender) => sender
            .send_request(request)
            .await
            .map(|response| (sender, response))
            .map_err(std::io::Error::other),
        Err(error) => Err(error),
    };
    match sent {
        Ok((sender, response)) => {
            *affinity.lock().unwrap_or_else(|p| p.into_inner()) = Some((backend, sender));
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
        let affinity = Affinity::default();
        let table = table.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service =
                service_fn(move |request| proxy(affinity.clone(), table.snapshot(), peer, request));
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
