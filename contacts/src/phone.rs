//! E.164 numbers: `+`, a country code and at most 15 digits in all.

use std::fmt;

/// A phone number in E.164 form (`+14155550123`). Construct it with [`E164::parse`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

/// Why a string is not a phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PhoneError {
    #[error("empty phone number")]
    Empty,
    #[error("phone numbers may hold only digits, spaces, '+', '-', '.', '(' and ')'")]
    BadCharacter,
    #[error("no country code: write the number as +<country code><number> or set a default country code")]
    NoCountryCode,
    #[error("E.164 numbers have 8 to 15 digits")]
    BadLength,
    #[error("country codes do not start with 0")]
    LeadingZero,
}

impl E164 {
    /// Normalises what people type: drops spaces, dashes, dots and parentheses, reads a
    /// leading `00` as `+`, and, when the number has no country code, prefixes
    /// `default_country` (digits, e.g. "1" or "44") after dropping one national trunk `0`.
    pub fn parse(input: &str, default_country: Option<&str>) -> Result<E164, PhoneError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(PhoneError::Empty);
        }
        let mut digits = String::with_capacity(16);
        let mut plus = false;
        for (i, c) in input.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => plus = true,
                ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
                _ => return Err(PhoneError::BadCharacter),
            }
        }
        if digits.is_empty() {
            return Err(PhoneError::Empty);
        }
        let international = if plus {
            digits
        } else if let Some(rest) = digits.strip_prefix("00") {
            rest.to_string()
        } else {
            let country = default_country.map(|c| c.trim_start_matches('+')).filter(|c| !c.is_empty());
            let Some(country) = country else { return Err(PhoneError::NoCountryCode) };
            if !country.bytes().all(|b| b.is_ascii_digit()) || country.len() > 3 {
                return Err(PhoneError::NoCountryCode);
            }
            // A number already written with its country code, or a national one.
            if digits.starts_with(country) && digits.len() > 10 {
                digits
            } else {
                format!("{country}{}", digits.strip_prefix('0').unwrap_or(&digits))
            }
        };
        if international.starts_with('0') {
            return Err(PhoneError::LeadingZero);
        }
        if !(8..=15).contains(&international.len()) {
            return Err(PhoneError::BadLength);
        }
        Ok(E164(format!("+{international}")))
    }

    /// The number, `+` and digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with all but its last four digits hidden, for logs.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(&self.0)
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Debug output never shows a whole number.
impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.redacted())
    }
}

/// A phone number or token shown with only its last four characters.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keep = self.0.len().saturating_sub(4);
        let tail = self.0.get(keep..).unwrap_or("");
        write!(f, "…{tail}")
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str, cc: Option<&str>) -> String {
        E164::parse(s, cc).map(|p| p.0).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn normalises_what_people_type() {
        assert_eq!(ok("+1 (415) 555-0123", None), "+14155550123");
        assert_eq!(ok("0044 20 7946 0958", None), "+442079460958");
        assert_eq!(ok("020 7946 0958", Some("44")), "+442079460958");
        assert_eq!(ok("415.555.0123", Some("1")), "+14155550123");
        assert_eq!(ok("14155550123", Some("+1")), "+14155550123");
        assert_eq!(ok("+91 98765 43210", Some("1")), "+919876543210");
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        assert_eq!(E164::parse("", None), Err(PhoneError::Empty));
        assert_eq!(E164::parse(" - ", None), Err(PhoneError::Empty));
        assert_eq!(E164::parse("4155550123", None), Err(PhoneError::NoCountryCode));
        assert_eq!(E164::parse("+1 415 CALL NOW", None), Err(PhoneError::BadCharacter));
        assert_eq!(E164::parse("1+4155550123", None), Err(PhoneError::BadCharacter));
        assert_eq!(E164::parse("+1234", None), Err(PhoneError::BadLength));
        assert_eq!(E164::parse("+1234567890123456", None), Err(PhoneError::BadLength));
        assert_eq!(E164::parse("+0412345678", None), Err(PhoneError::LeadingZero));
        assert_eq!(E164::parse("4155550123", Some("x1")), Err(PhoneError::NoCountryCode));
    }

    #[test]
    fn debug_and_redaction_hide_the_number() {
        let p = E164::parse("+14155550123", None).map_err(|e| e.to_string());
        assert_eq!(p.map(|p| format!("{p:?}")), Ok("E164(…0123)".to_string()));
        assert_eq!(Redacted("ab").to_string(), "…ab");
    }
}
