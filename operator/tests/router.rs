//! The router against real TCP backends on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use slipway_operator::router::{self, RouteTable, Routes};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod common;

/// A backend that answers `NAME METHOD TARGET len=N xff=.. xfh=.. xfp=.. conn=..`.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| async move {
                        let header = |n: &str| {
                            request
                                .headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let line = format!(
                            "{name} {} {} xff={} xfh={} xfp={} conn={}",
                            request.method(),
                            request.uri(),
                            header("x-forwarded-for"),
                            header("x-forwarded-host"),
                            header("x-forwarded-proto"),
                            header("x-secret-hop"),
                        );
                        let length = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                            format!("{line} len={length}\n"),
                        ))))
                    },
                );
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// Sends raw HTTP/1.1 requests on one connection; returns each (status, body).
fn exchange(router: SocketAddr, requests: &[String]) -> Vec<(u16, String)> {
    let mut stream = TcpStream::connect(router).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answers = Vec::new();
    for request in requests {
        stream.write_all(request.as_bytes()).expect("write");
        let mut buffer = Vec::new();
        let mut byte = [0u8; 1];
        while !buffer.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("head");
            buffer.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buffer).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).expect("body");
        answers.push((status, String::from_utf8_lossy(&body).to_string()));
    }
    answers
}

