//! The single-host HTTP router: one listener, the backend chosen by the `Host` header.
//!
//! # Guarantees
//! - Route changes are atomic: a request sees the whole old table or the whole new one.
//! - Bodies stream both ways (no whole-body buffering); connections to clients and to backends
//!   are kept alive; method, target, query and end-to-end headers are kept; hop-by-hop headers
//!   are dropped and `X-Forwarded-For`, `-Proto` and `-Host` are set.
//! - An unknown host gets 404 with a short page; a backend that does not answer gets 502, one
//!   that does not answer within [`RESPONSE_TIMEOUT`] 504.
//! - Hostile requests are refused before they reach an app (see [`http1`]): 400, 431 or 501,
//!   then the connection closes.
//! - `Upgrade` (WebSocket) requests are passed through when the app switches protocols.
//!
//! # Design
//! One task per client connection does everything for it: it reads a request head, picks the
//! backend, writes the rewritten head (with the first body bytes) to the backend connection it
//! keeps for the client, and relays the response head and body back, each in as few writes as
//! the bytes allow. No message is rebuilt from a model, no task hands bytes to another, and
//! there is no shared pool to lock: that keeps a proxied request close to the four system
//! calls it needs. A request body is sent while the response is read, so `Expect:
//! 100-continue` and early answers (413 before the upload ends) work.

pub mod http1;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Context;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::netns::Namespace;
use http1::{Body, Refusal};

/// Host name (lowercase, without port) → backend.
pub type Routes = HashMap<String, Target>;

/// Where a backend is reached: an address, seen from this host's network or from inside a
/// container's network namespace ([`netns`](crate::netns)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The backend's address.
    pub address: SocketAddr,
    /// The network namespace the address is in; `None`: this host's.
    pub namespace: Option<Arc<Namespace>>,
}

impl From<SocketAddr> for Target {
    fn from(address: SocketAddr) -> Self {
        Self {
            address,
            namespace: None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.namespace {
            Some(_) => write!(f, "{} in the container's network", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

impl Target {
    /// A new connection to the backend, within [`CONNECT_TIMEOUT`].
    ///
    /// # Errors
    /// When the backend refuses or does not answer in time, or the namespace cannot be entered.
    pub async fn connect(&self) -> io::Result<TcpStream> {
        let v6 = self.address.is_ipv6();
        let socket = match &self.namespace {
            Some(namespace) => namespace.socket(v6)?,
            None if v6 => TcpSocket::new_v6()?,
            None => TcpSocket::new_v4()?,
        };
        tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(self.address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// The route table, shared between the router and whoever decides the routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    current: Arc<RwLock<Arc<Routes>>>,
    /// Bumped after every replacement: connections keep their snapshot until it changes, so a
    /// request costs one shared atomic read, not a lock.
    version: Arc<AtomicU64>,
}

impl RouteTable {
    /// Replaces every route at once.
    pub fn replace(&self, routes: Routes) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The table as it is now; later changes do not affect it.
    pub fn snapshot(&self) -> Arc<Routes> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A connection's copy of the route table, refreshed when the table changes.
struct CachedRoutes {
    table: RouteTable,
    version: u64,
    routes: Arc<Routes>,
}

impl CachedRoutes {
    fn new(table: RouteTable) -> Self {
        let version = table.version.load(Ordering::Acquire);
        let routes = table.snapshot();
        Self {
            table,
            version,
            routes,
        }
    }

    /// The routes as they are now: a request after `replace` returned sees the new table.
    fn current(&mut self) -> &Routes {
        let version = self.table.version.load(Ordering::Acquire);
        if version != self.version {
            self.version = version;
            self.routes = self.table.snapshot();
        }
        &self.routes
    }
}

/// How long an idle client connection is kept open (nginx's `keepalive_timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a client may take to send a whole request head once it started.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to a backend may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a backend may take to start its response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Body bytes written together with a head in one write, at most.
const COALESCE: usize = 32 * 1024;

const NOT_FOUND: &str = "404: no app is deployed on this host\n";
const BAD_GATEWAY: &str = "502: the app is not answering\n";
const GATEWAY_TIMEOUT: &str = "504: the app did not answer in time\n";

/// The router's threads when nothing else is said: half the CPUs, at least one.
///
/// On a single host the router shares the CPUs with the apps it proxies to, and a proxied
/// request costs the app about as much CPU as the router. A router thread per CPU only adds
/// context switches there: on 2 CPUs, with the app and the load generator on the same
/// machine, one thread served 20-28% more requests per second than two, at 30% less CPU per
/// request (`bench/router.sh`, see the README).
pub fn default_threads() -> NonZeroUsize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    NonZeroUsize::new(cpus / 2).unwrap_or(NonZeroUsize::MIN)
}

/// Serves HTTP on `listener`, routing by `table`, until `shutdown` is cancelled; then stops
/// accepting, closes idle connections and lets busy ones finish their current request.
///
/// `threads` threads, each with a single-threaded runtime, accept from the same socket and
/// serve the connections they accepted (like nginx's workers): a connection never moves
/// between threads, and a busy thread leaves new connections to an idle one.
pub async fn run(
    listener: TcpListener,
    table: RouteTable,
    threads: NonZeroUsize,
    shutdown: CancellationToken,
) {
    let threads = threads.get();
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "router cannot take over its listener");
            return;
        }
    };
    let mut finished = Vec::new();
    for index in 0..threads {
        let listener = match listener.try_clone() {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "router runs fewer threads than asked for");
                break;
            }
        };
        let (done, finished_one) = tokio::sync::oneshot::channel::<()>();
        // A token of the thread's own: its connections wait on it between requests, and
        // waiting on one token from every thread would share one lock between the CPUs.
        let (table, shutdown) = (table.clone(), shutdown.child_token());
        let spawned = std::thread::Builder::new()
            .name(format!("slipway-router-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => accept(listener, table, shutdown).await,
                            Err(error) => tracing::error!(%error, "router thread cannot listen"),
                        }
                    }),
                    Err(error) => tracing::error!(%error, "router thread has no runtime"),
                }
                drop(done);
            });
        match spawned {
            Ok(_) => finished.push(finished_one),
            Err(error) => tracing::warn!(%error, "cannot start a router thread"),
        }
    }
    for finished_one in finished {
        let _ = finished_one.await;
    }
}

