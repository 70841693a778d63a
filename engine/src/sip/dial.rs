//! The engine's dial request (`POST /sip/dial/BOT?token=…`): what to dial, through which
//! trunk, and where the call-end record goes; read and checked here, with no I/O, so a body
//! of any bytes is an error or a request whose fields are safe to put in SIP messages.

/// The largest dial request body.
pub const MAX_BODY: usize = 16 * 1024;

/// What to dial.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialRequest {
    /// The callee: E.164 or a SIP user.
    pub to: String,
    /// The caller ID.
    pub from: String,
    pub trunk: Trunk,
    /// Stop ringing after this long (default 30 s, at most 300 s).
    #[serde(default)]
    pub ring_timeout_ms: Option<u64>,
    /// Where the call-end record goes (the dialler's CDR webhook for this call, its token in
    /// the query), as JSON, once the call is over.
    #[serde(default)]
    pub cdr_url: Option<String>,
}

/// The trunk the call goes through.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trunk {
    /// An IP address or a host name.
    pub host: String,
    #[serde(default = "sip_port")]
    pub port: u16,
    /// Digest credentials, if the trunk challenges.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The domain in From (default: this engine's advertised address).
    #[serde(default)]
    pub from_domain: Option<String>,
    /// Where the caller ID goes: `from` (default) or `pai` (P-Asserted-Identity as well).
    #[serde(default)]
    pub caller_id_header: Option<String>,
    /// `udp` (default) or `tcp`.
    #[serde(default)]
    pub transport: Option<String>,
}

impl Trunk {
    /// Whether the trunk is reached over TCP.
    pub fn tcp(&self) -> bool {
        self.transport.as_deref() == Some("tcp")
    }
}

fn sip_port() -> u16 {
    5060
}

/// A number or SIP user as it may stand in a URI.
pub fn user_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+*#._-".contains(&b))
}

/// A host name or address as it may stand in a URI.
pub fn host_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// A credential as it may stand in a digest header's quoted string.
fn credential(s: &str) -> bool {
    s.len() <= 256 && !s.chars().any(|c| c.is_control() || c == '"' || c == '\\')
}

impl DialRequest {
    /// Reads a body; the error says what is wrong, for a 400.
    pub fn parse(body: &[u8]) -> Result<DialRequest, String> {
        if body.len() > MAX_BODY {
            return Err("the dial request is larger than 16 KiB".into());
        }
        let request: DialRequest = serde_json::from_slice(body).map_err(|e| format!("dial request: {e}"))?;
        if !user_part(&request.to) || !user_part(&request.from) {
            return Err("`to` and `from` are numbers or SIP users (1 to 64 of letters, digits and +*#._-)".into());
        }
        if !host_part(&request.trunk.host) || request.trunk.from_domain.as_deref().is_some_and(|d| !host_part(d)) {
            return Err("`trunk.host` and `trunk.from_domain` are host names or addresses".into());
        }
        if [&request.trunk.username, &request.trunk.password].into_iter().flatten().any(|c| !credential(c)) {
            return Err("`trunk.username` and `trunk.password` are at most 256 characters, without quotes, backslashes or control characters".into());
        }
        if request.trunk.caller_id_header.as_deref().is_some_and(|h| h != "from" && h != "pai") {
            return Err("`trunk.caller_id_header` is `from` or `pai`".into());
        }
        if request.trunk.transport.as_deref().is_some_and(|t| t != "udp" && t != "tcp") {
            return Err("`trunk.transport` is `udp` or `tcp`".into());
        }
        if request.cdr_url.as_deref().is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 2048 || u.chars().any(char::is_control)) {
            return Err("`cdr_url` is an http or https URL".into());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_read_with_its_defaults_and_unsafe_fields_are_refused() {
        let r = DialRequest::parse(br#"{"to":"+15550100","from":"+15550199","trunk":{"host":"sip.example.com"}}"#).expect("a request");
        assert_eq!((r.to.as_str(), r.trunk.port, r.ring_timeout_ms, r.cdr_url), ("+15550100", 5060, None, None));
        for (bad, why) in [
            (&b"not json"[..], "dial request"),
            (br#"{"to":"+1","from":"+2","trunk":{"host":"h"},"extra":1}"#, "unknown field"),
            (br#"{"to":"+1\r\nX: y","from":"+2","trunk":{"host":"h"}}"#, "`to` and `from`"),
            (br#"{"to":"","from":"+2","trunk":{"host":"h"}}"#, "`to` and `from`"),
            (br#"{"to":"+1","from":"+2","trunk":{"host":"h>;evil"}}"#, "`trunk.host`"),
            (br#"{"to":"+1","from":"+2","trunk":{"host":"h","username":"a\"b"}}"#, "`trunk.username`"),
            (br#"{"to":"+1","from":"+2","trunk":{"host":"h","caller_id_header":"x"}}"#, "caller_id_header"),
            (br#"{"to":"+1","from":"+2","trunk":{"host":"h","transport":"tls"}}"#, "`trunk.transport`"),
            (br#"{"to":"+1","from":"+2","trunk":{"host":"h"},"cdr_url":"file:///x"}"#, "`cdr_url`"),
            (br#"{"to":"+1","from":"+2","trunk":{"host":"h","port":70000}}"#, "dial request"),
        ] {
            let err = DialRequest::parse(bad).expect_err("refused");
            assert!(err.contains(why), "{err} for {}", String::from_utf8_lossy(bad));
        }
        assert!(DialRequest::parse(&vec![b' '; MAX_BODY + 1]).is_err());
    }
}
