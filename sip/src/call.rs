//! One inbound SIP call as the called user agent (UAS), sans-IO: the INVITE's server
//! transaction and the dialog it makes (RFC 3261 §12, §13.3, §15, §17.2), with the timers on
//! the caller's clock. Messages and `now` go in; [`InboundCall::poll_output`] answers what to
//! send, what happened and when to be called again. Time is a `Duration` since any epoch the
//! owner keeps.
//!
//! What it does: 100 Trying at once; 180 Ringing and a 2xx answer (with a To tag and our
//! Contact) or a final refusal when the owner says; 2xx retransmitted until the ACK (T1
//! doubling to T2; after 64·T1 the call is ended with a BYE); a refusal retransmitted over
//! UDP until its ACK (Timers G and H); a retransmitted INVITE answered with the last
//! response; CANCEL before the answer (200, then 487 for the INVITE); BYE from the caller
//! (200); our BYE with its own retransmissions (Timers E and F) and the caller's Record-Route;
//! session timers (RFC 4028: the caller refreshes with re-INVITE or UPDATE, we end a session
//! it stopped refreshing; 422 below 90 s); a blind transfer (REFER, RFC 3515, with the
//! peer's answer as an event; its NOTIFYs answered 200); OPTIONS (200), INFO key presses
//! (`application/dtmf-relay`, `application/dtmf`), re-INVITEs handed to the owner (hold and
//! unhold) and answered with the owner's SDP; other requests in the dialog get 501, requests
//! for another dialog 481.

use std::collections::VecDeque;
use std::time::Duration;

use crate::message::{Message, Outgoing, RequestHead, StartLine, param, request_uri, response};

/// RFC 3261's T1: the round-trip estimate.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261's T2: the longest retransmission interval.
pub const T2: Duration = Duration::from_secs(4);
const METHODS: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";
/// RFC 4028's floor for a session interval, in seconds; smaller requests get 422.
pub const MIN_SE: u32 = 90;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// The caller hung up (BYE).
    RemoteBye,
    /// We hung up (our BYE answered or timed out).
    LocalBye,
    /// The caller stopped refreshing the session (RFC 4028): we sent a BYE.
    SessionExpired,
    /// The caller gave up before the answer (CANCEL).
    Cancelled,
    /// We refused the call with this status.
    Refused(u16),
    /// Our 2xx was never acknowledged (64·T1): we sent a BYE.
    NoAck,
}

/// What happened in the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// The caller acknowledged the answer: media may flow both ways.
    Confirmed,
    /// A key press sent as SIP INFO.
    Dtmf(char),
    /// A re-INVITE offered this SDP (hold, unhold, a new address): answer it with
    /// [`InboundCall::answer_reoffer`].
    Reoffer(String),
    /// The peer answered our REFER ([`InboundCall::refer`]) with this status: 2xx, it takes
    /// the transfer over; else it refused (or 408: it did not answer).
    Referred(u16),
    /// The call is over.
    Ended(EndCause),
}

/// One answer of [`InboundCall::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this message to the peer.
    Transmit(String),
    /// Note this.
    Event(CallEvent),
    /// Nothing more now; call [`InboundCall::handle_timeout`] at this time (`None`: wait for
    /// messages).
    Timeout(Option<Duration>),
}

/// Our side of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Our To tag (random, chosen by the owner).
    pub tag: String,
    /// Our Contact URI, e.g. `sip:bot@203.0.113.5:5060`.
    pub contact: String,
    /// Our sent-by for the Via of our requests, e.g. `203.0.113.5:5060`.
    pub sent_by: String,
    /// `UDP`, `TCP` or `TLS`: retransmissions only over UDP.
    pub transport: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE received, no final response yet.
    Proceeding,
    /// 2xx sent, waiting for the ACK.
    Answered,
    /// Non-2xx final sent, waiting for the ACK.
    Refused(u16),
    /// The dialog is up.
    Confirmed,
    /// Our BYE is out.
    Leaving,
    Ended,
}

/// What the INVITE said that later messages need.
#[derive(Debug, Clone)]
struct Invite {
    head: RequestHead,
    cseq: u32,
    branch: String,
    remote_tag: String,
    remote_target: String,
    route: Vec<String>,
}

/// A retransmitted message and its schedule.
#[derive(Debug, Clone)]
struct Retransmit {
    message: String,
    next: Duration,
    interval: Duration,
    give_up: Duration,
}

