//! Phone numbers and contact lists, with no I/O: E.164 normalising ([`E164`]), contact rows
//! from CSV with a report of the rows refused and why ([`import_csv`]), and time-zone checks.
//! The control plane stores what this crate accepts; the dialler dials it.

mod csv_import;
mod phone;

pub use csv_import::{Contact, ImportError, ImportReport, MAX_ROWS, Rejected, import_csv};
pub use phone::{E164, PhoneError, Redacted};

/// Checks an IANA time-zone name ("Europe/Paris"); `None` when it is not one.
pub fn time_zone(name: &str) -> Option<chrono_tz::Tz> {
    name.parse().ok()
}
