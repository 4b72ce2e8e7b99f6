//! The single-host HTTP router: one listener, the backend chosen by the `Host` header.
//!
//! # Guarantees
//! - Route changes are atomic: a request sees the whole old table or the whole new one.
//! - Every byte from clients and backends is parsed by hyper (HTTP/1.x); nothing is forwarded
//!   as it came. Each request is rebuilt for the backend with its framing re-derived, so one
//!   client request is one backend request, and the backend never sees a request the router
//!   did not parse (see [`proxy`] for the rewriting).
//! - Bodies stream both ways; connections to clients and to backends are kept alive.
//! - An unknown host gets 404; a backend that does not answer 502, one that does not start its
//!   answer within [`Limits::response_timeout`] 504; a body over the limit 413.
//! - Every resource a client can hold has a limit ([`Limits`]): the time to send a request head
//!   (one deadline for the whole head), idle time, a stalled body, a client that stops reading,
//!   connections in all and per source address.
//! - `Upgrade` (WebSocket) requests are passed through when the app switches protocols.
//!
//! # Design
//! `threads` threads, each with a single-threaded runtime, accept from one socket (like nginx's
//! workers). A client connection is served by hyper's HTTP/1 server on a socket that enforces
//! the deadlines ([`io`]), and keeps one backend connection (hyper's HTTP/1 client) for its
//! requests to the same backend: no pool is shared between clients.

mod io;
mod proxy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::netns::Namespace;

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
    /// The largest request body this backend takes, in bytes; `None`:
    /// [`Limits::max_body`].
    pub max_body: Option<u64>,
}

