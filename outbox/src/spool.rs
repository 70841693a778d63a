//! The outbox directory: one JSON file per finished call (`{seq}.json`, `seq` zero-padded so
//! names sort in submission order) and its recording beside it (`{seq}.wav`) until uploaded.
//!
//! Every file is written to `*.tmp`, fsynced, renamed into place, and the directory fsynced,
//! so after a crash an entry is either whole or absent. Entries that cannot be read or that the
//! API rejects move to `dead/` with an `{seq}.error.json` saying why.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The entry format's version, written into every entry.
const VERSION: u32 = 1;

/// A recording waiting for upload: the WAV is `{seq}.wav` beside the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingRecording {
    pub(crate) duration_ms: u64,
    pub(crate) channels: u16,
}

/// One finished call waiting for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) v: u32,
    pub(crate) seq: u64,
    /// The call result as the API takes it (`result.recording` set once uploaded).
    pub(crate) result: Value,
    /// Present until the recording is uploaded and `result.recording` points at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) recording: Option<PendingRecording>,
}

impl Entry {
    pub(crate) fn new(seq: u64, result: Value, recording: Option<PendingRecording>) -> Entry {
        Entry { v: VERSION, seq, result, recording }
    }

    /// Reads an entry file's bytes; `Err` says what is wrong with them.
    pub(crate) fn parse(seq: u64, bytes: &[u8]) -> Result<Entry, String> {
        let entry: Entry = serde_json::from_slice(bytes).map_err(|e| format!("unreadable entry: {e}"))?;
        if entry.v != VERSION {
            return Err(format!("entry format version {} (this build reads {VERSION})", entry.v));
        }
        if entry.seq != seq {
            return Err(format!("entry says seq {} but its file is {seq}", entry.seq));
        }
        check_result(&entry.result).map_err(|e| format!("bad result: {e}"))?;
        Ok(entry)
    }
}

/// The minimum a result needs for delivery: a JSON object with a non-empty string `call_id`.
pub(crate) fn check_result(result: &Value) -> Result<&str, &'static str> {
    let object = result.as_object().ok_or("not a JSON object")?;
    object.get("call_id").and_then(Value::as_str).filter(|id| !id.is_empty()).ok_or("no call_id")
}

/// Reading an entry failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file is gone (delivered by an earlier run that crashed before forgetting it).
    Missing,
    /// The bytes are not an entry; the file should be moved aside.
    Corrupt(String),
    /// The disk failed; try again later.
    Io(io::Error),
}

/// The outbox directory.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    dead: PathBuf,
}

impl Spool {
    /// Creates the directory (and `dead/`) if needed.
    pub(crate) fn open(dir: &Path) -> io::Result<Spool> {
        let dead = dir.join("dead");
        fs::create_dir_all(&dead)?;
        let spool = Spool { dir: dir.to_path_buf(), dead };
        spool.sync_dir()?;
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }
        Ok(spool)
    }

    /// The entries on disk, oldest first. Removes what a crash can leave: `*.tmp` files and
    /// recordings whose entry was never written or already delivered.
    pub(crate) fn scan(&self) -> io::Result<Vec<u64>> {
        let mut entries = Vec::new();
        let mut wavs = Vec::new();
        for item in fs::read_dir(&self.dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                fs::remove_file(item.path())?;
            } else if let Some(seq) = seq_of(name, ".json") {
                entries.push(seq);
            } else if let Some(seq) = seq_of(name, ".wav") {
                wavs.push(seq);
            }
        }
        entries.sort_unstable();
        for seq in wavs {
            if entries.binary_search(&seq).is_err() {
                remove(&self.wav(seq))?;
            }
        }
        self.sync_dir()?;
        Ok(entries)
    }

    /// Writes a new entry and its recording, each fsynced; the caller fsyncs the directory
    /// (once for a batch) before telling anyone the entry is safe.
    pub(crate) fn write_new(&self, entry: &Entry, wav: Option<&[u8]>) -> io::Result<()> {
        if let Some(wav) = wav {
            write_atomic(&self.wav(entry.seq), wav)?;
        }
        self.write(entry)
    }

    /// Replaces an entry (after its recording was uploaded), durably.
    pub(crate) fn rewrite(&self, entry: &Entry) -> io::Result<()> {
        self.write(entry)?;
        self.sync_dir()
    }

    fn write(&self, entry: &Entry) -> io::Result<()> {
        let bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
        write_atomic(&self.entry(entry.seq), &bytes)
    }

    pub(crate) fn read(&self, seq: u64) -> Result<Entry, ReadError> {
        match fs::read(self.entry(seq)) {
            Ok(bytes) => Entry::parse(seq, &bytes).map_err(ReadError::Corrupt),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ReadError::Missing),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// The recording of entry `seq`; `Ok(None)` if it is not there.
    pub(crate) fn read_wav(&self, seq: u64) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.wav(seq)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Forgets a recording once the entry records where it was uploaded.
    pub(crate) fn remove_wav(&self, seq: u64) -> io::Result<()> {
        remove(&self.wav(seq))?;
        self.sync_dir()
    }

    /// Forgets a delivered entry.
    pub(crate) fn remove(&self, seq: u64) -> io::Result<()> {
        remove(&self.entry(seq))?;
        remove(&self.wav(seq))?;
        self.sync_dir()
    }

    /// Moves an entry (and its recording, if still here) to `dead/` beside an
    /// `{seq}.error.json` that says why.
    pub(crate) fn bury(&self, seq: u64, error: &Value) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(error).map_err(io::Error::other)?;
        write_atomic(&self.dead.join(format!("{seq:020}.error.json")), &bytes)?;
        for from in [self.wav(seq), self.entry(seq)] {
            if let Some(name) = from.file_name() {
                match fs::rename(&from, self.dead.join(name)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        sync_dir(&self.dead)?;
        self.sync_dir()
    }

    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }

    fn entry(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    fn wav(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.wav"))
    }
}

/// The sequence number of a file named `{20 digits}{suffix}`.
fn seq_of(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes `path` through `path.tmp`: write, fsync, rename. The directory is not synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_rejects_what_is_not_an_entry() {
        let good = serde_json::to_vec(&Entry::new(7, json!({"call_id": "c1"}), None)).unwrap();
        assert_eq!(Entry::parse(7, &good).unwrap().result["call_id"], "c1");
        assert!(Entry::parse(8, &good).unwrap_err().contains("seq"));
        for cut in 0..good.len() {
            assert!(Entry::parse(7, &good[..cut]).is_err());
        }
        for bad in [json!({"v": 1, "seq": 7, "result": 5}), json!({"v": 1, "seq": 7, "result": {"call_id": ""}}), json!({"v": 2, "seq": 7, "result": {"call_id": "x"}})] {
            assert!(Entry::parse(7, bad.to_string().as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_sort_in_submission_order() {
        assert_eq!(seq_of("00000000000000000042.json", ".json"), Some(42));
        assert_eq!(seq_of("42.json", ".json"), None);
        assert_eq!(seq_of("0000000000000000004x.json", ".json"), None);
        assert_eq!(seq_of("99999999999999999999.json", ".json"), None);
    }
}
