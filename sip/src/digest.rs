//! Digest authentication as SIP uses it (RFC 3261 §22.4; RFC 2617's MD5 with `qop=auth`, and
//! without qop for old peers): the challenge a server sends in `WWW-Authenticate`, the
//! credentials a client answers with in `Authorization`, and checking them. Nonces are
//! stateless: the time they were made and a keyed hash of it, so any worker can check one.

use std::fmt::Write as _;

use md5::{Digest as _, Md5};

/// A server's challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The protection space, e.g. `cxb`.
    pub realm: String,
    /// The nonce to hash with.
    pub nonce: String,
    /// The client's last nonce was too old (its password was right).
    pub stale: bool,
}

impl Challenge {
    /// The `WWW-Authenticate` (or `Proxy-Authenticate`) value.
    pub fn header(&self) -> String {
        let stale = if self.stale { ", stale=true" } else { "" };
        format!("Digest realm=\"{}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"{stale}", self.realm, self.nonce)
    }

    /// Reads a `WWW-Authenticate` or `Proxy-Authenticate` value (MD5 only).
    pub fn parse(value: &str) -> Option<Challenge> {
        let params = params(value)?;
        let get = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        if get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("MD5")) {
            return None;
        }
        Some(Challenge { realm: get("realm")?.to_string(), nonce: get("nonce")?.to_string(), stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")) })
    }
}

/// What a client's `Authorization` header says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// Who.
    pub username: String,
    /// The realm answered.
    pub realm: String,
    /// The nonce answered.
    pub nonce: String,
    /// The Request-URI as the client hashed it.
    pub uri: String,
    /// The hash.
    pub response: String,
    /// With `qop=auth`: the client's nonce and count.
    pub cnonce: Option<String>,
    /// See `cnonce`.
    pub nc: Option<String>,
    /// `auth`, or none.
    pub qop: Option<String>,
}

impl Credentials {
    /// Reads an `Authorization` value; `None` for another scheme or missing fields.
    pub fn parse(value: &str) -> Option<Credentials> {
        let params = params(value)?;
        let get = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        if get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("MD5")) {
            return None;
        }
        Some(Credentials {
            username: get("username")?,
            realm: get("realm")?,
            nonce: get("nonce")?,
            uri: get("uri")?,
            response: get("response")?,
            cnonce: get("cnonce"),
            nc: get("nc"),
            qop: get("qop"),
        })
    }

