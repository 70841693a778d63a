//! Carriers' own request signatures and the constant-time comparison that every credential
//! check uses.
//!
//! Twilio signs each request it makes, the media stream's WebSocket handshake included, with
//! `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed with the account's auth token, over the
//! full URL it requested followed by the POST parameters sorted by name (none for a
//! handshake).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The `X-Twilio-Signature` Twilio sends for a request to `url` with POST `params`.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts keys of every length");
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(&str, &str)> = params.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is Twilio's for a request to any of `urls` (the URL as the engine is
/// advertised and as the request's `Host` names it, with and without the scheme's default
/// port: Twilio's own libraries try both).
pub fn twilio_signature_valid<'a>(auth_token: &str, urls: impl IntoIterator<Item = &'a str>, signature: &str) -> bool {
    if auth_token.is_empty() || signature.is_empty() || signature.len() > 200 {
        return false;
    }
    let mut ok = false;
    for url in urls {
        for variant in port_variants(url) {
            // Every candidate is computed, so timing says nothing about which matched.
            ok |= constant_time_eq(twilio_signature(auth_token, &variant, &[]).as_bytes(), signature.as_bytes());
        }
    }
    ok
}

/// `url` as given, and with its scheme's default port added (when it has none) or removed
/// (when it has the default).
fn port_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else { return out };
    let default = match scheme {
        "wss" | "https" => "443",
        "ws" | "http" => "80",
        _ => return out,
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let port = match authority.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some((host, p)),
        _ => None,
    };
    match port {
        Some((host, p)) if p == default => out.push(format!("{scheme}://{host}{tail}")),
        Some(_) => {}
        None => out.push(format!("{scheme}://{authority}:{default}{tail}")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilios_published_example_signature() {
        // The example from Twilio's webhook security documentation.
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ];
        let sig = twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &params);
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }

    #[test]
    fn twilio_rubys_voice_request_vector() {
        // From twilio-ruby's request validator spec: a real voice webhook's parameters.
        let params = [
            ("ToState", "California"), ("CalledState", "California"), ("Direction", "inbound"), ("FromState", "CA"),
            ("AccountSid", "ACba8bc05eacf94afdae398e642c9cc32d"), ("Caller", "+14153595711"), ("CallerZip", "94108"),
            ("CallerCountry", "US"), ("From", "+14153595711"), ("FromCity", "SAN FRANCISCO"), ("CallerCity", "SAN FRANCISCO"),
            ("To", "+14157669926"), ("FromZip", "94108"), ("FromCountry", "US"), ("ToCity", ""), ("CallStatus", "ringing"),
            ("CalledCity", ""), ("CallerState", "CA"), ("CalledZip", ""), ("ToZip", ""), ("ToCountry", "US"),
            ("CallSid", "CA136d09cd59a3c0ec8dbff44da5c03f31"), ("CalledCountry", "US"), ("Called", "+14157669926"),
            ("ApiVersion", "2010-04-01"), ("ApplicationSid", "AP44efecad51364e80b133bb7c07eb8204"),
        ];
        let sig = twilio_signature("2bd9e9638872de601313dc77410d3b23", "http://twiliotests.heroku.com/validate/voice", &params);
        assert_eq!(sig, "oVb2kXoVy8GEfwBDjR8bk/ZZ6eA=");
    }

    #[test]
    fn a_handshake_signature_checks_against_the_url_with_or_without_the_default_port() {
        let sig = twilio_signature("tok", "wss://engine.example/ws/bot_1", &[]);
        assert!(twilio_signature_valid("tok", ["wss://engine.example/ws/bot_1"], &sig));
        assert!(twilio_signature_valid("tok", ["wss://engine.example:443/ws/bot_1"], &sig));
        assert!(twilio_signature_valid("tok", ["ws://other/ws/bot_1", "wss://engine.example/ws/bot_1"], &sig));
        assert!(!twilio_signature_valid("tok", ["wss://engine.example/ws/bot_2"], &sig));
        assert!(!twilio_signature_valid("other", ["wss://engine.example/ws/bot_1"], &sig));
        assert!(!twilio_signature_valid("", ["wss://engine.example/ws/bot_1"], &sig));
        assert!(!twilio_signature_valid("tok", ["wss://engine.example/ws/bot_1"], ""));
        let with_port = twilio_signature("tok", "wss://engine.example:443/ws/b", &[]);
        assert!(twilio_signature_valid("tok", ["wss://engine.example/ws/b"], &with_port));
        assert!(!twilio_signature_valid("tok", ["wss://engine.example:8443/ws/b"], &with_port));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