impl From<SocketAddr> for Target {
    fn from(address: SocketAddr) -> Self {
        Self {
            address,
            namespace: None,
            max_body: None,
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
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        self.connect_within(CONNECT_TIMEOUT).await
    }

    /// A new connection to the backend, within `timeout`.
    ///
    /// # Errors
    /// When the backend refuses or does not answer in time, or the namespace cannot be entered.
    pub async fn connect_within(&self, timeout: Duration) -> std::io::Result<TcpStream> {
        let v6 = self.address.is_ipv6();
        let socket = match &self.namespace {
            Some(namespace) => namespace.socket(v6)?,
            None if v6 => TcpSocket::new_v6()?,
            None => TcpSocket::new_v4()?,
        };
        tokio::time::timeout(timeout, socket.connect(self.address))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
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
#[derive(Debug)]
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

/// The largest request head accepted, in bytes (nginx's `large_client_header_buffers` allow
/// 4 × 8 KiB lines; a 64 KiB head fits every real cookie jar). Larger: 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Bytes a connection's read buffer holds beyond a head (body bytes read with it).
const READ_AHEAD: usize = 16 * 1024;
/// The most headers one head may carry (hyper's default is 100).
pub const MAX_HEADERS: usize = 128;

/// The limits on what one client can hold. Each default is a named constant with its reason;
/// `slipway up` takes each as a flag.
#[derive(Debug, Clone)]
pub struct Limits {
    /// [`HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// [`BODY_TIMEOUT`].
    pub body_timeout: Duration,
    /// [`WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// [`TUNNEL_IDLE_TIMEOUT`].
    pub tunnel_idle_timeout: Duration,
    /// [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// [`RESPONSE_TIMEOUT`].
    pub response_timeout: Duration,
    /// [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// [`MAX_CONNECTIONS_PER_SOURCE`].
    pub max_connections_per_source: usize,
    /// [`MAX_BODY`], for apps that do not set their own.
    pub max_body: u64,
}

/// How long a client has for a whole request head, from its first byte (from the accept, for
/// a connection's first request). One deadline, not one per read: a client sending a byte now
/// and then is closed all the same (slowloris), with 408. nginx's `client_header_timeout` is
/// 60 s per read; 30 s for the whole head is generous for any real client.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle client connection is kept open between requests (nginx's
/// `keepalive_timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a request body may stall: each read must bring bytes within it (nginx's
/// `client_body_timeout` default). A slow upload goes on; a stopped one is closed.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a write to a client may make no progress (nginx's `send_timeout` default). A client
/// that stops reading is closed, and with it the backend connection it held.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an upgraded (WebSocket) connection may carry no byte either way: it keeps its place
/// under the connection caps while it lives, so an idle one cannot be kept forever. Ten minutes
/// outlast every WebSocket library's ping interval.
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long connecting to a backend may take: an app that is up accepts at once.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a backend may take to start its response (long reports, slow uploads' processing).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// Client connections open at once, over all clients: each costs a task, buffers and a file
/// descriptor, and a backend connection; 16,384 stays far inside a default `ulimit -n` raised
/// by systemd (524,288) and inside memory (about 64 KiB each at most).
pub const MAX_CONNECTIONS: usize = 16_384;
/// Client connections open at once from one source address: a browser opens 6 per host, a
/// NAT of a few hundred users a few hundred; one address alone cannot take more than an
/// eighth of [`MAX_CONNECTIONS`] and lock everyone else out.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 2_048;
/// The largest request body an app gets unless its Webspace says otherwise (1 GiB: uploads of
/// any ordinary size pass; an endless one does not fill the app's disk through the router).
pub const MAX_BODY: u64 = 1 << 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_timeout: HEAD_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            tunnel_idle_timeout: TUNNEL_IDLE_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_source: MAX_CONNECTIONS_PER_SOURCE,
            max_body: MAX_BODY,
        }
    }
}

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

/// Counts open client connections, in all and per source address, across the router's threads.
#[derive(Debug, Default)]
struct Admission {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// The source a connection counts against: its IPv4 address, or its IPv6 /64 (one host's
/// usual allocation, whose 2^64 addresses would otherwise each get the full cap).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
struct Admitted {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    /// A place for a connection from `source`, or why there is none.
    fn admit(self: &Arc<Self>, source: IpAddr, limits: &Limits) -> Result<Admitted, &'static str> {
        let source = source_key(source);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *open;
        let from_source = by_source.get(&source).copied().unwrap_or(0);
        if from_source >= limits.max_connections_per_source {
            return Err("503: too many connections from your address\n");
        }
        if *total >= limits.max_connections {
            return Err("503: the server is at its connection limit, try again shortly\n");
        }
        *total += 1;
        by_source.insert(source, from_source + 1);
        Ok(Admitted {
            admission: self.clone(),
            source,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(count) = by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// A short plain-text response written straight to a socket, before or instead of HTTP.
fn raw_page(status: &str, text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
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
    limits: Limits,
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
    let limits = Arc::new(limits);
    let admission = Arc::new(Admission::default());
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
        // A token of the thread's own: its connections wait on it, and waiting on one token
        // from every thread would share one lock between the CPUs.
        let (table, shutdown) = (table.clone(), shutdown.child_token());
        let (limits, admission) = (limits.clone(), admission.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("slipway-router-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let thread = Thread {
                                    table,
                                    limits,
                                    admission,
                                    shutdown,
                                };
                                thread.accept(listener).await;
                            }
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

/// What one router thread shares with the others.
struct Thread {
    table: RouteTable,
    limits: Arc<Limits>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
}

impl Thread {
    /// Accepts connections and serves each in a task of its own.
    async fn accept(self, listener: TcpListener) {
        let connections = TaskTracker::new();
        let mut server = hyper::server::conn::http1::Builder::new();
        server
            .max_header_size(MAX_HEAD)
            .max_buf_size(MAX_HEAD + READ_AHEAD)
            .max_headers(MAX_HEADERS)
            // The socket enforces the head deadline (see `io`).
            .header_read_timeout(None)
            .half_close(true)
            // Header names as nginx writes them: some clients compare them case-sensitively.
            .title_case_headers(true);
        loop {
            let (stream, peer) = tokio::select! {
                () = self.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "router accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admitted = match self.admission.admit(peer.ip(), &self.limits) {
                Ok(admitted) => admitted,
                Err(text) => {
                    // Best effort, without waiting: the socket's buffer takes a short page.
                    let _ = stream.try_write(&raw_page("503 Service Unavailable", text));
                    tracing::debug!(%peer, text, "connection refused");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            connections.spawn(self.serve(server.clone(), stream, peer, admitted));
        }
        connections.close();
        connections.wait().await;
    }

    /// One client connection, request after request.
    fn serve(
        &self,
        server: hyper::server::conn::http1::Builder,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let phase = Arc::new(io::Phase::default());
        let ticket = Arc::new(admitted);
        let socket = io::Timed::new(stream, phase.clone(), self.limits.clone(), ticket.clone());
        let proxy = proxy::Proxy::new(
            ticket,
            peer.ip(),
            CachedRoutes::new(self.table.clone()),
            phase,
            self.limits.clone(),
            self.shutdown.clone(),
        );
        let shutdown = self.shutdown.clone();
        async move {
            let connection = server
                .serve_connection(TokioIo::new(socket), proxy)
                .with_upgrades();
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "client connection ended");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_counts_as_one_source_per_64() {
        let key = |text: &str| source_key(text.parse().expect("address"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }
}
