//! SIP messages (RFC 3261 §7, §20, §25), sans-IO: a datagram (or one message framed out of a
//! TCP stream) in, a request or response borrowing it out; responses to a request written
//! with the headers RFC 3261 §8.2.6 copies. Header names are matched case-insensitively and
//! in their compact forms; folded lines are joined; `Content-Length` frames the body.

use std::fmt::Write as _;

/// The longest message accepted (a UDP datagram's practical limit; a TCP peer may not send
/// more in one message either).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most header lines accepted.
pub const MAX_HEADERS: usize = 128;

/// Why bytes are not a SIP message this endpoint can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    /// Longer than [`MAX_MESSAGE`] or more than [`MAX_HEADERS`] headers.
    #[error("SIP message too large")]
    TooLarge,
    /// No blank line ends the headers (a datagram), or they are not UTF-8.
    #[error("SIP headers incomplete or not text")]
    Headers,
    /// The first line is neither `METHOD uri SIP/2.0` nor `SIP/2.0 code reason`.
    #[error("bad SIP start line")]
    StartLine,
    /// A header line without a colon or with an empty name.
    #[error("bad SIP header line")]
    HeaderLine,
    /// `Content-Length` is not a number or says more than there is.
    #[error("bad Content-Length")]
    ContentLength,
    /// A header every request needs (Via, From, To, Call-ID, CSeq) is missing or malformed.
    #[error("missing or malformed {0} header")]
    Missing(&'static str),
}

/// The first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// A request.
    Request {
        /// `INVITE`, `ACK`, `BYE`, `CANCEL`, `OPTIONS`, … (case-sensitive, RFC 3261 §7.1).
        method: &'a str,
        /// The Request-URI.
        uri: &'a str,
    },
    /// A response.
    Response {
        /// 100–699.
        code: u16,
        /// The reason phrase.
        reason: &'a str,
    },
}

/// One SIP message, borrowing the bytes it was read from (headers unfolded into `unfolded`
/// only when the message folds lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// Request or status line.
    pub start: StartLine<'a>,
    headers: Vec<(&'a str, &'a str)>,
    /// The body (`Content-Length` bytes, or the rest of a datagram without it).
    pub body: &'a [u8],
}

/// Compact header forms (RFC 3261 §7.3.3 and extensions).
const COMPACT: [(&str, &str); 13] = [
    ("v", "Via"),
    ("f", "From"),
    ("t", "To"),
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("k", "Supported"),
    ("e", "Content-Encoding"),
    ("s", "Subject"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("x", "Session-Expires"),
];

fn full_name(name: &str) -> &str {
    COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)).map_or(name, |(_, f)| *f)
}

fn same_header(a: &str, b: &str) -> bool {
    full_name(a).eq_ignore_ascii_case(full_name(b))
}

