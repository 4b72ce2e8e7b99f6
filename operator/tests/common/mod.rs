//! Raw backends and clients for the router's tests: the bytes on both sides of the router.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use slipway_operator::router::{self, RouteTable, Routes};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A router on 127.0.0.1 with two threads and `limits`, serving `routes`.
pub async fn router_with(
    routes: Routes,
    limits: router::Limits,
) -> (SocketAddr, RouteTable, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let table = RouteTable::default();
    table.replace(routes);
    let shutdown = CancellationToken::new();
    tokio::spawn(router::run(
        listener,
        table.clone(),
        std::num::NonZeroUsize::MIN.saturating_add(1),
        limits,
        shutdown.clone(),
    ));
    (address, table, shutdown)
}

/// A router with the default limits.
pub async fn router(routes: Routes) -> (SocketAddr, RouteTable, CancellationToken) {
    router_with(routes, router::Limits::default()).await
}

pub const WAIT: Duration = Duration::from_secs(10);

/// Reads up to and including the end of a head (`\r\n\r\n`); returns it and any bytes after.
pub async fn read_head(stream: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            return String::from_utf8_lossy(&head).into_owned();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("head in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the end of a head: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until `needle` has arrived; returns everything read.
pub async fn read_until(
    stream: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
    needle: &[u8],
) -> Vec<u8> {
    loop {
        if let Some(at) = pending.windows(needle.len()).position(|w| w == needle) {
            return pending.drain(..at + needle.len()).collect();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("bytes in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {:?}: {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the peer closes.
pub async fn read_to_close(stream: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> Vec<u8> {
    let mut all = std::mem::take(pending);
    tokio::time::timeout(WAIT, stream.read_to_end(&mut all))
        .await
        .expect("closed in time")
        .expect("read");
    all
}

/// A backend that runs `answer` for every accepted connection; counts the connections.
pub async fn raw_backend<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer(stream));
        }
    });
    (address, accepted)
}

pub async fn connect(address: SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(address)
        .await
        .expect("connect")
}
