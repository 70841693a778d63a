//! Reading the CXML an answered call runs into a [`Plan`], the little the simulator can do with
//! it. Pure and bounded (document size, nesting, parameters); never panics, whatever the bytes
//! (fuzzed: `dialler_cxml`).
//!
//! The first verb of `<Response>` decides, as on a carrier that would run it first:
//! `<Hangup/>` (or an empty `<Response/>`, which hangs up on Twilio too),
//! `<Connect><Stream url="…"><Parameter name="…" value="…"/></Stream></Connect>` and
//! `<Dial><Service provider="…">sip:…</Service></Dial>`. Any other verb is
//! [`Plan::Unsupported`]. The rest of the document must still be well-formed XML.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesStart, Event};

/// The largest CXML document read, in bytes.
pub const MAX_CXML_BYTES: usize = 64 * 1024;
/// The most `<Parameter>` elements a `<Stream>` may carry.
pub const MAX_PARAMETERS: usize = 32;
/// The deepest element nesting accepted.
const MAX_DEPTH: usize = 16;
/// Verb names longer than this are cut in [`Plan::Unsupported`].
const MAX_VERB_NAME: usize = 64;

/// What an answered call does, from its CXML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// `<Hangup/>` or an empty `<Response/>`: end the call at once.
    Hangup,
    /// `<Connect><Stream>`: a bidirectional media stream to `url` (Twilio Media Streams).
    Stream {
        /// The WebSocket URL, XML-unescaped.
        url: String,
        /// `<Parameter name value>` children, in document order (the `start` message's
        /// `customParameters`).
        parameters: Vec<(String, String)>,
    },
    /// `<Dial><Service provider="…">sip:…</Service></Dial>`: an AI service over SIP.
    Service {
        /// The `provider` attribute.
        provider: String,
        /// The element's text: the SIP URI.
        uri: String,
    },
    /// A first verb the simulator does not run (`Say`, `Play`, `Dial` to a number, …).
    Unsupported(String),
}

/// Why a document is not CXML the simulator can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("the document is larger than {MAX_CXML_BYTES} bytes")]
    TooLarge,
    #[error("the document is not UTF-8")]
    NotUtf8,
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("the root element is not <Response>")]
    NotResponse,
    #[error("elements nest deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("a <Stream> carries more than {MAX_PARAMETERS} parameters")]
    TooManyParameters,
    #[error("<{element}> needs a non-empty `{attribute}`")]
    Missing { element: &'static str, attribute: &'static str },
}

/// What the first verb has gathered so far.
#[derive(Debug, Default)]
struct FirstVerb {
    /// The verb's name, once its start tag is read.
    name: Option<String>,
    stream: Option<(String, Vec<(String, String)>)>,
    service: Option<(String, String)>,
    /// Inside `<Dial><Service>`: its text goes to the URI.
    in_service: bool,
    /// Set when the verb's end tag is read.
    plan: Option<Plan>,
}

/// Reads a CXML document into the plan of its first verb.
pub fn read_plan(doc: &[u8]) -> Result<Plan, PlanError> {
    if doc.len() > MAX_CXML_BYTES {
        return Err(PlanError::TooLarge);
    }
    let text = std::str::from_utf8(doc).map_err(|_| PlanError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut seen_root = false;
    let mut verb = FirstVerb::default();
    loop {
        let event = reader.read_event().map_err(|e| PlanError::Xml(e.to_string()))?;
        match event {
            Event::Start(e) => {
                open(&e, &path, &mut seen_root, &mut verb)?;
                if path.len() >= MAX_DEPTH {
                    return Err(PlanError::TooDeep);
                }
                path.push(e.name().as_ref().to_vec());
            }
            Event::Empty(e) => {
                open(&e, &path, &mut seen_root, &mut verb)?;
                path.push(e.name().as_ref().to_vec());
                close(&path, &mut verb);
                path.pop();
            }
            Event::End(_) => {
                close(&path, &mut verb);
                path.pop();
            }
            Event::Text(t) => {
                let t = t.xml10_content().map_err(|e| PlanError::Xml(e.to_string()))?;
                text_at(&t, &path, &mut verb)?;
            }
            Event::CData(t) => {
                let t = t.xml10_content().map_err(|e| PlanError::Xml(e.to_string()))?;
                text_at(&t, &path, &mut verb)?;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| PlanError::Xml(e.to_string()))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| PlanError::Xml(e.to_string()))?;
                        resolve_predefined_entity(&name)
                            .ok_or_else(|| PlanError::Xml(format!("unknown entity &{name};")))?
                            .to_string()
                    }
                };
                text_at(&resolved, &path, &mut verb)?;
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if !path.is_empty() {
        return Err(PlanError::Xml("the document ends inside an element".into()));
    }
    if !seen_root {
        return Err(PlanError::NotResponse);
    }
    Ok(verb.plan.unwrap_or(Plan::Hangup))
}