/// One router thread: accepts connections and serves each in a task of its own.
async fn accept(listener: TcpListener, table: RouteTable, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "router accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve(stream, peer, table.clone(), shutdown.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// Where bytes come from: a socket, or a test's reader.
trait Source {
    /// Reads what is there (at least one byte, or 0 at the end) into `buffer`.
    async fn read_some(&mut self, buffer: &mut BytesMut) -> io::Result<usize>;
}

/// Where bytes go.
trait Sink {
    /// Writes all of `data`.
    async fn send(&mut self, data: &[u8]) -> io::Result<()>;
}

impl Source for &TcpStream {
    /// A read that comes back short drained the socket: its readiness is cleared at once, so
    /// the next read waits for the kernel's next event instead of first trying a `recv` that
    /// can only fail with `EAGAIN` (nginx does the same). That saves a system call per read in
    /// the request/response rhythm of a proxy. It is safe on the router's single-threaded
    /// runtimes: no event can be dispatched between the read and the clearing, and an event
    /// dispatched later sets the readiness again.
    async fn read_some(&mut self, buffer: &mut BytesMut) -> io::Result<usize> {
        buffer.reserve(READ_CHUNK);
        loop {
            self.readable().await?;
            let space = buffer.capacity() - buffer.len();
            match self.try_read_buf(buffer) {
                Ok(n) => {
                    if n > 0 && n < space {
                        let _ = self.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::ErrorKind::WouldBlock.into())
                        });
                    }
                    return Ok(n);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
    }
}

impl Sink for &TcpStream {
    async fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.writable().await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// A connection to a backend, kept by one client connection between its requests.
struct Backend {
    target: Target,
    stream: TcpStream,
    /// Bytes read from the backend and not yet relayed.
    buffer: BytesMut,
}

/// What the client connection does after an exchange.
enum Next {
    KeepAlive,
    Close,
}

/// One client connection, request after request.
async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    table: RouteTable,
    shutdown: CancellationToken,
) {
    let peer = peer.ip().to_string();
    let mut routes = CachedRoutes::new(table);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut backend: Option<Backend> = None;
    loop {
        let request = match read_request(&mut client, &mut buffer, &peer, &shutdown).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(page) => {
                refuse(&mut client, &page).await;
                return;
            }
        };
        buffer.advance(request.head_len);
        let closing = shutdown.is_cancelled();
        let target = routes.current().get(&request.host).cloned();
        let next = match target {
            Some(target) => {
                exchange(
                    &mut client,
                    &mut buffer,
                    &mut backend,
                    &target,
                    &request,
                    &shutdown,
                )
                .await
            }
            None => answer(&mut client, &request, closing, 404, NOT_FOUND).await,
        };
        if matches!(next, Next::Close) {
            return;
        }
    }
}

