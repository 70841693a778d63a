//! OpenTelemetry export of the engine's call spans and the conversation's turn spans
//! (`--otlp-endpoint`): a `tracing` layer that keeps only the spans listed in [`RULES`], and
//! one background thread that posts them in batches to `{endpoint}/v1/traces` as OTLP/HTTP
//! with the JSON encoding.
//!
//! A call thread only builds the finished span's record and offers it to a bounded queue
//! (`try_send`; when the queue is full the span is dropped and counted), so export never
//! blocks or slows a call. The exporter thread sends a batch when it holds [`BATCH`] spans or
//! every [`EVERY`], with [`TIMEOUT`] on each step of the request; a failed batch is dropped,
//! and failures and drops are logged at most once a minute.
//!
//! Why a hand-written HTTP/1.1 POST over `std::net::TcpStream` and not a client crate: the
//! exporter is one blocking thread sending one small request a second to a collector that is
//! normally on the same host (an OpenTelemetry Collector or agent, which does TLS, auth and
//! retries towards a vendor). `reqwest` is linked already (through the control plane) but is
//! async and would put a tokio runtime on this thread of the engine's process; the pipeline's
//! `cyper` needs a compio runtime. Thirty lines of request writing and status-line reading
//! need neither and add no crate. The cost is `http://` only, refused at start otherwise.
//!
//! The same reasoning keeps out the `opentelemetry` crates: the OTLP JSON mapping of the few
//! fields used here is a page of `serde_json` (see [`encode`]).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterFn, LevelFilter, filter_fn};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Spans waiting for the exporter; beyond this, finished spans are dropped and counted.
const QUEUE: usize = 4096;
/// The most spans in one request.
const BATCH: usize = 512;
/// How often the spans gathered so far are sent.
const EVERY: Duration = Duration::from_secs(1);
/// Connecting, writing the request and reading the answer, each.
const TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about failed requests and dropped spans per this long.
const QUIET: Duration = Duration::from_secs(60);
/// How long a stopping process waits for the last spans to be sent.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// A kind of span that is exported.
#[derive(Debug)]
struct Rule {
    /// The span's name.
    name: &'static str,
    /// The crate (the start of the target) that creates it.
    target: &'static str,
    /// OTLP `SpanKind`: 1 internal, 2 server.
    kind: u8,
    /// Events logged in the span (at `INFO` or above) whose fields become its attributes.
    absorb: &'static str,
}

/// What is exported: the engine's span per call (`call{id, bot, transport, worker, call,
/// org}`) and the conversation's span per turn, a child of its call's, which takes the stage
/// latencies of its `turn answered` event.
const RULES: &[Rule] = &[
    Rule { name: "call", target: "cxb_engine", kind: 2, absorb: "" },
    Rule { name: "turn", target: "cxb_pipeline", kind: 1, absorb: "turn answered" },
];

fn in_crate(target: &str, krate: &str) -> bool {
    target.strip_prefix(krate).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

fn rule_for(meta: &Metadata<'_>) -> Option<&'static Rule> {
    RULES.iter().find(|r| meta.is_span() && meta.name() == r.name && in_crate(meta.target(), r.target))
}

/// The callsites the layer needs: the exported spans, and the events they may absorb.
/// Decided once per callsite from its metadata.
fn wanted(meta: &Metadata<'_>) -> bool {
    if *meta.level() > Level::INFO {
        return false;
    }
    if meta.is_span() {
        return rule_for(meta).is_some();
    }
    meta.is_event() && RULES.iter().any(|r| !r.absorb.is_empty() && in_crate(meta.target(), r.target))
}

/// An attribute's value, as OTLP's `AnyValue` carries it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// A finished span, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) parent_span_id: Option<u64>,
    pub(crate) name: &'static str,
    pub(crate) kind: u8,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    pub(crate) attributes: Vec<(String, AttrValue)>,
}

/// An exported span while it is open, kept in the span's extensions.
#[derive(Debug)]
struct Open {
    rule: &'static Rule,
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    start_ns: u64,
    attributes: Vec<(String, AttrValue)>,
}

/// Collects fields as attributes; a field recorded again replaces its value. An event's
/// `message` is kept apart.
struct Collect<'a> {
    attributes: &'a mut Vec<(String, AttrValue)>,
    message: Option<String>,
}

