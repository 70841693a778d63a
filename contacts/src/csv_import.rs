//! Contact lists from CSV: a header row names the columns; `phone` (or `phone_number`,
//! `number`, `mobile`), `name` (or `first_name` + `last_name`) and `time_zone` (or `timezone`,
//! `tz`) are understood, every other column becomes a custom field. Rows are refused one by one
//! with a reason; a file is refused as a whole only when it has no phone column.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::E164;

/// Most data rows one import reads.
pub const MAX_ROWS: usize = 100_000;
const MAX_FIELD: usize = 1_000;
const MAX_COLUMNS: usize = 64;

/// One contact, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub phone: E164,
    pub name: String,
    /// An IANA zone when the row named one.
    pub time_zone: Option<String>,
    pub fields: BTreeMap<String, String>,
}

impl Contact {
    /// Folds a later row for the same number into this one: non-empty values win.
    pub fn merge(&mut self, later: Contact) {
        if !later.name.is_empty() {
            self.name = later.name;
        }
        if later.time_zone.is_some() {
            self.time_zone = later.time_zone;
        }
        self.fields.extend(later.fields.into_iter().filter(|(_, v)| !v.is_empty()));
    }
}

/// A row that was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// The row as a spreadsheet numbers it: the header is row 1, the first contact row 2
    /// (a quoted value spanning lines is still one row).
    pub row: u64,
    pub reason: String,
}

/// What an import produced: unique contacts in file order, and the refused rows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub contacts: Vec<Contact>,
    /// Rows folded into an earlier row with the same number.
    pub merged: u64,
    pub rejected: Vec<Rejected>,
    /// True when the file had more than [`MAX_ROWS`] rows and the rest was not read.
    pub truncated: bool,
}

/// Why a whole file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("the file is empty")]
    Empty,
    #[error("no phone column: name one `phone` in the header row")]
    NoPhoneColumn,
    #[error("the header row is not valid CSV: {0}")]
    BadHeader(String),
    #[error("more than {MAX_COLUMNS} columns")]
    TooManyColumns,
}

enum Column {
    Phone,
    Name,
    FirstName,
    LastName,
    TimeZone,
    Field(String),
}

fn column(header: &str) -> Column {
    let key: String = header.trim().to_ascii_lowercase().chars().map(|c| if c == ' ' || c == '-' { '_' } else { c }).collect();
    match key.as_str() {
        "phone" | "phone_number" | "number" | "mobile" | "telephone" | "msisdn" => Column::Phone,
        "name" | "full_name" => Column::Name,
        "first_name" | "firstname" => Column::FirstName,
        "last_name" | "lastname" | "surname" => Column::LastName,
        "time_zone" | "timezone" | "tz" => Column::TimeZone,
        _ => Column::Field(header.trim().to_string()),
    }
}

/// Reads a contact CSV. `default_country` is the calling code used for numbers written
/// without one.
pub fn import_csv(data: &[u8], default_country: Option<&str>) -> Result<ImportReport, ImportError> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data); // a spreadsheet's BOM
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(ImportError::Empty);
    }
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(data);
    let headers = reader.byte_headers().map_err(|e| ImportError::BadHeader(e.to_string()))?.clone();
    if headers.len() > MAX_COLUMNS {
        return Err(ImportError::TooManyColumns);
    }
    let columns: Vec<Column> = headers.iter().map(|h| column(&String::from_utf8_lossy(h))).collect();
    if !columns.iter().any(|c| matches!(c, Column::Phone)) {
        return Err(ImportError::NoPhoneColumn);
    }
    let mut report = ImportReport::default();
    let mut seen: HashMap<E164, usize> = HashMap::new();
    let mut record = csv::ByteRecord::new();
    let mut rows = 0usize;
    loop {
        let row = reader.position().record() + 1;
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                report.rejected.push(Rejected { row, reason: format!("not valid CSV: {e}") });
                continue;
            }
        }
        rows += 1;
        if rows > MAX_ROWS {
            report.truncated = true;
            break;
        }
        let row = record.position().map_or(row, |p| p.record() + 1);
        if record.iter().all(<[u8]>::is_empty) {
            continue; // a blank line
        }
        match contact(&columns, &record, default_country) {
            Ok(c) => match seen.get(&c.phone) {
                Some(&i) => {
                    report.contacts[i].merge(c);
                    report.merged += 1;
                }
                None => {
                    seen.insert(c.phone.clone(), report.contacts.len());
                    report.contacts.push(c);
                }
            },
            Err(reason) => report.rejected.push(Rejected { row, reason }),
        }
    }
    Ok(report)
}