/// One inbound call.
#[derive(Debug)]
pub struct InboundCall {
    local: Local,
    invite: Invite,
    state: State,
    /// The last response to the INVITE, for a retransmitted INVITE.
    last_response: Option<String>,
    retransmit: Option<Retransmit>,
    local_cseq: u32,
    /// A re-INVITE waiting for the owner's answer.
    reoffer: Option<RequestHead>,
    /// The session interval the caller asked for (RFC 4028; it refreshes), and when the
    /// session expires without a refresh.
    session: Option<(Duration, Option<Duration>)>,
    /// Our BYE is for an expired session.
    expired: bool,
    /// The CSeq of our REFER, while it waits for its answer.
    refer: Option<u32>,
    out: VecDeque<Output>,
    buf: String,
}

impl InboundCall {
    /// A call for `invite` (an INVITE outside any dialog, checked by the caller), answered
    /// at once with 100 Trying.
    pub fn new(invite: &Message<'_>, local: Local) -> Option<InboundCall> {
        if invite.method() != Some("INVITE") {
            return None;
        }
        let info = Invite {
            head: RequestHead::of(invite),
            cseq: invite.cseq()?.0,
            branch: invite.branch().unwrap_or_default().to_string(),
            remote_tag: invite.tag("From").unwrap_or_default().to_string(),
            remote_target: invite.header("Contact").and_then(request_uri).unwrap_or_default().to_string(),
            route: invite.header_lines("Record-Route").map(str::to_string).collect(),
        };
        let mut call = InboundCall {
            local,
            invite: info,
            state: State::Proceeding,
            last_response: None,
            retransmit: None,
            local_cseq: 1,
            reoffer: None,
            session: session_interval(invite).map(|interval| (interval, None)),
            expired: false,
            refer: None,
            out: VecDeque::new(),
            buf: String::new(),
        };
        call.respond_invite(100, "Trying", "");
        Some(call)
    }

    /// The SIP Call-ID.
    pub fn call_id(&self) -> &str {
        &self.invite.head.call_id
    }

    /// Whether `m` is a new INVITE for this Call-ID (not a retransmission of ours, outside the
    /// dialog): a caller answering our 401 with credentials, say.
    pub fn is_new_invite(&self, m: &Message<'_>) -> bool {
        m.method() == Some("INVITE") && m.tag("To").is_none() && m.call_id() == self.invite.head.call_id && m.branch() != Some(self.invite.branch.as_str())
    }

    /// The INVITE's From and To headers, as they came.
    pub fn parties(&self) -> (&str, &str) {
        (&self.invite.head.from, &self.invite.head.to)
    }

    fn reliable(&self) -> bool {
        self.local.transport != "UDP"
    }

    fn emit(&mut self, event: CallEvent) {
        self.out.push_back(Output::Event(event));
    }

    fn end(&mut self, cause: EndCause) {
        if self.state != State::Ended {
            self.state = State::Ended;
            self.retransmit = None;
            self.emit(CallEvent::Ended(cause));
        }
    }

    /// Answers the INVITE; a final answer is resent on its timers until the ACK.
    fn respond_invite(&mut self, code: u16, reason: &str, body: &str) {
        self.respond_invite_with(code, reason, body, &[]);
    }

    fn respond_invite_with(&mut self, code: u16, reason: &str, body: &str, more: &[(&str, &str)]) {
        let tag = (code > 100).then_some(self.local.tag.as_str());
        let contact = format!("<{}>", self.local.contact);
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if (200..300).contains(&code) || (180..190).contains(&code) {
            extra.push(("Contact", &contact));
            for rr in &self.invite.route {
                extra.push(("Record-Route", rr));
            }
        }
        if !body.is_empty() {
            extra.push(("Content-Type", "application/sdp"));
        }
        let expires = self.session.map(|(interval, _)| format!("{};refresher=uac", interval.as_secs()));
        if (200..300).contains(&code) {
            extra.push(("Allow", METHODS));
            extra.push(("Supported", "timer"));
            if let Some(expires) = &expires {
                extra.push(("Session-Expires", expires));
                extra.push(("Require", "timer"));
            }
        }
        if code == 503 {
            // The trunk fails over to another host, and tries this one again later.
            extra.push(("Retry-After", "5"));
        }
        extra.extend_from_slice(more);
        self.invite.head.respond(code, reason, tag, &extra, body, &mut self.buf);
        self.last_response = Some(self.buf.clone());
        self.out.push_back(Output::Transmit(self.buf.clone()));
    }