/// A start tag (or an empty element) at the current `path`.
fn open(e: &BytesStart<'_>, path: &[Vec<u8>], seen_root: &mut bool, verb: &mut FirstVerb) -> Result<(), PlanError> {
    let name = e.name();
    let name = name.as_ref();
    match path.len() {
        0 => {
            if *seen_root || name != b"Response" {
                return Err(PlanError::NotResponse);
            }
            *seen_root = true;
        }
        1 if verb.plan.is_none() && verb.name.is_none() => {
            let shown: String = String::from_utf8_lossy(name).chars().take(MAX_VERB_NAME).collect();
            verb.name = Some(shown);
        }
        2 if verb.plan.is_none() => match (path.get(1).map(Vec::as_slice), name) {
            (Some(b"Connect"), b"Stream") if verb.stream.is_none() => {
                let url = attribute(e, "url")?.filter(|u| !u.trim().is_empty());
                let url = url.ok_or(PlanError::Missing { element: "Stream", attribute: "url" })?;
                verb.stream = Some((url.trim().to_string(), Vec::new()));
            }
            (Some(b"Dial"), b"Service") if verb.service.is_none() => {
                let provider = attribute(e, "provider")?.filter(|p| !p.is_empty());
                let provider = provider.ok_or(PlanError::Missing { element: "Service", attribute: "provider" })?;
                verb.service = Some((provider, String::new()));
                verb.in_service = true;
            }
            _ => {}
        },
        3 if verb.plan.is_none() && name == b"Parameter" && path.get(2).map(Vec::as_slice) == Some(b"Stream") => {
            if let Some((_, parameters)) = verb.stream.as_mut() {
                if parameters.len() >= MAX_PARAMETERS {
                    return Err(PlanError::TooManyParameters);
                }
                let pname = attribute(e, "name")?.filter(|n| !n.is_empty());
                let pname = pname.ok_or(PlanError::Missing { element: "Parameter", attribute: "name" })?;
                parameters.push((pname, attribute(e, "value")?.unwrap_or_default()));
            }
        }
        _ => {}
    }
    // Every attribute must be readable, even on elements the plan ignores.
    for a in e.attributes() {
        a.map_err(|err| PlanError::Xml(err.to_string()))?;
    }
    Ok(())
}

/// An end tag: `path` still holds the element being closed.
fn close(path: &[Vec<u8>], verb: &mut FirstVerb) {
    match path.len() {
        3 if verb.in_service => verb.in_service = false,
        2 if verb.plan.is_none() => {
            let name = verb.name.take().unwrap_or_default();
            verb.plan = Some(match (name.as_str(), verb.stream.take(), verb.service.take()) {
                ("Hangup", _, _) => Plan::Hangup,
                ("Connect", Some((url, parameters)), _) => Plan::Stream { url, parameters },
                ("Dial", _, Some((provider, uri))) => Plan::Service { provider, uri: uri.trim().to_string() },
                _ => Plan::Unsupported(name),
            });
        }
        _ => {}
    }
}

/// Character data at the current `path`: the `<Service>` URI, or ignored inside other verbs.
/// Outside the root only whitespace is allowed.
fn text_at(text: &str, path: &[Vec<u8>], verb: &mut FirstVerb) -> Result<(), PlanError> {
    if path.is_empty() && !text.trim().is_empty() {
        return Err(PlanError::Xml("text outside the root element".into()));
    }
    if verb.in_service
        && let Some((_, uri)) = verb.service.as_mut()
    {
        uri.push_str(text);
    }
    Ok(())
}

