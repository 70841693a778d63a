//! One outbound SIP call as the calling user agent (UAC), sans-IO: the INVITE's client
//! transaction and the dialog it makes (RFC 3261 §13.2, §17.1), with the timers on the
//! owner's clock. Like [`crate::call::InboundCall`]: messages and `now` in, one
//! [`OutboundCall::poll_output`] out.
//!
//! What it does: the INVITE (with our SDP offer) resent from T1 doubling while nothing
//! answers over UDP (Timer A), given up after 64·T1 as 408 (Timer B); provisional answers
//! reported (180, 183); one retry with digest credentials after a 401 or 407; a final
//! refusal acknowledged and reported with its status; a 2xx acknowledged (the ACK goes to the
//! callee's Contact through the Record-Route, and again for each retransmitted 2xx) and
//! reported with the callee's SDP; the ring timeout or the owner's cancel before an answer as
//! CANCEL (then the 487); in the dialog, the callee's BYE (200), OPTIONS, INFO keys,
//! re-INVITEs and UPDATEs (handed to the owner), NOTIFY (200), others 501; our BYE with its
//! retransmissions.

use std::collections::VecDeque;
use std::time::Duration;

use crate::call::{T1, T2};
use crate::digest::{Challenge, Credentials};
use crate::message::{Message, Outgoing, StartLine, request_uri, response};

const METHODS: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, NOTIFY";

/// A call to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// The Request-URI, e.g. `sip:+15550100@trunk.example:5060`.
    pub target: String,
    /// From, without its tag, e.g. `<sip:+15550199@cxb.example>`.
    pub from: String,
    /// To, e.g. `<sip:+15550100@trunk.example>`.
    pub to: String,
    /// A new Call-ID (random, from the owner).
    pub call_id: String,
    /// Our From tag (random).
    pub tag: String,
    /// Our Contact URI.
    pub contact: String,
    /// Our sent-by for Via.
    pub sent_by: String,
    /// `UDP`, `TCP` or `TLS`.
    pub transport: &'static str,
    /// Our SDP offer.
    pub sdp: String,
    /// Digest credentials for a 401 or 407 (user name, password).
    pub credentials: Option<(String, String)>,
    /// More headers on the INVITE (`P-Asserted-Identity`, …).
    pub headers: Vec<(String, String)>,
    /// How long it may ring before we cancel.
    pub ring_timeout: Duration,
}

/// What happened in the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialEvent {
    /// A provisional answer: 180 Ringing, 183 Session Progress, …
    Progress(u16),
    /// The callee answered with this SDP: media may flow.
    Answered(String),
    /// No answer: the final status (486 busy, 487 after our cancel or the ring timeout, 408 when
    /// nothing answered, 401/407 when the credentials were refused, …).
    Failed(u16),
    /// A key press sent as SIP INFO.
    Dtmf(char),
    /// A re-INVITE or UPDATE offered this SDP: answer with [`OutboundCall::answer_reoffer`].
    Reoffer(String),
    /// The call is over after an answer: `true` when the callee hung up.
    Ended {
        /// The callee sent the BYE.
        remote: bool,
    },
}

/// One answer of [`OutboundCall::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialOutput {
    /// Send this message to the trunk.
    Transmit(String),
    /// Note this.
    Event(DialEvent),
    /// Nothing more now; call [`OutboundCall::handle_timeout`] at this time (`None`: wait).
    Timeout(Option<Duration>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE out, nothing back.
    Calling,
    /// A provisional answer came.
    Ringing,
    /// CANCEL sent, waiting for the INVITE's final answer.
    Cancelling,
    /// The dialog is up.
    Confirmed,
    /// Our BYE is out.
    Leaving,
    Ended,
}

/// One outbound call.
#[derive(Debug)]
pub struct OutboundCall {
    dial: Dial,
    state: State,
    cseq: u32,
    branch: String,
    /// Each INVITE's text, for its retransmission and its CANCEL.
    invite: String,
    authorized: bool,
    resend: Option<(Duration, Duration)>,
    give_up: Duration,
    ring_until: Duration,
    remote_tag: String,
    remote_target: String,
    route: Vec<String>,
    ack: Option<String>,
    /// Our BYE: its CSeq, text and retransmission schedule.
    bye: Option<(u32, String, Duration, Duration)>,
    reoffer: Option<crate::message::RequestHead>,
    out: VecDeque<DialOutput>,
    buf: String,
}

