//! The JSON shapes on the wire. One flat set of structs reads both dialects: Twilio's
//! camelCase and Exotel's snake_case (Exotel peers built on one popular serializer send
//! camelCase too). Payloads are borrowed from the frame, not copied.

use std::borrow::Cow;

use cxb_codecs::Encoding;
use serde::Deserialize;

use super::{CarrierEvent, MediaFormat, ParseError, Protocol, Start, StreamSid, flex};

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, rename = "sequenceNumber", alias = "sequence_number", deserialize_with = "flex::opt_u64")]
    sequence: Option<u64>,
    #[serde(default, borrow, rename = "streamSid", alias = "stream_sid", deserialize_with = "flex::opt_cow")]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    media: Option<RawMedia<'a>>,
    #[serde(default)]
    start: Option<RawStart>,
    #[serde(default)]
    dtmf: Option<RawDtmf>,
    #[serde(default)]
    mark: Option<RawMark>,
    #[serde(default)]
    stop: Option<RawStop>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(default, deserialize_with = "flex::opt_u64")]
    chunk: Option<u64>,
    #[serde(default, deserialize_with = "flex::opt_u64")]
    timestamp: Option<u64>,
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawStart {
    #[serde(default, rename = "streamSid", alias = "stream_sid")]
    stream_sid: Option<String>,
    #[serde(default, rename = "callSid", alias = "call_sid")]
    call_sid: Option<String>,
    #[serde(default, rename = "accountSid", alias = "account_sid")]
    account_sid: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default, rename = "customParameters", alias = "custom_parameters")]
    custom_parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, rename = "mediaFormat", alias = "media_format")]
    media_format: Option<RawFormat>,
}

#[derive(Deserialize)]
struct RawFormat {
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default, rename = "sampleRate", alias = "sample_rate", deserialize_with = "flex::opt_u64")]
    sample_rate: Option<u64>,
}

#[derive(Deserialize)]
struct RawDtmf {
    digit: String,
    #[serde(default, deserialize_with = "flex::opt_u64")]
    duration: Option<u64>,
}

#[derive(Deserialize)]
struct RawMark {
    name: String,
}

#[derive(Deserialize)]
struct RawStop {
    #[serde(default)]
    reason: Option<String>,
}

fn missing(event: &str, field: &str) -> ParseError {
    ParseError::Malformed(format!("`{event}` event without `{field}`"))
}

pub(super) fn parse(protocol: Protocol, text: &str) -> Result<CarrierEvent<'_>, ParseError> {
    let raw: Raw<'_> = serde_json::from_str(text)?;
    Ok(match raw.event.as_ref() {
        "connected" => CarrierEvent::Connected,
        "media" => {
            let media = raw.media.ok_or_else(|| missing("media", "media"))?;
            CarrierEvent::Media {
                sequence: raw.sequence,
                chunk: media.chunk,
                timestamp_ms: media.timestamp,
                payload: media.payload,
            }
        }
        "start" => {
            let start = raw.start.ok_or_else(|| missing("start", "start"))?;
            let sid = start
                .stream_sid
                .or(raw.stream_sid.map(Cow::into_owned))
                .ok_or_else(|| missing("start", "streamSid"))?;
            let media_format = start.media_format.map(|f| format(protocol, f)).transpose()?;
            let custom_parameters = start
                .custom_parameters
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect();
            CarrierEvent::Start(Box::new(Start {
                transport: protocol.name(),
                stream_sid: StreamSid::new(&sid),
                call_sid: start.call_sid,
                account_sid: start.account_sid,
                from: start.from,
                to: start.to,
                custom_parameters,
                media_format,
            }))
        }
        "dtmf" => {
            let dtmf = raw.dtmf.ok_or_else(|| missing("dtmf", "dtmf"))?;
            CarrierEvent::Dtmf { digit: dtmf.digit, duration_ms: dtmf.duration }
        }
        "mark" => CarrierEvent::Mark { name: raw.mark.ok_or_else(|| missing("mark", "mark"))?.name },
        "clear" => CarrierEvent::Clear,
        "stop" => CarrierEvent::Stop { reason: raw.stop.and_then(|s| s.reason) },
        other => CarrierEvent::Unknown { event: other.to_string() },
    })
}