impl Collect<'_> {
    fn put(&mut self, field: &Field, value: AttrValue) {
        if field.name() == "message" {
            if let AttrValue::Str(text) = value {
                self.message = Some(text);
            }
            return;
        }
        match self.attributes.iter_mut().find(|(k, _)| k == field.name()) {
            Some((_, v)) => *v = value,
            None => self.attributes.push((field.name().to_string(), value)),
        }
    }
}

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, AttrValue::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, AttrValue::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, i64::try_from(value).map_or_else(|_| AttrValue::Str(value.to_string()), AttrValue::Int));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, AttrValue::Double(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, AttrValue::Bool(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, AttrValue::Str(format!("{value:?}")));
    }
}

/// Span and trace ids: unique within the process (a counter through splitmix64's mixer, a
/// bijection), unpredictable across processes (the counter starts from std's randomly keyed
/// hasher), never zero (an invalid id in OTLP).
#[derive(Debug)]
struct Ids {
    next: AtomicU64,
}

impl Ids {
    fn new() -> Ids {
        Ids { next: AtomicU64::new(RandomState::new().hash_one(now_ns())) }
    }

    fn next(&self) -> u64 {
        loop {
            let mut z = self.next.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    }

    fn trace_id(&self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What goes to the exporter thread.
#[derive(Debug)]
enum Msg {
    Span(SpanRecord),
    /// Send what is held now, then answer.
    Flush(mpsc::Sender<()>),
}

/// The `tracing` layer: builds [`SpanRecord`]s of the exported spans and offers them to the
/// exporter's queue.
#[derive(Debug)]
pub(crate) struct OtlpLayer {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    ids: Ids,
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(rule) = rule_for(span.metadata()) else { return };
        // The nearest exported ancestor, if any: same trace, and it is the parent.
        let parent = span.scope().skip(1).find_map(|p| p.extensions().get::<Open>().map(|o| (o.trace_id, o.span_id)));
        let (trace_id, parent_span_id) = match parent {
            Some((trace, parent)) => (trace, Some(parent)),
            None => (self.ids.trace_id(), None),
        };
        let mut open = Open { rule, trace_id, span_id: self.ids.next(), parent_span_id, start_ns: now_ns(), attributes: Vec::new() };
        attrs.record(&mut Collect { attributes: &mut open.attributes, message: None });
        span.extensions_mut().insert(open);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(open) = extensions.get_mut::<Open>() {
            values.record(&mut Collect { attributes: &mut open.attributes, message: None });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else { return };
        let mut extensions = span.extensions_mut();
        let Some(open) = extensions.get_mut::<Open>().filter(|o| !o.rule.absorb.is_empty()) else { return };
        let mut fields = Vec::new();
        let mut collect = Collect { attributes: &mut fields, message: None };
        event.record(&mut collect);
        if collect.message.as_deref() == Some(open.rule.absorb) {
            for (key, value) in fields {
                match open.attributes.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => *v = value,
                    None => open.attributes.push((key, value)),
                }
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else { return };
        let record = SpanRecord {
            trace_id: open.trace_id,
            span_id: open.span_id,
            parent_span_id: open.parent_span_id,
            name: open.rule.name,
            kind: open.rule.kind,
            start_ns: open.start_ns,
            end_ns: now_ns().max(open.start_ns),
            attributes: open.attributes,
        };
        if self.tx.try_send(Msg::Span(record)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The filter to put the layer behind: only the exported spans and the events they absorb
/// reach it, whatever `--log` says.
pub(crate) fn filter() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    filter_fn(wanted as fn(&Metadata<'_>) -> bool).with_max_level_hint(LevelFilter::INFO)
}

/// Sends the spans still queued when dropped (waiting at most [`FLUSH_WAIT`]).
#[derive(Debug)]
pub(crate) struct OtlpGuard {
    tx: SyncSender<Msg>,
}

impl Drop for OtlpGuard {
    fn drop(&mut self) {
        let (ack, done) = mpsc::channel();
        if self.tx.try_send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// The layer and its exporter thread for `--otlp-endpoint URL`.
pub(crate) fn layer(url: &str) -> anyhow::Result<(OtlpLayer, OtlpGuard)> {
    let endpoint = Endpoint::parse(url)?;
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    std::thread::Builder::new()
        .name("cxb-otlp".into())
        .spawn(move || export(&rx, &endpoint, &counter))
        .context("starting the OTLP exporter thread")?;
    Ok((OtlpLayer { tx: tx.clone(), dropped, ids: Ids::new() }, OtlpGuard { tx }))
}

/// The exporter thread: batches, sends, reports trouble; ends when every sender is gone.
fn export(rx: &mpsc::Receiver<Msg>, endpoint: &Endpoint, dropped: &AtomicU64) {
    let mut batch: Vec<SpanRecord> = Vec::new();
    let mut due = Instant::now() + EVERY;
    let mut trouble = Trouble::default();
    let send = |batch: &mut Vec<SpanRecord>, trouble: &mut Trouble| {
        if !batch.is_empty() {
            if let Err(e) = post(endpoint, &encode(batch)) {
                trouble.failed(batch.len(), e);
            }
            batch.clear();
        }
        trouble.report(Instant::now(), dropped, endpoint);
    };
    loop {
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(Msg::Span(span)) => {
                batch.push(span);
                if batch.len() >= BATCH {
                    send(&mut batch, &mut trouble);
                }
            }
            Ok(Msg::Flush(ack)) => {
                send(&mut batch, &mut trouble);
                let _ = ack.send(());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch, &mut trouble);
                return;
            }
        }
        if Instant::now() >= due {
            send(&mut batch, &mut trouble);
            due = Instant::now() + EVERY;
        }
    }
}

/// Failed requests and dropped spans since the last warning.
#[derive(Debug, Default)]
struct Trouble {
    logged_at: Option<Instant>,
    failed_requests: u64,
    spans_lost: u64,
    last_error: String,
}

impl Trouble {
    fn failed(&mut self, spans: usize, error: String) {
        self.failed_requests += 1;
        self.spans_lost += spans as u64;
        self.last_error = error;
    }

    fn report(&mut self, now: Instant, dropped: &AtomicU64, endpoint: &Endpoint) {
        if self.logged_at.is_some_and(|at| now.duration_since(at) < QUIET) {
            return;
        }
        let queue_full = dropped.swap(0, Ordering::Relaxed);
        if self.failed_requests == 0 && queue_full == 0 {
            return;
        }
        tracing::warn!(
            endpoint = %endpoint,
            failed_requests = self.failed_requests,
            spans_lost = self.spans_lost,
            spans_dropped_queue_full = queue_full,
            error = %self.last_error,
            "OTLP export: spans not delivered (dropped, not retried)"
        );
        *self = Trouble { logged_at: Some(now), ..Trouble::default() };
    }
}

/// An `http://host[:port][/base]` collector address; spans go to `{base}/v1/traces`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    /// For connecting: a name or an address, IPv6 without brackets.
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// The request path.
    path: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--otlp-endpoint {url:?}: only http:// is supported (for TLS, send to a local OpenTelemetry Collector)");
        };
        let (authority, base) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.is_empty() || authority.contains('@') || base.contains(['?', '#']) {
            bail!("--otlp-endpoint {url:?}: expected http://HOST[:PORT][/PATH]");
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').with_context(|| format!("--otlp-endpoint {url:?}: unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().with_context(|| format!("--otlp-endpoint {url:?}: port"))?,
            None => 80,
        };
        if host.is_empty() {
            bail!("--otlp-endpoint {url:?}: no host");
        }
        let path = format!("{}/v1/traces", base.trim_end_matches('/'));
        Ok(Endpoint { host: host.to_string(), port, authority: authority.to_string(), path })
    }
}

/// One blocking `POST` of `body`; `Ok` on a 2xx answer.
fn post(endpoint: &Endpoint, body: &[u8]) -> Result<(), String> {
    let addrs = (endpoint.host.as_str(), endpoint.port).to_socket_addrs().map_err(|e| format!("resolving {}: {e}", endpoint.host))?;
    let mut last = format!("{} resolves to no address", endpoint.host);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |e: std::io::Error| e.to_string();
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: cxb/{}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.authority,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    // The status line is all that is needed; the answer's head is read whole (at most 16 KiB)
    // so that the collector is not cut off mid-write.
    let deadline = Instant::now() + TIMEOUT;
    let mut answer = Vec::new();
    let mut buf = [0u8; 2048];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.len() < 16 * 1024 && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    let line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let status = line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        Some(_) => Err(format!("the collector answered {line}")),
        None => Err(format!("not an HTTP answer: {line:?}")),
    }
}

/// `ExportTraceServiceRequest` in OTLP's JSON encoding: the protobuf JSON mapping with
/// lowerCamelCase keys, trace and span ids as hex (not base64), enums as numbers, and 64-bit
/// integers (times, `intValue`) as decimal strings.
pub(crate) fn encode(spans: &[SpanRecord]) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": format!("{:032x}", s.trace_id),
                "spanId": format!("{:016x}", s.span_id),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
                "status": { "code": 0 },
            });
            if let Some(parent) = s.parent_span_id {
                span["parentSpanId"] = format!("{parent:016x}").into();
            }
            span
        })
        .collect();
    let request = json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                attribute("service.name", &AttrValue::Str("cxb".into())),
                attribute("service.version", &AttrValue::Str(env!("CARGO_PKG_VERSION").into())),
            ] },
            "scopeSpans": [{
                "scope": { "name": "cxb", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    });
    request.to_string().into_bytes()
}

