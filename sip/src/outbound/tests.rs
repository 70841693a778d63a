use super::*;

fn dial() -> Dial {
    Dial {
        target: "sip:+15550100@127.0.0.1:5080".into(),
        from: "<sip:+15550199@127.0.0.1>".into(),
        to: "<sip:+15550100@127.0.0.1>".into(),
        call_id: "out1".into(),
        tag: "t1".into(),
        contact: "sip:cxb@127.0.0.1:5060".into(),
        sent_by: "127.0.0.1:5060".into(),
        transport: "UDP",
        sdp: "v=0\r\n".into(),
        credentials: Some(("trunk".into(), "secret".into())),
        headers: vec![("P-Asserted-Identity".into(), "<sip:+15550199@127.0.0.1>".into())],
        ring_timeout: Duration::from_secs(30),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn drain(call: &mut OutboundCall) -> (Vec<String>, Vec<DialEvent>, Option<Duration>) {
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    loop {
        match call.poll_output() {
            DialOutput::Transmit(m) => {
                assert!(Message::parse(m.as_bytes()).is_ok(), "we send what we can read: {m}");
                sent.push(m);
            }
            DialOutput::Event(e) => events.push(e),
            DialOutput::Timeout(at) => return (sent, events, at),
        }
    }
}

/// The trunk's answer to `request`, with its To tag and more headers and body.
fn answer(request: &str, code: u16, reason: &str, extra: &[(&str, &str)], body: &str) -> String {
    let m = Message::parse(request.as_bytes()).expect("a request");
    let mut out = String::new();
    response(&m, code, reason, Some("r1"), extra, body, &mut out);
    out
}

fn feed(call: &mut OutboundCall, now: Duration, text: &str) {
    call.on_message(now, &Message::parse(text.as_bytes()).expect("a message"));
}

fn start(m: &str) -> &str {
    m.split("\r\n").next().unwrap_or_default()
}

#[test]
fn an_invite_is_resent_until_it_rings_then_answered_acknowledged_and_hung_up_by_the_callee() {
    let mut call = OutboundCall::new(secs(0.0), dial());
    let (sent, _, next) = drain(&mut call);
    let invite = sent[0].clone();
    let m = Message::parse(invite.as_bytes()).expect("INVITE");
    assert_eq!((start(&invite), m.header("P-Asserted-Identity"), m.body), ("INVITE sip:+15550100@127.0.0.1:5080 SIP/2.0", Some("<sip:+15550199@127.0.0.1>"), &b"v=0\r\n"[..]));
    assert_eq!(next, Some(secs(0.5)), "Timer A");
    call.handle_timeout(secs(0.5));
    let (sent, _, next) = drain(&mut call);
    assert_eq!((sent, next), (vec![invite.clone()], Some(secs(1.5))), "resent, the interval doubled");
    feed(&mut call, secs(0.6), &answer(&invite, 180, "Ringing", &[], ""));
    let (sent, events, next) = drain(&mut call);
    assert_eq!((sent.len(), events, next), (0, vec![DialEvent::Progress(180)], Some(secs(30.0))), "no more resends; the ring timeout");
    let ok = answer(&invite, 200, "OK", &[("Contact", "<sip:callee@127.0.0.1:5090>"), ("Record-Route", "<sip:p1;lr>, <sip:p2;lr>"), ("Content-Type", "application/sdp")], "v=0\r\nm=audio 4000 RTP/AVP 0\r\n");
    feed(&mut call, secs(2.0), &ok);
    let (sent, events, next) = drain(&mut call);
    assert_eq!(events, [DialEvent::Answered("v=0\r\nm=audio 4000 RTP/AVP 0\r\n".into())]);
    assert_eq!(next, None);
    let ack = Message::parse(sent[0].as_bytes()).expect("ACK");
    assert_eq!(start(&sent[0]), "ACK sip:callee@127.0.0.1:5090 SIP/2.0", "to the callee's Contact");
    assert_eq!(ack.headers("Route").collect::<Vec<_>>(), ["<sip:p2;lr>", "<sip:p1;lr>"], "through the Record-Route, reversed");
    assert_eq!((ack.tag("To"), ack.cseq()), (Some("r1"), Some((1, "ACK"))));
    feed(&mut call, secs(2.5), &ok);
    assert_eq!(drain(&mut call).0, sent, "a retransmitted 2xx gets the ACK again");
    let bye = "BYE sip:cxb@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKb1\r\nFrom: <sip:+15550100@127.0.0.1>;tag=r1\r\nTo: <sip:+15550199@127.0.0.1>;tag=t1\r\nCall-ID: out1\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n";
    feed(&mut call, secs(9.0), bye);
    let (sent, events, _) = drain(&mut call);
    assert_eq!((start(&sent[0]), events), ("SIP/2.0 200 OK", vec![DialEvent::Ended { remote: true }]));
    assert!(call.is_ended());
}

#[test]
fn a_refusal_is_acknowledged_in_its_transaction_and_reported() {
    let mut call = OutboundCall::new(secs(0.0), dial());
    let invite = drain(&mut call).0.remove(0);
    feed(&mut call, secs(0.2), &answer(&invite, 486, "Busy Here", &[], ""));
    let (sent, events, next) = drain(&mut call);
    let ack = Message::parse(sent[0].as_bytes()).expect("ACK");
    let inv = Message::parse(invite.as_bytes()).expect("INVITE");
    assert_eq!((ack.method(), ack.branch(), ack.cseq()), (Some("ACK"), inv.branch(), Some((1, "ACK"))), "same branch: the INVITE's transaction");
    assert_eq!(start(&sent[0]), "ACK sip:+15550100@127.0.0.1:5080 SIP/2.0");
    assert_eq!((events, next), (vec![DialEvent::Failed(486)], None));
}

#[test]
fn a_digest_challenge_is_answered_once() {
    let mut call = OutboundCall::new(secs(0.0), dial());
    let invite = drain(&mut call).0.remove(0);
    let challenge = Challenge { realm: "trunk".into(), nonce: "n1".into(), stale: false };
    feed(&mut call, secs(0.1), &answer(&invite, 407, "Proxy Authentication Required", &[("Proxy-Authenticate", &challenge.header())], ""));
    let (sent, events, _) = drain(&mut call);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(sent.len(), 2, "the ACK, then the INVITE again");
    let again = Message::parse(sent[1].as_bytes()).expect("INVITE");
    assert_eq!(again.cseq(), Some((2, "INVITE")));
    assert_ne!(again.branch(), Message::parse(invite.as_bytes()).expect("INVITE").branch(), "a new transaction");
    let credentials = Credentials::parse(again.header("Proxy-Authorization").expect("credentials")).expect("digest");
    assert!(credentials.verify("INVITE", "secret"), "{credentials:?}");
    assert_eq!(again.tag("To"), None);
    feed(&mut call, secs(0.2), &answer(&sent[1], 407, "Proxy Authentication Required", &[("Proxy-Authenticate", &challenge.header())], ""));
    assert_eq!(drain(&mut call).1, [DialEvent::Failed(407)], "not twice");
}

#[test]
fn no_answer_is_cancelled_at_the_ring_timeout_and_silence_is_408() {
    let mut call = OutboundCall::new(secs(0.0), dial());
    let invite = drain(&mut call).0.remove(0);
    feed(&mut call, secs(0.3), &answer(&invite, 183, "Session Progress", &[], ""));
    drain(&mut call);
    call.handle_timeout(secs(30.0));
    let (sent, _, _) = drain(&mut call);
    let cancel = Message::parse(sent[0].as_bytes()).expect("CANCEL");
    let inv = Message::parse(invite.as_bytes()).expect("INVITE");
    assert_eq!((cancel.method(), cancel.branch(), cancel.cseq()), (Some("CANCEL"), inv.branch(), Some((1, "CANCEL"))));
    feed(&mut call, secs(30.1), &answer(&invite, 487, "Request Terminated", &[], ""));
    let (sent, events, _) = drain(&mut call);
    assert_eq!((start(&sent[0]), events), ("ACK sip:+15550100@127.0.0.1:5080 SIP/2.0", vec![DialEvent::Failed(487)]));

    let mut silent = OutboundCall::new(secs(0.0), Dial { ring_timeout: Duration::from_secs(60), ..dial() });
    drain(&mut silent);
    silent.handle_timeout(64 * T1);
    assert_eq!(drain(&mut silent).1, [DialEvent::Failed(408)], "Timer B");
}

#[test]
fn we_hang_up_an_answered_call_with_a_bye_through_the_route() {
    let mut call = OutboundCall::new(secs(0.0), dial());
    let invite = drain(&mut call).0.remove(0);
    feed(&mut call, secs(1.0), &answer(&invite, 200, "OK", &[("Contact", "<sip:callee@127.0.0.1:5090>"), ("Record-Route", "<sip:p1;lr>")], "v=0\r\n"));
    drain(&mut call);
    call.hang_up(secs(5.0));
    let (sent, _, next) = drain(&mut call);
    let bye = Message::parse(sent[0].as_bytes()).expect("BYE");
    assert_eq!((start(&sent[0]), bye.header("Route"), bye.cseq()), ("BYE sip:callee@127.0.0.1:5090 SIP/2.0", Some("<sip:p1;lr>"), Some((2, "BYE"))));
    assert_eq!(next, Some(secs(5.5)), "resent over UDP until answered");
    feed(&mut call, secs(5.2), &answer(&sent[0], 200, "OK", &[], ""));
    assert_eq!(drain(&mut call).1, [DialEvent::Ended { remote: false }]);
}

#[test]
fn a_malformed_contact_in_the_answer_leaves_the_target_as_dialled() {
    let mut call = OutboundCall::new(secs(0.0), dial());
    let invite = drain(&mut call).0.remove(0);
    for contact in ["<D: out1", "sip:x y@host", "\"quoted\" <http://x>"] {
        let mut call2 = OutboundCall::new(secs(0.0), dial());
        drain(&mut call2);
        feed(&mut call2, secs(1.0), &answer(&invite, 200, "OK", &[("Contact", contact)], "v=0\r\n"));
        let (sent, _, _) = drain(&mut call2);
        assert_eq!(start(&sent[0]), "ACK sip:+15550100@127.0.0.1:5080 SIP/2.0", "{contact}");
    }
}
