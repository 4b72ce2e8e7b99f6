//! The router's proxy service: one per client connection, on hyper's HTTP/1 server and client.
//!
//! hyper parses every byte from the client and from the backend; the router never forwards a
//! head or a body's framing as it came. Each request is rebuilt for the backend:
//! - origin-form target (`/` when an absolute-form target has no path), HTTP/1.1;
//! - hop-by-hop headers dropped: the standard ones, the framing headers (`Content-Length`,
//!   `Transfer-Encoding`), `Expect`, and whatever `Connection` names; `Host` is set from the
//!   routed host afterwards, so `Connection` cannot remove it;
//! - the client's `Forwarded`, `X-Real-IP` and `X-Forwarded-*` dropped, then `X-Forwarded-For`,
//!   `-Proto` and `-Host` set by the router;
//! - the body re-framed by hyper from what it decoded: exactly one `Content-Length` or
//!   `Transfer-Encoding: chunked`, no chunk extensions, no trailers.
//!
//! Responses get the same treatment the other way. A request is retried on a new backend
//! connection only when hyper hands it back unsent, so nothing runs twice.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::io::Phase;
use super::{CachedRoutes, Limits, Target};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), the legacy proxy
/// headers, the framing headers (hyper derives the framing from the body) and `Expect` (the
/// router answers `100 Continue` itself).
const HOP_BY_HOP: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

/// Headers a client could use to pose as someone else to the app; the router sets its own.
const CLIENT_FORWARDING: [HeaderName; 2] =
    [header::FORWARDED, HeaderName::from_static("x-real-ip")];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

pub(super) const NOT_FOUND: &str = "404: no app is deployed on this host\n";
const BAD_GATEWAY: &str = "502: the app is not answering\n";
const GATEWAY_TIMEOUT: &str = "504: the app did not answer in time\n";

/// One client connection's proxy.
#[derive(Clone, Debug)]
pub(super) struct Proxy(Arc<Connection>);

#[derive(Debug)]
struct Connection {
    /// The connection's place under the caps (`Admitted`), kept by a tunnel it turns into.
    ticket: Arc<super::Admitted>,
    peer: HeaderValue,
    phase: Arc<Phase>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    routes: CachedRoutes,
    /// The backend connection kept between this client's requests.
    kept: Option<Kept>,
}

#[derive(Debug)]
struct Kept {
    target: Target,
    sender: hyper::client::conn::http1::SendRequest<Upload>,
}

