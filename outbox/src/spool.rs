//! The outbox directory: one JSON file per finished call (`{seq}.json`, `seq` zero-padded so
//! names sort in submission order) and its recording beside it (`{seq}.wav`) until uploaded.
//! Recordings of calls still running grow in `tmp/{id}.partial.wav`; a crash leaves at most
//! those, and the next start removes them.
//!
//! Every file is written to `*.tmp`, fsynced, renamed into place, and the directory fsynced,
//! so after a crash an entry is either whole or absent. Entries that cannot be read or that the
//! API rejects move to `dead/` with an `{name}.error.json` saying why; `name` is the entry's
//! `seq`, with `-{n}` added when an earlier entry of that `seq` is already there (sequence
//! numbers start again at 1 when the directory has emptied).
//!
//! The spool counts the bytes of every file it holds (entries, recordings, partial recordings,
//! `dead/`), for the outbox's disk-usage cap.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// One finished call waiting for delivery: its result for the API, or a record for another
/// address of the platform's (a SIP call's call-end record for the dialler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) v: u32,
    pub(crate) seq: u64,
    /// The call result as the API takes it (`result.recording` set once uploaded), or the
    /// record posted to `deliver_to`.
    pub(crate) result: Value,
    /// Present until the recording is uploaded and `result.recording` points at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) recording: Option<PendingRecording>,
    /// A record's URL (`http` or `https`, its credential in it): `result` goes there as it is,
    /// without the fleet token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deliver_to: Option<String>,
}

impl Entry {
    pub(crate) fn new(seq: u64, result: Value, recording: Option<PendingRecording>) -> Entry {
        Entry { v: VERSION, seq, result, recording, deliver_to: None }
    }

    pub(crate) fn record(seq: u64, url: String, body: Value) -> Entry {
        Entry { v: VERSION, seq, result: body, recording: None, deliver_to: Some(url) }
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
        match &entry.deliver_to {
            Some(url) => check_record(url, &entry.result).map_err(|e| format!("bad record: {e}"))?,
            None => {
                check_result(&entry.result).map_err(|e| format!("bad result: {e}"))?;
            }
        }
        Ok(entry)
    }
}

/// What a record needs: an `http` or `https` URL and a JSON object.
pub(crate) fn check_record(url: &str, body: &Value) -> Result<(), &'static str> {
    let scheme_ok = ["http://", "https://"].iter().any(|s| url.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)));
    if !scheme_ok || url.len() > 4096 || url.chars().any(char::is_control) {
        return Err("not an http(s) URL");
    }
    body.as_object().map(|_| ()).ok_or("not a JSON object")
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
    tmp: PathBuf,
    /// Bytes of the files in the directory (and `dead/`, `tmp/`), as far as this process has
    /// seen them change.
    used: AtomicU64,
}

