//! HTTP/1.x message heads and body framing for the router, as pure functions over bytes.
//!
//! The router does not rebuild messages from a parsed model: it reads a head, decides where the
//! message goes and how its body is delimited, and writes a rewritten head followed by the body
//! bytes as they came. That keeps a proxied request to a few reads and writes.
//!
//! Hostile input is refused here, before anything reaches a backend: a head over [`MAX_HEAD`]
//! bytes or with too many headers, a message with both `Content-Length` and `Transfer-Encoding`
//! or with differing lengths (request smuggling), a transfer coding other than `chunked`, a
//! malformed chunk.

/// The largest request or response head accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers one head may carry.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line or trailer line, in bytes.
const MAX_CHUNK_LINE: usize = 8 * 1024;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the legacy
/// proxy headers. `Transfer-Encoding` is handled with the body framing.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a head cannot be forwarded; the status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// More bytes are needed.
    Incomplete,
    /// 400 with this reason.
    Bad(&'static str),
    /// 431: the head is too large or has too many headers.
    TooLarge,
    /// 501 with this reason.
    NotImplemented(&'static str),
}

/// A request head, ready to forward.
#[derive(Debug)]
pub struct Request {
    /// Length of the head in the input, final empty line included.
    pub head_len: usize,
    /// The routing key: the host, lowercase, without port or trailing dot.
    pub host: String,
    /// `HEAD` (its response has no body whatever its headers say).
    pub is_head: bool,
    /// HTTP/1.0 (no chunked responses; the connection closes after the response).
    pub http10: bool,
    /// Whether the client keeps the connection open after this exchange.
    pub keep_alive: bool,
    /// The client asks to switch protocols (`Connection: upgrade` with `Upgrade`).
    pub upgrade: bool,
    /// The request body's framing.
    pub body: Body,
    /// The head to send to the backend: origin-form target, HTTP/1.1, no hop-by-hop headers,
    /// `X-Forwarded-For`/`-Proto`/`-Host` set.
    pub forward: Vec<u8>,
}

/// A response head, ready to forward.
#[derive(Debug)]
pub struct Response {
    /// Length of the head in the input, final empty line included.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// The response body's framing as the backend sends it.
    pub body: Body,
    /// Whether the chunked body is decoded on the way (for an HTTP/1.0 client).
    pub dechunk: bool,
    /// Whether the backend connection can carry another request afterwards.
    pub backend_keep_alive: bool,
    /// Whether the client connection stays open afterwards.
    pub client_keep_alive: bool,
    /// The head to send to the client.
    pub forward: Vec<u8>,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The comma-separated tokens of header values, trimmed and lowercase.
fn tokens<'a>(values: impl Iterator<Item = &'a [u8]> + 'a) -> impl Iterator<Item = String> + 'a {
    values.flat_map(|value| {
        String::from_utf8_lossy(value)
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
    })
}

/// The body framing from `Content-Length` and `Transfer-Encoding`, refusing ambiguity.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Option<Body>, &'static str> {
    let mut length: Option<u64> = None;
    let mut codings: Vec<String> = Vec::new();
    for header in headers {
        if eq(header.name, "content-length") {
            let text = std::str::from_utf8(header.value).map_err(|_| "invalid Content-Length")?;
            for part in text.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("invalid Content-Length");
                }
                let value: u64 = part.parse().map_err(|_| "invalid Content-Length")?;
                if length.is_some_and(|l| l != value) {
                    return Err("conflicting Content-Length headers");
                }
                length = Some(value);
            }
        } else if eq(header.name, "transfer-encoding") {
            codings.extend(tokens(std::iter::once(header.value)));
        }
    }
    if !codings.is_empty() || headers.iter().any(|h| eq(h.name, "transfer-encoding")) {
        if length.is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        return Ok(Some(
            if codings.last().map(String::as_str) == Some("chunked") {
                Body::Chunked
            } else {
                Body::UntilClose
            },
        ));
    }
    Ok(length.map(|l| if l == 0 { Body::Empty } else { Body::Length(l) }))
}

