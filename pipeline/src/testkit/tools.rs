//! HTTP/1.1 servers for the tools' tests: a recording server whose answers a test scripts
//! (custom HTTP tools, the knowledge search), and Twilio's REST API for updating a live call.
//!
//! One compio runtime on its own thread serves every connection (keep-alive, requests with a
//! `Content-Length` body), so a load run can point hundreds of calls at one server. The server
//! stops when its [`HttpServer`] is dropped.
//!
//! The Twilio double follows Twilio's documentation of the Call resource ("Update a Call
//! resource", `POST /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json`, form-encoded
//! parameters such as `Twiml`, HTTP basic auth with the Account SID and Auth Token; the answer
//! is the Call resource as JSON) and of its REST errors (`{"code", "message", "more_info",
//! "status"}`; 20003 "Authenticate" with 401, 20404 with 404).

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use futures_util::future::{Either, select};
use serde_json::{Value, json};

/// The largest request head and body the server reads.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 4 << 20;

/// A request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Headers in the order sent, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The query's pairs, percent-decoded.
    pub fn query(&self) -> Vec<(String, String)> {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A form-encoded body's pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The user and password of an `Authorization: Basic` header.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        let encoded = self.header("authorization")?.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_string(), password.to_string()))
    }
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
    /// How long to wait before answering (timeouts).
    pub delay: Duration,
    /// A `Location` header (redirects).
    pub location: Option<String>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply { status, content_type: "application/json".into(), body: body.to_string().into_bytes(), delay: Duration::ZERO, location: None }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, content_type: "text/plain; charset=utf-8".into(), body: body.into().into_bytes(), delay: Duration::ZERO, location: None }
    }

    /// The same answer after `delay`.
    pub fn after(self, delay: Duration) -> Reply {
        Reply { delay, ..self }
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply { location: Some(location.to_string()), ..Reply::text(status, "moved") }
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Option<flume::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Starts a server on 127.0.0.1 that records every request and answers with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> io::Result<HttpServer> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = flume::bounded::<()>(1);
        let (ready, bound) = std::sync::mpsc::channel();
        let log = requests.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = std::thread::Builder::new().name("testkit-http".into()).spawn(move || {
            let runtime = match compio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            runtime.block_on(serve(ready, stopped, log, handler));
        })?;
        let addr = bound.recv().map_err(|_| io::Error::other("the server thread ended"))??;
        Ok(HttpServer { addr, requests, stop: Some(stop), thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    ready: std::sync::mpsc::Sender<io::Result<SocketAddr>>,
    stopped: flume::Receiver<()>,
    log: Arc<Mutex<Vec<Request>>>,
    handler: Arc<Handler>,
) {
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(listener.local_addr());
    let mut stop = pin!(stopped.recv_async());
    loop {
        match select(pin!(listener.accept()), stop.as_mut()).await {
            Either::Left((Ok((stream, _)), _)) => {
                compio::runtime::spawn(connection(stream, log.clone(), handler.clone())).detach();
            }
            Either::Left((Err(_), _)) => continue,
            // The guard was dropped: returning drops the runtime and every connection.
            Either::Right(_) => return,
        }
    }
}

/// Serves requests on one connection until the client closes it.
async fn connection(mut stream: TcpStream, log: Arc<Mutex<Vec<Request>>>, handler: Arc<Handler>) {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(status) => {
                let _ = write_reply(&mut stream, &Reply::text(status, "bad request"), false).await;
                return;
            }
        };
        let keep_alive = !request.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        log.lock().unwrap_or_else(PoisonError::into_inner).push(request.clone());
        let reply = handler(&request);
        if !reply.delay.is_zero() {
            compio::time::sleep(reply.delay).await;
        }
        if write_reply(&mut stream, &reply, keep_alive).await.is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests,
/// `Err(status)` for a request the server will not take.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Option<Request>, u16> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head_len = end + 4;
            let (method, target, headers) = parse_head(&buffer[..head_len])?;
            let request = Request { method, target, headers, body: Vec::new() };
            if request.header("transfer-encoding").is_some() {
                return Err(411);
            }
            let length: usize = match request.header("content-length") {
                Some(v) => v.trim().parse().map_err(|_| 400u16)?,
                None => 0,
            };
            if length > MAX_BODY {
                return Err(413);
            }
            while buffer.len() < head_len + length {
                if !fill(stream, buffer).await {
                    return Err(400);
                }
            }
            let body = buffer[head_len..head_len + length].to_vec();
            buffer.drain(..head_len + length);
            return Ok(Some(Request { body, ..request }));
        }
        if buffer.len() > MAX_HEAD {
            return Err(431);
        }
        if !fill(stream, buffer).await {
            return if buffer.is_empty() { Ok(None) } else { Err(400) };
        }
    }
}

