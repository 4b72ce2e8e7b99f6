//! The router as an internet edge: request smuggling, hop-by-hop abuse, spoofed forwarding
//! headers, and every limit a client could exhaust. Raw bytes go in on a socket; a backend
//! records exactly what it received, parsed by httparse (not by hyper, which the router uses).
//!
//! The invariant: one client request is never two backend requests, and every byte the backend
//! receives parses as a request the client sent through the router's parser, with exactly one
//! framing header, no chunk extensions and no trailers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_operator::router::{Limits, Routes, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

mod common;
use common::*;

/// One request as the backend received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What a recording backend saw: requests in order, and framing it would not accept.
#[derive(Debug, Default)]
struct Record {
    requests: Vec<Seen>,
    violations: Vec<String>,
}

type Shared = Arc<Mutex<Record>>;

/// Reads one chunked body strictly: hex sizes, no extensions, no trailers.
async fn read_chunked(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    violations: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_until(stream, pending, b"\r\n").await;
        let line = &line[..line.len() - 2];
        if line.is_empty() || !line.iter().all(u8::is_ascii_hexdigit) {
            violations.push(format!(
                "chunk size line {:?}",
                String::from_utf8_lossy(line)
            ));
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(line).ok()?, 16).ok()?;
        if size == 0 {
            let end = read_until(stream, pending, b"\r\n").await;
            if end != b"\r\n" {
                violations.push(format!("trailer {:?}", String::from_utf8_lossy(&end)));
                return None;
            }
            return Some(body);
        }
        while pending.len() < size + 2 {
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            pending.extend_from_slice(&chunk[..n]);
        }
        body.extend_from_slice(&pending[..size]);
        if &pending[size..size + 2] != b"\r\n" {
            violations.push("chunk without CRLF".to_owned());
            return None;
        }
        pending.drain(..size + 2);
    }
}

/// Reads requests off one backend connection and records them; answers each with its number.
/// A request with `x-answer: none` is read and then the connection closes without an answer.
async fn record(mut stream: TcpStream, record: Shared) {
    let mut pending = Vec::new();
    loop {
        let head = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&pending) {
                Ok(httparse::Status::Complete(length)) => {
                    let seen = Seen {
                        method: request.method.unwrap_or("").to_owned(),
                        target: request.path.unwrap_or("").to_owned(),
                        headers: request
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_owned(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    pending.drain(..length);
                    break seen;
                }
                Ok(httparse::Status::Partial) => {}
                Err(error) => {
                    record
                        .lock()
                        .expect("record")
                        .violations
                        .push(format!("unparsable head: {error}"));
                    return;
                }
            }
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if !pending.is_empty() {
                        record.lock().expect("record").violations.push(format!(
                            "bytes after the last request: {:?}",
                            String::from_utf8_lossy(&pending)
                        ));
                    }
                    return;
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        };
        let mut seen = head;
        let lengths = seen.header("content-length");
        let codings = seen.header("transfer-encoding");
        let mut violations = Vec::new();
        let body = match (lengths.as_slice(), codings.as_slice()) {
            ([], []) => Some(Vec::new()),
            ([length], []) => match length.parse::<usize>() {
                Ok(parsed) if parsed.to_string() == *length => {
                    let length = parsed;
                    while pending.len() < length {
                        let mut chunk = [0u8; 65536];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                    }
                    Some(pending.drain(..length).collect())
                }
                _ => {
                    violations.push(format!("Content-Length {length:?}"));
                    None
                }
            },
            ([], ["chunked"]) => read_chunked(&mut stream, &mut pending, &mut violations).await,
            _ => {
                violations.push(format!("framing {lengths:?} {codings:?}"));
                None
            }
        };
        let silent = seen.header("x-answer") == ["none"];
        let number = {
            let mut record = record.lock().expect("record");
            record.violations.extend(violations);
            let Some(body) = body else {
                return;
            };
            seen.body = body;
            record.requests.push(seen);
            record.requests.len()
        };
        if silent {
            return;
        }
        let text = format!("request {number}\n");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A recording backend on 127.0.0.1.
async fn recorder() -> (SocketAddr, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shared = Shared::default();
    let accepted = shared.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(record(stream, accepted.clone()));
        }
    });
    (address, shared)
}