impl Proxy {
    pub(super) fn new(
        ticket: Arc<super::Admitted>,
        peer: std::net::IpAddr,
        routes: CachedRoutes,
        phase: Arc<Phase>,
        limits: Arc<Limits>,
        shutdown: CancellationToken,
    ) -> Self {
        let peer = HeaderValue::try_from(peer.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self(Arc::new(Connection {
            ticket,
            peer,
            phase,
            limits,
            shutdown,
            state: Mutex::new(State { routes, kept: None }),
        }))
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<Outgoing>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Outgoing>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let connection = self.0.clone();
        Box::pin(async move {
            let mut response = connection.handle(request).await;
            // The connection is idle once this response is out; a tunnel never is.
            if connection.phase.get() != Phase::TUNNEL {
                response.body_mut().phase = Some(connection.phase.clone());
            }
            Ok(response)
        })
    }
}

/// A page of the router's own.
pub(super) fn page(status: StatusCode, text: &'static str, close: bool) -> Response<Outgoing> {
    let mut response = Response::new(Outgoing::page(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The host a request is for: from an absolute-form target, else from its one `Host` header.
/// Returns the routing key (lowercase, no port, no trailing dot) and the value the backend gets
/// as `Host`.
fn request_host(request: &Request<Incoming>) -> Option<(String, HeaderValue)> {
    if let Some(authority) = request.uri().authority() {
        let value = HeaderValue::from_str(authority.as_str()).ok()?;
        return Some((routing_host(authority.as_str())?, value));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let value = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    Some((routing_host(value.to_str().ok()?)?, value.clone()))
}

/// The host part of a `Host` value or an authority: without port and trailing dot, lowercase.
/// Parsed by the `http` crate (hyper's), not by hand; `None` for what it refuses, for userinfo
/// (`user@host` is no `Host`) and for an empty host.
pub(super) fn routing_host(raw: &str) -> Option<String> {
    let authority: hyper::http::uri::Authority = raw.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    // The crate is lenient about what it calls a host (`[%]` passes): only DNS names and IPv6
    // literals route, with a numeric port if any.
    if authority.port().is_some() && authority.port_u16().is_none() {
        return None;
    }
    let host = authority.host();
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => literal.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        }
    };
    valid.then(|| host.to_ascii_lowercase())
}

/// Whether the request asks to switch protocols (`Connection: upgrade` with `Upgrade`).
///
/// Only to WebSocket: a 101 to any other protocol (`h2c`, say) would give the client a raw
/// channel to the app in which it writes its own requests, headers and all.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    let mut protocols = headers.get_all(header::UPGRADE).iter();
    let websocket = protocols.next().is_some_and(|p| {
        p.to_str()
            .is_ok_and(|p| p.trim().eq_ignore_ascii_case("websocket"))
    }) && protocols.next().is_none();
    websocket && tokens(headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated tokens of a header's values, trimmed.
fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the headers that belong to one connection: those `Connection` names, then the
/// standard hop-by-hop ones (which include `Connection` itself).
fn drop_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = tokens(headers, header::CONNECTION)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Removes every header a client could use to pose as a proxy: `Forwarded`, `X-Real-IP`,
/// `X-Forwarded-*`.
fn drop_client_forwarding(headers: &mut HeaderMap) {
    for name in &CLIENT_FORWARDING {
        headers.remove(name);
    }
    // Also under underscores: CGI-style servers read `X_Forwarded_For` as `X-Forwarded-For`.
    let posing: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str().replace('_', "-");
            name.starts_with("x-forwarded-") || name == "forwarded" || name == "x-real-ip"
        })
        .cloned()
        .collect();
    for name in posing {
        headers.remove(name);
    }
}

impl Connection {
    async fn handle(&self, request: Request<Incoming>) -> Response<Outgoing> {
        self.phase.set(if request.body().is_end_stream() {
            Phase::WAIT
        } else {
            Phase::BODY
        });
        let closing = self.shutdown.is_cancelled();
        if request.method() == Method::CONNECT {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                "405: this is not a forward proxy\n",
                true,
            );
        }
        let Some((host, host_value)) = request_host(&request) else {
            return page(
                StatusCode::BAD_REQUEST,
                "400: the request must name one valid host\n",
                true,
            );
        };
        let target = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.routes.current().get(&host).cloned()
        };
        let unread = !request.body().is_end_stream();
        let Some(target) = target else {
            return page(StatusCode::NOT_FOUND, NOT_FOUND, closing || unread);
        };
        let limit = target.max_body.unwrap_or(self.limits.max_body);
        if request.body().size_hint().lower() > limit {
            return too_large(limit);
        }
        self.forward(request, &target, host_value, limit, closing)
            .await
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        target: &Target,
        host: HeaderValue,
        limit: u64,
        closing: bool,
    ) -> Response<Outgoing> {
        let upgrade = wants_upgrade(request.headers()).then(|| {
            let protocol = request.headers().get(header::UPGRADE).cloned();
            (hyper::upgrade::on(&mut request), protocol)
        });
        let (mut parts, body) = request.into_parts();
        parts.uri = origin_form(&parts.uri);
        parts.version = Version::HTTP_11;
        let headers = &mut parts.headers;
        drop_hop_by_hop(headers);
        drop_client_forwarding(headers);
        if let Some((_, Some(protocol))) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        headers.insert(X_FORWARDED_HOST, host.clone());
        headers.insert(header::HOST, host);
        headers.insert(X_FORWARDED_FOR, self.peer.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        let upload = Upload {
            inner: body,
            left: limit,
            phase: self.phase.clone(),
        };
        let (response, sender) = match self
            .exchange(Request::from_parts(parts, upload), target)
            .await
        {
            Ok(exchanged) => exchanged,
            Err(failure) => return failure.page(limit),
        };
        let mut response = response;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some((client, _)) = upgrade else {
                tracing::info!(%target, "backend switched protocols unasked");
                return page(StatusCode::BAD_GATEWAY, BAD_GATEWAY, true);
            };
            let backend = hyper::upgrade::on(&mut response);
            self.phase.set(Phase::TUNNEL);
            // The tunnel holds the connection's place under the caps while it lives.
            tokio::spawn(tunnel(
                client,
                backend,
                self.shutdown.clone(),
                self.ticket.clone(),
            ));
            let (mut parts, _) = response.into_parts();
            let protocol = parts.headers.get(header::UPGRADE).cloned();
            drop_hop_by_hop(&mut parts.headers);
            if let Some(protocol) = protocol {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(header::UPGRADE, protocol);
            }
            return Response::from_parts(parts, Outgoing::page(Bytes::new()));
        }
        self.keep(target, sender);
        let (mut parts, body) = response.into_parts();
        // Kept only when the backend framed by it: with `Transfer-Encoding` too, hyper decoded
        // the chunks and the length is a lie.
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .filter(|_| !parts.headers.contains_key(header::TRANSFER_ENCODING))
            .cloned();
        drop_hop_by_hop(&mut parts.headers);
        // The length of a body-less answer (HEAD, 304) describes the resource: it stays. For
        // other answers it is what hyper decoded, and hyper derives the same again.
        if let Some(length) = length {
            parts.headers.insert(header::CONTENT_LENGTH, length);
        }
        if closing {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Response::from_parts(
            parts,
            Outgoing {
                inner: Inner::Relay(body),
                phase: None,
            },
        )
    }

    /// Sends `request` on the kept backend connection when it goes to `target` and is open,
    /// else on a new one; a request hyper hands back unsent goes once more on a new one.
    async fn exchange(
        &self,
        mut request: Request<Upload>,
        target: &Target,
    ) -> Result<(Response<Incoming>, Sender), Failure> {
        let mut kept = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .kept
                .take()
                .filter(|k| k.target == *target && !k.sender.is_closed())
        };
        loop {
            let reused = kept.is_some();
            let mut sender = match kept.take() {
                Some(kept) => kept.sender,
                None => connect(target, self.limits.connect_timeout).await?,
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(Failure::Unreachable("the connection closed at once".into()));
            }
            let sent = tokio::time::timeout(
                self.limits.response_timeout,
                sender.try_send_request(request),
            )
            .await;
            match sent {
                Err(_) => return Err(Failure::Timeout),
                Ok(Ok(response)) => return Ok((response, sender)),
                Ok(Err(mut error)) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(Failure::from(error.into_error())),
                },
            }
        }
    }

    fn keep(&self, target: &Target, sender: Sender) {
        if !sender.is_closed() {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.kept = Some(Kept {
                target: target.clone(),
                sender,
            });
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Upload>;

/// A new backend connection, its driver running in a task of its own.
async fn connect(target: &Target, timeout: std::time::Duration) -> Result<Sender, Failure> {
    let stream = target
        .connect_within(timeout)
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(super::MAX_HEAD + 16 * 1024)
        .max_headers(super::MAX_HEADERS)
        // Header names as most servers write them: some apps compare them case-sensitively.
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "backend connection ended");
        }
    });
    Ok(sender)
}