/// The unescaped value of attribute `key`, if present.
fn attribute(e: &BytesStart<'_>, key: &str) -> Result<Option<String>, PlanError> {
    let found: Option<Attribute<'_>> =
        e.try_get_attribute(key).map_err(|err| PlanError::Xml(err.to_string()))?;
    found
        .map(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map(|v| v.into_owned()))
        .transpose()
        .map_err(|err| PlanError::Xml(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(doc: &str) -> Result<Plan, PlanError> {
        read_plan(doc.as_bytes())
    }

    #[test]
    fn the_seeds_documents() {
        assert_eq!(plan("<Response><Hangup/></Response>"), Ok(Plan::Hangup));
        assert_eq!(plan("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response/>"), Ok(Plan::Hangup));
        let stream = r#"<Response><Connect><Stream url="ws://127.0.0.1:1/v1/twilio?bot=a&amp;t=%20x">
            <Parameter name="lead" value="Ann &quot;A&quot; &lt;&amp;&gt; &#233;"/><Parameter name="n" value=""/>
            </Stream></Connect><Hangup/></Response>"#;
        assert_eq!(
            plan(stream),
            Ok(Plan::Stream {
                url: "ws://127.0.0.1:1/v1/twilio?bot=a&t=%20x".into(),
                parameters: vec![("lead".into(), "Ann \"A\" <&> é".into()), ("n".into(), String::new())],
            })
        );
        let sip = r#"<Response><Dial callerId="+15550001"><Service provider="acme">
            sip:bot@ai.example.com;x=1&amp;y=2</Service></Dial></Response>"#;
        assert_eq!(
            plan(sip),
            Ok(Plan::Service { provider: "acme".into(), uri: "sip:bot@ai.example.com;x=1&y=2".into() })
        );
    }

    #[test]
    fn the_first_verb_decides() {
        assert_eq!(plan("<Response><Say>Hi</Say><Hangup/></Response>"), Ok(Plan::Unsupported("Say".into())));
        assert_eq!(
            plan("<Response><Dial><Number>+15550001</Number></Dial></Response>"),
            Ok(Plan::Unsupported("Dial".into()))
        );
        assert_eq!(plan("<Response><Connect><Room/></Connect></Response>"), Ok(Plan::Unsupported("Connect".into())));
        assert_eq!(plan("<Response><Hangup/><Say>x</Say></Response>"), Ok(Plan::Hangup));
        // A <Stream> not directly inside <Connect> is not a stream.
        assert_eq!(
            plan(r#"<Response><Start><Stream url="ws://x"/></Start></Response>"#),
            Ok(Plan::Unsupported("Start".into()))
        );
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "",
            "<Response>",
            "<Response><Hangup></Response>",
            "<Reply><Hangup/></Reply>",
            "<Response/><Response/>",
            "x<Response/>",
            "<Response/>trailing",
            "<Response><Connect><Stream/></Connect></Response>",
            r#"<Response><Connect><Stream url="  "/></Connect></Response>"#,
            r#"<Response><Connect><Stream url="ws://x"><Parameter value="v"/></Stream></Connect></Response>"#,
            "<Response><Dial><Service>sip:x</Service></Dial></Response>",
            "<Response><Say>&bogus;</Say></Response>",
            r#"<Response><Hangup a="1" a="2"/></Response>"#,
            "<Response><Say>&#0;</Say></Response>",
        ] {
            assert!(plan(bad).is_err(), "{bad:?} -> {:?}", plan(bad));
        }
        assert_eq!(read_plan(&[0xff, 0xfe, b'<']), Err(PlanError::NotUtf8));
        let big = format!("<Response>{}</Response>", " ".repeat(MAX_CXML_BYTES));
        assert_eq!(plan(&big), Err(PlanError::TooLarge));
        let deep = format!("<Response>{}{}</Response>", "<a>".repeat(40), "</a>".repeat(40));
        assert_eq!(plan(&deep), Err(PlanError::TooDeep));
        let many: String = (0..=MAX_PARAMETERS).map(|i| format!(r#"<Parameter name="p{i}" value="v"/>"#)).collect();
        let doc = format!(r#"<Response><Connect><Stream url="ws://x">{many}</Stream></Connect></Response>"#);
        assert_eq!(plan(&doc), Err(PlanError::TooManyParameters));
    }
}