fn attribute(key: &str, value: &AttrValue) -> Value {
    let value = match value {
        AttrValue::Str(s) => json!({ "stringValue": s }),
        AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
        // JSON has no NaN or infinities; the protobuf mapping spells them as strings.
        AttrValue::Double(d) if d.is_nan() => json!({ "doubleValue": "NaN" }),
        AttrValue::Double(d) if d.is_infinite() => json!({ "doubleValue": if *d > 0.0 { "Infinity" } else { "-Infinity" } }),
        AttrValue::Double(d) => json!({ "doubleValue": d }),
        AttrValue::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn spans_encode_as_otlp_json() {
        let call = SpanRecord {
            trace_id: 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            span_id: 0x00f0_67aa_0ba9_02b7,
            parent_span_id: None,
            name: "call",
            kind: 2,
            start_ns: 1_718_000_000_000_000_000,
            end_ns: 1_718_000_001_200_000_000,
            attributes: vec![("bot".into(), AttrValue::Str("front-desk".into())), ("worker".into(), AttrValue::Int(1))],
        };
        let turn = SpanRecord {
            span_id: 7,
            parent_span_id: Some(call.span_id),
            name: "turn",
            kind: 1,
            attributes: vec![
                ("first_token_ms".into(), AttrValue::Int(120)),
                ("interrupted".into(), AttrValue::Bool(false)),
                ("ratio".into(), AttrValue::Double(0.5)),
            ],
            ..call.clone()
        };
        let v: Value = serde_json::from_slice(&encode(&[call, turn])).unwrap();
        let expected = json!({
            "resourceSpans": [{
                "resource": { "attributes": [
                    { "key": "service.name", "value": { "stringValue": "cxb" } },
                    { "key": "service.version", "value": { "stringValue": env!("CARGO_PKG_VERSION") } },
                ] },
                "scopeSpans": [{
                    "scope": { "name": "cxb", "version": env!("CARGO_PKG_VERSION") },
                    "spans": [
                        {
                            "traceId": "0af7651916cd43dd8448eb211c80319c",
                            "spanId": "00f067aa0ba902b7",
                            "name": "call",
                            "kind": 2,
                            "startTimeUnixNano": "1718000000000000000",
                            "endTimeUnixNano": "1718000001200000000",
                            "attributes": [
                                { "key": "bot", "value": { "stringValue": "front-desk" } },
                                { "key": "worker", "value": { "intValue": "1" } },
                            ],
                            "status": { "code": 0 },
                        },
                        {
                            "traceId": "0af7651916cd43dd8448eb211c80319c",
                            "spanId": "0000000000000007",
                            "parentSpanId": "00f067aa0ba902b7",
                            "name": "turn",
                            "kind": 1,
                            "startTimeUnixNano": "1718000000000000000",
                            "endTimeUnixNano": "1718000001200000000",
                            "attributes": [
                                { "key": "first_token_ms", "value": { "intValue": "120" } },
                                { "key": "interrupted", "value": { "boolValue": false } },
                                { "key": "ratio", "value": { "doubleValue": 0.5 } },
                            ],
                            "status": { "code": 0 },
                        },
                    ],
                }],
            }],
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn endpoints_are_http_urls_with_an_optional_base_path() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.authority.as_str(), e.path.as_str()), ("127.0.0.1", 4318, "127.0.0.1:4318", "/v1/traces"));
        let e = Endpoint::parse("http://[::1]:4318/otlp/").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("::1", 4318, "/otlp/v1/traces"));
        assert_eq!(Endpoint::parse("http://collector").unwrap().port, 80);
        for bad in ["https://collector:4318", "collector:4318", "http://", "http://u:p@c:4318", "http://c:port", "http://c:4318/?x"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_distinct_and_never_zero() {
        let ids = Ids::new();
        let mut seen: Vec<u64> = (0..10_000).map(|_| ids.next()).collect();
        assert!(seen.iter().all(|&id| id != 0));
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
    }

    /// The layer on its own (no exporter thread): a turn inside a call is the call's child and
    /// takes its `turn answered` fields; other spans and events are left out.
    #[test]
    fn a_turn_is_the_child_of_its_call_and_carries_its_latencies() {
        let (tx, rx) = mpsc::sync_channel(16);
        let layer = OtlpLayer { tx, dropped: Arc::new(AtomicU64::new(0)), ids: Ids::new() };
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter()));
        tracing::subscriber::with_default(subscriber, || {
            let call = tracing::info_span!(target: "cxb_engine::worker", "call", id = "MZ1", bot = "desk", worker = 0u64, org = tracing::field::Empty);
            call.record("org", "org_1");
            call.in_scope(|| {
                let unrelated = tracing::info_span!(target: "cxb_engine::worker", "read");
                unrelated.in_scope(|| {
                    let turn = tracing::info_span!(target: "cxb_pipeline::conversation", "turn", n = 1u64);
                    turn.in_scope(|| {
                        tracing::info!(target: "cxb_pipeline::conversation", first_token_ms = 120u64, interrupted = false, "turn answered");
                        tracing::info!(target: "cxb_pipeline::conversation", secret = "x", "something else");
                    });
                });
            });
        });
        let spans: Vec<SpanRecord> = rx.try_iter().filter_map(|m| if let Msg::Span(s) = m { Some(s) } else { None }).collect();
        assert_eq!(spans.iter().map(|s| s.name).collect::<Vec<_>>(), ["turn", "call"], "closed in this order");
        let (turn, call) = (&spans[0], &spans[1]);
        assert_eq!(turn.trace_id, call.trace_id);
        assert_eq!(turn.parent_span_id, Some(call.span_id));
        assert_eq!(call.parent_span_id, None);
        assert_ne!(turn.span_id, call.span_id);
        assert_eq!(
            call.attributes,
            [
                ("id".into(), AttrValue::Str("MZ1".into())),
                ("bot".into(), AttrValue::Str("desk".into())),
                ("worker".into(), AttrValue::Int(0)),
                ("org".into(), AttrValue::Str("org_1".into()))
            ]
        );
        assert_eq!(turn.attributes, [("n".into(), AttrValue::Int(1)), ("first_token_ms".into(), AttrValue::Int(120)), ("interrupted".into(), AttrValue::Bool(false))]);
        assert!(call.start_ns <= turn.start_ns && turn.end_ns <= call.end_ns);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let layer = OtlpLayer { tx, dropped: dropped.clone(), ids: Ids::new() };
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter()));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                drop(tracing::info_span!(target: "cxb_engine", "call"));
            }
        });
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
    }
}
