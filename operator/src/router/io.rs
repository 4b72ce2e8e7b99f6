//! A client connection's socket with the router's deadlines.
//!
//! hyper has one read deadline, and it runs from the moment a connection waits for a head:
//! idle keep-alive time counts against it. The router wants three different ones, so the socket
//! enforces them itself, knowing from [`Phase`] (which the proxy service moves along) what the
//! connection is doing:
//! - [`Phase::HEAD`]: a request head is being read. One deadline for the whole head, from its
//!   first byte (or from the accept, for a connection's first request); trickling bytes does not
//!   extend it.
//! - [`Phase::IDLE`]: between requests. The connection is closed after the idle timeout.
//! - [`Phase::BODY`]: a request body is being read. Each read must bring bytes within the body
//!   timeout (a slow upload of a large file is fine, a stalled one is not).
//! - [`Phase::WAIT`]: the request is read; the backend answers. Reads only notice that the
//!   client went away.
//! - [`Phase::TUNNEL`]: the connection switched protocols (WebSocket); closed when no byte went
//!   either way for the tunnel idle timeout.
//!
//! Writes have a deadline in every phase: a write that makes no progress within the write
//! timeout fails, so a client that stops reading cannot pin the connection (and the backend
//! connection behind it).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::Limits;

/// What a client connection is doing; shared by its socket and its proxy service.
#[derive(Debug, Default)]
pub struct Phase(AtomicU8);

impl Phase {
    /// Reading a request head.
    pub const HEAD: u8 = 0;
    /// Between requests.
    pub const IDLE: u8 = 1;
    /// Reading a request body.
    pub const BODY: u8 = 2;
    /// The request is read; the response is on its way.
    pub const WAIT: u8 = 3;
    /// Switched protocols: bytes both ways, no HTTP.
    pub const TUNNEL: u8 = 4;

    pub fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }

    /// Moves from `from` to `to`; nothing when the phase is no longer `from`.
    pub fn advance(&self, from: u8, to: u8) {
        let _ = self
            .0
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The page a client gets when its request head took too long.
const HEAD_TOO_SLOW: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 35\r\nConnection: close\r\n\r\n408: the request head was too slow\n";

/// A client socket with deadlines (see the module's documentation).
#[derive(Debug)]
pub struct Timed {
    stream: Option<TcpStream>,
    /// The connection's place under the caps: a lingering close keeps it too.
    ticket: Option<Arc<super::Admitted>>,
    phase: Arc<Phase>,
    limits: Arc<Limits>,
    /// The phase reads last saw, and when the deadline of that phase started.
    seen: u8,
    since: Instant,
    read_timer: Option<Pin<Box<Sleep>>>,
    /// When the pending write started waiting.
    write_since: Option<Instant>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl Timed {
    /// `stream`, just accepted: its first request head is due within the head timeout.
    pub fn new(
        stream: TcpStream,
        phase: Arc<Phase>,
        limits: Arc<Limits>,
        ticket: Arc<super::Admitted>,
    ) -> Self {
        phase.set(Phase::HEAD);
        Self {
            stream: Some(stream),
            ticket: Some(ticket),
            phase,
            limits,
            seen: Phase::HEAD,
            since: Instant::now(),
            read_timer: None,
            write_since: None,
            write_timer: None,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// The read deadline in the current phase, if it has one.
    fn read_deadline(&mut self) -> Option<(Instant, u8)> {
        let phase = self.phase.get();
        if phase != self.seen {
            self.seen = phase;
            self.since = Instant::now();
        }
        let timeout = match phase {
            Phase::HEAD => self.limits.head_timeout,
            Phase::IDLE => self.limits.idle_timeout,
            Phase::BODY => self.limits.body_timeout,
            Phase::TUNNEL => self.limits.tunnel_idle_timeout,
            _ => return None,
        };
        Some((self.since + timeout, phase))
    }
}

/// Polls `timer` for `deadline`: ready when the deadline passed. The timer is reset only when the
/// deadline moved earlier than it is set for; a timer that fires early is set again.
fn expired(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if sleep.deadline() > deadline {
        sleep.as_mut().reset(deadline);
    }
    while sleep.as_mut().poll(cx).is_ready() {
        if Instant::now() >= deadline {
            return true;
        }
        sleep.as_mut().reset(deadline);
    }
    false
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let stream = this.stream()?;
        match Pin::new(stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    match this.phase.get() {
                        // The first byte of a head: its deadline starts now.
                        Phase::IDLE => this.phase.set(Phase::HEAD),
                        // Progress: the next read has the whole timeout again.
                        Phase::BODY | Phase::TUNNEL => this.since = Instant::now(),
                        _ => {}
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let Some((deadline, phase)) = this.read_deadline() else {
                    return Poll::Pending;
                };
                if !expired(&mut this.read_timer, deadline, cx) {
                    return Poll::Pending;
                }
                match phase {
                    Phase::HEAD => {
                        if let Ok(stream) = this.stream() {
                            // Best effort: the socket's buffer is empty at this point of a
                            // request, so the page fits; a client that cannot take it loses it.
                            let _ = stream.try_write(HEAD_TOO_SLOW);
                        }
                        Poll::Ready(Err(timed_out("request head too slow")))
                    }
                    Phase::IDLE => Poll::Ready(Err(timed_out("idle"))),
                    Phase::TUNNEL => Poll::Ready(Err(timed_out("tunnel idle"))),
                    _ => Poll::Ready(Err(timed_out("request body stalled"))),
                }
            }
        }
    }
}

impl Timed {
    /// Runs a write-side poll with the write deadline.
    fn write_with_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let stream = self.stream()?;
        match poll(Pin::new(stream), cx) {
            Poll::Ready(result) => {
                self.write_since = None;
                // Bytes from the app to a tunnel's client keep the tunnel alive too.
                if self.phase.get() == Phase::TUNNEL && self.seen == Phase::TUNNEL {
                    self.since = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let since = *self.write_since.get_or_insert_with(Instant::now);
                if expired(&mut self.write_timer, since + self.limits.write_timeout, cx) {
                    return Poll::Ready(Err(timed_out("client stopped reading")));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_with_deadline(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_with_deadline(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_with_deadline(cx, AsyncWrite::poll_flush)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(self.write_with_deadline(cx, AsyncWrite::poll_shutdown));
        Poll::Ready(result)
    }
}

/// How long a closing connection still reads what the client sends.
const LINGER: Duration = Duration::from_secs(2);
/// How much a closing connection reads at most.
const LINGER_BYTES: usize = 1 << 20;

impl Drop for Timed {
    /// Closes the way nginx's lingering close does when the client sent bytes nobody read (a
    /// refused request's body, say): stop sending, then read and drop what still comes for a
    /// moment. Closing with unread bytes makes the kernel reset the connection, and a reset can
    /// destroy the last answer before the client reads it.
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let mut probe = [0u8; 1];
        let unread = matches!(stream.try_read(&mut probe), Ok(n) if n > 0);
        if !unread {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ticket = self.ticket.take();
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ticket = ticket;
            let mut stream = stream;
            if stream.shutdown().await.is_err() {
                return;
            }
            let drain = async {
                let mut sink = [0u8; 8192];
                let mut total = 0;
                while total < LINGER_BYTES {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => total += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}
