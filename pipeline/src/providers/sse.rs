//! Server-sent events (the `text/event-stream` format), sans-IO: bytes in as they arrive,
//! events out.
//!
//! Follows the WHATWG HTML standard, "Server-sent events" §9.2.6 "Interpreting an event
//! stream": lines end in CRLF, LF or a lone CR (a CR at the end of one chunk and an LF at the
//! start of the next are one line end); an empty line dispatches the event; lines starting
//! with `:` are comments; `field: value` loses one space after the colon; `data` lines are
//! joined with LF; a leading UTF-8 byte order mark is dropped; an event still being built when
//! the stream ends is discarded. Invalid UTF-8 becomes U+FFFD, as the standard's decoder does.

use std::collections::VecDeque;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field; `message` when the event named none.
    pub event: String,
    /// The `data` lines, joined with LF.
    pub data: String,
    /// The last `id` the stream set, if any.
    pub id: Option<String>,
}

/// Why a stream cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line or an event's data grew past the parser's limit.
    #[error("server-sent event longer than {0} bytes")]
    TooLong(usize),
}

/// The parser. Feed it with [`SseParser::push`], take events with [`SseParser::next_event`].
#[derive(Debug)]
pub struct SseParser {
    limit: usize,
    line: Vec<u8>,
    /// The previous chunk ended in CR: an LF opening the next one belongs to it.
    after_cr: bool,
    /// The byte order mark has been looked for.
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
    retry_ms: Option<u64>,
    ready: VecDeque<SseEvent>,
    failed: bool,
}

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Default for SseParser {
    fn default() -> SseParser {
        SseParser::new()
    }
}

impl SseParser {
    /// The default limit on one line or one event's data: 1 MiB.
    pub const DEFAULT_LIMIT: usize = 1 << 20;

    /// A parser with the default limit.
    pub fn new() -> SseParser {
        SseParser::with_limit(SseParser::DEFAULT_LIMIT)
    }

    /// A parser that fails when a line or an event's data exceeds `limit` bytes.
    pub fn with_limit(limit: usize) -> SseParser {
        SseParser {
            limit,
            line: Vec::new(),
            after_cr: false,
            started: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            id: None,
            retry_ms: None,
            ready: VecDeque::new(),
            failed: false,
        }
    }

    /// Takes the next bytes of the stream. After an error the parser takes no more input.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), SseError> {
        if self.failed {
            return Err(SseError::TooLong(self.limit));
        }
        if !self.started {
            // The BOM may itself arrive split: hold bytes until three are in or one differs.
            let held = self.line.len();
            let want = (BOM.len() - held).min(bytes.len());
            let (head, rest) = bytes.split_at(want);
            self.line.extend_from_slice(head);
            if BOM.starts_with(&self.line) && self.line.len() < BOM.len() {
                return Ok(());
            }
            self.started = true;
            let held = std::mem::take(&mut self.line);
            let held = held.strip_prefix(BOM).unwrap_or(&held);
            self.take(held)?;
            bytes = rest;
        }
        self.take(bytes)
    }

    fn take(&mut self, mut bytes: &[u8]) -> Result<(), SseError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (line, rest) = bytes.split_at(end);
            let Some((&terminator, mut rest)) = rest.split_first() else { break };
            if terminator == b'\r' {
                match rest.strip_prefix(b"\n") {
                    Some(after_lf) => rest = after_lf,
                    None => self.after_cr = rest.is_empty(),
                }
            }
            self.grow(line.len())?;
            let mut whole = std::mem::take(&mut self.line);
            whole.extend_from_slice(line);
            self.line_done(&whole)?;
            whole.clear();
            self.line = whole;
            bytes = rest;
        }
        self.grow(bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn grow(&mut self, more: usize) -> Result<(), SseError> {
        if self.line.len() + more > self.limit {
            return Err(self.fail());
        }
        Ok(())
    }

    fn fail(&mut self) -> SseError {
        self.failed = true;
        self.line = Vec::new();
        self.data = String::new();
        SseError::TooLong(self.limit)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line.first() == Some(&b':') {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let (field, value) = line.split_at(colon);
                let value = value.strip_prefix(b":").unwrap_or(value);
                (field, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(self.fail());
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned()).filter(|s| !s.is_empty());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let event = if event.is_empty() { "message".to_string() } else { event };
        self.ready.push_back(SseEvent { event, data: std::mem::take(&mut self.data), id: self.id.clone() });
    }

    /// The next complete event, if one is ready.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// The reconnection time the stream asked for (`retry:`), in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c).expect("within the limit");
            out.extend(std::iter::from_fn(|| p.next_event()));
        }
        out
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn line_endings_lf_crlf_and_cr() {
        let events = parse_all(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\n"]);
        assert_eq!(data(&events), ["a", "b", "c", "d"]);
    }

    #[test]
    fn multi_line_data_comments_fields() {
        let events = parse_all(&[
            b": keep-alive\nevent: update\nid: 7\ndata: one\ndata:two\ndata\nretry: 1500\n\n",
        ]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, "update");
        assert_eq!(events[0].data, "one\ntwo\n");
        assert_eq!(events[0].id.as_deref(), Some("7"));
        let mut p = SseParser::new();
        p.push(b"retry: 1500\nretry: x\n").expect("small");
        assert_eq!(p.retry_ms(), Some(1500));
    }

    #[test]
    fn events_without_data_and_trailing_partial_are_not_dispatched() {
        let events = parse_all(&[b"event: ping\n\n:comment\n\ndata: kept\n\ndata: lost"]);
        assert_eq!(data(&events), ["kept"]);
        assert_eq!(events[0].event, "message");
    }

    #[test]
    fn bom_is_dropped_even_when_split() {
        let events = parse_all(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]);
        assert_eq!(data(&events), ["x"]);
        // A second BOM is data.
        let events = parse_all(&[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: y\n\n"]);
        assert!(events.is_empty());
    }

    #[test]
    fn every_split_of_a_stream_gives_the_same_events() {
        let stream: &[u8] = b"\xEF\xBB\xBFdata: {\"a\":1}\r\n\r\n: c\r\nevent: e\rdata: two\r\ndata: lines\n\ndata: [DONE]\n\n";
        let whole = parse_all(&[stream]);
        assert_eq!(data(&whole), ["{\"a\":1}", "two\nlines", "[DONE]"]);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let split = parse_all(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(split, whole, "split at {i} and {j}");
            }
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytewise), whole);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_limits_hold() {
        let events = parse_all(&[b"data: \xFF\xFE\n\n"]);
        assert_eq!(data(&events), ["\u{FFFD}\u{FFFD}"]);
        let mut p = SseParser::with_limit(16);
        assert_eq!(p.push(&[b'x'; 17]), Err(SseError::TooLong(16)));
        assert!(p.push(b"\n\n").is_err());
        let mut p = SseParser::with_limit(16);
        let long_event = b"data: 0123456789\ndata: 0123456789\n\n";
        assert_eq!(p.push(long_event), Err(SseError::TooLong(16)));
    }
}