/// Reads more bytes into `buffer`; false at end of stream or on an error.
async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let BufResult(read, chunk) = stream.read(Vec::with_capacity(16 * 1024)).await;
    match read {
        Ok(n) if n > 0 => {
            buffer.extend_from_slice(&chunk);
            true
        }
        _ => false,
    }
}

type Head = (String, String, Vec<(String, String)>);

fn parse_head(head: &[u8]) -> Result<Head, u16> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(400),
    }
    let method = parsed.method.ok_or(400u16)?.to_string();
    let target = parsed.path.ok_or(400u16)?.to_string();
    let headers = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    Ok((method, target, headers))
}

async fn write_reply(stream: &mut TcpStream, reply: &Reply, keep_alive: bool) -> io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let location = reply.location.as_deref().map(|l| format!("Location: {l}\r\n")).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{location}Connection: {}\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    out.extend_from_slice(&reply.body);
    let BufResult(written, _) = stream.write_all(out).await;
    written
}

/// Starts a double of Twilio's REST API that knows one account. Every call SID of Twilio's
/// shape (`CA` and 32 hex digits) is a live call; updating it with `Twiml` (or `Url`, or
/// `Status`) answers the Call resource, with the Twiml recorded in the request log.
pub fn twilio(account_sid: &str, auth_token: &str) -> io::Result<HttpServer> {
    let (account, token) = (account_sid.to_string(), auth_token.to_string());
    HttpServer::start(move |r| twilio_answer(r, &account, &token))
}

fn twilio_error(status: u16, code: u32, message: &str) -> Reply {
    Reply::json(status, &json!({ "code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status }))
}

fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn twilio_answer(r: &Request, account: &str, token: &str) -> Reply {
    if r.basic_auth().is_none_or(|(user, password)| user != account || password != token) {
        return twilio_error(401, 20003, "Authenticate");
    }
    let not_found = || twilio_error(404, 20404, &format!("The requested resource {} was not found", r.path()));
    let Some(rest) = r.path().strip_prefix("/2010-04-01/Accounts/") else { return not_found() };
    let Some((path_account, rest)) = rest.split_once("/Calls/") else { return not_found() };
    let Some(call_sid) = rest.strip_suffix(".json") else { return not_found() };
    if path_account != account || !is_sid(call_sid, "CA") {
        return not_found();
    }
    if r.method != "POST" {
        return twilio_error(405, 20004, "Method not allowed");
    }
    if !r.header("content-type").is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded")) {
        return twilio_error(415, 20001, "Content-Type must be application/x-www-form-urlencoded");
    }
    let form = r.form();
    let param = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if let Some(twiml) = param("Twiml") {
        let xml = twiml.trim();
        if twiml.chars().count() > 4000 || !xml.starts_with("<Response>") || !xml.ends_with("</Response>") {
            return twilio_error(400, 12100, "Document parse failure");
        }
    } else if param("Url").is_none() && param("Status").is_none() {
        return twilio_error(400, 20001, "Url, Twiml or Status is required");
    }
    let status = match param("Status") {
        Some("completed") => "completed",
        Some("canceled") => "canceled",
        Some(_) => return twilio_error(400, 20001, "Status must be canceled or completed"),
        None => "in-progress",
    };
    let date = "Tue, 31 Aug 2010 20:36:28 +0000";
    let uri = r.path().to_string();
    let base = uri.trim_end_matches(".json");
    Reply::json(
        200,
        &json!({
            "account_sid": account,
            "annotation": null,
            "answered_by": null,
            "api_version": "2010-04-01",
            "caller_name": null,
            "date_created": date,
            "date_updated": date,
            "direction": "inbound",
            "duration": null,
            "end_time": null,
            "forwarded_from": null,
            "from": "+15017122661",
            "from_formatted": "(501) 712-2661",
            "group_sid": null,
            "parent_call_sid": null,
            "phone_number_sid": "PNaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "price": null,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": call_sid,
            "start_time": date,
            "status": status,
            "subresource_uris": {
                "notifications": format!("{base}/Notifications.json"),
                "recordings": format!("{base}/Recordings.json"),
                "payments": format!("{base}/Payments.json"),
                "events": format!("{base}/Events.json"),
                "siprec": format!("{base}/Siprec.json"),
                "streams": format!("{base}/Streams.json"),
                "transcriptions": format!("{base}/Transcriptions.json"),
                "user_defined_message_subscriptions": format!("{base}/UserDefinedMessageSubscriptions.json"),
                "user_defined_messages": format!("{base}/UserDefinedMessages.json")
            },
            "to": "+14155551212",
            "to_formatted": "(415) 555-1212",
            "trunk_sid": null,
            "uri": uri,
        }),
    )
}