/// Whether a header belongs to the connection: a standard hop-by-hop header or one the
/// `Connection` header names (`connection` holds its lowercase tokens).
fn hop_by_hop(name: &str, connection: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| eq(h, name)) || connection.iter().any(|t| eq(t, name))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The host part of a `Host` value or an authority: without port and trailing dot, lowercase.
fn routing_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        &raw[..=raw.find(']')?]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.trim_end_matches('.');
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Parses a request head from the start of `input` and builds the head for the backend.
///
/// `peer` is the client's address as text, appended to `X-Forwarded-For`.
///
/// # Errors
/// [`Refusal::Incomplete`] until the whole head is in `input`; the other refusals are final.
pub fn request(input: &[u8], peer: &str) -> Result<Request, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD => return Err(Refusal::TooLarge),
        Ok(httparse::Status::Partial) => return Err(Refusal::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::Bad("malformed request")),
    };
    if head_len > MAX_HEAD {
        return Err(Refusal::TooLarge);
    }
    let method = parsed.method.unwrap_or("GET");
    let target = parsed.path.unwrap_or("/");
    let http10 = parsed.version == Some(0);
    let headers = parsed.headers;
    if eq(method, "CONNECT") {
        return Err(Refusal::NotImplemented("CONNECT is not supported"));
    }

    // The target in origin form; an absolute-form target names the host itself.
    let (path, target_host) = if target.starts_with('/') || target == "*" {
        (target, None)
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let path = &rest[split..];
        (
            if path.is_empty() { "/" } else { path },
            Some(&rest[..split]),
        )
    } else {
        return Err(Refusal::Bad("invalid request target"));
    };
    let mut host_headers = headers.iter().filter(|h| eq(h.name, "host"));
    let host_header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(Refusal::Bad("more than one Host header"));
    }
    let host_value = match (target_host, host_header) {
        (Some(authority), _) => authority.to_owned(),
        (None, Some(header)) => std::str::from_utf8(header.value)
            .map_err(|_| Refusal::Bad("invalid Host header"))?
            .to_owned(),
        (None, None) => return Err(Refusal::Bad("no Host header")),
    };
    let host = routing_host(&host_value).ok_or(Refusal::Bad("invalid Host header"))?;

    let body = match framing(headers).map_err(Refusal::Bad)? {
        Some(Body::UntilClose) => {
            return Err(Refusal::NotImplemented(
                "only the chunked transfer coding is supported",
            ));
        }
        Some(Body::Chunked) if http10 => {
            return Err(Refusal::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        Some(body) => body,
        None => Body::Empty,
    };

    let connection: Vec<String> = tokens(
        headers
            .iter()
            .filter(|h| eq(h.name, "connection") || eq(h.name, "proxy-connection"))
            .map(|h| h.value),
    )
    .collect();
    let keep_alive = if http10 {
        false
    } else {
        !connection.iter().any(|t| t == "close")
    };
    let upgrade = !http10
        && connection.iter().any(|t| t == "upgrade")
        && headers.iter().any(|h| eq(h.name, "upgrade"));

    let mut forward = Vec::with_capacity(head_len + 128);
    forward.extend_from_slice(method.as_bytes());
    forward.push(b' ');
    forward.extend_from_slice(path.as_bytes());
    forward.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Vec<u8> = Vec::new();
    for header in headers.iter() {
        let name = header.name;
        if hop_by_hop(name, &connection) && !(upgrade && eq(name, "upgrade")) {
            continue;
        }
        if eq(name, "x-forwarded-for") {
            if !forwarded_for.is_empty() {
                forwarded_for.extend_from_slice(b", ");
            }
            forwarded_for.extend_from_slice(header.value);
            continue;
        }
        if eq(name, "x-forwarded-proto")
            || eq(name, "x-forwarded-host")
            || (target_host.is_some() && eq(name, "host"))
        {
            continue;
        }
        push_header(&mut forward, name.as_bytes(), header.value);
    }
    if target_host.is_some() {
        push_header(&mut forward, b"Host", host_value.as_bytes());
    }
    if !forwarded_for.is_empty() {
        forwarded_for.extend_from_slice(b", ");
    }
    forwarded_for.extend_from_slice(peer.as_bytes());
    push_header(&mut forward, b"X-Forwarded-For", &forwarded_for);
    push_header(&mut forward, b"X-Forwarded-Proto", b"http");
    push_header(&mut forward, b"X-Forwarded-Host", host_value.as_bytes());
    if upgrade {
        push_header(&mut forward, b"Connection", b"upgrade");
    }
    forward.extend_from_slice(b"\r\n");

    Ok(Request {
        head_len,
        host,
        is_head: eq(method, "HEAD"),
        http10,
        keep_alive,
        upgrade,
        body,
        forward,
    })
}

/// Parses a response head from the start of `input` and builds the head for the client of
/// `request`. With `closing`, the client connection closes after this response.
///
/// # Errors
/// [`Refusal::Incomplete`] until the whole head is in `input`; any other refusal means the
/// backend sent something the client must not see (the client gets 502).
pub fn response(input: &[u8], request: &Request, closing: bool) -> Result<Response, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD => return Err(Refusal::TooLarge),
        Ok(httparse::Status::Partial) => return Err(Refusal::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::Bad("malformed response")),
    };
    let status = parsed.code.unwrap_or(502);
    let reason = parsed.reason.unwrap_or("");
    let backend_http10 = parsed.version == Some(0);
    let headers = parsed.headers;
    let connection: Vec<String> = tokens(
        headers
            .iter()
            .filter(|h| eq(h.name, "connection"))
            .map(|h| h.value),
    )
    .collect();
    let switching = status == 101;
    if switching && !request.upgrade {
        return Err(Refusal::Bad("101 to a request that asked for no upgrade"));
    }
    let informational = (100..200).contains(&status);
    let body = if informational || status == 204 || status == 304 || request.is_head {
        // The length headers of a HEAD or 304 response describe the resource; keep them.
        Body::Empty
    } else {
        match framing(headers).map_err(Refusal::Bad)? {
            Some(body) => body,
            None => Body::UntilClose,
        }
    };
    let backend_keep_alive = body != Body::UntilClose
        && !switching
        && if backend_http10 {
            connection.iter().any(|t| t == "keep-alive")
        } else {
            !connection.iter().any(|t| t == "close")
        };
    let dechunk = request.http10 && body == Body::Chunked;
    let client_keep_alive =
        !closing && request.keep_alive && !switching && body != Body::UntilClose;

    let mut forward = Vec::with_capacity(head_len + 32);
    forward.extend_from_slice(b"HTTP/1.1 ");
    // A three-digit code: httparse accepts no other.
    forward.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    forward.extend_from_slice(reason.as_bytes());
    forward.extend_from_slice(b"\r\n");
    let keep_framing = !informational && !dechunk;
    for header in headers.iter() {
        let name = header.name;
        if hop_by_hop(name, &connection) && !(switching && eq(name, "upgrade")) {
            continue;
        }
        if !keep_framing && eq(name, "transfer-encoding") {
            continue;
        }
        push_header(&mut forward, name.as_bytes(), header.value);
    }
    if switching {
        push_header(&mut forward, b"Connection", b"upgrade");
    } else if !informational && !client_keep_alive {
        push_header(&mut forward, b"Connection", b"close");
    }
    forward.extend_from_slice(b"\r\n");
    Ok(Response {
        head_len,
        status,
        body,
        dechunk,
        backend_keep_alive,
        client_keep_alive,
        forward,
    })
}

