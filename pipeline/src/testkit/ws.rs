//! What every WebSocket test server shares: its own thread running a compio runtime (one
//! thread serves any number of connections, a task each), a 127.0.0.1 listener, the handshake
//! as the client sent it, and a record per connection that tests read and wait on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use compio::net::{TcpSocket, TcpStream};
use compio::ws::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use compio::ws::tungstenite::http::StatusCode;
use compio::ws::tungstenite::protocol::CloseFrame;
use compio::ws::{Config, WebSocketStream};
use futures_util::StreamExt;

/// A test server's side of a connection.
pub(crate) type Socket = WebSocketStream<TcpStream>;

/// A running server. Dropping it stops the server: its connections close and its thread ends.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Option<flume::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Starts a server on a new thread; `handler` runs as a task for each connection.
    pub(crate) fn start<F, Fut>(name: &str, handler: F) -> io::Result<Server>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (ready, bound) = mpsc::channel();
        let (stop, stopped) = flume::bounded::<()>(1);
        let thread = thread::Builder::new().name(name.to_string()).spawn(move || {
            let runtime = match compio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match listen().await {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(listener.local_addr());
                let mut stop = pin!(stopped.recv_async());
                loop {
                    // One accept in flight at a time, never dropped half-way (with io_uring a
                    // dropped accept could lose its connection).
                    let mut accept = pin!(listener.accept());
                    let accepted = std::future::poll_fn(|cx| {
                        if stop.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                        accept.as_mut().poll(cx).map(Some)
                    })
                    .await;
                    match accepted {
                        None => break,
                        Some(Ok((stream, _))) => compio::runtime::spawn(handler(stream)).detach(),
                        Some(Err(_)) => {}
                    }
                }
            });
        })?;
        let addr = bound.recv().map_err(|_| io::Error::other("the server thread ended"))??;
        Ok(Server { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's root as a WebSocket URL, e.g. `ws://127.0.0.1:40123`: what goes in a
    /// provider's `base_url`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn listen() -> io::Result<compio::net::TcpListener> {
    let socket = TcpSocket::new_v4().await?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    socket.listen(1024).await
}

/// What a client asked for when it connected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handshake {
    /// The request path, e.g. `/v1/listen`.
    pub path: String,
    /// The query's parameters in order, percent-decoded.
    pub query: Vec<(String, String)>,
    /// The headers in order, names lower-case.
    pub headers: Vec<(String, String)>,
}

impl Handshake {
    fn of(request: &Request) -> Handshake {
        let query = request.uri().query().unwrap_or_default();
        Handshake {
            path: request.uri().path().to_string(),
            query: query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (unescape(k), unescape(v))
                })
                .collect(),
            headers: request
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
        }
    }

    /// The first query parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Decodes `%XX` escapes (and `+` as a space); bad escapes stay as they are.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A refused handshake: an HTTP status and a JSON body.
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// Completes the server side of the handshake, unless `check` refuses it.
pub(crate) async fn accept(
    stream: TcpStream,
    check: impl FnOnce(&Handshake) -> Result<(), Refusal> + Unpin,
) -> Option<(Socket, Handshake)> {
    let mut seen = None;
    let capture = Capture { check, seen: &mut seen };
    let config = Config::new().with_buffer_sizes(16 << 10, 16 << 20);
    let socket = compio::ws::accept_hdr_with_config_async(stream, capture, config).await.ok()?;
    Some((socket, seen?))
}

/// The handshake callback: records the request and asks `check` whether to accept it.
struct Capture<'a, F> {
    check: F,
    seen: &'a mut Option<Handshake>,
}

impl<F: FnOnce(&Handshake) -> Result<(), Refusal>> Callback for Capture<'_, F> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let handshake = Handshake::of(request);
        let verdict = (self.check)(&handshake);
        *self.seen = Some(handshake);
        match verdict {
            Ok(()) => Ok(response),
            Err(refusal) => {
                let mut error = ErrorResponse::new(Some(refusal.body));
                *error.status_mut() = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
                Err(error)
            }
        }
    }
}

/// Closes the WebSocket politely: sends `frame`, then reads until the client answers or goes
/// away (at most 250 ms), so unread client data never turns the close into a reset.
pub(crate) async fn close(socket: &mut Socket, frame: Option<CloseFrame>) {
    if socket.close(frame).await.is_ok() {
        let drain = async { while let Some(Ok(_)) = socket.next().await {} };
        let _ = compio::time::timeout(Duration::from_millis(250), drain).await;
    }
}

/// One record per connection, shared between the server's thread and the test.
#[derive(Debug)]
pub(crate) struct Records<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Records<T> {
    fn clone(&self) -> Self {
        Records(Arc::clone(&self.0))
    }
}

impl<T: Clone> Records<T> {
    pub(crate) fn new() -> Records<T> {
        Records(Arc::new(Mutex::new(Vec::new())))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a connection's record; its index.
    pub(crate) fn add(&self, record: T) -> usize {
        let mut all = self.lock();
        all.push(record);
        all.len() - 1
    }

    /// Changes connection `id`'s record.
    pub(crate) fn update(&self, id: usize, change: impl FnOnce(&mut T)) {
        if let Some(record) = self.lock().get_mut(id) {
            change(record);
        }
    }

    /// A copy of every record so far, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<T> {
        self.lock().clone()
    }

    /// Waits (polling every millisecond, on the caller's compio runtime) until `done` holds
    /// for the records or `within` passes; whether it held.
    pub(crate) async fn wait_until(&self, within: Duration, done: impl Fn(&[T]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.lock()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            compio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes() {
        assert_eq!(unescape("a%20b+c%2Fd%zz%4"), "a b c/d%zz%4");
        assert_eq!(unescape("%C3%A9"), "é");
    }
}