    fn invite_response(&mut self, now: Duration, code: u16, reason: &str, body: &str) {
        self.invite_response_with(now, code, reason, body, &[]);
    }

    fn invite_response_with(&mut self, now: Duration, code: u16, reason: &str, body: &str, more: &[(&str, &str)]) {
        self.respond_invite_with(code, reason, body, more);
        if code >= 200 {
            // 2xx: the UAS core retransmits until the ACK; a refusal: Timer G over UDP only.
            let resend = (200..300).contains(&code) || !self.reliable();
            self.retransmit = Some(Retransmit {
                message: self.buf.clone(),
                next: if resend { now + T1 } else { Duration::MAX },
                interval: T1,
                give_up: now + 64 * T1,
            });
        }
    }

    /// 180 Ringing.
    pub fn ring(&mut self, now: Duration) {
        if self.state == State::Proceeding {
            self.invite_response(now, 180, "Ringing", "");
        }
    }

    /// Answers with our SDP (or 422 when the caller's session interval is below
    /// [`MIN_SE`]).
    pub fn answer(&mut self, now: Duration, sdp: &str) {
        if self.session.is_some_and(|(interval, _)| interval < Duration::from_secs(MIN_SE.into())) {
            let min = MIN_SE.to_string();
            return self.refuse_with(now, 422, "Session Interval Too Small", &[("Min-SE", &min)]);
        }
        if self.state == State::Proceeding {
            self.invite_response(now, 200, "OK", sdp);
            self.state = State::Answered;
        }
    }

    /// Refuses the call (404, 403, 486, 488, 503 with Retry-After …).
    pub fn refuse(&mut self, now: Duration, code: u16, reason: &str) {
        self.refuse_with(now, code, reason, &[]);
    }

    /// Refuses the call with more headers (a 401's `WWW-Authenticate`).
    pub fn refuse_with(&mut self, now: Duration, code: u16, reason: &str, headers: &[(&str, &str)]) {
        if self.state == State::Proceeding && (300..700).contains(&code) {
            self.invite_response_with(now, code, reason, "", headers);
            self.state = State::Refused(code);
        }
    }

    /// Answers a re-INVITE the owner was told of ([`CallEvent::Reoffer`]).
    pub fn answer_reoffer(&mut self, sdp: &str) {
        let Some(request) = self.reoffer.take() else { return };
        let contact = format!("<{}>", self.local.contact);
        let expires = self.session.map(|(i, _)| format!("{};refresher=uac", i.as_secs()));
        let mut extra = vec![("Contact", contact.as_str()), ("Content-Type", "application/sdp"), ("Supported", "timer")];
        if let Some(e) = &expires {
            extra.extend([("Session-Expires", e.as_str()), ("Require", "timer")]);
        }
        request.respond(200, "OK", None, &extra, sdp, &mut self.buf);
        self.out.push_back(Output::Transmit(self.buf.clone()));
    }

    /// Hangs up: a BYE in the dialog (or, before the answer, a 480 refusal).
    pub fn hang_up(&mut self, now: Duration) {
        match self.state {
            State::Proceeding => self.refuse(now, 480, "Temporarily Unavailable"),
            State::Answered | State::Confirmed => self.send_bye(now),
            State::Refused(_) | State::Leaving | State::Ended => {}
        }
    }

    fn send_bye(&mut self, now: Duration) {
        let bye = self.request("BYE", &[]);
        self.state = State::Leaving;
        self.send_tracked(now, bye);
    }

    /// Asks the peer to take the call to `target` (a SIP or tel URI): a blind transfer. Its
    /// answer comes as [`CallEvent::Referred`]; hang up after a 2xx.
    pub fn refer(&mut self, now: Duration, target: &str) {
        if self.state != State::Confirmed || self.refer.is_some() {
            return;
        }
        let refer_to = format!("<{target}>");
        let referred_by = format!("<{}>", self.local.contact);
        let message = self.request("REFER", &[("Refer-To", &refer_to), ("Referred-By", &referred_by)]);
        self.refer = Some(self.local_cseq);
        self.send_tracked(now, message);
    }

