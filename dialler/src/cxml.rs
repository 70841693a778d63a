//! CXML (Cloudonix's TwiML dialect): the document an answered campaign call executes, one per
//! routing destination exactly as the seed's table gives it:
//!
//! | destination | document |
//! |---|---|
//! | AI assistant (SIP) | `<Response><Dial><Service provider="P">sip:…</Service></Dial></Response>` |
//! | AI assistant (WebSocket) | `<Response><Connect><Stream url="wss://…">` + `<Parameter name="…" value="…"/>` … `</Stream></Connect></Response>` |
//! | Hangup | `<Response><Hangup/></Response>` |
//!
//! (A load balancer yields one of the first two for the assistant it picks.) Documents are
//! written with quick-xml; attribute values are escaped in full (`&`, `<`, `>`, `"`, `'`, and
//! tab, newline and carriage return as character references so they survive attribute-value
//! normalisation); characters XML 1.0 cannot carry (other C0 controls) are dropped.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use quick_xml::Writer;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::QName;

/// Where an answered call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An AI assistant reached over SIP through a named service provider.
    Sip { provider: String, uri: String },
    /// A bidirectional media stream to a WebSocket AI assistant (or a CX Bridge engine), with
    /// `<Parameter>` children (contact metadata, the call's ids).
    Stream { url: String, parameters: Vec<(String, String)> },
    /// End the call when answered.
    Hangup,
}

/// The CXML document for `destination`.
pub fn document(destination: &Destination) -> String {
    let mut w = Writer::new(Vec::with_capacity(256));
    // Writing into a Vec cannot fail.
    let mut put = |e: Event<'_>| {
        let _ = w.write_event(e);
    };
    put(Event::Start(BytesStart::new("Response")));
    match destination {
        Destination::Sip { provider, uri } => {
            put(Event::Start(BytesStart::new("Dial")));
            put(Event::Start(element("Service", &[("provider", provider)])));
            put(Event::Text(BytesText::new(&xml_chars(uri))));
            put(Event::End(BytesEnd::new("Service")));
            put(Event::End(BytesEnd::new("Dial")));
        }
        Destination::Stream { url, parameters } => {
            put(Event::Start(BytesStart::new("Connect")));
            let stream = element("Stream", &[("url", url)]);
            if parameters.is_empty() {
                put(Event::Empty(stream));
            } else {
                put(Event::Start(stream));
                for (name, value) in parameters {
                    put(Event::Empty(element("Parameter", &[("name", name), ("value", value)])));
                }
                put(Event::End(BytesEnd::new("Stream")));
            }
            put(Event::End(BytesEnd::new("Connect")));
        }
        Destination::Hangup => put(Event::Empty(BytesStart::new("Hangup"))),
    }
    put(Event::End(BytesEnd::new("Response")));
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

/// An element with attributes escaped for an attribute value.
fn element<'a>(name: &'a str, attributes: &[(&'a str, &str)]) -> BytesStart<'a> {
    let mut e = BytesStart::new(name);
    for (key, value) in attributes {
        e.push_attribute(Attribute { key: QName(key.as_bytes()), value: Cow::Owned(escape_attribute(value).into_bytes()) });
    }
    e
}

/// Drops the characters XML 1.0 cannot carry at all (C0 controls but tab, newline, return).
fn xml_chars(s: &str) -> Cow<'_, str> {
    if s.chars().any(forbidden) { Cow::Owned(s.chars().filter(|c| !forbidden(*c)).collect()) } else { Cow::Borrowed(s) }
}

fn forbidden(c: char) -> bool {
    (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

fn escape_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 16);
    for c in xml_chars(value).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// The values an assistant's WebSocket URL template takes.
#[derive(Debug, Clone, Default)]
pub struct Placeholders<'a> {
    pub session: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub bot_id: &'a str,
    pub auth_token: &'a str,
}

/// Everything but RFC 3986's unreserved characters is percent-encoded.
pub(crate) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a URL template cannot be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}}")]
    Unknown(String),
    #[error("an unclosed {{")]
    Unclosed,
    #[error("the URL must be wss:// (ws:// only for loopback hosts)")]
    Scheme,
}

/// Fills `{session}`, `{from}`, `{to}`, `{bot_id}`, `{auth_token}` in `template`, each value
/// percent-encoded, and checks the finished URL is `wss://` (or `ws://` to a loopback host).
pub fn fill_template(template: &str, values: &Placeholders<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').ok_or(TemplateError::Unclosed)? + open;
        let value = match &rest[open + 1..close] {
            "session" => values.session,
            "from" => values.from,
            "to" => values.to,
            "bot_id" => values.bot_id,
            "auth_token" => values.auth_token,
            other => return Err(TemplateError::Unknown(other.to_string())),
        };
        out.extend(utf8_percent_encode(value, COMPONENT));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    check_stream_url(&out)?;
    Ok(out)
}