fn contact(columns: &[Column], record: &csv::ByteRecord, default_country: Option<&str>) -> Result<Contact, String> {
    let mut phone = None;
    let (mut name, mut first, mut last) = (String::new(), String::new(), String::new());
    let mut time_zone = None;
    let mut fields = BTreeMap::new();
    for (column, value) in columns.iter().zip(record.iter()) {
        let value = std::str::from_utf8(value).map_err(|_| "not UTF-8 text".to_string())?;
        if value.chars().count() > MAX_FIELD {
            return Err(format!("a value is longer than {MAX_FIELD} characters"));
        }
        match column {
            Column::Phone => phone = Some(value),
            Column::Name => name = value.to_string(),
            Column::FirstName => first = value.to_string(),
            Column::LastName => last = value.to_string(),
            Column::TimeZone if value.is_empty() => {}
            Column::TimeZone => match crate::time_zone(value) {
                Some(tz) => time_zone = Some(tz.name().to_string()),
                None => return Err(format!("time_zone: `{value}` is not an IANA time zone such as America/New_York")),
            },
            Column::Field(key) => {
                fields.insert(key.clone(), value.to_string());
            }
        }
    }
    let phone = E164::parse(phone.unwrap_or(""), default_country).map_err(|e| format!("phone: {e}"))?;
    if name.is_empty() {
        name = [first, last].iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(" ");
    }
    Ok(Contact { phone, name, time_zone, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_merges_and_reports() {
        let csv = "\u{feff}Phone,First Name,Last Name,Timezone,Plan\n\
                   +1 415 555 0100,Ada,Lovelace,America/Los_Angeles,gold\n\
                   not a number,Bob,,,\n\
                   (415) 555-0101,Cy,,Mars/Olympus,\n\
                   \n\
                   001 415 555 0100,,,,platinum\n\
                   020 7946 0958,Dee,,,\n";
        let report = import_csv(csv.as_bytes(), Some("1")).map_err(|e| e.to_string());
        let Ok(report) = report else { panic!("{report:?}") };
        let phones: Vec<&str> = report.contacts.iter().map(|c| c.phone.as_str()).collect();
        assert_eq!(phones, ["+14155550100", "+12079460958"]);
        assert_eq!(report.merged, 1);
        let ada = &report.contacts[0];
        assert_eq!(ada.name, "Ada Lovelace");
        assert_eq!(ada.time_zone.as_deref(), Some("America/Los_Angeles"));
        assert_eq!(ada.fields.get("Plan").map(String::as_str), Some("platinum"));
        let rows: Vec<u64> = report.rejected.iter().map(|r| r.row).collect();
        assert_eq!(rows, [3, 4]);
        assert!(report.rejected[0].reason.starts_with("phone:"), "{:?}", report.rejected);
        assert!(report.rejected[1].reason.starts_with("time_zone:"), "{:?}", report.rejected);
    }

    #[test]
    fn refuses_files_without_a_phone_column() {
        assert_eq!(import_csv(b"name,email\nA,a@x\n", None), Err(ImportError::NoPhoneColumn));
        assert_eq!(import_csv(b"  \n", None), Err(ImportError::Empty));
    }

    #[test]
    fn bad_bytes_and_ragged_rows_reject_rows_not_files() {
        let data = b"phone,name\n+14155550100,\xff\xfe\n+14155550101\n+14155550102,a,extra\n";
        let report = import_csv(data, None).map_err(|e| e.to_string());
        let Ok(report) = report else { panic!("{report:?}") };
        assert_eq!(report.contacts.len(), 2);
        assert_eq!(report.rejected, [Rejected { row: 2, reason: "not UTF-8 text".into() }]);
    }
}