impl OutboundCall {
    /// Starts the call at `now`: the INVITE goes out.
    pub fn new(now: Duration, dial: Dial) -> OutboundCall {
        let mut call = OutboundCall {
            ring_until: now + dial.ring_timeout,
            dial,
            state: State::Calling,
            cseq: 0,
            branch: String::new(),
            invite: String::new(),
            authorized: false,
            resend: None,
            give_up: now + 64 * T1,
            remote_tag: String::new(),
            remote_target: String::new(),
            route: Vec::new(),
            ack: None,
            bye: None,
            reoffer: None,
            out: VecDeque::new(),
            buf: String::new(),
        };
        call.send_invite(now, None);
        call
    }

    /// The call's Call-ID.
    pub fn call_id(&self) -> &str {
        &self.dial.call_id
    }

    fn reliable(&self) -> bool {
        self.dial.transport != "UDP"
    }

    fn from(&self) -> String {
        format!("{};tag={}", self.dial.from, self.dial.tag)
    }

    fn to(&self) -> String {
        if self.remote_tag.is_empty() { self.dial.to.clone() } else { format!("{};tag={}", self.dial.to, self.remote_tag) }
    }

    fn send_invite(&mut self, now: Duration, authorization: Option<(&str, String)>) {
        self.cseq += 1;
        self.branch = format!("z9hG4bK{}i{}", self.dial.tag, self.cseq);
        let mut extra: Vec<(&str, &str)> = self.dial.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        extra.push(("Allow", METHODS));
        extra.push(("Supported", "timer"));
        if let Some((name, value)) = &authorization {
            extra.push((name, value));
        }
        let from = self.from();
        Outgoing {
            method: "INVITE",
            target: &self.dial.target,
            transport: self.dial.transport,
            sent_by: &self.dial.sent_by,
            branch: &self.branch,
            route: &[],
            from: &from,
            to: &self.dial.to,
            call_id: &self.dial.call_id,
            cseq: self.cseq,
            contact: &self.dial.contact,
            extra: &extra,
            sdp: &self.dial.sdp,
        }
        .write(&mut self.invite);
        self.out.push_back(DialOutput::Transmit(self.invite.clone()));
        self.resend = (!self.reliable()).then_some((now + T1, T1));
        self.give_up = now + 64 * T1;
    }

    /// A request in the dialog (or, for CANCEL and a non-2xx ACK, in the INVITE's
    /// transaction).
    fn request(&mut self, method: &str, cseq: u32, branch: &str, extra: &[(&str, &str)]) -> String {
        let (from, to) = (self.from(), self.to());
        let in_dialog = matches!(method, "BYE" | "ACK") && !self.remote_target.is_empty();
        let target = if in_dialog { self.remote_target.clone() } else { self.dial.target.clone() };
        let route = if in_dialog { self.route.clone() } else { Vec::new() };
        let mut out = String::with_capacity(512);
        Outgoing {
            method,
            target: &target,
            transport: self.dial.transport,
            sent_by: &self.dial.sent_by,
            branch,
            route: &route,
            from: &from,
            to: &to,
            call_id: &self.dial.call_id,
            cseq,
            contact: &self.dial.contact,
            extra,
            sdp: "",
        }
        .write(&mut out);
        out
    }

    fn emit(&mut self, event: DialEvent) {
        self.out.push_back(DialOutput::Event(event));
    }

    fn fail(&mut self, code: u16) {
        if self.state != State::Ended {
            self.state = State::Ended;
            self.resend = None;
            self.emit(DialEvent::Failed(code));
        }
    }

    fn cancel_invite(&mut self, now: Duration) {
        let branch = self.branch.clone();
        let cancel = self.request("CANCEL", self.cseq, &branch, &[]);
        self.out.push_back(DialOutput::Transmit(cancel));
        self.state = State::Cancelling;
        self.resend = None;
        // Timer B's bound for the 487 that ends it.
        self.give_up = now + 64 * T1;
    }

