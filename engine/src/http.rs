//! The engine's HTTP/1.1 surface before any upgrade: request heads parsed with `httparse`,
//! and plain responses (health, metrics, errors as stable JSON, the 101 handshake).

use std::fmt::Write as _;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// The parts of a request the engine routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// True for a WebSocket upgrade request.
    pub upgrade: bool,
    /// `Sec-WebSocket-Key`, for the handshake.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// `Host`, for the URL a carrier signed.
    pub host: Option<String>,
    /// `Authorization` (HTTP Basic carries an inbound secret).
    pub authorization: Option<String>,
    /// `X-Twilio-Signature`.
    pub twilio_signature: Option<String>,
    /// `Content-Length`, for the few requests with a body.
    pub content_length: Option<usize>,
}

/// A request head that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Longer than [`MAX_HEAD`].
    #[error("request head too large")]
    TooLarge,
}

/// Parses a request head from the start of `buf`: `Ok(None)` if more bytes are needed, else
/// the request and the length of its head.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    Ok(Some((
        Request {
            method: req.method.unwrap_or("").to_string(),
            path: path.to_string(),
            query,
            upgrade,
            ws_key: header("sec-websocket-key").map(str::to_string),
            ws_version: header("sec-websocket-version").map(str::to_string),
            host: header("host").map(str::to_string),
            authorization: header("authorization").map(str::to_string),
            twilio_signature: header("x-twilio-signature").map(str::to_string),
            content_length: match header("content-length") {
                Some(v) => Some(v.parse().map_err(|_| HeadError::Malformed("Content-Length is not a number".into()))?),
                None => None,
            },
        },
        len,
    )))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete response with a body; the connection closes after it.
pub fn response(status: u16, content_type: &str, extra_headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = String::with_capacity(160 + body.len());
    let _ = write!(head, "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n", reason(status), body.len());
    for (k, v) in extra_headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    head.push_str(body);
    head.into_bytes()
}

/// An error response with the stable JSON body `{"error":{"code":…,"message":…}}`.
pub fn error(status: u16, code: &str, message: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    response(status, "application/json", extra_headers, &body)
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_upgrade_in_pieces() {
        let raw = b"GET /ws/echo?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(parse_head(&raw[..20]), Ok(None));
        let (req, len) = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(len, raw.len());
        assert_eq!((req.path.as_str(), req.query.as_deref(), req.upgrade), ("/ws/echo", Some("x=1"), true));
        // RFC 6455's own example key and answer.
        let answer = String::from_utf8(switching_protocols(req.ws_key.as_deref().unwrap_or(""))).expect("ascii");
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn rejects_garbage_and_oversized_heads() {
        assert!(matches!(parse_head(b"\x16\x03\x01 hello\r\n\r\n"), Err(HeadError::Malformed(_))));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(parse_head(&big), Err(HeadError::TooLarge));
    }

    #[test]
    fn errors_are_stable_json() {
        let r = String::from_utf8(error(503, "busy", "no free call slot", &[("Retry-After", "1")])).expect("ascii");
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(r.contains("Retry-After: 1\r\n"));
        let body = r.split("\r\n\r\n").nth(1).expect("body");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["code"], "busy");
    }
}