    /// A request of ours in the dialog, with the next CSeq, routed by the caller's
    /// Record-Route.
    fn request(&mut self, method: &str, extra: &[(&str, &str)]) -> String {
        self.local_cseq += 1;
        let head = &self.invite.head;
        let target = if self.invite.remote_target.is_empty() { request_uri(&head.from).unwrap_or("sip:anonymous@anonymous.invalid") } else { self.invite.remote_target.as_str() };
        let from = if param(&head.to, "tag").is_some() { head.to.clone() } else { format!("{};tag={}", head.to, self.local.tag) };
        let branch = format!("z9hG4bK{}{}{}", self.local.tag, method.to_ascii_lowercase(), self.local_cseq);
        let mut out = String::with_capacity(512);
        Outgoing {
            method,
            target,
            transport: self.local.transport,
            sent_by: &self.local.sent_by,
            branch: &branch,
            route: &self.invite.route,
            from: &from,
            to: &head.from,
            call_id: &head.call_id,
            cseq: self.local_cseq,
            contact: &self.local.contact,
            extra,
            sdp: "",
        }
        .write(&mut out);
        out
    }

    /// Sends a request of ours, retransmitted over UDP (Timers E and F) until answered.
    fn send_tracked(&mut self, now: Duration, message: String) {
        self.out.push_back(Output::Transmit(message.clone()));
        self.retransmit = Some(Retransmit {
            message,
            next: if self.reliable() { Duration::MAX } else { now + T1 },
            interval: T1,
            give_up: now + 64 * T1,
        });
    }

    /// A message from the peer that belongs to this call (same Call-ID).
    pub fn on_message(&mut self, now: Duration, m: &Message<'_>) {
        if self.state == State::Ended || m.call_id() != self.invite.head.call_id {
            return;
        }
        match m.start {
            StartLine::Response { code, .. } => {
                if let Some(cseq) = self.refer
                    && m.cseq() == Some((cseq, "REFER"))
                    && code >= 200
                {
                    self.refer = None;
                    self.retransmit = None;
                    self.emit(CallEvent::Referred(code));
                }
                if self.state == State::Leaving && m.cseq() == Some((self.local_cseq, "BYE")) && code >= 200 {
                    self.end(if self.expired { EndCause::SessionExpired } else { EndCause::LocalBye });
                }
            }
            StartLine::Request { method, .. } => self.on_request(now, method, m),
        }
    }

    fn on_request(&mut self, now: Duration, method: &str, m: &Message<'_>) {
        // In this dialog: our To tag and the caller's From tag.
        let ours = m.tag("To") == Some(self.local.tag.as_str()) && m.tag("From").unwrap_or_default() == self.invite.remote_tag;
        let same_transaction = m.branch() == Some(self.invite.branch.as_str()) && !self.invite.branch.is_empty();
        match method {
            "INVITE" if same_transaction && !ours => {
                if let Some(last) = self.last_response.clone() {
                    self.out.push_back(Output::Transmit(last));
                }
            }
            "ACK" => match self.state {
                State::Answered if m.cseq().map(|c| c.0) == Some(self.invite.cseq) => {
                    self.retransmit = None;
                    self.state = State::Confirmed;
                    self.refreshed(now);
                    self.emit(CallEvent::Confirmed);
                }
                State::Refused(code) => self.end(if code == 487 { EndCause::Cancelled } else { EndCause::Refused(code) }),
                _ => {}
            },
            "CANCEL" if same_transaction => {
                response(m, 200, "OK", Some(&self.local.tag.clone()), &[], "", &mut self.buf);
                self.out.push_back(Output::Transmit(self.buf.clone()));
                if self.state == State::Proceeding {
                    // The call ends (Cancelled) with the ACK of this 487, or Timer H.
                    self.invite_response(now, 487, "Request Terminated", "");
                    self.state = State::Refused(487);
                }
            }
            "OPTIONS" => self.reply(m, 200, "OK", &[("Allow", METHODS)]),
            _ if !ours => self.reply(m, 481, "Call/Transaction Does Not Exist", &[]),
            "BYE" => {
                self.reply(m, 200, "OK", &[]);
                self.end(EndCause::RemoteBye);
            }
            // The progress of a transfer we asked for (its sipfrag is not needed: a 2xx to
            // the REFER already handed the call over).
            "NOTIFY" => self.reply(m, 200, "OK", &[]),
            "INFO" => match dtmf_of(m) {
                Some(digit) => {
                    self.reply(m, 200, "OK", &[]);
                    self.emit(CallEvent::Dtmf(digit));
                }
                None => self.reply(m, 415, "Unsupported Media Type", &[("Accept", "application/dtmf-relay, application/dtmf")]),
            },
            "INVITE" | "UPDATE" if !m.body.is_empty() || method == "INVITE" => {
                if self.reoffer.is_some() {
                    self.reply(m, 491, "Request Pending", &[]);
                    return;
                }
                if let Some(interval) = session_interval(m) {
                    self.session = Some((interval, None));
                }
                self.refreshed(now);
                let body = String::from_utf8_lossy(m.body).into_owned();
                self.reoffer = Some(RequestHead::of(m));
                self.emit(CallEvent::Reoffer(body));
            }
            "UPDATE" => {
                // A session refresh without a new offer.
                if let Some(interval) = session_interval(m) {
                    self.session = Some((interval, None));
                }
                self.refreshed(now);
                let expires = self.session.map(|(i, _)| format!("{};refresher=uac", i.as_secs()));
                let mut extra = vec![("Supported", "timer")];
                if let Some(e) = &expires {
                    extra.extend([("Session-Expires", e.as_str()), ("Require", "timer")]);
                }
                self.reply(m, 200, "OK", &extra);
            }
            "CANCEL" => self.reply(m, 481, "Call/Transaction Does Not Exist", &[]),
            _ => self.reply(m, 501, "Not Implemented", &[("Allow", METHODS)]),
        }
    }

