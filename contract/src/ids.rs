//! Typed identifiers of the things a call belongs to: a call, its organization, its bot, its
//! campaign and its contact. Each is a string on the wire (serde `transparent`, so the JSON is
//! the plain string) and a distinct type in the code, so a bot id cannot be passed where a
//! call id is expected. They check nothing themselves: where an id is bounded (a result's
//! `call_id`, say) the message that carries it checks it.

use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }

            /// The text itself, for the message that carries the id to clean it in place.
            pub(crate) fn as_mut_string(&mut self) -> &mut String {
                &mut self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_string())
            }
        }

        impl From<&String> for $name {
            fn from(id: &String) -> $name {
                $name(id.clone())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        /// A plain string in the OpenAPI document.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                <String as utoipa::PartialSchema>::schema()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

id! {
    /// A call: unique per call across the fleet.
    CallId
}

id! {
    /// An organization, the tenant every product row belongs to.
    OrgId
}

id! {
    /// A bot.
    BotId
}

id! {
    /// A campaign.
    CampaignId
}

id! {
    /// A contact of a campaign's list.
    ContactId
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_are_plain_strings_on_the_wire() {
        let id = CallId::from("CA123");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""CA123""#);
        assert_eq!(serde_json::from_str::<CallId>(r#""CA123""#).unwrap(), id);
        assert!(serde_json::from_str::<CallId>("123").is_err());
        assert_eq!((id.as_str(), id.to_string(), format!("{id:?}")), ("CA123", "CA123".to_string(), r#""CA123""#.to_string()));
        assert_eq!(id, *"CA123");
        assert_eq!(id, "CA123");
        assert_eq!("CA123", id);
        assert_ne!(id, "CA124");
        assert_eq!(Some(OrgId::from("org_1".to_string())), serde_json::from_str(r#""org_1""#).unwrap());
    }
}