fn format(protocol: Protocol, raw: RawFormat) -> Result<MediaFormat, ParseError> {
    let default = protocol.default_format();
    let encoding = match raw.encoding.as_deref() {
        None => default.encoding,
        Some("audio/x-mulaw" | "audio/mulaw" | "mulaw" | "ulaw" | "audio/PCMU") => Encoding::Mulaw,
        Some("audio/x-alaw" | "audio/alaw" | "alaw" | "audio/PCMA") => Encoding::Alaw,
        Some("audio/x-raw" | "audio/l16" | "audio/L16" | "raw/slin" | "linear16" | "pcm") => Encoding::L16,
        Some(other) => return Err(ParseError::UnsupportedFormat(format!("encoding `{other}`"))),
    };
    let sample_rate = match raw.sample_rate {
        None => default.sample_rate,
        Some(8000) => 8000,
        Some(other) => return Err(ParseError::UnsupportedFormat(format!("sample rate {other} Hz (this engine carries 8000)"))),
    };
    Ok(MediaFormat { encoding, sample_rate })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_start_and_media_with_strings_or_numbers() {
        let start = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{"lead":"42","n":7},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ1"}"#;
        let CarrierEvent::Start(s) = parse(Protocol::Twilio, start).expect("start") else { panic!("not start") };
        assert_eq!(s.stream_sid.as_str(), "MZ1");
        assert_eq!(s.call_sid.as_deref(), Some("CA1"));
        assert_eq!(s.custom_parameters, vec![("lead".into(), "42".into()), ("n".into(), "7".into())]);
        assert_eq!(s.media_format, Some(MediaFormat { encoding: Encoding::Mulaw, sample_rate: 8000 }));
        for media in [
            r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"/38A"},"streamSid":"MZ1"}"#,
            r#"{"event":"media","sequenceNumber":3,"media":{"track":"inbound","chunk":2,"timestamp":5,"payload":"/38A"},"streamSid":"MZ1"}"#,
        ] {
            assert_eq!(
                parse(Protocol::Twilio, media).expect("media"),
                CarrierEvent::Media { sequence: Some(3), chunk: Some(2), timestamp_ms: Some(5), payload: "/38A".into() }
            );
        }
    }

    #[test]
    fn exotel_shapes_in_snake_case() {
        let start = r#"{"event":"start","sequence_number":1,"stream_sid":"s1","start":{"stream_sid":"s1","call_sid":"c1","account_sid":"a1","from":"+911","to":"+912","custom_parameters":{},"media_format":{"encoding":"audio/x-raw","sample_rate":"8000","bit_rate":"16"}}}"#;
        let CarrierEvent::Start(s) = parse(Protocol::Exotel, start).expect("start") else { panic!("not start") };
        assert_eq!((s.from.as_deref(), s.to.as_deref()), (Some("+911"), Some("+912")));
        assert_eq!(s.media_format, Some(MediaFormat { encoding: Encoding::L16, sample_rate: 8000 }));
        let dtmf = r#"{"event":"dtmf","stream_sid":"s1","sequence_number":"4","dtmf":{"duration":"200","digit":"5"}}"#;
        assert_eq!(parse(Protocol::Exotel, dtmf), Ok(CarrierEvent::Dtmf { digit: "5".into(), duration_ms: Some(200) }));
        let stop = r#"{"event":"stop","stream_sid":"s1","stop":{"call_sid":"c1","reason":"callended"}}"#;
        assert_eq!(parse(Protocol::Exotel, stop), Ok(CarrierEvent::Stop { reason: Some("callended".into()) }));
        // camelCase from a popular serializer is accepted on the Exotel endpoint too.
        let media = r#"{"event":"media","streamSid":"s1","media":{"chunk":1,"timestamp":"100","payload":"AAA="}}"#;
        assert!(matches!(parse(Protocol::Exotel, media), Ok(CarrierEvent::Media { .. })));
    }

    #[test]
    fn malformed_and_unsupported_are_errors_not_panics() {
        for bad in [
            "", "{", "null", "[]", r#"{"event":5}"#, r#"{"event":"media"}"#, r#"{"event":"media","media":{}}"#,
            r#"{"event":"start","start":{}}"#, r#"{"event":"media","sequenceNumber":"x","media":{"payload":""}}"#,
            r#"{"event":"media","sequenceNumber":-1,"media":{"payload":""}}"#, r#"{"event":"mark","mark":{"name":3}}"#,
        ] {
            assert!(matches!(parse(Protocol::Twilio, bad), Err(ParseError::Malformed(_))), "{bad}");
        }
        let l16_16k = r#"{"event":"start","start":{"streamSid":"x","mediaFormat":{"encoding":"audio/x-raw","sampleRate":"16000"}}}"#;
        assert!(matches!(parse(Protocol::Exotel, l16_16k), Err(ParseError::UnsupportedFormat(_))));
        assert_eq!(parse(Protocol::Twilio, r#"{"event":"newthing"}"#), Ok(CarrierEvent::Unknown { event: "newthing".into() }));
    }
}