/// A short plain-text response from the router itself.
pub fn page(status: u16, text: &str, close: bool) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        text.len()
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(text);
    out.into_bytes()
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: the size so far, its digit count, whether past the digits.
    Size {
        size: u64,
        digits: u8,
        past: bool,
        line: usize,
    },
    /// After the size line's CR.
    SizeLf { size: u64 },
    /// Inside chunk data: bytes left.
    Data(u64),
    /// After chunk data: expecting CR.
    DataCr,
    /// After chunk data's CR.
    DataLf,
    /// In the trailer section: length of the current line.
    Trailer { line: usize, total: usize },
    /// After a trailer line's CR.
    TrailerLf { line: usize, total: usize },
    /// The body is complete.
    Done,
}

/// Finds the end of a chunked body as its bytes pass, optionally decoding it.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: ChunkState::Size {
                size: 0,
                digits: 0,
                past: false,
                line: 0,
            },
        }
    }
}

impl Chunked {
    /// Whether the whole body has passed.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of `input` up to the end of the body; returns how many. With `data`, the
    /// chunk data (only) is appended to it.
    ///
    /// # Errors
    /// A reason when the bytes are not a valid chunked body.
    pub fn advance(
        &mut self,
        input: &[u8],
        mut data: Option<&mut Vec<u8>>,
    ) -> Result<usize, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            self.state = match self.state {
                Done => return Ok(i),
                Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    if let Some(out) = data.as_deref_mut() {
                        out.extend_from_slice(&input[i..i + take]);
                    }
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    continue;
                }
                Size {
                    size,
                    digits,
                    past,
                    line,
                } => {
                    if line >= MAX_CHUNK_LINE {
                        return Err("chunk-size line too long");
                    }
                    match byte {
                        b'\r' if digits > 0 => SizeLf { size },
                        b'\r' => return Err("chunk without a size"),
                        _ if !past && byte.is_ascii_hexdigit() => {
                            if digits >= 15 {
                                return Err("chunk size too large");
                            }
                            let value = u64::from(match byte {
                                b'0'..=b'9' => byte - b'0',
                                b'a'..=b'f' => byte - b'a' + 10,
                                _ => byte - b'A' + 10,
                            });
                            Size {
                                size: size * 16 + value,
                                digits: digits + 1,
                                past,
                                line: line + 1,
                            }
                        }
                        b';' | b' ' | b'\t' if digits > 0 => Size {
                            size,
                            digits,
                            past: true,
                            line: line + 1,
                        },
                        b'\n' => return Err("bare LF in a chunk-size line"),
                        _ if past && byte != 0 && byte != 0x7f => Size {
                            size,
                            digits,
                            past,
                            line: line + 1,
                        },
                        _ => return Err("invalid chunk-size line"),
                    }
                }
                SizeLf { size } => match byte {
                    b'\n' if size == 0 => Trailer { line: 0, total: 0 },
                    b'\n' => Data(size),
                    _ => return Err("expected LF after a chunk size"),
                },
                DataCr => match byte {
                    b'\r' => DataLf,
                    _ => return Err("chunk data longer than its size"),
                },
                DataLf => match byte {
                    b'\n' => Size {
                        size: 0,
                        digits: 0,
                        past: false,
                        line: 0,
                    },
                    _ => return Err("expected LF after chunk data"),
                },
                Trailer { line, total } => {
                    if line >= MAX_CHUNK_LINE || total >= MAX_HEAD {
                        return Err("trailer too large");
                    }
                    match byte {
                        b'\r' => TrailerLf { line, total },
                        b'\n' => return Err("bare LF in the trailer"),
                        _ => Trailer {
                            line: line + 1,
                            total: total + 1,
                        },
                    }
                }
                TrailerLf { line, total } => match byte {
                    b'\n' if line == 0 => Done,
                    b'\n' => Trailer {
                        line: 0,
                        total: total + 2,
                    },
                    _ => return Err("expected LF in the trailer"),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Request, Refusal> {
        request(text.as_bytes(), "10.0.0.9")
    }

    fn forwarded(text: &str) -> String {
        String::from_utf8(req(text).expect("request").forward).expect("utf-8")
    }

    #[test]
    fn a_request_is_rewritten_for_the_backend() {
        let out = forwarded(
            "GET /a?b=1 HTTP/1.1\r\nHost: Blog.Localhost:8080\r\nConnection: keep-alive, x-hop\r\n\
             X-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\n\
             X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: Blog.Localhost:8080\r\nAccept: */*\r\n\
             X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: Blog.Localhost:8080\r\n\r\n"
        );
        let parsed = req("GET / HTTP/1.1\r\nHost: Blog.Localhost.:8080\r\n\r\n").expect("ok");
        assert_eq!(parsed.host, "blog.localhost");
        assert!(parsed.keep_alive);
        assert_eq!(parsed.body, Body::Empty);
    }

    #[test]
    fn an_absolute_target_becomes_origin_form_and_names_the_host() {
        let out = forwarded(
            "GET http://App.localhost:8080/x?y HTTP/1.1\r\nHost: other.localhost\r\n\r\n",
        );
        assert!(out.starts_with("GET /x?y HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("Host: App.localhost:8080\r\n"), "{out}");
        assert!(!out.contains("other.localhost"), "{out}");
        let parsed = req("GET http://App.localhost HTTP/1.1\r\n\r\n").expect("ok");
        assert_eq!(parsed.host, "app.localhost");
    }

    #[test]
    fn bodies_are_framed_and_ambiguity_is_refused() {
        let cl = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").expect("ok");
        assert_eq!(cl.body, Body::Length(12));
        let te =
            req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").expect("ok");
        assert_eq!(te.body, Body::Chunked);
        assert!(String::from_utf8_lossy(&te.forward).contains("Transfer-Encoding: chunked"));
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET a.b HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(req(bad), Err(Refusal::Bad(_))),
                "{bad:?} gave {:?}",
                req(bad)
            );
        }
        assert!(matches!(
            req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(Refusal::NotImplemented(_))
        ));
        assert!(matches!(
            req("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(Refusal::NotImplemented(_))
        ));
        // Equal repeated lengths are one length.
        let same = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n").expect("ok");
        assert_eq!(same.body, Body::Length(3));
    }

    #[test]
    fn heads_are_bounded() {
        assert!(matches!(
            req("GET / HTTP/1.1\r\nHost: a\r\n"),
            Err(Refusal::Incomplete)
        ));
        let huge = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "y".repeat(MAX_HEAD));
        assert!(matches!(req(&huge), Err(Refusal::TooLarge)));
        let many: String = (0..200).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert!(matches!(req(&many), Err(Refusal::TooLarge)));
    }

    #[test]
    fn connection_semantics_follow_the_version() {
        assert!(
            !req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .expect("ok")
                .keep_alive
        );
        assert!(
            !req("GET / HTTP/1.0\r\nHost: a\r\n\r\n")
                .expect("ok")
                .keep_alive
        );
        let up =
            req("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .expect("ok");
        assert!(up.upgrade);
        let out = String::from_utf8(up.forward).expect("utf-8");
        assert!(out.contains("Upgrade: websocket\r\n") && out.contains("Connection: upgrade\r\n"));
        let no = req("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").expect("ok");
        assert!(!no.upgrade);
        assert!(!String::from_utf8_lossy(&no.forward).contains("websocket"));
    }

    fn resp(request: &str, response: &str, closing: bool) -> Response {
        super::response(
            response.as_bytes(),
            &req(request).expect("request"),
            closing,
        )
        .expect("response")
    }

    #[test]
    fn responses_keep_their_framing_and_lose_hop_by_hop_headers() {
        let get = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let r = resp(
            get,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\r\nhello",
            false,
        );
        assert_eq!(r.body, Body::Length(5));
        assert!(r.backend_keep_alive && r.client_keep_alive);
        assert_eq!(
            String::from_utf8(r.forward).expect("utf-8"),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        );
        let chunked = resp(
            get,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(chunked.body, Body::Chunked);
        assert!(!chunked.dechunk);
        let close = resp(get, "HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(close.body, Body::UntilClose);
        assert!(!close.backend_keep_alive && !close.client_keep_alive);
        assert!(String::from_utf8_lossy(&close.forward).contains("Connection: close\r\n"));
        let head = resp(
            "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
            false,
        );
        assert_eq!(head.body, Body::Empty);
        assert!(String::from_utf8_lossy(&head.forward).contains("Content-Length: 99"));
        assert_eq!(
            resp(get, "HTTP/1.1 304 Not Modified\r\n\r\n", false).body,
            Body::Empty
        );
        let old = resp(
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert!(old.dechunk && !old.client_keep_alive);
        assert!(!String::from_utf8_lossy(&old.forward).contains("Transfer-Encoding"));
        let backend10 = resp(get, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!backend10.backend_keep_alive && backend10.client_keep_alive);
        let shutting = resp(get, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", true);
        assert!(!shutting.client_keep_alive);
        let r = super::response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            &req(get).expect("request"),
            false,
        );
        assert!(matches!(r, Err(Refusal::Bad(_))));
        let r = super::response(
            b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n",
            &req(get).expect("request"),
            false,
        );
        assert!(matches!(r, Err(Refusal::Bad(_))), "a 101 nobody asked for");
    }

    fn chunked(input: &[u8], decode: bool) -> Result<(usize, Vec<u8>, bool), &'static str> {
        let mut decoder = Chunked::default();
        let mut data = Vec::new();
        // Byte by byte: every state must survive a split anywhere.
        let mut used = 0;
        for (i, byte) in input.iter().enumerate() {
            let n = decoder.advance(std::slice::from_ref(byte), decode.then_some(&mut data))?;
            used += n;
            if decoder.done() {
                return Ok((i + 1, data, true));
            }
        }
        Ok((used, data, decoder.done()))
    }

    #[test]
    fn chunked_bodies_end_where_they_say() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let (used, data, done) = chunked(body, true).expect("valid");
        assert!(done);
        assert_eq!(&body[used..], b"NEXT");
        assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
        let mut whole = Chunked::default();
        assert_eq!(whole.advance(body, None), Ok(body.len() - 4));
        assert!(whole.done());
        let (_, _, done) = chunked(b"5\r\nhel", false).expect("partial");
        assert!(!done);
        for bad in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"5\nhello",
            b"5\r\nhelloX\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            assert!(
                chunked(bad, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn pages_have_a_length() {
        let page = String::from_utf8(page(404, "no\n", false)).expect("utf-8");
        assert_eq!(
            page,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nno\n"
        );
    }
}