    /// Gives up before an answer (CANCEL), or hangs up after one (BYE).
    pub fn hang_up(&mut self, now: Duration) {
        match self.state {
            State::Calling => {
                // A CANCEL may go only after a provisional answer; without one, the call is
                // abandoned and a late 2xx is answered with a BYE.
                self.state = State::Cancelling;
                self.resend = None;
                self.give_up = now + 64 * T1;
            }
            State::Ringing => self.cancel_invite(now),
            State::Confirmed => {
                let cseq = self.cseq + 1;
                self.cseq = cseq;
                let branch = format!("z9hG4bK{}b{cseq}", self.dial.tag);
                let bye = self.request("BYE", cseq, &branch, &[]);
                self.out.push_back(DialOutput::Transmit(bye.clone()));
                let next = if self.reliable() { Duration::MAX } else { now + T1 };
                self.bye = Some((cseq, bye, next, T1));
                self.give_up = now + 64 * T1;
                self.state = State::Leaving;
            }
            State::Cancelling | State::Leaving | State::Ended => {}
        }
    }

    /// Answers a re-INVITE or UPDATE the owner was told of.
    pub fn answer_reoffer(&mut self, sdp: &str) {
        let Some(request) = self.reoffer.take() else { return };
        let contact = format!("<{}>", self.dial.contact);
        request.respond(200, "OK", None, &[("Contact", &contact), ("Content-Type", "application/sdp")], sdp, &mut self.buf);
        self.out.push_back(DialOutput::Transmit(self.buf.clone()));
    }

    /// A message from the trunk for this call (same Call-ID).
    pub fn on_message(&mut self, now: Duration, m: &Message<'_>) {
        if m.call_id() != self.dial.call_id {
            return;
        }
        match m.start {
            StartLine::Response { code, .. } => self.on_response(now, code, m),
            StartLine::Request { method, .. } => self.on_request(method, m),
        }
    }

    fn on_response(&mut self, now: Duration, code: u16, m: &Message<'_>) {
        let Some((cseq, method)) = m.cseq() else { return };
        if method == "BYE" {
            if self.bye.as_ref().is_some_and(|b| b.0 == cseq) && code >= 200 {
                self.bye = None;
                self.state = State::Ended;
                self.emit(DialEvent::Ended { remote: false });
            }
            return;
        }
        if method != "INVITE" || cseq != self.cseq {
            return;
        }
        if (200..300).contains(&code) {
            self.on_success(now, m);
            return;
        }
        if code < 200 {
            self.resend = None;
            if self.state == State::Calling {
                if code > 100 {
                    self.emit(DialEvent::Progress(code));
                }
                self.state = State::Ringing;
            } else if self.state == State::Ringing && code > 100 {
                self.emit(DialEvent::Progress(code));
            }
            return;
        }
        if self.state == State::Ended || self.state == State::Confirmed {
            return;
        }
        // A refusal: its ACK, in the INVITE's transaction (and again for its retransmissions).
        self.remote_tag = m.tag("To").unwrap_or_default().to_string();
        let branch = self.branch.clone();
        let ack = self.request("ACK", cseq, &branch, &[]);
        self.out.push_back(DialOutput::Transmit(ack));
        let challenge = match code {
            401 => m.header("WWW-Authenticate").map(|c| ("Authorization", c)),
            407 => m.header("Proxy-Authenticate").map(|c| ("Proxy-Authorization", c)),
            _ => None,
        };
        let retry = challenge.and_then(|(header, value)| Some((header, Challenge::parse(value)?)));
        match (retry, self.dial.credentials.clone()) {
            (Some((header, challenge)), Some((user, password))) if !self.authorized && self.state != State::Cancelling => {
                self.authorized = true;
                self.remote_tag.clear();
                let uri = self.dial.target.clone();
                let cnonce = format!("{}{}", self.dial.tag, self.cseq);
                let answer = Credentials::answer(&challenge, "INVITE", &uri, &user, &password, &cnonce, 1);
                self.state = State::Calling;
                self.send_invite(now, Some((header, answer)));
            }
            _ => self.fail(code),
        }
    }

