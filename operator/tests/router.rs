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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

async fn router(routes: Routes) -> (SocketAddr, RouteTable, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let table = RouteTable::default();
    table.replace(routes);
    let shutdown = CancellationToken::new();
    tokio::spawn(router::run(listener, table.clone(), shutdown.clone()));
    (address, table, shutdown)
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
        ("blog.localhost".to_owned(), a),
        ("feature-x.blog.localhost".to_owned(), b),
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
        router(Routes::from([("down.localhost".to_owned(), closed)])).await;
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
        router(Routes::from([("blog.localhost".to_owned(), old)])).await;
    let before =
        tokio::task::spawn_blocking(move || exchange(address, &[get("blog.localhost", "/")]))
            .await
            .expect("client");
    assert!(before[0].1.starts_with("old "));
    table.replace(Routes::from([("blog.localhost".to_owned(), new)]));
    let after =
        tokio::task::spawn_blocking(move || exchange(address, &[get("blog.localhost", "/")]))
            .await
            .expect("client");
    assert!(after[0].1.starts_with("new "), "{:?}", after);
    shutdown.cancel();
}