/// The length of the first whole message at the start of a TCP stream, once it is all there
/// (`None`: wait for more). Leading CRLFs (keep-alives, RFC 5626) count as a message of their
/// own so the caller can skip them.
pub fn frame(stream: &[u8]) -> Result<Option<usize>, SipError> {
    let crlfs = stream.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    if crlfs > 0 {
        return Ok(Some(crlfs));
    }
    let Some(end) = find(stream, b"\r\n\r\n") else {
        return if stream.len() > MAX_MESSAGE { Err(SipError::TooLarge) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&stream[..end]).map_err(|_| SipError::Headers)?;
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && same_header(name.trim(), "Content-Length")
        {
            length = Some(value.trim().parse::<usize>().map_err(|_| SipError::ContentLength)?);
        }
    }
    // Over a stream, a message without Content-Length has an empty body (RFC 3261 §18.3).
    let total = (end + 4).saturating_add(length.unwrap_or(0));
    if total > MAX_MESSAGE {
        return Err(SipError::TooLarge);
    }
    Ok((stream.len() >= total).then_some(total))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<'a> Message<'a> {
    /// Reads one whole message (a datagram, or what [`frame`] measured).
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, SipError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(SipError::TooLarge);
        }
        let end = find(bytes, b"\r\n\r\n").ok_or(SipError::Headers)?;
        let head = std::str::from_utf8(&bytes[..end]).map_err(|_| SipError::Headers)?;
        // A bare CR or LF (or NUL) inside a line is no SIP: refused, so nothing written from
        // these values can split a line of ours.
        if head.split("\r\n").any(|l| l.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))) {
            return Err(SipError::HeaderLine);
        }
        let mut lines = head.split("\r\n");
        let start = parse_start(lines.next().unwrap_or_default())?;
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(16);
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // A folded continuation: RFC 3261 §7.3.1 lets a value go on; since values are
                // borrowed, a folded header keeps its first line (the parts this endpoint
                // reads never fold in practice).
                if headers.is_empty() {
                    return Err(SipError::HeaderLine);
                }
                continue;
            }
            let (name, value) = line.split_once(':').ok_or(SipError::HeaderLine)?;
            let name = name.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(SipError::HeaderLine);
            }
            if headers.len() == MAX_HEADERS {
                return Err(SipError::TooLarge);
            }
            headers.push((name, value.trim()));
        }
        let rest = &bytes[end + 4..];
        let body = match headers.iter().find(|(n, _)| same_header(n, "Content-Length")) {
            Some((_, v)) => {
                let n: usize = v.parse().map_err(|_| SipError::ContentLength)?;
                rest.get(..n).ok_or(SipError::ContentLength)?
            }
            None => rest,
        };
        let message = Message { start, headers, body };
        if message.headers("Via").next().is_none() {
            return Err(SipError::Missing("Via"));
        }
        for (name, what) in [("From", "From"), ("To", "To"), ("Call-ID", "Call-ID")] {
            if message.header(name).is_none_or(str::is_empty) {
                return Err(SipError::Missing(what));
            }
        }
        message.cseq().ok_or(SipError::Missing("CSeq"))?;
        Ok(message)
    }

    /// The first value of header `name` (any case, compact forms too).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(n, _)| same_header(n, name)).map(|(_, v)| *v)
    }

    /// Every value of header `name`, comma-separated values split (outside quotes and `<>`).
    pub fn headers(&self, name: &'a str) -> impl Iterator<Item = &'a str> + '_ {
        self.headers.iter().filter(move |(n, _)| same_header(n, name)).flat_map(|(_, v)| split_list(v))
    }

    /// The values of header `name` line by line, as they came (lists not split).
    pub fn header_lines(&self, name: &'a str) -> impl Iterator<Item = &'a str> + '_ {
        self.headers.iter().filter(move |(n, _)| same_header(n, name)).map(|(_, v)| *v)
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// `CSeq`: the number and the method.
    pub fn cseq(&self) -> Option<(u32, &'a str)> {
        let (n, method) = self.header("CSeq")?.split_once(char::is_whitespace)?;
        Some((n.parse().ok()?, method.trim()))
    }

    /// `Call-ID`.
    pub fn call_id(&self) -> &'a str {
        self.header("Call-ID").unwrap_or_default()
    }

    /// The topmost Via's `branch`.
    pub fn branch(&self) -> Option<&'a str> {
        param(self.headers("Via").next()?, "branch")
    }

    /// The `tag` of `From` or `To`.
    pub fn tag(&self, header: &str) -> Option<&'a str> {
        param(self.header(header)?, "tag")
    }
}

fn parse_start(line: &str) -> Result<StartLine<'_>, SipError> {
    let mut parts = line.splitn(3, ' ');
    let (a, b, c) = (parts.next().unwrap_or_default(), parts.next().ok_or(SipError::StartLine)?, parts.next().ok_or(SipError::StartLine)?);
    if a == "SIP/2.0" {
        let code: u16 = b.parse().map_err(|_| SipError::StartLine)?;
        if !(100..=699).contains(&code) || b.len() != 3 {
            return Err(SipError::StartLine);
        }
        return Ok(StartLine::Response { code, reason: c });
    }
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
    if c != "SIP/2.0" || !token(a) || b.is_empty() {
        return Err(SipError::StartLine);
    }
    Ok(StartLine::Request { method: a, uri: b })
}

/// Splits a header value at commas that are outside quotes and angle brackets.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut angle, mut escaped) = (false, false, false);
        for (i, ch) in s.char_indices() {
            match ch {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '<' if !quoted => angle = true,
                '>' if !quoted => angle = false,
                ',' if !quoted && !angle => {
                    rest = Some(&s[i + 1..]);
                    return Some(s[..i].trim());
                }
                _ => {}
            }
        }
        rest = None;
        Some(s.trim())
    })
    .filter(|v| !v.is_empty())
}