impl Spool {
    /// Creates the directory (and `dead/`, `tmp/`) if needed.
    pub(crate) fn open(dir: &Path) -> io::Result<Spool> {
        let dead = dir.join("dead");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&dead)?;
        fs::create_dir_all(&tmp)?;
        let spool = Spool { dir: dir.to_path_buf(), dead, tmp, used: AtomicU64::new(0) };
        spool.sync_dir()?;
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }
        Ok(spool)
    }

    /// The entries on disk, oldest first. Removes what a crash can leave: `*.tmp` files,
    /// partial recordings in `tmp/`, and recordings whose entry was never written or already
    /// delivered. Counts the bytes of what stays.
    pub(crate) fn scan(&self) -> io::Result<Vec<u64>> {
        let mut entries = Vec::new();
        let mut wavs = Vec::new();
        let mut used = 0u64;
        for item in fs::read_dir(&self.tmp)? {
            fs::remove_file(item?.path())?;
        }
        for item in fs::read_dir(&self.dir)? {
            let item = item?;
            if !item.file_type()?.is_file() {
                continue;
            }
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                fs::remove_file(item.path())?;
                continue;
            } else if let Some(seq) = seq_of(name, ".json") {
                entries.push(seq);
            } else if let Some(seq) = seq_of(name, ".wav") {
                wavs.push(seq);
            }
            used += file_len(&item);
        }
        entries.sort_unstable();
        for item in fs::read_dir(&self.dead)? {
            used += file_len(&item?);
        }
        self.used.store(used, Ordering::Relaxed);
        for seq in wavs {
            if entries.binary_search(&seq).is_err() {
                self.remove_file(&self.wav(seq))?;
            }
        }
        sync_dir(&self.tmp)?;
        self.sync_dir()?;
        Ok(entries)
    }

    /// Bytes of the files the spool holds.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts `delta` more (or fewer) bytes on disk.
    pub(crate) fn count(&self, delta: i64) {
        let magnitude = delta.unsigned_abs();
        if delta >= 0 {
            self.used.fetch_add(magnitude, Ordering::Relaxed);
        } else {
            let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(magnitude)));
        }
    }

    /// Writes a new entry and its recording, each fsynced; the caller fsyncs the directory
    /// (once for a batch) before telling anyone the entry is safe. On failure nothing of the
    /// entry is left behind (and nothing else is touched).
    pub(crate) fn write_new(&self, entry: &Entry, wav: Option<&[u8]>) -> io::Result<()> {
        if let Some(wav) = wav {
            self.put(&self.wav(entry.seq), wav)?;
        }
        self.write_entry(entry)
    }

    /// Writes a new entry whose recording was streamed to `partial` (complete and fsynced):
    /// the recording is moved beside the entry first.
    pub(crate) fn write_streamed(&self, entry: &Entry, partial: &Path) -> io::Result<()> {
        fs::rename(partial, self.wav(entry.seq))?;
        self.write_entry(entry)
    }

    fn write_entry(&self, entry: &Entry) -> io::Result<()> {
        let wrote = self.write(entry);
        if wrote.is_err() {
            // The recording must not outlive its entry (the next start would remove it anyway).
            let _ = self.remove_file(&self.wav(entry.seq));
        }
        wrote
    }

    /// Replaces an entry (after its recording was uploaded), durably.
    pub(crate) fn rewrite(&self, entry: &Entry) -> io::Result<()> {
        self.write(entry)?;
        self.sync_dir()
    }

    fn write(&self, entry: &Entry) -> io::Result<()> {
        let bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
        self.put(&self.entry(entry.seq), &bytes)
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
        self.remove_file(&self.wav(seq))?;
        self.sync_dir()
    }

    /// Forgets a delivered entry.
    pub(crate) fn remove(&self, seq: u64) -> io::Result<()> {
        self.remove_file(&self.entry(seq))?;
        self.remove_file(&self.wav(seq))?;
        self.remove_file(&self.parked_marker(seq))?;
        self.sync_dir()
    }

    fn parked_marker(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.parked"))
    }

    /// Remembers that entry `seq` was parked (an empty `{seq}.parked` beside it), so that a
    /// restart does not put it back at the front.
    pub(crate) fn mark_parked(&self, seq: u64) -> io::Result<()> {
        File::create(self.parked_marker(seq)).map(drop)
    }

    /// Of `entries` (from [`Spool::scan`]), those marked parked; markers of entries that are
    /// gone are removed.
    pub(crate) fn parked(&self, entries: &[u64]) -> io::Result<Vec<u64>> {
        let mut parked = Vec::new();
        for item in fs::read_dir(&self.dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(seq) = name.to_str().and_then(|n| seq_of(n, ".parked")) else { continue };
            if entries.binary_search(&seq).is_ok() {
                parked.push(seq);
            } else {
                fs::remove_file(item.path())?;
            }
        }
        parked.sort_unstable();
        Ok(parked)
    }

    /// Moves an entry (and its recording, if still here) to `dead/` beside an
    /// `{name}.error.json` that says why. `name` is the entry's `seq`, or `{seq}-{n}` with the
    /// smallest `n` that no file in `dead/` has yet: nothing buried earlier is overwritten.
    pub(crate) fn bury(&self, seq: u64, error: &Value) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(error).map_err(io::Error::other)?;
        let name = self.dead_name(seq);
        self.put(&self.dead.join(format!("{name}.error.json")), &bytes)?;
        for (from, to) in [(self.wav(seq), format!("{name}.wav")), (self.entry(seq), format!("{name}.json"))] {
            match fs::rename(&from, self.dead.join(to)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        sync_dir(&self.dead)?;
        self.remove_file(&self.parked_marker(seq))?;
        self.sync_dir()
    }

    /// The first of `{seq}`, `{seq}-1`, `{seq}-2`, … of which `dead/` has no file.
    fn dead_name(&self, seq: u64) -> String {
        let taken = |name: &str| [".json", ".error.json", ".wav"].iter().any(|suffix| self.dead.join(format!("{name}{suffix}")).exists());
        let first = format!("{seq:020}");
        if !taken(&first) {
            return first;
        }
        (1u64..).map(|n| format!("{seq:020}-{n}")).find(|name| !taken(name)).unwrap_or(first)
    }

    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }

    /// Writes and removes a small file, each fsynced: whether the directory takes writes.
    pub(crate) fn probe(&self) -> io::Result<()> {
        let path = self.tmp.join("probe");
        let written = write_atomic(&path, b"probe");
        let _ = fs::remove_file(&path);
        written
    }

    /// Where the recording of a call still running grows.
    pub(crate) fn partial(&self, id: u64) -> PathBuf {
        self.tmp.join(format!("{id:020}.partial.wav"))
    }

    /// Removes a file, counting its bytes off; a missing file is no error.
    pub(crate) fn remove_file(&self, path: &Path) -> io::Result<()> {
        let len = fs::metadata(path).map_or(0, |m| m.len());
        match fs::remove_file(path) {
            Ok(()) => {
                self.count(-i64::try_from(len).unwrap_or(i64::MAX));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// [`write_atomic`], counting the bytes.
    fn put(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let before = fs::metadata(path).map_or(0, |m| m.len());
        write_atomic(path, bytes)?;
        self.count(i64::try_from(bytes.len() as u64).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX));
        Ok(())
    }

    fn entry(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    fn wav(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.wav"))
    }
}

fn file_len(item: &fs::DirEntry) -> u64 {
    item.metadata().ok().filter(fs::Metadata::is_file).map_or(0, |m| m.len())
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
/// A half-written `.tmp` file is removed again when the write fails (a full disk).
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)
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
        let record = serde_json::to_vec(&Entry::record(7, "http://127.0.0.1:1/cdr?token=t".into(), json!({"status": "busy"}))).unwrap();
        assert_eq!(Entry::parse(7, &record).unwrap().deliver_to.as_deref(), Some("http://127.0.0.1:1/cdr?token=t"), "a record needs no call_id");
        for bad in [Entry::record(7, "file:///etc/passwd".into(), json!({})), Entry::record(7, "http://x/\n".into(), json!({})), Entry::record(7, "http://x/".into(), json!([1]))] {
            assert!(Entry::parse(7, &serde_json::to_vec(&bad).unwrap()).unwrap_err().contains("bad record"));
        }
        assert!(Entry::parse(8, &good).unwrap_err().contains("seq"));
        for cut in 0..good.len() {
            assert!(Entry::parse(7, &good[..cut]).is_err());
        }
        for bad in [json!({"v": 1, "seq": 7, "result": 5}), json!({"v": 1, "seq": 7, "result": {"call_id": ""}}), json!({"v": 2, "seq": 7, "result": {"call_id": "x"}})] {
            assert!(Entry::parse(7, bad.to_string().as_bytes()).is_err(), "{bad}");
        }
    }

    fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("outbox")).unwrap();
        assert!(spool.scan().unwrap().is_empty());
        (dir, spool)
    }

    fn wav(seq: u64) -> PendingRecording {
        PendingRecording { duration_ms: seq, channels: 2 }
    }

    #[test]
    fn a_failed_write_is_an_error_that_leaves_no_debris_and_loses_nothing() {
        let (_dir, spool) = spool();
        spool.write_new(&Entry::new(1, json!({"call_id": "a"}), Some(wav(1))), Some(b"first recording")).unwrap();
        let used = spool.used();
        assert_eq!(used, fs::metadata(spool.entry(1)).unwrap().len() + 15);
        // The entry's temporary file cannot be made: a directory is in its place.
        fs::create_dir(spool.dir.join(format!("{:020}.json.tmp", 2))).unwrap();
        let failed = spool.write_new(&Entry::new(2, json!({"call_id": "b"}), Some(wav(2))), Some(b"second recording"));
        assert_eq!(failed.unwrap_err().kind(), io::ErrorKind::IsADirectory);
        assert!(!spool.wav(2).exists() && !spool.entry(2).exists(), "nothing of it is left");
        assert_eq!(spool.used(), used);
        assert_eq!(spool.read(1).unwrap().result["call_id"], "a");
        assert_eq!(spool.read_wav(1).unwrap().unwrap(), b"first recording");
        // A start after that keeps the good entry and leaves what is not its own.
        assert_eq!(spool.scan().unwrap(), [1]);
        assert_eq!(spool.used(), used);
    }

    #[test]
    fn burying_twice_under_one_seq_keeps_both() {
        let (_dir, spool) = spool();
        for (n, call) in ["a", "b", "c"].into_iter().enumerate() {
            spool.write_new(&Entry::new(1, json!({"call_id": call}), Some(wav(1))), Some(call.as_bytes())).unwrap();
            spool.bury(1, &json!({"error": n})).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(&spool.dead).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let first = "00000000000000000001";
        let expected: Vec<String> = ["", "-1", "-2"]
            .iter()
            .flat_map(|suffix| [".error.json", ".json", ".wav"].map(|ext| format!("{first}{suffix}{ext}")))
            .collect();
        let mut expected = expected;
        expected.sort();
        assert_eq!(names, expected);
        for (suffix, call, n) in [("", "a", 0), ("-1", "b", 1), ("-2", "c", 2)] {
            let entry: Value = serde_json::from_slice(&fs::read(spool.dead.join(format!("{first}{suffix}.json"))).unwrap()).unwrap();
            assert_eq!(entry["result"]["call_id"], call);
            assert_eq!(fs::read(spool.dead.join(format!("{first}{suffix}.wav"))).unwrap(), call.as_bytes());
            let error: Value = serde_json::from_slice(&fs::read(spool.dead.join(format!("{first}{suffix}.error.json"))).unwrap()).unwrap();
            assert_eq!(error["error"], n);
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
