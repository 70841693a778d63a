//! WebSocket client plumbing shared by the streaming adapters (Deepgram, ElevenLabs): one
//! rustls configuration per worker thread, so TLS sessions resume across a call's many
//! sockets; small per-socket buffers, so hundreds of calls per core stay cheap; a bounded
//! handshake; URL helpers.

use std::sync::Arc;
use std::time::Duration;

use compio::net::TcpStream;
use compio::rustls::{ClientConfig, RootCertStore};
use compio::tls::TlsConnector;
use compio::ws::tungstenite::client::IntoClientRequest;
pub(crate) use compio::ws::tungstenite::handshake::client::Request;
use compio::ws::tungstenite::http::HeaderValue;
use compio::ws::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use compio::ws::tungstenite::{self, Error as WsError};
use compio::ws::{Config, WebSocketStream};

/// A vendor WebSocket.
pub(crate) type Socket = WebSocketStream<TcpStream>;

/// The largest message or frame a vendor may send; anything bigger fails the socket.
const MAX_MESSAGE: usize = 4 << 20;
/// The buffers each socket starts with; they grow to a message's size when needed.
const BUFFER: usize = 16 << 10;

thread_local! {
    static TLS: Option<TlsConnector> = tls_connector();
}

/// This thread's TLS client: ring, the Mozilla roots, TLS session resumption shared by every
/// socket the thread opens. `None` (compio-ws then builds its own per socket) only if rustls
/// refuses the protocol versions, which it does not with ring.
fn tls_connector() -> Option<TlsConnector> {
    let provider = Arc::new(compio::rustls::crypto::ring::default_provider());
    let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(TlsConnector::from(Arc::new(config)))
}

/// A handshake request for `url` (`ws://` or `wss://`) with extra headers.
pub(crate) fn request(url: &str, headers: &[(&'static str, &str)]) -> Result<Request, String> {
    let mut request = url.into_client_request().map_err(|e| format!("{url}: {e}"))?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).map_err(|_| format!("{name}: not a header value"))?;
        request.headers_mut().insert(*name, value);
    }
    Ok(request)
}

/// Whether `secret` can travel in a header: printable ASCII, no spaces.
pub(crate) fn is_header_token(secret: &str) -> bool {
    !secret.is_empty() && secret.bytes().all(|b| b.is_ascii_graphic())
}

/// Connects through the outbound-request guard and completes the WebSocket handshake within
/// `within`.
pub(crate) async fn connect(request: Request, within: Duration) -> Result<Socket, String> {
    let websocket = WebSocketConfig::default()
        .read_buffer_size(BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let config = Config::from(websocket).with_buffer_sizes(BUFFER, 2 * MAX_MESSAGE).disable_nagle(true);
    let connector = TLS.with(Clone::clone);
    let uri = request.uri();
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
    let handshake = async move {
        let socket = crate::egress::connect(&host, port).await?;
        let _ = socket.set_nodelay(true);
        compio::ws::client_async_tls_with_config(request, socket, connector, config).await.map_err(|e| describe_error(&e))
    };
    match compio::time::timeout(within, handshake).await {
        Err(_) => Err(format!("no connection within {} ms", within.as_millis())),
        Ok(Err(e)) => Err(e),
        Ok(Ok((socket, _response))) => Ok(socket),
    }
}

/// A socket error in words; a refused handshake gives its status and the start of its body.
pub(crate) fn describe_error(error: &WsError) -> String {
    match error {
        WsError::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(200)]);
            format!("handshake refused: {} {}", response.status(), body.trim())
        }
        other => other.to_string(),
    }
}

/// A close frame in words.
pub(crate) fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!("closed by the server ({})", u16::from(f.code)),
        Some(f) => format!("closed by the server ({}: {})", u16::from(f.code), f.reason.as_str()),
        None => "closed by the server".to_string(),
    }
}

/// Whether a close frame is a normal close (1000, or none given).
pub(crate) fn is_normal_close(frame: Option<&CloseFrame>) -> bool {
    frame.is_none_or(|f| f.code == tungstenite::protocol::frame::coding::CloseCode::Normal)
}

/// `base` (a server root such as `wss://api.example.com`, or `http(s)://` for a self-hosted
/// server) as a WebSocket origin without a trailing slash.
pub(crate) fn ws_origin(base: &str) -> Option<String> {
    let base = base.trim().trim_end_matches('/');
    let (scheme, rest) = base.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return None,
    };
    (!rest.is_empty()).then(|| format!("{scheme}://{rest}"))
}

/// Percent-encodes `value` for a URL path segment or query value (RFC 3986 unreserved
/// characters pass through).
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(ws_origin("https://api.deepgram.com/").as_deref(), Some("wss://api.deepgram.com"));
        assert_eq!(ws_origin("ws://127.0.0.1:9/v1").as_deref(), Some("ws://127.0.0.1:9/v1"));
        assert_eq!(ws_origin("HTTP://h").as_deref(), Some("ws://h"));
        assert_eq!(ws_origin("ftp://h"), None);
        assert_eq!(ws_origin("wss://"), None);
        assert_eq!(ws_origin("nonsense"), None);
    }

    #[test]
    fn escapes() {
        assert_eq!(escape("en-US"), "en-US");
        assert_eq!(escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn header_tokens() {
        assert!(is_header_token("sk_abc-123"));
        assert!(!is_header_token("two words"));
        assert!(!is_header_token("new\nline"));
        assert!(!is_header_token(""));
    }

    #[test]
    fn tls_client_builds() {
        assert!(tls_connector().is_some());
    }
}
