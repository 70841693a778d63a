use super::*;

const INVITE: &str = "INVITE sip:bot@127.0.0.1:5060 SIP/2.0\r\n\
    Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKinv1;rport\r\n\
    Record-Route: <sip:127.0.0.1:5080;lr>\r\n\
    From: Alice <sip:alice@127.0.0.1>;tag=a1\r\n\
    To: <sip:bot@127.0.0.1>\r\n\
    Call-ID: c1@127.0.0.1\r\n\
    CSeq: 10 INVITE\r\n\
    Contact: <sip:alice@127.0.0.1:5070>\r\n\
    Content-Type: application/sdp\r\n\
    Content-Length: 4\r\n\r\nv=0\n";

fn local(transport: &'static str) -> Local {
    Local { tag: "b1".into(), contact: "sip:bot@127.0.0.1:5060".into(), sent_by: "127.0.0.1:5060".into(), transport }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A request in the dialog from the caller.
fn request(method: &str, cseq: u32, branch: &str, to_tag: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} sip:bot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\nFrom: Alice <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bot@127.0.0.1>{to_tag}\r\nCall-ID: c1@127.0.0.1\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// What the call says now: messages (as start line plus the parsed message's key fields)
/// and events; and its next timeout.
fn drain(call: &mut InboundCall) -> (Vec<String>, Vec<CallEvent>, Option<Duration>) {
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    loop {
        match call.poll_output() {
            Output::Transmit(m) => {
                assert!(Message::parse(m.as_bytes()).is_ok(), "we send what we can read: {m}");
                sent.push(m);
            }
            Output::Event(e) => events.push(e),
            Output::Timeout(at) => return (sent, events, at),
        }
    }
}

fn start_line(m: &str) -> &str {
    m.split("\r\n").next().unwrap_or_default()
}

fn new_call(transport: &'static str) -> InboundCall {
    let invite = Message::parse(INVITE.as_bytes()).expect("an INVITE");
    InboundCall::new(&invite, local(transport)).expect("a call")
}

#[test]
fn a_call_is_tried_rung_answered_acknowledged_and_hung_up_by_the_caller() {
    let mut call = new_call("UDP");
    let (sent, _, next) = drain(&mut call);
    assert_eq!(sent.iter().map(|m| start_line(m)).collect::<Vec<_>>(), ["SIP/2.0 100 Trying"]);
    assert!(!sent[0].contains("tag=b1"), "no To tag on 100");
    assert_eq!(next, None);
    call.ring(secs(0.1));
    call.answer(secs(0.2), "v=0\r\n");
    let (sent, _, next) = drain(&mut call);
    assert_eq!(sent.iter().map(|m| start_line(m)).collect::<Vec<_>>(), ["SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]);
    let ok = Message::parse(sent[1].as_bytes()).expect("200");
    assert_eq!((ok.tag("To"), ok.tag("From"), ok.cseq()), (Some("b1"), Some("a1"), Some((10, "INVITE"))));
    assert_eq!(ok.header("Contact"), Some("<sip:bot@127.0.0.1:5060>"));
    assert_eq!(ok.header("Record-Route"), Some("<sip:127.0.0.1:5080;lr>"));
    assert_eq!(ok.body, b"v=0\r\n");
    assert_eq!(next, Some(secs(0.7)), "the 2xx is retransmitted after T1");
    // The caller's INVITE again (its 200 was lost): the 200 again.
    call.on_message(secs(0.3), &Message::parse(INVITE.as_bytes()).expect("again"));
    assert_eq!(drain(&mut call).0.iter().map(|m| start_line(m)).collect::<Vec<_>>(), ["SIP/2.0 200 OK"]);
    let ack = request("ACK", 10, "z9hG4bKack1", ";tag=b1", "", "");
    call.on_message(secs(0.4), &Message::parse(ack.as_bytes()).expect("ACK"));
    assert_eq!(drain(&mut call), (vec![], vec![CallEvent::Confirmed], None), "no answer to an ACK, no more timers");
    let bye = request("BYE", 11, "z9hG4bKbye1", ";tag=b1", "", "");
    call.on_message(secs(5.0), &Message::parse(bye.as_bytes()).expect("BYE"));
    let (sent, events, _) = drain(&mut call);
    assert_eq!(start_line(&sent[0]), "SIP/2.0 200 OK");
    assert_eq!(Message::parse(sent[0].as_bytes()).ok().and_then(|m| m.cseq()), Some((11, "BYE")));
    assert_eq!(events, [CallEvent::Ended(EndCause::RemoteBye)]);
    assert!(call.is_ended());
}

#[test]
fn an_unacknowledged_answer_is_resent_doubling_to_t2_then_ended_with_a_bye() {
    let mut call = new_call("UDP");
    call.answer(secs(0.0), "v=0\r\n");
    let (_, _, mut next) = drain(&mut call);
    let mut resent = Vec::new();
    while let Some(at) = next {
        call.handle_timeout(at);
        let (sent, events, after) = drain(&mut call);
        if events == [CallEvent::Ended(EndCause::NoAck)] {
            assert_eq!(at, 64 * T1, "given up after 64·T1");
            assert_eq!(sent.iter().map(|m| start_line(m)).collect::<Vec<_>>(), ["BYE sip:alice@127.0.0.1:5070 SIP/2.0"]);
            assert_eq!(after, None);
            break;
        }
        assert_eq!(sent.iter().map(|m| start_line(m)).collect::<Vec<_>>(), ["SIP/2.0 200 OK"]);
        resent.push(at.as_secs_f64());
        next = after;
    }
    assert_eq!(resent[..5], [0.5, 1.5, 3.5, 7.5, 11.5], "T1, doubling, capped at T2 = 4 s");
    assert!(call.is_ended());
}

#[test]
fn cancel_before_the_answer_gets_200_and_487_and_ends_with_the_ack() {
    let mut call = new_call("UDP");
    call.ring(secs(0.0));
    drain(&mut call);
    let cancel = request("CANCEL", 10, "z9hG4bKinv1", "", "", "");
    call.on_message(secs(1.0), &Message::parse(cancel.as_bytes()).expect("CANCEL"));
    let (sent, events, next) = drain(&mut call);
    assert_eq!(sent.iter().map(|m| start_line(m)).collect::<Vec<_>>(), ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]);
    assert!(events.is_empty());
    assert_eq!(next, Some(secs(1.5)), "the 487 is retransmitted over UDP until its ACK");
    let ack = request("ACK", 10, "z9hG4bKinv1", ";tag=b1", "", "");
    call.on_message(secs(1.2), &Message::parse(ack.as_bytes()).expect("ACK"));
    assert_eq!(drain(&mut call), (vec![], vec![CallEvent::Ended(EndCause::Cancelled)], None));
    call.answer(secs(2.0), "v=0\r\n");
    assert_eq!(drain(&mut call).0, Vec::<String>::new(), "too late to answer");
}

#[test]
fn our_bye_follows_the_route_and_ends_the_call_when_answered() {
    let mut call = new_call("TCP");
    call.answer(secs(0.0), "v=0\r\n");
    let ack = request("ACK", 10, "z9hG4bKack1", ";tag=b1", "", "");
    call.on_message(secs(0.1), &Message::parse(ack.as_bytes()).expect("ACK"));
    drain(&mut call);
    call.hang_up(secs(10.0));
    let (sent, _, next) = drain(&mut call);
    let bye = Message::parse(sent[0].as_bytes()).expect("our BYE");
    assert_eq!(bye.start, StartLine::Request { method: "BYE", uri: "sip:alice@127.0.0.1:5070" });
    assert_eq!(bye.header("Route"), Some("<sip:127.0.0.1:5080;lr>"));
    assert_eq!((bye.tag("From"), bye.tag("To"), bye.cseq()), (Some("b1"), Some("a1"), Some((2, "BYE"))));
    assert!(bye.header("Via").is_some_and(|v| v.starts_with("SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK")));
    assert_eq!(next, Some(secs(10.0) + 64 * T1), "over TCP no retransmission, only Timer F");
    let ok = "SIP/2.0 200 OK\r\nVia: x\r\nFrom: <sip:bot@127.0.0.1>;tag=b1\r\nTo: Alice <sip:alice@127.0.0.1>;tag=a1\r\nCall-ID: c1@127.0.0.1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    call.on_message(secs(10.1), &Message::parse(ok.as_bytes()).expect("200"));
    assert_eq!(drain(&mut call), (vec![], vec![CallEvent::Ended(EndCause::LocalBye)], None));
}

#[test]
fn in_dialog_requests_keys_reoffers_and_strangers() {
    let mut call = new_call("UDP");
    call.answer(secs(0.0), "v=0\r\n");
    let ack = request("ACK", 10, "z9hG4bKack1", ";tag=b1", "", "");
    call.on_message(secs(0.1), &Message::parse(ack.as_bytes()).expect("ACK"));
    drain(&mut call);
    let info = request("INFO", 11, "z9hG4bKi1", ";tag=b1", "Content-Type: application/dtmf-relay\r\n", "Signal=5\r\nDuration=160\r\n");
    call.on_message(secs(1.0), &Message::parse(info.as_bytes()).expect("INFO"));
    let (sent, events, _) = drain(&mut call);
    assert_eq!((start_line(&sent[0]), events), ("SIP/2.0 200 OK", vec![CallEvent::Dtmf('5')]));
    let info = request("INFO", 12, "z9hG4bKi2", ";tag=b1", "Content-Type: text/plain\r\n", "hello");
    call.on_message(secs(1.1), &Message::parse(info.as_bytes()).expect("INFO"));
    assert_eq!(start_line(&drain(&mut call).0[0]), "SIP/2.0 415 Unsupported Media Type");
    let hold = request("INVITE", 13, "z9hG4bKr1", ";tag=b1", "Content-Type: application/sdp\r\n", "a=sendonly\r\n");
    call.on_message(secs(2.0), &Message::parse(hold.as_bytes()).expect("re-INVITE"));
    assert_eq!(drain(&mut call).1, [CallEvent::Reoffer("a=sendonly\r\n".into())]);
    let again = request("INVITE", 14, "z9hG4bKr2", ";tag=b1", "", "");
    call.on_message(secs(2.1), &Message::parse(again.as_bytes()).expect("re-INVITE"));
    assert_eq!(start_line(&drain(&mut call).0[0]), "SIP/2.0 491 Request Pending");
    call.answer_reoffer("a=recvonly\r\n");
    let (sent, _, _) = drain(&mut call);
    let ok = Message::parse(sent[0].as_bytes()).expect("200");
    assert_eq!((ok.cseq(), ok.body), (Some((13, "INVITE")), &b"a=recvonly\r\n"[..]));
    let stranger = request("BYE", 15, "z9hG4bKs1", ";tag=other", "", "");
    call.on_message(secs(3.0), &Message::parse(stranger.as_bytes()).expect("BYE"));
    assert_eq!(start_line(&drain(&mut call).0[0]), "SIP/2.0 481 Call/Transaction Does Not Exist");
    let refer = request("REFER", 16, "z9hG4bKu1", ";tag=b1", "", "");
    call.on_message(secs(3.1), &Message::parse(refer.as_bytes()).expect("REFER"));
    assert_eq!(start_line(&drain(&mut call).0[0]), "SIP/2.0 501 Not Implemented");
    let options = request("OPTIONS", 17, "z9hG4bKo1", "", "", "");
    call.on_message(secs(3.2), &Message::parse(options.as_bytes()).expect("OPTIONS"));
    assert_eq!(start_line(&drain(&mut call).0[0]), "SIP/2.0 200 OK");
    assert!(!call.is_ended());
}

fn timed_invite(seconds: u32) -> InboundCall {
    let text = INVITE.replace("Content-Type:", &format!("Supported: replaces, timer\r\nSession-Expires: {seconds};refresher=uac\r\nContent-Type:"));
    let invite = Message::parse(text.as_bytes()).expect("an INVITE");
    InboundCall::new(&invite, local("UDP")).expect("a call")
}

#[test]
fn a_session_timer_is_agreed_refreshed_by_the_caller_and_ends_the_call_when_it_stops() {
    let mut call = timed_invite(1800);
    drain(&mut call);
    call.answer(secs(0.0), "v=0\r\n");
    let (sent, _, _) = drain(&mut call);
    let ok = sent.last().expect("200");
    assert!(ok.contains("Session-Expires: 1800;refresher=uac\r\n") && ok.contains("Require: timer\r\n"), "{ok}");
    let ack = request("ACK", 10, "z9hG4bKack", ";tag=b1", "", "");
    call.on_message(secs(0.1), &Message::parse(ack.as_bytes()).expect("ACK"));
    let (_, events, next) = drain(&mut call);
    assert_eq!(events, [CallEvent::Confirmed]);
    assert_eq!(next, Some(secs(1800.1)), "expires one interval after the ACK");
    // The caller refreshes with an UPDATE (no body): 200 with the interval, expiry moved.
    let update = request("UPDATE", 11, "z9hG4bKupd", ";tag=b1", "Supported: timer\r\nSession-Expires: 1800;refresher=uac\r\n", "");
    call.on_message(secs(900.0), &Message::parse(update.as_bytes()).expect("UPDATE"));
    let (sent, events, next) = drain(&mut call);
    assert!(events.is_empty());
    assert!(start_line(&sent[0]) == "SIP/2.0 200 OK" && sent[0].contains("Session-Expires: 1800;refresher=uac"), "{sent:?}");
    assert_eq!(next, Some(secs(2700.0)));
    // No refresh: at expiry we hang up, and the call ends as expired once the BYE is answered.
    call.handle_timeout(secs(2700.0));
    let (sent, _, _) = drain(&mut call);
    assert!(sent[0].starts_with("BYE sip:alice@127.0.0.1:5070 SIP/2.0"), "{sent:?}");
    let bye = Message::parse(sent[0].as_bytes()).expect("BYE");
    let mut ok = String::new();
    response(&bye, 200, "OK", None, &[], "", &mut ok);
    call.on_message(secs(2700.1), &Message::parse(ok.as_bytes()).expect("200"));
    assert_eq!(drain(&mut call).1, [CallEvent::Ended(EndCause::SessionExpired)]);
}

#[test]
fn a_session_interval_below_the_floor_is_refused_with_422() {
    let mut call = timed_invite(30);
    drain(&mut call);
    call.answer(secs(0.0), "v=0\r\n");
    let (sent, _, _) = drain(&mut call);
    let refusal = sent.last().expect("422");
    assert!(start_line(refusal) == "SIP/2.0 422 Session Interval Too Small" && refusal.contains("Min-SE: 90\r\n"), "{refusal}");
}

fn confirmed() -> InboundCall {
    let mut call = new_call("UDP");
    call.answer(secs(0.0), "v=0\r\n");
    let ack = request("ACK", 10, "z9hG4bKack1", ";tag=b1", "", "");
    call.on_message(secs(0.1), &Message::parse(ack.as_bytes()).expect("ACK"));
    drain(&mut call);
    call
}

#[test]
fn a_blind_transfer_is_a_refer_whose_answer_is_an_event() {
    let mut call = confirmed();
    call.refer(secs(1.0), "sip:+15550199@127.0.0.1");
    let (sent, _, next) = drain(&mut call);
    let refer = Message::parse(sent[0].as_bytes()).expect("REFER");
    assert_eq!(refer.method(), Some("REFER"));
    assert_eq!((refer.header("Refer-To"), refer.header("Route")), (Some("<sip:+15550199@127.0.0.1>"), Some("<sip:127.0.0.1:5080;lr>")));
    assert_eq!((refer.tag("From"), refer.tag("To")), (Some("b1"), Some("a1")), "in the dialog, from our side");
    assert_eq!(next, Some(secs(1.5)), "retransmitted over UDP");
    let mut accepted = String::new();
    response(&refer, 202, "Accepted", None, &[], "", &mut accepted);
    call.on_message(secs(1.2), &Message::parse(accepted.as_bytes()).expect("202"));
    let (_, events, next) = drain(&mut call);
    assert_eq!((events, next), (vec![CallEvent::Referred(202)], None));
    let notify = request("NOTIFY", 11, "z9hG4bKn1", ";tag=b1", "Event: refer\r\nContent-Type: message/sipfrag\r\n", "SIP/2.0 200 OK\r\n");
    call.on_message(secs(1.3), &Message::parse(notify.as_bytes()).expect("NOTIFY"));
    assert_eq!(start_line(&drain(&mut call).0[0]), "SIP/2.0 200 OK");
    // A second transfer that nobody answers times out as 408.
    call.refer(secs(2.0), "sip:+15550198@127.0.0.1");
    drain(&mut call);
    call.handle_timeout(secs(2.0) + 64 * T1);
    assert_eq!(drain(&mut call).1, [CallEvent::Referred(408)]);
    assert!(!call.is_ended(), "the owner decides what follows");
}