    fn reply(&mut self, m: &Message<'_>, code: u16, reason: &str, extra: &[(&str, &str)]) {
        response(m, code, reason, None, extra, "", &mut self.buf);
        self.out.push_back(Output::Transmit(self.buf.clone()));
    }

    /// The caller refreshed the session (or it began): it expires one interval from `now`
    /// (RFC 4028 §10: the refresher has until then; we end it then).
    fn refreshed(&mut self, now: Duration) {
        if let Some((interval, expiry)) = self.session.as_mut() {
            *expiry = Some(now + *interval);
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.state == State::Confirmed
            && let Some((_, Some(expiry))) = self.session
            && now >= expiry
        {
            self.send_bye(now);
            self.session = None;
            self.expired = true;
            return;
        }
        let Some(r) = self.retransmit.as_mut() else { return };
        if now >= r.give_up {
            match self.state {
                State::Answered => {
                    // RFC 3261 §13.3.1.4: no ACK for the 2xx; the dialog ends with a BYE.
                    self.retransmit = None;
                    self.send_bye(now);
                    self.retransmit = None;
                    self.state = State::Ended;
                    self.emit(CallEvent::Ended(EndCause::NoAck));
                }
                State::Refused(code) => self.end(if code == 487 { EndCause::Cancelled } else { EndCause::Refused(code) }),
                State::Leaving => self.end(if self.expired { EndCause::SessionExpired } else { EndCause::LocalBye }),
                State::Confirmed if self.refer.take().is_some() => {
                    self.retransmit = None;
                    self.emit(CallEvent::Referred(408));
                }
                _ => self.retransmit = None,
            }
            return;
        }
        if now >= r.next {
            self.out.push_back(Output::Transmit(r.message.clone()));
            r.interval = (r.interval * 2).min(T2);
            r.next = now + r.interval;
        }
    }

    /// The next output. Call until it answers [`Output::Timeout`] after every input.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let retransmit = self.retransmit.as_ref().map(|r| r.next.min(r.give_up));
        let expiry = self.session.and_then(|(_, e)| e).filter(|_| self.state == State::Confirmed);
        Output::Timeout([retransmit, expiry].into_iter().flatten().min())
    }

    /// Whether the call is over (its last outputs may still be queued).
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }
}

/// The session interval a request asks for (`Session-Expires`, RFC 4028), if the caller
/// supports session timers (it then refreshes).
fn session_interval(m: &Message<'_>) -> Option<Duration> {
    let supports = m.headers("Supported").chain(m.headers("Require")).any(|v| v.trim().eq_ignore_ascii_case("timer"));
    let seconds: u64 = m.header("Session-Expires")?.split(';').next()?.trim().parse().ok()?;
    (supports && seconds > 0).then(|| Duration::from_secs(seconds.min(86_400)))
}

/// The key of an INFO: `application/dtmf-relay` (`Signal=5`) or `application/dtmf` (`5`).
pub(crate) fn dtmf_of(m: &Message<'_>) -> Option<char> {
    let kind = m.header("Content-Type")?.split(';').next()?.trim().to_ascii_lowercase();
    let body = std::str::from_utf8(m.body).ok()?;
    let signal = match kind.as_str() {
        "application/dtmf-relay" => body.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?,
        "application/dtmf" => body.trim(),
        _ => return None,
    };
    let mut chars = signal.chars();
    let c = chars.next()?.to_ascii_uppercase();
    (chars.next().is_none() && matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')).then_some(c)
}

#[cfg(test)]
mod tests;