/// Reads the next request head into `buffer`. `Ok(None)`: the client closed, stayed idle too
/// long, or the router is shutting down between requests. `Err`: the page to answer with
/// before closing.
async fn read_request(
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    peer: &str,
    shutdown: &CancellationToken,
) -> Result<Option<http1::Request>, Vec<u8>> {
    loop {
        if !buffer.is_empty() {
            match http1::request(buffer, peer) {
                Ok(request) => return Ok(Some(request)),
                Err(Refusal::Incomplete) => {}
                Err(Refusal::TooLarge) => {
                    return Err(http1::page(431, "431: request head too large\n", true));
                }
                Err(Refusal::Bad(reason)) => {
                    return Err(http1::page(400, &format!("400: {reason}\n"), true));
                }
                Err(Refusal::NotImplemented(reason)) => {
                    return Err(http1::page(501, &format!("501: {reason}\n"), true));
                }
            }
        }
        let idle = buffer.is_empty();
        let mut source = &*client;
        let read = tokio::select! {
            biased;
            () = shutdown.cancelled(), if idle => return Ok(None),
            read = tokio::time::timeout(
                if idle { IDLE_TIMEOUT } else { HEAD_TIMEOUT },
                source.read_some(buffer),
            ) => read,
        };
        match read {
            Ok(Ok(0) | Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
            Err(_) if idle => return Ok(None),
            Err(_) => return Err(http1::page(408, "408: request head too slow\n", true)),
        }
    }
}

/// Answers `request` with a page of the router's own. An unread request body closes the
/// connection afterwards.
async fn answer(
    client: &mut TcpStream,
    request: &http1::Request,
    closing: bool,
    status: u16,
    text: &str,
) -> Next {
    let close = closing || !request.keep_alive || request.body != Body::Empty;
    let page = http1::page(status, text, close);
    if close {
        refuse(client, &page).await;
        return Next::Close;
    }
    let mut sink = &*client;
    match sink.send(&page).await {
        Ok(()) => Next::KeepAlive,
        Err(_) => Next::Close,
    }
}

/// How long a closing connection still reads what the client sends ([`refuse`]).
const LINGER: Duration = Duration::from_secs(2);
/// How much a closing connection reads at most.
const LINGER_BYTES: usize = 1 << 20;

/// Writes a last `page`, then closes the connection the way nginx's lingering close does:
/// stop sending, then read and drop what the client still sends for a moment. Closing with
/// unread bytes would make the kernel reset the connection, and a reset can destroy the page
/// before the client reads it.
async fn refuse(client: &mut TcpStream, page: &[u8]) {
    if client.write_all(page).await.is_err() || client.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 8192];
        let mut total = 0;
        while total < LINGER_BYTES {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How a forwarded exchange failed.
enum Failure {
    /// Nothing came back from the backend (it may have closed a kept connection).
    BeforeResponse(io::Error),
    /// The backend took longer than [`RESPONSE_TIMEOUT`].
    Timeout,
    /// The backend sent what the client must not see.
    BadResponse(&'static str),
    /// The client sent an invalid body.
    BadRequest(&'static str),
    /// Part of the response went out, or the client went away: only closing is left.
    Broken,
}

/// How an exchange ended.
struct Outcome {
    client_keep_alive: bool,
    backend_keep_alive: bool,
    upgraded: bool,
}

/// Forwards `request` to `target` and its response back.
async fn exchange(
    client: &mut TcpStream,
    inbound: &mut BytesMut,
    slot: &mut Option<Backend>,
    target: &Target,
    request: &http1::Request,
    shutdown: &CancellationToken,
) -> Next {
    let mut retried = false;
    loop {
        let kept = take_kept(slot, target, request.body != Body::Empty);
        let reused = kept.is_some();
        let mut backend = match kept {
            Some(backend) => backend,
            None => match connect(target).await {
                Ok(backend) => backend,
                Err(error) => {
                    tracing::info!(host = %request.host, %target, %error, "backend did not answer");
                    return answer(client, request, shutdown.is_cancelled(), 502, BAD_GATEWAY)
                        .await;
                }
            },
        };
        let outcome = match forward(client, inbound, &mut backend, request, shutdown).await {
            Ok(outcome) => outcome,
            // A kept connection the backend closed meanwhile: once more on a new one. Only
            // without a body, which may have been partly consumed.
            Err(Failure::BeforeResponse(_))
                if reused && !retried && request.body == Body::Empty =>
            {
                retried = true;
                continue;
            }
            Err(Failure::BeforeResponse(error)) => {
                tracing::info!(host = %request.host, %target, %error, "backend did not answer");
                return answer(client, request, shutdown.is_cancelled(), 502, BAD_GATEWAY).await;
            }
            Err(Failure::BadResponse(reason)) => {
                tracing::info!(host = %request.host, %target, reason, "backend sent an invalid response");
                return answer(client, request, shutdown.is_cancelled(), 502, BAD_GATEWAY).await;
            }
            Err(Failure::Timeout) => {
                tracing::info!(host = %request.host, %target, "backend did not answer in time");
                return answer(
                    client,
                    request,
                    shutdown.is_cancelled(),
                    504,
                    GATEWAY_TIMEOUT,
                )
                .await;
            }
            Err(Failure::BadRequest(reason)) => {
                refuse(client, &http1::page(400, &format!("400: {reason}\n"), true)).await;
                return Next::Close;
            }
            Err(Failure::Broken) => return Next::Close,
        };
        if outcome.upgraded {
            tunnel(client, inbound, backend, shutdown).await;
            return Next::Close;
        }
        if outcome.backend_keep_alive {
            *slot = Some(backend);
        }
        return if outcome.client_keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        };
    }
}

/// The kept backend connection when it goes to `target` and still looks open. With `strict`
/// (the request has a body, which cannot be sent twice) a connection the backend closed
/// meanwhile is noticed now rather than after sending.
fn take_kept(slot: &mut Option<Backend>, target: &Target, strict: bool) -> Option<Backend> {
    let backend = slot.take()?;
    if backend.target != *target {
        return None;
    }
    if strict {
        let waker = futures_util::task::noop_waker_ref();
        let mut context = Context::from_waker(waker);
        if backend.stream.poll_read_ready(&mut context).is_ready() {
            let mut probe = [0u8; 1];
            match backend.stream.try_read(&mut probe) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // Closed, failed, or sent bytes nobody asked for.
                _ => return None,
            }
        }
    }
    Some(backend)
}

async fn connect(target: &Target) -> io::Result<Backend> {
    let stream = target.connect().await?;
    stream.set_nodelay(true)?;
    Ok(Backend {
        target: target.clone(),
        stream,
        buffer: BytesMut::with_capacity(READ_CHUNK),
    })
}

/// Sends the request (head, then body as it comes) while relaying the response.
async fn forward(
    client: &mut TcpStream,
    inbound: &mut BytesMut,
    backend: &mut Backend,
    request: &http1::Request,
    shutdown: &CancellationToken,
) -> Result<Outcome, Failure> {
    let (mut client_read, mut client_write) = (&*client, &*client);
    let (mut backend_read, mut backend_write) = (&backend.stream, &backend.stream);
    let download = relay_response(
        &mut backend_read,
        &mut backend.buffer,
        &mut client_write,
        request,
        shutdown,
    );
    if request.body == Body::Empty {
        backend_write
            .send(&request.forward)
            .await
            .map_err(Failure::BeforeResponse)?;
        return download.await;
    }
    let upload = copy_body(
        &mut client_read,
        inbound,
        &mut backend_write,
        request.body,
        false,
        request.forward.clone(),
    );
    tokio::pin!(upload, download);
    let mut uploaded = false;
    let outcome = loop {
        tokio::select! {
            sent = &mut upload, if !uploaded => match sent {
                Ok(()) => uploaded = true,
                Err(CopyError::Framing(reason)) => return Err(Failure::BadRequest(reason)),
                Err(CopyError::Eof | CopyError::Read) => return Err(Failure::Broken),
                // The backend stopped reading: its answer (413, say) may still come.
                Err(CopyError::Write) => break download.await?.unfinished(),
            },
            relayed = &mut download => {
                let outcome = relayed?;
                break if uploaded { outcome } else { outcome.unfinished() };
            }
        }
    };
    Ok(outcome)
}

impl Outcome {
    /// The request body was not all sent: neither connection can carry another exchange.
    fn unfinished(self) -> Self {
        Self {
            client_keep_alive: false,
            backend_keep_alive: false,
            upgraded: self.upgraded,
        }
    }
}

/// Reads the response head (relaying `1xx` interim responses), then relays head and body.
async fn relay_response<R: Source, W: Sink>(
    read: &mut R,
    buffer: &mut BytesMut,
    write: &mut W,
    request: &http1::Request,
    shutdown: &CancellationToken,
) -> Result<Outcome, Failure> {
    let mut interim = false;
    loop {
        let response = loop {
            if !buffer.is_empty() {
                match http1::response(buffer, request, shutdown.is_cancelled()) {
                    Ok(response) => break response,
                    Err(Refusal::Incomplete) => {}
                    Err(Refusal::TooLarge) => {
                        return Err(Failure::BadResponse("response head too large"));
                    }
                    Err(Refusal::Bad(reason) | Refusal::NotImplemented(reason)) => {
                        return Err(Failure::BadResponse(reason));
                    }
                }
            }
            match tokio::time::timeout(RESPONSE_TIMEOUT, read.read_some(buffer)).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Ok(0)) if buffer.is_empty() && !interim => {
                    return Err(Failure::BeforeResponse(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(Ok(0)) => return Err(Failure::BadResponse("closed in the response head")),
                Ok(Err(error)) if buffer.is_empty() && !interim => {
                    return Err(Failure::BeforeResponse(error));
                }
                Ok(Err(_)) => return Err(Failure::BadResponse("failed in the response head")),
                Ok(Ok(_)) => {}
            }
        };
        buffer.advance(response.head_len);
        if response.status == 101 {
            // The protocol switches: what follows the head belongs to the tunnel.
            let mut out = response.forward;
            out.extend_from_slice(buffer);
            buffer.clear();
            write.send(&out).await.map_err(|_| Failure::Broken)?;
            return Ok(Outcome {
                client_keep_alive: false,
                backend_keep_alive: false,
                upgraded: true,
            });
        }
        if response.status < 200 {
            interim = true;
            if !request.http10 {
                write
                    .send(&response.forward)
                    .await
                    .map_err(|_| Failure::Broken)?;
            }
            continue;
        }
        copy_body(
            read,
            buffer,
            write,
            response.body,
            response.dechunk,
            response.forward,
        )
        .await
        .map_err(|_| Failure::Broken)?;
        return Ok(Outcome {
            client_keep_alive: response.client_keep_alive,
            // Bytes after the body were not asked for: that connection is not reused.
            backend_keep_alive: response.backend_keep_alive && buffer.is_empty(),
            upgraded: false,
        });
    }
}

/// Why a body could not be copied.
enum CopyError {
    /// The sender closed before the body ended.
    Eof,
    /// Reading from the sender failed.
    Read,
    /// Writing to the receiver failed.
    Write,
    /// The body is not valid chunked coding.
    Framing(&'static str),
}

/// Writes `out` (a head) and then the body framed by `body`, taken first from `buffer` and
/// then from `read`. Small pieces go out with the head in one write. With `dechunk`, only
/// the chunk data is written (to an HTTP/1.0 client, which reads until the connection
/// closes).
async fn copy_body<R: Source, W: Sink>(
    read: &mut R,
    buffer: &mut BytesMut,
    write: &mut W,
    body: Body,
    dechunk: bool,
    mut out: Vec<u8>,
) -> Result<(), CopyError> {
    let mut left = match body {
        Body::Length(n) => n,
        _ => 0,
    };
    let mut decoder = http1::Chunked::default();
    loop {
        let done = match body {
            Body::Empty => true,
            Body::Length(_) => {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(buffer.len());
                if take > 0 {
                    if out.len() + take <= COALESCE {
                        out.extend_from_slice(&buffer[..take]);
                    } else {
                        flush(write, &mut out).await?;
                        write
                            .send(&buffer[..take])
                            .await
                            .map_err(|_| CopyError::Write)?;
                    }
                    buffer.advance(take);
                    left -= take as u64;
                }
                left == 0
            }
            Body::Chunked => {
                if !buffer.is_empty() {
                    let used = if dechunk {
                        decoder.advance(buffer, Some(&mut out))
                    } else {
                        decoder.advance(buffer, None)
                    }
                    .map_err(CopyError::Framing)?;
                    if !dechunk {
                        if out.len() + used <= COALESCE {
                            out.extend_from_slice(&buffer[..used]);
                        } else {
                            flush(write, &mut out).await?;
                            write
                                .send(&buffer[..used])
                                .await
                                .map_err(|_| CopyError::Write)?;
                        }
                    }
                    buffer.advance(used);
                }
                decoder.done()
            }
            Body::UntilClose => {
                if out.len() + buffer.len() <= COALESCE {
                    out.extend_from_slice(buffer);
                } else {
                    flush(write, &mut out).await?;
                    write.send(buffer).await.map_err(|_| CopyError::Write)?;
                }
                buffer.clear();
                false
            }
        };
        flush(write, &mut out).await?;
        if done {
            return Ok(());
        }
        match read.read_some(buffer).await {
            Ok(0) if body == Body::UntilClose => return Ok(()),
            Ok(0) => return Err(CopyError::Eof),
            Ok(_) => {}
            Err(_) => return Err(CopyError::Read),
        }
    }
}

async fn flush<W: Sink>(write: &mut W, out: &mut Vec<u8>) -> Result<(), CopyError> {
    if !out.is_empty() {
        write.send(out).await.map_err(|_| CopyError::Write)?;
        out.clear();
    }
    Ok(())
}

/// After `101 Switching Protocols`: bytes both ways until either side closes or the router
/// shuts down.
async fn tunnel(
    client: &mut TcpStream,
    inbound: &mut BytesMut,
    mut backend: Backend,
    shutdown: &CancellationToken,
) {
    if !inbound.is_empty() {
        if backend.stream.write_all(inbound).await.is_err() {
            return;
        }
        inbound.clear();
    }
    tokio::select! {
        result = tokio::io::copy_bidirectional(client, &mut backend.stream) => {
            if let Err(error) = result {
                tracing::debug!(%error, "upgraded connection ended");
            }
        }
        () = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes in pieces of `step`.
    struct Trickle(Vec<u8>, usize);

    impl Source for Trickle {
        async fn read_some(&mut self, buffer: &mut BytesMut) -> io::Result<usize> {
            let n = self.1.min(self.0.len());
            buffer.extend(self.0.drain(..n));
            Ok(n)
        }
    }

    impl Sink for Vec<u8> {
        async fn send(&mut self, data: &[u8]) -> io::Result<()> {
            self.extend_from_slice(data);
            Ok(())
        }
    }

    async fn copy(
        input: &[u8],
        body: Body,
        dechunk: bool,
    ) -> (Result<(), CopyError>, Vec<u8>, Vec<u8>) {
        let mut read = Trickle(input[3.min(input.len())..].to_vec(), 7);
        let mut buffer = BytesMut::from(&input[..3.min(input.len())]);
        let mut written = Vec::new();
        let result = copy_body(
            &mut read,
            &mut buffer,
            &mut written,
            body,
            dechunk,
            b"HEAD|".to_vec(),
        )
        .await;
        let rest = buffer.to_vec();
        (result, written, [rest, read.0].concat())
    }

    #[tokio::test]
    async fn bodies_are_copied_to_their_end_and_no_further() {
        let (result, written, rest) = copy(b"hello worldNEXT", Body::Length(11), false).await;
        assert!(result.is_ok());
        assert_eq!(written, b"HEAD|hello world");
        assert_eq!(rest, b"NEXT");

        let chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
        let (result, written, rest) = copy(chunked, Body::Chunked, false).await;
        assert!(result.is_ok());
        assert_eq!(
            written,
            [&b"HEAD|"[..], &chunked[..chunked.len() - 4]].concat()
        );
        assert_eq!(rest, b"NEXT");

        let (result, written, _) = copy(chunked, Body::Chunked, true).await;
        assert!(result.is_ok());
        assert_eq!(written, b"HEAD|hello world");

        let (result, written, _) = copy(b"all of it", Body::UntilClose, false).await;
        assert!(result.is_ok());
        assert_eq!(written, b"HEAD|all of it");

        let (result, _, _) = copy(b"short", Body::Length(11), false).await;
        assert!(matches!(result, Err(CopyError::Eof)));
        let (result, _, _) = copy(b"5\r\nhelloXX", Body::Chunked, false).await;
        assert!(matches!(result, Err(CopyError::Framing(_))));
    }
}