    fn on_success(&mut self, now: Duration, m: &Message<'_>) {
        if let Some(ack) = &self.ack {
            // A retransmitted 2xx: our ACK was lost.
            self.out.push_back(DialOutput::Transmit(ack.clone()));
            return;
        }
        self.resend = None;
        self.remote_tag = m.tag("To").unwrap_or_default().to_string();
        self.remote_target = m.header("Contact").and_then(request_uri).unwrap_or(&self.dial.target).to_string();
        // The route set: each Record-Route entry, in reverse (RFC 3261 §12.1.2).
        self.route = m.headers("Record-Route").map(|r| r.trim().to_string()).collect();
        self.route.reverse();
        let branch = format!("z9hG4bK{}a{}", self.dial.tag, self.cseq);
        let ack = self.request("ACK", self.cseq, &branch, &[]);
        self.out.push_back(DialOutput::Transmit(ack.clone()));
        self.ack = Some(ack);
        let cancelled = matches!(self.state, State::Cancelling | State::Ended);
        self.state = State::Confirmed;
        if cancelled {
            // Answered after we gave up: hang the answered call up at once.
            self.hang_up(now);
            return;
        }
        self.emit(DialEvent::Answered(String::from_utf8_lossy(m.body).into_owned()));
    }

    fn on_request(&mut self, method: &str, m: &Message<'_>) {
        let ours = !self.remote_tag.is_empty() && m.tag("From") == Some(self.remote_tag.as_str()) && m.tag("To") == Some(self.dial.tag.as_str());
        let reply = |call: &mut OutboundCall, code: u16, reason: &str, extra: &[(&str, &str)]| {
            response(m, code, reason, None, extra, "", &mut call.buf);
            call.out.push_back(DialOutput::Transmit(call.buf.clone()));
        };
        match method {
            "ACK" => {}
            "OPTIONS" => reply(self, 200, "OK", &[("Allow", METHODS)]),
            _ if !ours || !matches!(self.state, State::Confirmed | State::Leaving) => reply(self, 481, "Call/Transaction Does Not Exist", &[]),
            "BYE" => {
                reply(self, 200, "OK", &[]);
                if self.state != State::Ended {
                    self.state = State::Ended;
                    self.bye = None;
                    self.emit(DialEvent::Ended { remote: true });
                }
            }
            "NOTIFY" => reply(self, 200, "OK", &[]),
            "INFO" => match crate::call::dtmf_of(m) {
                Some(key) => {
                    reply(self, 200, "OK", &[]);
                    self.emit(DialEvent::Dtmf(key));
                }
                None => reply(self, 415, "Unsupported Media Type", &[("Accept", "application/dtmf-relay, application/dtmf")]),
            },
            "INVITE" | "UPDATE" if self.reoffer.is_some() => reply(self, 491, "Request Pending", &[]),
            "INVITE" | "UPDATE" => {
                self.reoffer = Some(crate::message::RequestHead::of(m));
                self.emit(DialEvent::Reoffer(String::from_utf8_lossy(m.body).into_owned()));
            }
            _ => reply(self, 501, "Not Implemented", &[("Allow", METHODS)]),
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        match self.state {
            State::Calling | State::Cancelling if now >= self.give_up => self.fail(408),
            State::Ringing if now >= self.ring_until => self.cancel_invite(now),
            State::Calling if now >= self.ring_until => self.hang_up(now),
            State::Leaving if now >= self.give_up => {
                self.state = State::Ended;
                self.bye = None;
                self.emit(DialEvent::Ended { remote: false });
            }
            _ => {}
        }
        if let Some((at, interval)) = self.resend
            && now >= at
            && self.state == State::Calling
        {
            self.out.push_back(DialOutput::Transmit(self.invite.clone()));
            let interval = interval * 2;
            self.resend = Some((now + interval, interval));
        }
        if let Some((_, bye, at, interval)) = self.bye.as_mut()
            && now >= *at
        {
            self.out.push_back(DialOutput::Transmit(bye.clone()));
            *interval = (*interval * 2).min(T2);
            *at = now + *interval;
        }
    }

    /// The next output. Call until it answers [`DialOutput::Timeout`] after every input.
    pub fn poll_output(&mut self) -> DialOutput {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let timers = match self.state {
            State::Calling => [self.resend.map(|r| r.0), Some(self.give_up), Some(self.ring_until)],
            State::Ringing => [None, None, Some(self.ring_until)],
            State::Cancelling => [None, Some(self.give_up), None],
            State::Leaving => [self.bye.as_ref().map(|b| b.2).filter(|at| *at != Duration::MAX), Some(self.give_up), None],
            State::Confirmed | State::Ended => [None, None, None],
        };
        DialOutput::Timeout(timers.into_iter().flatten().min())
    }

    /// Whether the call is over (its last outputs may still be queued).
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }
}

#[cfg(test)]
mod tests;
