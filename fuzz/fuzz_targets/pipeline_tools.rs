//! The tools' parsers on any input: a model's arguments checked against a schema (itself
//! any JSON) and transfer destinations. Never a panic; accepted arguments carry every
//! required name; a parsed destination parses to itself again and its TwiML holds no markup
//! from the input.
#![no_main]

use cxb_pipeline::tools::{Destination, check_arguments};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (schema_text, arguments) = text.split_once('\u{1}').unwrap_or(("", &text));
    let fixed = json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}, "n": {"type": ["integer", "null"]}}});
    let schema: Value = serde_json::from_str(schema_text).unwrap_or(fixed);
    if let Ok(args) = check_arguments(&schema, arguments) {
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            assert!(args.get(name).is_some_and(|v| !v.is_null()), "{name}");
        }
    }
    if let Ok(d) = Destination::parse(&text) {
        assert_eq!(Destination::parse(d.as_str()).as_ref(), Ok(&d));
        let twiml = d.twiml();
        let inner = twiml.replace("<Response>", "").replace("</Response>", "").replace("<Dial>", "").replace("</Dial>", "").replace("<Sip>", "").replace("</Sip>", "");
        assert!(!inner.contains('<') && !inner.contains('>'), "{twiml}");
    }
});