/// The target as the backend gets it: origin-form, `/` when there is no path.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if uri.authority().is_none() && path.as_str().starts_with(['/', '*']) => {
            uri.clone()
        }
        Some(path) if path.as_str().starts_with('/') => Uri::from(path.clone()),
        _ => Uri::from(PathAndQuery::from_static("/")),
    }
}

fn too_large(limit: u64) -> Response<Outgoing> {
    let mut response = page(StatusCode::PAYLOAD_TOO_LARGE, "", true);
    let text = format!("413: the request body is larger than this app accepts ({limit} bytes)\n");
    *response.body_mut() = Outgoing::page(Bytes::from(text));
    response
}

/// Why a request did not get a response from its backend.
#[derive(Debug)]
enum Failure {
    /// No connection could be made.
    Unreachable(String),
    /// The backend did not start its answer within the response timeout.
    Timeout,
    /// The request body crossed the limit.
    TooLarge,
    /// The client's body broke off or was malformed.
    Client,
    /// The backend failed (closed, answered garbage).
    Backend(hyper::Error),
}

impl From<hyper::Error> for Failure {
    fn from(error: hyper::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(cause) = source {
            if let Some(upload) = cause.downcast_ref::<UploadError>() {
                return match upload {
                    UploadError::TooLarge => Failure::TooLarge,
                    UploadError::Client(_) => Failure::Client,
                };
            }
            source = cause.source();
        }
        Failure::Backend(error)
    }
}

impl Failure {
    fn page(self, limit: u64) -> Response<Outgoing> {
        match self {
            Failure::Unreachable(error) => {
                tracing::info!(%error, "backend did not answer");
                page(StatusCode::BAD_GATEWAY, BAD_GATEWAY, true)
            }
            Failure::Backend(error) => {
                tracing::info!(%error, "backend failed");
                page(StatusCode::BAD_GATEWAY, BAD_GATEWAY, true)
            }
            Failure::Timeout => page(StatusCode::GATEWAY_TIMEOUT, GATEWAY_TIMEOUT, true),
            Failure::TooLarge => too_large(limit),
            Failure::Client => page(
                StatusCode::BAD_REQUEST,
                "400: the request body broke off\n",
                true,
            ),
        }
    }
}