/// `wss://` anywhere, `ws://` only to a loopback host (development).
pub fn check_stream_url(url: &str) -> Result<(), TemplateError> {
    if url.starts_with("wss://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("ws://") else { return Err(TemplateError::Scheme) };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') { host.split(']').next().map(|h| &h[1..]).unwrap_or_default() } else { host.split(':').next().unwrap_or_default() };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback { Ok(()) } else { Err(TemplateError::Scheme) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_destination_matches_the_seed() {
        assert_eq!(document(&Destination::Hangup), "<Response><Hangup/></Response>");
        let sip = Destination::Sip { provider: "custom_sip_provider".into(), uri: "sip:ai@example.com".into() };
        assert_eq!(document(&sip), r#"<Response><Dial><Service provider="custom_sip_provider">sip:ai@example.com</Service></Dial></Response>"#);
        let url = "wss://ai.example.com/stream?session=123&from=%2B14155551234&to=%2B14155555678";
        let bare = Destination::Stream { url: url.into(), parameters: vec![] };
        assert_eq!(
            document(&bare),
            r#"<Response><Connect><Stream url="wss://ai.example.com/stream?session=123&amp;from=%2B14155551234&amp;to=%2B14155555678"/></Connect></Response>"#
        );
        let with = Destination::Stream { url: "wss://a.example/s".into(), parameters: vec![("contact_id".into(), "ct_1".into()), ("name".into(), "Ana".into())] };
        assert_eq!(
            document(&with),
            r#"<Response><Connect><Stream url="wss://a.example/s"><Parameter name="contact_id" value="ct_1"/><Parameter name="name" value="Ana"/></Stream></Connect></Response>"#
        );
    }

    #[test]
    fn hostile_values_are_escaped() {
        let d = Destination::Stream {
            url: "wss://a.example/s?x=1&y=\"2\"".into(),
            parameters: vec![
                ("name".into(), "Zoë \"The <Boss>\" O'Brien & Co.\nline two\r\tend".into()),
                ("evil".into(), "\"/><Hangup/><Parameter name=\"x".into()),
                ("ctl".into(), "a\u{0}b\u{1b}c".into()),
                ("日本".into(), "東京".into()),
            ],
        };
        let xml = document(&d);
        assert_eq!(
            xml,
            "<Response><Connect><Stream url=\"wss://a.example/s?x=1&amp;y=&quot;2&quot;\">\
             <Parameter name=\"name\" value=\"Zoë &quot;The &lt;Boss&gt;&quot; O&apos;Brien &amp; Co.&#10;line two&#13;&#9;end\"/>\
             <Parameter name=\"evil\" value=\"&quot;/&gt;&lt;Hangup/&gt;&lt;Parameter name=&quot;x\"/>\
             <Parameter name=\"ctl\" value=\"abc\"/>\
             <Parameter name=\"日本\" value=\"東京\"/></Stream></Connect></Response>"
        );
        let sip = Destination::Sip { provider: "p\"><Hangup/>".into(), uri: "sip:a@b.example;x=<1>&y".into() };
        assert_eq!(
            document(&sip),
            "<Response><Dial><Service provider=\"p&quot;&gt;&lt;Hangup/&gt;\">sip:a@b.example;x=&lt;1&gt;&amp;y</Service></Dial></Response>"
        );
    }

    #[test]
    fn written_documents_read_back_with_the_same_values() {
        let name = "Zoë \"The <Boss>\" & Co.\nline two\r\tend";
        let d = Destination::Stream { url: "wss://a.example/s?a=1&b=2".into(), parameters: vec![("name".into(), name.into())] };
        let xml = document(&d);
        let mut reader = quick_xml::Reader::from_str(&xml);
        let mut values = Vec::new();
        loop {
            match reader.read_event() {
                Ok(Event::Empty(e) | Event::Start(e)) => {
                    for a in e.attributes() {
                        let a = a.expect("well-formed attribute");
                        values.push(a.normalized_value(quick_xml::XmlVersion::Implicit1_0).expect("escaped value").into_owned());
                    }
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("not well-formed: {e}"),
            }
        }
        assert_eq!(values, vec!["wss://a.example/s?a=1&b=2".to_string(), "name".into(), name.into()]);
    }

    #[test]
    fn templates_fill_percent_encoded_values() {
        let v = Placeholders { session: "cl_01", from: "+14155551234", to: "+14155555678", bot_id: "bot 1", auth_token: "a&b=c/d" };
        let url = fill_template("wss://ai.example.com/stream?session={session}&from={from}&to={to}&bot={bot_id}&t={auth_token}", &v);
        assert_eq!(url.as_deref(), Ok("wss://ai.example.com/stream?session=cl_01&from=%2B14155551234&to=%2B14155555678&bot=bot%201&t=a%26b%3Dc%2Fd"));
        assert_eq!(fill_template("wss://x/{nope}", &v), Err(TemplateError::Unknown("nope".into())));
        assert_eq!(fill_template("wss://x/{session", &v), Err(TemplateError::Unclosed));
        assert_eq!(fill_template("ws://ai.example.com/{session}", &v), Err(TemplateError::Scheme));
        assert!(fill_template("ws://127.0.0.1:8080/ws/{bot_id}", &v).is_ok());
        assert!(fill_template("ws://localhost/ws", &v).is_ok());
        assert!(fill_template("ws://[::1]:9/ws", &v).is_ok());
        assert_eq!(fill_template("ws://127.0.0.1.evil.example/ws", &v), Err(TemplateError::Scheme));
        assert_eq!(fill_template("https://ai.example.com/", &v), Err(TemplateError::Scheme));
    }
}
