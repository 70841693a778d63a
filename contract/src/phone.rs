//! Phone numbers as calls carry them, redacted in `Debug`. A call's `from` and `to` are what the
//! carrier or the dialler gave: E.164 (`+14155550123`) mostly, but also SIP URIs, `client:`
//! names, `anonymous`, or nothing when withheld. So [`PhoneNumber`] takes any string, and
//! checks nothing (the message that carries it bounds it); what it adds is that `{:?}` of a
//! number, or of anything holding one, shows at most its last four characters. Normalising what
//! people type into E.164 is `cxb_contacts::E164`'s job.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A phone number or caller address, shown whole only by `Display` and [`PhoneNumber::as_str`].
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn new(number: impl Into<String>) -> PhoneNumber {
        PhoneNumber(number.into())
    }

    /// The whole number.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// Withheld: the carrier gave no number.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number with all but its last four characters hidden, for logs.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(&self.0)
    }

    /// The text itself, for the message that carries the number to clean it in place.
    pub(crate) fn as_mut_string(&mut self) -> &mut String {
        &mut self.0
    }
}

/// Never more than the last four characters.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.redacted())
    }
}

/// The whole number: for the wire and for people who may see it, never for logs.
impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for PhoneNumber {
    fn from(number: String) -> PhoneNumber {
        PhoneNumber(number)
    }
}

impl From<&str> for PhoneNumber {
    fn from(number: &str) -> PhoneNumber {
        PhoneNumber(number.to_string())
    }
}

impl From<PhoneNumber> for String {
    fn from(number: PhoneNumber) -> String {
        number.0
    }
}

impl AsRef<str> for PhoneNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for PhoneNumber {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PhoneNumber {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A plain string in the OpenAPI document.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for PhoneNumber {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <String as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for PhoneNumber {}

/// A number (or token) shown as `…` and its last four characters.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = self.0.char_indices().rev().nth(3).map_or(0, |(i, _)| i);
        write!(f, "…{}", &self.0[start..])
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn debug_shows_at_most_the_last_four_characters() {
        for (number, shown) in [
            ("+14155550123", "PhoneNumber(…0123)"),
            ("anonymous", "PhoneNumber(…mous)"),
            ("sip:alice@example.com", "PhoneNumber(….com)"),
            ("123", "PhoneNumber(…123)"),
            ("", "PhoneNumber(…)"),
            ("+٤١٥٥٥٥٠١٢٣", "PhoneNumber(…٠١٢٣)"),
        ] {
            let n = PhoneNumber::from(number);
            assert_eq!(format!("{n:?}"), shown);
            assert_eq!(format!("{:?}", Some(&n)), format!("Some({shown})"));
            assert_eq!(n.to_string(), number);
        }
    }

    #[test]
    fn any_string_is_a_number_on_the_wire() {
        for number in ["+14155550123", "anonymous", "client:agent_7", ""] {
            let json = serde_json::to_string(&PhoneNumber::from(number)).unwrap();
            assert_eq!(json, serde_json::to_string(number).unwrap());
            assert_eq!(serde_json::from_str::<PhoneNumber>(&json).unwrap(), number);
        }
    }
}