/// After `101 Switching Protocols`: bytes both ways until either side closes or the router
/// shuts down.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    shutdown: CancellationToken,
    _ticket: Arc<super::Admitted>,
) {
    let (Ok(client), Ok(backend)) = (client.await, backend.await) else {
        return;
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(error) = result {
                tracing::debug!(%error, "upgraded connection ended");
            }
        }
        () = shutdown.cancelled() => {}
    }
}

/// Why a request body could not be sent on.
#[derive(Debug, thiserror::Error)]
pub(super) enum UploadError {
    #[error("the request body is larger than allowed")]
    TooLarge,
    #[error("the request body broke off: {0}")]
    Client(hyper::Error),
}

/// A client's request body on its way to the backend: data only (no trailers), at most `left`
/// more bytes; its end moves the connection to [`Phase::WAIT`].
#[derive(Debug)]
pub(super) struct Upload {
    inner: Incoming,
    left: u64,
    phase: Arc<Phase>,
}

impl Body for Upload {
    type Data = Bytes;
    type Error = UploadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadError>>> {
        loop {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.phase.advance(Phase::BODY, Phase::WAIT);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    return Poll::Ready(Some(Err(UploadError::Client(error))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let size = data.len() as u64;
            if size > self.left {
                return Poll::Ready(Some(Err(UploadError::TooLarge)));
            }
            self.left -= size;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug)]
enum Inner {
    Page(Option<Bytes>),
    Relay(Incoming),
}

/// A response body for the client: a page of the router's, or the backend's body (data only,
/// no trailers). Its end (or drop) moves the connection to [`Phase::IDLE`].
#[derive(Debug)]
pub(super) struct Outgoing {
    inner: Inner,
    phase: Option<Arc<Phase>>,
}

impl Outgoing {
    fn page(bytes: Bytes) -> Self {
        Self {
            inner: Inner::Page((!bytes.is_empty()).then_some(bytes)),
            phase: None,
        }
    }

    fn ended(&mut self) {
        if let Some(phase) = self.phase.take() {
            phase.set(Phase::IDLE);
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.ended();
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Page(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Relay(body) => loop {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => break Poll::Ready(Some(Ok(Frame::data(data)))),
                        Err(_) => continue,
                    },
                    other => break other,
                }
            },
        };
        if matches!(polled, Poll::Ready(None)) {
            this.ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Page(bytes) => bytes.is_none(),
            Inner::Relay(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Page(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Relay(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routing keys from hostile `Host` values: never a panic, never a key with anything but
    /// lowercase host characters (or an IPv6 literal); random inputs over the characters that
    /// matter.
    #[test]
    fn routing_hosts_are_plain_lowercase_names_whatever_the_input() {
        let alphabet = b"aZ09-._:[]@%/ \t\x00\xff?#1v";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut routed = 0;
        for _ in 0..200_000 {
            let length = (next() % 12) as usize;
            let raw: Vec<u8> = (0..length)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let Ok(raw) = String::from_utf8(raw) else {
                continue;
            };
            let Some(host) = routing_host(&raw) else {
                continue;
            };
            routed += 1;
            let literal = host.starts_with('[') && host.ends_with(']');
            assert!(
                host.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b"-._".contains(&b)
                    || (literal && b"[]:".contains(&b))),
                "{raw:?} routes as {host:?}"
            );
        }
        assert!(routed > 1_000, "the inputs reach the interesting cases");
        for (raw, host) in [
            ("Blog.Example.COM.", Some("blog.example.com")),
            ("blog.localhost:8080", Some("blog.localhost")),
            ("[::1]:80", Some("[::1]")),
            ("a@b", None),
            ("a b", None),
            ("", None),
            (".", None),
        ] {
            assert_eq!(routing_host(raw).as_deref(), host, "{raw:?}");
        }
    }

    #[test]
    fn connection_cannot_name_away_what_the_router_sets() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "host, content-length, x-secret, Upgrade"),
            ("connection", "keep-alive"),
            ("host", "blog.localhost"),
            ("x-secret", "1"),
            ("x-kept", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-anything", "1"),
            ("x-real-ip", "1.2.3.4"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        drop_hop_by_hop(&mut headers);
        drop_client_forwarding(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"], "the router sets Host itself afterwards");
    }
}