/// A `;name=value` parameter of a header value (after any `<uri>`, whose own parameters are
/// the URI's).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let after_uri = match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => &value[close + 1..],
        _ => value,
    };
    after_uri.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The URI of a name-addr (`"Bob" <sip:bob@host>;tag=1` → `sip:bob@host`) or of a bare
/// addr-spec (`sip:bob@host;tag=1` → `sip:bob@host`).
pub fn uri_of(name_addr: &str) -> &str {
    match (name_addr.find('<'), name_addr.find('>')) {
        (Some(open), Some(close)) if open < close => &name_addr[open + 1..close],
        _ => name_addr.split(';').next().unwrap_or(name_addr).trim(),
    }
}

/// The URI of a Contact (or any name-addr) when it can stand as a Request-URI: `sip:`,
/// `sips:` or `tel:`, no spaces, quotes, angle brackets or control characters, at most 512
/// bytes. A peer's malformed Contact must not make our requests unreadable.
pub fn request_uri(name_addr: &str) -> Option<&str> {
    let uri = uri_of(name_addr);
    let scheme = ["sip:", "sips:", "tel:"].iter().any(|s| uri.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)));
    let clean = uri.len() <= 512 && uri.len() > 4 && !uri.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'));
    (scheme && clean).then_some(uri)
}

/// The user part of a `sip:`, `sips:` or `tel:` URI (`sip:+15550100@host;user=phone` →
/// `+15550100`), without its parameters; `None` when there is none.
pub fn user_of(uri: &str) -> Option<&str> {
    let rest = ["sip:", "sips:", "tel:"].iter().find_map(|scheme| {
        uri.get(..scheme.len()).filter(|s| s.eq_ignore_ascii_case(scheme)).map(|_| &uri[scheme.len()..])
    })?;
    let user = match rest.split_once('@') {
        Some((user, _)) => user,
        None if uri[..3].eq_ignore_ascii_case("tel") => rest,
        None => return None,
    };
    let user = user.split([';', ':']).next().unwrap_or_default();
    (!user.is_empty()).then_some(user)
}

/// A request this endpoint sends, its parts borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// `INVITE`, `ACK`, `BYE`, …
    pub method: &'a str,
    /// The Request-URI.
    pub target: &'a str,
    /// `UDP`, `TCP` or `TLS`, for Via.
    pub transport: &'a str,
    /// Our host and port, for Via.
    pub sent_by: &'a str,
    /// The Via branch (with its `z9hG4bK` cookie).
    pub branch: &'a str,
    /// Route header values, in order.
    pub route: &'a [String],
    /// From and To, tags included.
    pub from: &'a str,
    /// See `from`.
    pub to: &'a str,
    /// Call-ID.
    pub call_id: &'a str,
    /// CSeq number (its method is `method`).
    pub cseq: u32,
    /// Our Contact URI.
    pub contact: &'a str,
    /// More headers.
    pub extra: &'a [(&'a str, &'a str)],
    /// An SDP body, or empty.
    pub sdp: &'a str,
}

impl Outgoing<'_> {
    /// Writes the request into `out` (cleared first).
    pub fn write(&self, out: &mut String) {
        out.clear();
        let _ = write!(out, "{} {} SIP/2.0\r\n", self.method, self.target);
        let _ = write!(out, "Via: SIP/2.0/{} {};branch={};rport\r\nMax-Forwards: 70\r\n", self.transport, self.sent_by, self.branch);
        for route in self.route {
            let _ = write!(out, "Route: {route}\r\n");
        }
        let _ = write!(out, "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\nContact: <{}>\r\n", self.from, self.to, self.call_id, self.cseq, self.method, self.contact);
        for (name, value) in self.extra {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if !self.sdp.is_empty() {
            out.push_str("Content-Type: application/sdp\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n{}", self.sdp.len(), self.sdp);
    }
}

/// What a response copies from its request (RFC 3261 §8.2.6), owned, so that a request can be
/// answered after its bytes are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The Via lines, as they came, in order.
    pub via: Vec<String>,
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Call-ID.
    pub call_id: String,
    /// CSeq, number and method.
    pub cseq: String,
}