fn get(host: &str, target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive, x-secret-hop\r\nx-secret-hop: 1\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_host_keeps_the_request_and_sets_forwarding_headers() {
    let a = backend("a").await;
    let b = backend("b").await;
    let (address, _table, shutdown) = router(Routes::from([
        ("blog.localhost".to_owned(), a.into()),
        ("feature-x.blog.localhost".to_owned(), b.into()),
    ]))
    .await;
    let body = vec![b'x'; 5 << 20];
    let post = format!(
        "POST /upload?q=1&r=%20 HTTP/1.1\r\nHost: feature-x.blog.localhost:8080\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(&body)
    );
    let answers = tokio::task::spawn_blocking(move || {
        exchange(address, &[get("Blog.localhost:8080", "/a/b?c=d"), post])
    })
    .await
    .expect("client");
    assert_eq!(answers[0].0, 200);
    assert_eq!(
        answers[0].1,
        "a GET /a/b?c=d xff=127.0.0.1 xfh=Blog.localhost:8080 xfp=http conn=- len=0\n",
        "hop-by-hop headers named in Connection are dropped"
    );
    assert_eq!(answers[1].0, 200);
    assert!(
        answers[1].1.starts_with("b POST /upload?q=1&r=%20 "),
        "{}",
        answers[1].1
    );
    assert!(
        answers[1].1.ends_with(&format!("len={}\n", 5 << 20)),
        "{}",
        answers[1].1
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_hosts_get_404_and_dead_backends_502() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let (address, _table, shutdown) =
        router(Routes::from([("down.localhost".to_owned(), closed.into())])).await;
    let answers = tokio::task::spawn_blocking(move || {
        exchange(
            address,
            &[get("nobody.localhost", "/"), get("down.localhost", "/")],
        )
    })
    .await
    .expect("client");
    assert_eq!(answers[0].0, 404);
    assert!(answers[0].1.contains("no app is deployed on this host"));
    assert_eq!(answers[1].0, 502);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_the_table_switches_traffic_at_once() {
    let old = backend("old").await;
    let new = backend("new").await;
    let (address, table, shutdown) =
        router(Routes::from([("blog.localhost".to_owned(), old.into())])).await;
    let before =
        tokio::task::spawn_blocking(move || exchange(address, &[get("blog.localhost", "/")]))
            .await
            .expect("client");
    assert!(before[0].1.starts_with("old "));
    table.replace(Routes::from([("blog.localhost".to_owned(), new.into())]));
    let after =
        tokio::task::spawn_blocking(move || exchange(address, &[get("blog.localhost", "/")]))
            .await
            .expect("client");
    assert!(after[0].1.starts_with("new "), "{:?}", after);
    shutdown.cancel();
}

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_response_streams_through_before_it_is_complete() {
    let go_on = Arc::new(Notify::new());
    let release = go_on.clone();
    let (app, _) = raw_backend(move |mut stream| {
        let release = release.clone();
        async move {
            let mut pending = Vec::new();
            read_head(&mut stream, &mut pending).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await
                .expect("first chunk");
            release.notified().await;
            stream
                .write_all(b"4\r\nlast\r\n0\r\n\r\n")
                .await
                .expect("last chunk");
        }
    })
    .await;
    let (address, _table, shutdown) =
        router(Routes::from([("app.localhost".to_owned(), app.into())])).await;
    let mut client = connect(address).await;
    client
        .write_all(b"GET /stream HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        .await
        .expect("request");
    let mut pending = Vec::new();
    let head = read_head(&mut client, &mut pending).await;
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    // The first chunk arrives while the backend still holds the rest back.
    read_until(&mut client, &mut pending, b"first\r\n").await;
    go_on.notify_one();
    read_until(&mut client, &mut pending, b"4\r\nlast\r\n0\r\n\r\n").await;
    // The connection is still usable for the next request.
    client
        .write_all(b"GET /again HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n")
        .await
        .expect("request");
    let head = read_head(&mut client, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_connection_reuses_one_backend_connection_and_survives_its_close() {
    // Answers two requests per connection, then closes it without saying so: the router
    // must notice and retry on a new connection, never answering 502.
    let (app, accepted) = raw_backend(|mut stream| async move {
        let mut pending = Vec::new();
        for _ in 0..2 {
            read_head(&mut stream, &mut pending).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .expect("answer");
        }
    })
    .await;
    let (address, _table, shutdown) =
        router(Routes::from([("app.localhost".to_owned(), app.into())])).await;
    let mut client = connect(address).await;
    let mut pending = Vec::new();
    for i in 0..6 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
            .await
            .expect("request");
        let head = read_head(&mut client, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "request {i}: {head}");
        assert_eq!(read_until(&mut client, &mut pending, b"ok").await, b"ok");
        // Give the backend's close time to arrive before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "two requests per backend connection"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_continue_and_chunked_uploads_reach_the_app() {
    let a = backend("a").await;
    let (address, _table, shutdown) =
        router(Routes::from([("app.localhost".to_owned(), a.into())])).await;
    let mut client = connect(address).await;
    client
        .write_all(b"PUT /up HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("head");
    let mut pending = Vec::new();
    let interim = read_head(&mut client, &mut pending).await;
    assert!(interim.starts_with("HTTP/1.1 100 "), "{interim}");
    client.write_all(b"hello").await.expect("body");
    let head = read_head(&mut client, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let body = read_until(&mut client, &mut pending, b"\n").await;
    assert!(
        String::from_utf8_lossy(&body).ends_with("len=5\n"),
        "{body:?}"
    );

    client
        .write_all(b"POST /c HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n")
        .await
        .expect("chunked");
    let head = read_head(&mut client, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let body = read_until(&mut client, &mut pending, b"\n").await;
    assert!(
        String::from_utf8_lossy(&body).ends_with("len=7\n"),
        "{body:?}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_becomes_a_tunnel() {
    let (app, _) = raw_backend(|mut stream| async move {
        let mut pending = Vec::new();
        let head = read_head(&mut stream, &mut pending).await;
        assert!(
            head.contains("Upgrade: websocket\r\n") && head.contains("Connection: upgrade\r\n"),
            "{head}"
        );
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )
            .await
            .expect("101");
        let mut buf = [0u8; 64];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (address, _table, shutdown) =
        router(Routes::from([("app.localhost".to_owned(), app.into())])).await;
    let mut client = connect(address).await;
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .expect("upgrade");
    let mut pending = Vec::new();
    let head = read_head(&mut client, &mut pending).await;
    assert!(
        head.starts_with("HTTP/1.1 101 ") && head.contains("Upgrade: websocket"),
        "{head}"
    );
    for word in [&b"ping"[..], b"pong", b"not http at all\r\n\r\n"] {
        client.write_all(word).await.expect("write");
        assert_eq!(read_until(&mut client, &mut pending, word).await, word);
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_are_refused_before_they_reach_the_app() {
    let (app, accepted) = raw_backend(|mut stream| async move {
        let mut pending = Vec::new();
        read_head(&mut stream, &mut pending).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let (address, _table, shutdown) =
        router(Routes::from([("app.localhost".to_owned(), app.into())])).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    for (request, status) in [
        (
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: app.localhost\r\nHost: other\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\nHost: app.localhost\r\nBad\x01Header: x\r\n\r\n",
            400,
        ),
        ("\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03", 400),
        (
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        (huge.as_str(), 431),
    ] {
        let mut client = connect(address).await;
        client.write_all(request.as_bytes()).await.expect("write");
        let answer = read_to_close(&mut client, &mut Vec::new()).await;
        let answer = String::from_utf8_lossy(&answer);
        // `read_to_close` returns only once the router closed the connection.
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?} → {answer}",
            &request[..request.len().min(60)]
        );
    }
    // A malformed chunked upload: the app may have seen the head, the client gets 400.
    let mut client = connect(address).await;
    client
        .write_all(
            b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
        .await
        .expect("write");
    let answer = read_to_close(&mut client, &mut Vec::new()).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        accepted.load(Ordering::SeqCst) <= 1,
        "only the last request reached the app"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn http10_clients_and_head_requests_get_well_framed_answers() {
    let (app, _) = raw_backend(|mut stream| async move {
        let mut pending = Vec::new();
        loop {
            let head = read_head(&mut stream, &mut pending).await;
            let answer: &[u8] = if head.starts_with("HEAD ") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (address, _table, shutdown) =
        router(Routes::from([("app.localhost".to_owned(), app.into())])).await;
    // HTTP/1.0 cannot read chunked coding: the body comes decoded, ended by the close.
    let mut client = connect(address).await;
    client
        .write_all(b"GET / HTTP/1.0\r\nHost: app.localhost\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut client, &mut Vec::new()).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.ends_with("\r\n\r\nhello world"), "{answer}");
    assert!(!answer.contains("chunked"), "{answer}");
    // HEAD: the length describes the resource, no body follows, the connection goes on.
    let mut client = connect(address).await;
    let mut pending = Vec::new();
    client
        .write_all(b"HEAD / HTTP/1.1\r\nHost: app.localhost\r\n\r\nGET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        .await
        .expect("pipelined");
    let head = read_head(&mut client, &mut pending).await;
    assert!(head.contains("Content-Length: 1000"), "{head}");
    let head = read_head(&mut client, &mut pending).await;
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    read_until(&mut client, &mut pending, b"0\r\n\r\n").await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_idle_connections_and_finishes_busy_ones() {
    let go_on = Arc::new(Notify::new());
    let release = go_on.clone();
    let (app, _) = raw_backend(move |mut stream| {
        let release = release.clone();
        async move {
            let mut pending = Vec::new();
            read_head(&mut stream, &mut pending).await;
            release.notified().await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
                .await;
        }
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let table = RouteTable::default();
    table.replace(Routes::from([("app.localhost".to_owned(), app.into())]));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(router::run(
        listener,
        table,
        router::default_threads(),
        router::Limits::default(),
        shutdown.clone(),
    ));
    let mut idle = connect(address).await;
    let mut busy = connect(address).await;
    busy.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    assert!(
        read_to_close(&mut idle, &mut Vec::new()).await.is_empty(),
        "the idle connection closes"
    );
    assert!(
        !server.is_finished(),
        "the busy request holds the router open"
    );
    go_on.notify_one();
    let answer = read_to_close(&mut busy, &mut Vec::new()).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200 ")
            && answer.contains("Connection: close")
            && answer.ends_with("done"),
        "{answer}"
    );
    tokio::time::timeout(WAIT, server)
        .await
        .expect("router stops")
        .expect("join");
}