const HOST: &str = "app.localhost";

async fn edge(limits: Limits) -> (SocketAddr, Shared, tokio_util::sync::CancellationToken) {
    let (backend, shared) = recorder().await;
    let (address, _table, shutdown) =
        router_with(Routes::from([(HOST.to_owned(), backend.into())]), limits).await;
    (address, shared, shutdown)
}

/// Sends `bytes` on a new connection, half-closes, and returns everything the router sent
/// until it closed.
async fn send(router: SocketAddr, bytes: &[u8]) -> String {
    let mut client = connect(router).await;
    client.write_all(bytes).await.expect("write");
    let _ = client.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, client.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status codes of the responses in `answer`, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.")
        .filter_map(|(at, _)| answer[at + 9..].get(..3)?.parse().ok())
        .collect()
}

/// Waits for the backend's connections to finish, then returns what it recorded.
async fn recorded(shared: &Shared) -> (Vec<Seen>, Vec<String>) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let record = shared.lock().expect("record");
    (record.requests.clone(), record.violations.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_by_framing_never_makes_two_backend_requests() {
    let (address, shared, shutdown) = edge(Limits::default()).await;
    // Each attack carries a second request in what one parser takes for the first's body. The
    // router may refuse it (400, nothing reaches the app) or forward the first request alone,
    // re-framed; it must never forward the smuggled one.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    let attacks: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
        ),
        (
            "TE.TE duplicate",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "TE.TE xchunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: xchunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "TE.TE space before colon",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding : chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "TE.TE vertical tab",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding:\x0bchunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "TE.TE obs-fold",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
        ),
        (
            "TE list ,chunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE list identity, chunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE chunked, identity",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE on HTTP/1.0",
            format!(
                "POST /a HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "CL.CL differing",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "CL list 5, 5",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0, {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "CL sign",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: +{}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "CL hex",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0x{:x}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "chunk size overflow",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk extension without ;",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n1 x\r\nx\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk with bare LF",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\n0\n\n{smuggled}"
            ),
        ),
        (
            "bare CR in a header",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\rContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "bare LF line ends",
            format!(
                "POST /a HTTP/1.1\nHost: {HOST}\nContent-Length: {}\n\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "NUL in a header",
            format!(
                "POST /a HTTP/1.1\r\nHost: {HOST}\r\nX-A: a\0b\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
    ];
    for (name, attack) in &attacks {
        // Where an attack has no Content-Length of its own, one that covers everything makes a
        // parser that goes by it see a single request: then the two readings differ.
        let attack = if attack.to_ascii_lowercase().contains("content-length") {
            attack.clone()
        } else {
            let body = attack.split_once("\r\n\r\n").map_or("", |(_, b)| b).len();
            attack.replacen(
                &format!("Host: {HOST}\r\n"),
                &format!("Host: {HOST}\r\nContent-Length: {body}\r\n"),
                1,
            )
        };
        let before = shared.lock().expect("record").requests.len();
        let answer = send(address, attack.as_bytes()).await;
        let (requests, violations) = recorded(&shared).await;
        let new = &requests[before..];
        assert!(violations.is_empty(), "{name}: {violations:?}");
        assert!(
            new.iter().all(|r| r.target == "/a"),
            "{name}: the smuggled request reached the app: {new:?}"
        );
        assert!(new.len() <= 1, "{name}: {new:?}");
        let codes = statuses(&answer);
        assert!(
            codes == [200] && new.len() == 1 || codes == [400] && new.is_empty(),
            "{name}: {codes:?} with {} backend requests: {answer}",
            new.len()
        );
        // Whatever the backend got has exactly one framing header.
        for request in new {
            let framing =
                request.header("content-length").len() + request.header("transfer-encoding").len();
            assert!(framing <= 1, "{name}: {request:?}");
        }
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_but_unambiguous_framing_reaches_the_app_only_in_canonical_form() {
    let (address, shared, shutdown) = edge(Limits::default()).await;
    // Each is one request with the body `abcd`, or a refusal. The app must get the body framed
    // the one way every parser reads alike: the recorder refuses anything else (a listed or
    // padded length, a coding list, an extension, a trailer).
    let cases = [
        "Transfer-Encoding: ,chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        "Transfer-Encoding: identity, chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        "Transfer-Encoding: Chunked \r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n4;name=value\r\nabcd\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n4 x\r\nabcd\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\nX-Trailer: evil\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\nnot a trailer\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n0004\r\nabcd\r\n0\r\n\r\n",
        "Content-Length: 4, 4\r\n\r\nabcd",
        "Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        "Content-Length: 04\r\n\r\nabcd",
        "Content-Length:  4 \r\n\r\nabcd",
    ];
    for case in cases {
        let before = shared.lock().expect("record").requests.len();
        let request = format!("POST /a HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n{case}");
        let answer = send(address, request.as_bytes()).await;
        let (requests, violations) = recorded(&shared).await;
        let new = &requests[before..];
        assert!(violations.is_empty(), "{case:?}: {violations:?}");
        let codes = statuses(&answer);
        assert!(
            codes == [200] && new.len() == 1 && new[0].body == b"abcd"
                || codes == [400] && new.is_empty(),
            "{case:?}: {codes:?}, the app got {new:?}"
        );
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_cannot_remove_framing_or_host_and_forwarding_headers_are_the_routers() {
    let (address, shared, shutdown) = edge(Limits::default()).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    let attacks = [
        format!(
            "POST /a HTTP/1.1\r\nHost: {HOST}\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: {HOST}\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: {HOST}\r\nConnection: host, keep-alive, close\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
    ];
    for attack in &attacks {
        let before = shared.lock().expect("record").requests.len();
        let answer = send(address, attack.as_bytes()).await;
        let (requests, violations) = recorded(&shared).await;
        let new = &requests[before..];
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(statuses(&answer), [200], "{answer}");
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!(new[0].body, smuggled.as_bytes(), "the body stays a body");
        assert_eq!(new[0].header("host"), [HOST]);
    }
    // Spoofed forwarding headers are replaced by the router's own.
    let spoof = format!(
        "GET /who HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\nX-Forwarded-Port: 443\r\nForwarded: for=10.0.0.1;proto=https\r\nX-Real-IP: 10.0.0.1\r\nX_Forwarded_For: 10.0.0.2\r\nX_Real_IP: 10.0.0.2\r\nConnection: close\r\n\r\n"
    );
    let before = shared.lock().expect("record").requests.len();
    assert_eq!(statuses(&send(address, spoof.as_bytes()).await), [200]);
    let (requests, _) = recorded(&shared).await;
    let seen = &requests[before];
    assert_eq!(seen.header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header("x-forwarded-host"), [HOST]);
    assert!(seen.header("x-forwarded-port").is_empty(), "{seen:?}");
    assert!(seen.header("forwarded").is_empty(), "{seen:?}");
    assert!(seen.header("x-real-ip").is_empty(), "{seen:?}");
    assert!(
        seen.header("x_forwarded_for").is_empty() && seen.header("x_real_ip").is_empty(),
        "CGI servers read underscores as dashes: {seen:?}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn chunk_extensions_and_trailers_are_dropped_and_targets_are_origin_form() {
    let (address, shared, shutdown) = edge(Limits::default()).await;
    let requests = format!(
        "POST /c HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Evil\r\n\r\n4;ext=\"a\\\"b\"\r\nabcd\r\n0\r\nX-Evil: 1\r\n\r\n\
         GET http://{HOST} HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         GET http://{HOST}/p?q=1 HTTP/1.1\r\nHost: other.localhost\r\n\r\n\
         OPTIONS * HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let answer = send(address, requests.as_bytes()).await;
    assert_eq!(
        statuses(&answer),
        [200, 200, 200, 200],
        "pipelined requests are answered in order: {answer}"
    );
    let numbers: Vec<&str> = answer.matches("request ").collect();
    assert_eq!(numbers.len(), 4);
    let (seen, violations) = recorded(&shared).await;
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(seen[0].body, b"abcd");
    assert!(seen[0].header("trailer").is_empty(), "{:?}", seen[0]);
    assert_eq!(seen[1].target, "/", "an absolute target without a path");
    assert_eq!(seen[2].target, "/p?q=1");
    assert_eq!(
        seen[2].header("host"),
        [HOST],
        "an absolute target names the host"
    );
    assert_eq!(seen[3].target, "*");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_backend_saw_is_never_sent_twice() {
    let (address, shared, shutdown) = edge(Limits::default()).await;
    // The first request keeps the backend connection; the POST (no body) is read by the
    // backend, which then closes without answering. Sending it again on a new connection would
    // run it twice.
    let answer = send(
        address,
        format!(
            "GET /first HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
             POST /pay HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nX-Answer: none\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let (seen, _) = recorded(&shared).await;
    let payments = seen
        .iter()
        .filter(|r| r.method == "POST" && r.target == "/pay")
        .count();
    assert_eq!(payments, 1, "{seen:?}");
    assert_eq!(statuses(&answer), [200, 502], "{answer}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backends_early_answer_reaches_the_client() {
    // The app refuses an upload from its head: 413, then it reads no more of the body and
    // closes a moment later. The client, still uploading, must get the 413: the router must
    // neither lose it nor reset the connection under it.
    let (app, _) = raw_backend(|mut stream| async move {
        let mut pending = Vec::new();
        read_head(&mut stream, &mut pending).await;
        let _ = stream
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await;
    let (address, _table, shutdown) = router(Routes::from([(HOST.to_owned(), app.into())])).await;
    let mut client = connect(address).await;
    let size = 8 << 20;
    client
        .write_all(
            format!("PUT /up HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("head");
    let (mut read, mut write) = client.into_split();
    let upload = tokio::spawn(async move {
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..(size / block.len()) {
            if write.write_all(&block).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, read.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413 ") && answer.ends_with("too large"),
        "{answer}"
    );
    upload.abort();
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_get_413_and_the_app_never_sees_them() {
    let (backend, shared) = recorder().await;
    let small = Target {
        max_body: Some(10),
        ..Target::from(backend)
    };
    let (address, _table, shutdown) = router_with(
        Routes::from([
            ("small.localhost".to_owned(), small),
            (HOST.to_owned(), backend.into()),
        ]),
        Limits {
            max_body: 20,
            ..Limits::default()
        },
    )
    .await;
    for (request, status) in [
        (
            "POST / HTTP/1.1\r\nHost: small.localhost\r\nContent-Length: 11\r\n\r\nhello world",
            413,
        ),
        (
            "POST / HTTP/1.1\r\nHost: small.localhost\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
            413,
        ),
        (
            "POST / HTTP/1.1\r\nHost: small.localhost\r\nContent-Length: 10\r\n\r\nhelloworld",
            200,
        ),
        (
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 21\r\n\r\nhello world, and more",
            413,
        ),
        (
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 11\r\n\r\nhello world",
            200,
        ),
    ] {
        let answer = send(address, request.as_bytes()).await;
        assert_eq!(statuses(&answer), [status], "{request:?}: {answer}");
        if status == 413 {
            assert!(answer.contains("larger than this app accepts"), "{answer}");
        }
    }
    let (seen, _) = recorded(&shared).await;
    assert!(
        seen.iter()
            .all(|r| r.body == b"helloworld" || r.body == b"hello world"),
        "only bodies within the limit reached the app: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    shutdown.cancel();
}

/// A connection from `source` (any address in 127/8 reaches the router on 127.0.0.1).
async fn connect_from(source: IpAddr, router: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind");
    socket.connect(router).await.expect("connect")
}

/// A GET of the app from `source`, answered 200; the connection stays open for the caller.
async fn served_from(source: IpAddr, router: SocketAddr) -> TcpStream {
    let mut client = connect_from(source, router).await;
    client
        .write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let head = read_head(&mut client, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn one_source_cannot_take_every_connection() {
    let (address, _shared, shutdown) = edge(Limits {
        max_connections: 12,
        max_connections_per_source: 8,
        ..Limits::default()
    })
    .await;
    let flood: IpAddr = [127, 0, 0, 2].into();
    let mut held = Vec::new();
    // Each one served, so the router has surely accepted (and counted) it before the next: a
    // connection the kernel completed but the router has not accepted yet would let a later
    // one take its place under a loaded machine.
    for _ in 0..8 {
        held.push(served_from(flood, address).await);
    }
    // The ninth from the same address is refused at once.
    let mut refused = connect_from(flood, address).await;
    let answer = read_to_close(&mut refused, &mut Vec::new()).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503 ") && answer.contains("too many connections from your"),
        "{answer}"
    );
    // Another address is served.
    let other = served_from([127, 0, 0, 3].into(), address).await;
    // The overall cap holds for everyone else: 8 + 1 + 3 more reach 12.
    let second: IpAddr = [127, 0, 0, 4].into();
    for _ in 0..3 {
        held.push(served_from(second, address).await);
    }
    let mut over = connect_from([127, 0, 0, 5].into(), address).await;
    let answer = read_to_close(&mut over, &mut Vec::new()).await;
    assert!(
        String::from_utf8_lossy(&answer).contains("connection limit"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Closing frees the places.
    drop(held);
    drop(other);
    tokio::time::sleep(Duration::from_millis(300)).await;
    served_from(flood, address).await;
    shutdown.cancel();
}

/// Whether the router closes `client` before `give_up` passes, while `trickle` keeps sending.
async fn closed_while_trickling(
    client: TcpStream,
    trickle: &'static [u8],
    give_up: Duration,
) -> (bool, String) {
    let (mut read, mut write) = client.into_split();
    let sender = tokio::spawn(async move {
        for byte in trickle.iter().cycle() {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(give_up, read.read_to_end(&mut answer))
        .await
        .is_ok();
    sender.abort();
    (closed, String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_released_within_their_limits() {
    let limits = Limits {
        head_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (backend, _) = raw_backend(|mut stream| async move {
        let mut pending = Vec::new();
        let head = read_head(&mut stream, &mut pending).await;
        if head.starts_with("GET /big ") {
            // 256 MiB: far more than the socket buffers hold.
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 268435456\r\n\r\n")
                .await;
            let block = vec![b'x'; 1 << 20];
            for _ in 0..256 {
                if stream.write_all(&block).await.is_err() {
                    return;
                }
            }
        } else if head.starts_with("GET ") {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let _ = stream.read(&mut [0u8; 1]).await;
        } else {
            // An upload: answered only once the whole body is in, which never happens here.
            let _ = stream.read_to_end(&mut Vec::new()).await;
        }
    })
    .await;
    let (address, _table, shutdown) =
        router_with(Routes::from([(HOST.to_owned(), backend.into())]), limits).await;
    // Slowloris: a head one byte at a time, each well within any per-read timeout.
    let (closed, answer) = closed_while_trickling(
        connect(address).await,
        b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed, "a trickled head holds the connection");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    // A stalled body.
    let mut client = connect(address).await;
    client
        .write_all(
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\nabc").as_bytes(),
        )
        .await
        .expect("write");
    // Closed (read_to_close waits no longer than WAIT), with no answer from the app.
    let answer = read_to_close(&mut client, &mut Vec::new()).await;
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
    // An idle keep-alive connection.
    let mut client = connect(address).await;
    let mut pending = Vec::new();
    client
        .write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    read_until(&mut client, &mut pending, b"ok").await;
    assert!(read_to_close(&mut client, &mut pending).await.is_empty());
    // A client that stops reading a large response: closed, its backend connection with it.
    let mut client = connect(address).await;
    client
        .write_all(format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(WAIT, async {
        loop {
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the router never closed the stalled client"
    );
    assert!(
        received < 256 << 20,
        "the whole response went out: {received}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_responses_never_desync_the_client_connection() {
    // The app answers `GET /1` with `answer` and `GET /2` with `second`. Whatever the first
    // answer's framing, the client's next request on the same connection must get its own
    // answer, not bytes left over from the first.
    let answers: [&'static [u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nfirst!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nfirst",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nfirst\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\nfirst",
    ];
    for answer in answers {
        let (app, _) = raw_backend(move |mut stream| async move {
            let mut pending = Vec::new();
            loop {
                let head = read_head(&mut stream, &mut pending).await;
                let reply: &[u8] = if head.starts_with("GET /1 ") {
                    answer
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"
                };
                if stream.write_all(reply).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let (address, _table, shutdown) =
            router(Routes::from([(HOST.to_owned(), app.into())])).await;
        let all = send(
            address,
            format!(
                "GET /1 HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET /2 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let what = String::from_utf8_lossy(answer);
        assert!(!all.contains("injected"), "{what:?} → {all}");
        let codes = statuses(&all);
        // The first is relayed cleanly or refused with 502; a refused exchange may close the
        // connection (then the second never ran), but never answers it with the first's bytes.
        match codes.as_slice() {
            [200, 200] | [502, 200] => assert!(all.ends_with("second"), "{what:?} → {all}"),
            [502] => {}
            _ => panic!("{what:?} → {codes:?}: {all}"),
        }
        shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_websocket_upgrades_pass_and_tunnels_keep_their_place_until_idle() {
    let (echo, _) = raw_backend(|mut stream| async move {
        let mut pending = Vec::new();
        let head = read_head(&mut stream, &mut pending).await;
        if !head.contains("Upgrade: websocket") {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
                .await;
            return;
        }
        let _ = stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await;
        let mut buffer = [0u8; 64];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (address, _table, shutdown) = router_with(
        Routes::from([(HOST.to_owned(), echo.into())]),
        Limits {
            max_connections_per_source: 2,
            tunnel_idle_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
    )
    .await;
    // Another protocol is not switched to: the app gets a plain request.
    let answer = send(
        address,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("plain"),
        "{answer}"
    );
    // Two tunnels from one address hold its two places.
    let source: IpAddr = [127, 0, 0, 6].into();
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut tunnel = connect_from(source, address).await;
        tunnel
            .write_all(
                format!("GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("upgrade");
        let mut pending = Vec::new();
        let head = read_head(&mut tunnel, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        tunnel.write_all(b"ping").await.expect("ping");
        assert_eq!(
            read_until(&mut tunnel, &mut pending, b"ping").await,
            b"ping"
        );
        tunnels.push(tunnel);
    }
    let mut third = connect_from(source, address).await;
    let answer = read_to_close(&mut third, &mut Vec::new()).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503 "),
        "a tunnel keeps its connection's place: {}",
        String::from_utf8_lossy(&answer)
    );
    // Idle tunnels are closed (read_to_close returns only when the router closed them), and
    // their places come back.
    for tunnel in &mut tunnels {
        read_to_close(tunnel, &mut Vec::new()).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    served_from(source, address).await;
    shutdown.cancel();
}