    /// Whether these credentials answer `method` with `password` (compared in constant time).
    pub fn verify(&self, method: &str, password: &str) -> bool {
        let qop = match self.qop.as_deref() {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => Some((self.nc.as_deref().unwrap_or_default(), self.cnonce.as_deref().unwrap_or_default())),
            Some(_) => return false,
        };
        let expected = response(&self.username, &self.realm, password, method, &self.uri, &self.nonce, qop);
        let given = self.response.to_ascii_lowercase();
        expected.len() == given.len() && expected.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The `Authorization` value a client sends for `challenge`: `qop=auth` with `cnonce` and
    /// count `nc`.
    pub fn answer(challenge: &Challenge, method: &str, uri: &str, username: &str, password: &str, cnonce: &str, nc: u32) -> String {
        let nc = format!("{nc:08x}");
        let hash = response(username, &challenge.realm, password, method, uri, &challenge.nonce, Some((&nc, cnonce)));
        format!(
            "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{hash}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc={nc}",
            challenge.realm, challenge.nonce
        )
    }
}

fn md5_hex(parts: &[&str]) -> String {
    let mut hasher = Md5::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    let mut out = String::with_capacity(32);
    for byte in hasher.finalize() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// RFC 2617 §3.2.2.1: the request digest.
fn response(username: &str, realm: &str, password: &str, method: &str, uri: &str, nonce: &str, qop: Option<(&str, &str)>) -> String {
    let ha1 = md5_hex(&[username, realm, password]);
    let ha2 = md5_hex(&[method, uri]);
    match qop {
        Some((nc, cnonce)) => md5_hex(&[&ha1, nonce, nc, cnonce, "auth", &ha2]),
        None => md5_hex(&[&ha1, nonce, &ha2]),
    }
}

/// A nonce made at `now_secs` (Unix time) under `key`.
pub fn nonce(key: &[u8], now_secs: u64) -> String {
    let stamp = format!("{now_secs:x}");
    let mut hasher = Md5::new();
    hasher.update(key);
    hasher.update(stamp.as_bytes());
    let mut out = stamp;
    out.push('.');
    for byte in hasher.finalize() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Whether `nonce` was made under `key` and is at most `max_age_secs` old at `now_secs`.
pub fn nonce_fresh(key: &[u8], nonce_value: &str, now_secs: u64, max_age_secs: u64) -> bool {
    let Some((stamp, _)) = nonce_value.split_once('.') else { return false };
    let Ok(made) = u64::from_str_radix(stamp, 16) else { return false };
    let expected = nonce(key, made);
    expected.len() == nonce_value.len()
        && expected.bytes().zip(nonce_value.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        && made <= now_secs
        && now_secs - made <= max_age_secs
}

/// `Digest k=v, k="v, quoted"` → its parameters, unquoted; `None` for another scheme.
fn params(value: &str) -> Option<Vec<(String, String)>> {
    let value = value.trim();
    let rest = value.get(..6).filter(|s| s.eq_ignore_ascii_case("digest")).map(|_| &value[6..])?;
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if name.trim().is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let v = if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => v.push(chars.next()?),
                    c => v.push(c),
                }
            }
            v
        } else {
            std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string()
        };
        out.push((name.trim().to_string(), v));
        if out.len() > 32 {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5's example (the HTTP one: the hash is the same for SIP).
    #[test]
    fn the_rfc_example_verifies_and_a_wrong_password_does_not() {
        let header = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = Credentials::parse(header).expect("credentials");
        assert_eq!((c.username.as_str(), c.nc.as_deref()), ("Mufasa", Some("00000001")));
        assert!(c.verify("GET", "Circle Of Life"));
        assert!(!c.verify("GET", "circle of life"));
        assert!(!c.verify("POST", "Circle Of Life"));
    }

    #[test]
    fn a_client_answer_verifies_on_the_server_and_nonces_expire() {
        let key = b"engine key";
        let challenge = Challenge { realm: "cxb".into(), nonce: nonce(key, 1_000), stale: false };
        let parsed = Challenge::parse(&challenge.header()).expect("challenge");
        assert_eq!(parsed, challenge);
        let answer = Credentials::answer(&parsed, "INVITE", "sip:+15550100@127.0.0.1", "trunk", "secret", "c1", 1);
        let c = Credentials::parse(&answer).expect("credentials");
        assert!(c.verify("INVITE", "secret"));
        assert!(nonce_fresh(key, &c.nonce, 1_100, 300));
        assert!(!nonce_fresh(key, &c.nonce, 1_400, 300), "too old");
        assert!(!nonce_fresh(b"another key", &c.nonce, 1_100, 300), "not ours");
        assert!(!nonce_fresh(key, "3e8.0000", 1_100, 300));
    }

    #[test]
    fn malformed_headers_are_refused_not_misread() {
        for bad in ["", "Basic abc", "Digest", "Digest username", "Digest username=\"open", "Digest realm=\"x\", nonce=\"n\", algorithm=SHA-256"] {
            assert_eq!(Credentials::parse(bad), None, "{bad}");
        }
        assert_eq!(Challenge::parse("Digest realm=\"a\""), None, "no nonce");
        let commas = Credentials::parse(r#"Digest username="a,b", realm="r", nonce="n", uri="sip:x", response="00""#).expect("quoted commas");
        assert_eq!(commas.username, "a,b");
    }
}