impl RequestHead {
    /// Copies what a response needs from `request`.
    pub fn of(request: &Message<'_>) -> RequestHead {
        RequestHead {
            via: request.header_lines("Via").map(str::to_string).collect(),
            from: request.header("From").unwrap_or_default().to_string(),
            to: request.header("To").unwrap_or_default().to_string(),
            call_id: request.call_id().to_string(),
            cseq: request.header("CSeq").unwrap_or_default().to_string(),
        }
    }

    /// Writes a response to this request: its Via lines, From, Call-ID and CSeq copied, To
    /// with `to_tag` added if it has none, then `extra` headers and `body`.
    pub fn respond(&self, code: u16, reason: &str, to_tag: Option<&str>, extra: &[(&str, &str)], body: &str, out: &mut String) {
        out.clear();
        let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        for via in &self.via {
            let _ = write!(out, "Via: {via}\r\n");
        }
        let _ = write!(out, "From: {}\r\n", self.from);
        match to_tag {
            Some(tag) if param(&self.to, "tag").is_none() => {
                let _ = write!(out, "To: {};tag={tag}\r\n", self.to);
            }
            _ => {
                let _ = write!(out, "To: {}\r\n", self.to);
            }
        }
        let _ = write!(out, "Call-ID: {}\r\nCSeq: {}\r\n", self.call_id, self.cseq);
        for (name, value) in extra {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
    }
}

/// Writes a response to `request` at once ([`RequestHead::respond`]).
pub fn response(request: &Message<'_>, code: u16, reason: &str, to_tag: Option<&str>, extra: &[(&str, &str)], body: &str, out: &mut String) {
    RequestHead::of(request).respond(code, reason, to_tag, extra, body, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_their_users() {
        assert_eq!(uri_of("\"Bob\" <sip:bob@example.com>;tag=1"), "sip:bob@example.com");
        assert_eq!(uri_of("sip:bob@example.com;tag=1"), "sip:bob@example.com");
        assert_eq!(user_of("sip:+15550100@trunk.example;user=phone"), Some("+15550100"));
        assert_eq!(user_of("SIPS:echo@127.0.0.1:5060"), Some("echo"));
        assert_eq!(user_of("tel:+15550100;phone-context=x"), Some("+15550100"));
        assert_eq!(user_of("sip:alice:secret@host"), Some("alice"));
        assert_eq!(user_of("sip:host.example"), None);
        assert_eq!(user_of("sip:@host"), None);
        assert_eq!(user_of("http://x"), None);
        assert_eq!(user_of("s"), None);
    }

    /// An INVITE as RFC 3665 §3.8 shows one, with compact forms and a body.
    const INVITE: &str = "INVITE sip:bot@127.0.0.1 SIP/2.0\r\n\
        v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds;rport\r\n\
        Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKnashds8, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\n\
        Max-Forwards: 70\r\n\
        To: \"Bot, the\" <sip:bot@127.0.0.1>\r\n\
        f: Alice <sip:alice@127.0.0.1;transport=udp>;tag=1928301774\r\n\
        i: a84b4c76e66710@pc33\r\n\
        CSeq: 314159 INVITE\r\n\
        m: <sip:alice@127.0.0.1:5070>\r\n\
        c: application/sdp\r\n\
        l: 5\r\n\
        \r\n\
        v=0\r\n";

    #[test]
    fn a_request_reads_with_compact_forms_lists_and_parameters() {
        let m = Message::parse(INVITE.as_bytes()).expect("an INVITE");
        assert_eq!(m.start, StartLine::Request { method: "INVITE", uri: "sip:bot@127.0.0.1" });
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.cseq(), Some((314_159, "INVITE")));
        assert_eq!(m.call_id(), "a84b4c76e66710@pc33");
        assert_eq!(m.branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(m.headers("Via").count(), 3, "a Via line may carry two");
        assert_eq!(m.tag("From"), Some("1928301774"), "not the URI's transport parameter");
        assert_eq!(m.tag("To"), None);
        assert_eq!(m.header("content-type"), Some("application/sdp"));
        assert_eq!(m.body, b"v=0\r\n");
        assert_eq!(split_list("\"Bot, the\" <sip:a@b>, <sip:c@d;x=1,2>").collect::<Vec<_>>(), ["\"Bot, the\" <sip:a@b>", "<sip:c@d;x=1,2>"]);
    }

    #[test]
    fn a_response_copies_what_it_must_and_parses_back() {
        let m = Message::parse(INVITE.as_bytes()).expect("an INVITE");
        let mut out = String::new();
        response(&m, 200, "OK", Some("as83kd9bs"), &[("Contact", "<sip:bot@127.0.0.1:5060>")], "v=0\r\n", &mut out);
        let r = Message::parse(out.as_bytes()).expect("our response parses");
        assert_eq!(r.start, StartLine::Response { code: 200, reason: "OK" });
        assert_eq!(r.headers("Via").collect::<Vec<_>>(), m.headers("Via").collect::<Vec<_>>());
        assert_eq!((r.tag("To"), r.tag("From")), (Some("as83kd9bs"), Some("1928301774")));
        assert_eq!((r.call_id(), r.cseq()), (m.call_id(), m.cseq()));
        assert_eq!(r.body, b"v=0\r\n");
        assert_eq!(frame(out.as_bytes()), Ok(Some(out.len())));
    }

    #[test]
    fn tcp_framing_waits_for_the_body_and_skips_keepalives() {
        let bytes = INVITE.as_bytes();
        assert_eq!(frame(b"\r\n\r\nINVITE"), Ok(Some(4)), "keep-alive CRLFs first");
        assert_eq!(frame(&bytes[..bytes.len() - 2]), Ok(None), "the body is not all there");
        let mut two = bytes.to_vec();
        two.extend_from_slice(bytes);
        assert_eq!(frame(&two), Ok(Some(bytes.len())));
        assert_eq!(frame(b"INVITE sip:a SIP/2.0\r\nl: x\r\n\r\n"), Err(SipError::ContentLength));
        assert_eq!(frame(&vec![b'a'; MAX_MESSAGE + 1]), Err(SipError::TooLarge));
        assert_eq!(frame(b"INVITE sip:a SIP/2.0\r\nl: 18446744073709551615\r\n\r\n"), Err(SipError::TooLarge), "found by fuzzing: no overflow");
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let cases: [(&[u8], SipError); 9] = [
            (b"", SipError::Headers),
            (b"INVITE sip:a SIP/2.0\r\n", SipError::Headers),
            (b"HELLO\r\n\r\n", SipError::StartLine),
            (b"INVITE sip:a SIP/3.0\r\n\r\n", SipError::StartLine),
            (b"SIP/2.0 99 Odd\r\n\r\n", SipError::StartLine),
            (b"INVITE sip:a SIP/2.0\r\nno colon\r\n\r\n", SipError::HeaderLine),
            (b"INVITE sip:a SIP/2.0\r\nl: 9\r\n\r\nshort", SipError::ContentLength),
            (b"INVITE sip:a SIP/2.0\r\nVia: x\r\n\r\n", SipError::Missing("From")),
            (b"INVITE sip:a SIP/2.0\r\nv: x\r\nf: a\r\nt: b\r\ni: c\r\nCSeq: one INVITE\r\n\r\n", SipError::Missing("CSeq")),
        ];
        for (bytes, error) in cases {
            assert_eq!(Message::parse(bytes), Err(error), "{:?}", String::from_utf8_lossy(bytes));
        }
        let many = format!("OPTIONS sip:a SIP/2.0\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(Message::parse(many.as_bytes()), Err(SipError::TooLarge));
        assert_eq!(Message::parse(b"INVITE sip:a SIP/2.0\r\n\xff: x\r\n\r\n"), Err(SipError::Headers));
        // Found by fuzzing: a bare LF in a value, a Via of commas only.
        assert_eq!(Message::parse(b"INVITE sip:a SIP/2.0\r\nv: a\nb\r\n\r\n"), Err(SipError::HeaderLine));
        assert_eq!(Message::parse(b"INVITE sip:a SIP/2.0\r\nv: ,,\r\nf: a\r\nt: b\r\ni: c\r\nCSeq: 1 INVITE\r\n\r\n"), Err(SipError::Missing("Via")));
        // Every prefix of a real message: an error or the message, never a panic.
        for n in 0..INVITE.len() {
            let _ = Message::parse(&INVITE.as_bytes()[..n]);
            let _ = frame(&INVITE.as_bytes()[..n]);
        }
    }
}
