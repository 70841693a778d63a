//! Secrets at rest: every value in a document's `secrets` maps (provider keys, tool headers,
//! carrier and webhook secrets) and every call-token key is stored sealed with an AEAD key
//! (ChaCha20-Poly1305, ring), as `enc:v1:KEYID:BASE64URL(nonce ‖ ciphertext ‖ tag)`.
//!
//! The key comes from `CXB_SECRET_KEY` (32 bytes, standard base64), else from the key file
//! `secret.key` (made with mode 0600 at first start) beside the SQLite database, or in the data
//! directory for PostgreSQL. The file may hold several keys, newest first: the newest seals,
//! any opens. `cxb admin rotate-secret-key` adds a key and reseals every row with it; the old
//! keys stay in the file (processes still running seal with them until they restart, and read
//! the file again when they meet the new key); `--drop-old` removes them once all restarted.
//! Rows written before sealing existed are sealed when the API starts.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

const PREFIX: &str = "enc:v1:";
const AAD: &[u8] = b"cxb-secret-v1";

/// Why a secret cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("the secret key: {0}")]
    Key(String),
    #[error("a stored secret is sealed with key {0}, which this process does not hold")]
    UnknownKey(String),
    #[error("a stored secret does not open (corrupt, or sealed with another key of that id)")]
    Corrupt,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

/// The keys secrets are sealed with (the first) and opened with (any). A box loaded from a key
/// file reads the file again when it meets a key it does not hold (another process rotated).
pub struct SecretBox {
    keys: std::sync::RwLock<Vec<Key>>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox").field("current", &self.current()).finish_non_exhaustive()
    }
}

fn make_keys(keys: &[[u8; 32]]) -> Result<Vec<Key>, SecretError> {
    if keys.is_empty() {
        return Err(SecretError::Key("no key".into()));
    }
    keys.iter()
        .map(|k| {
            let unbound = UnboundKey::new(&CHACHA20_POLY1305, k).map_err(|_| SecretError::Key("not a ChaCha20-Poly1305 key".into()))?;
            Ok(Key { id: key_id(k), key: LessSafeKey::new(unbound) })
        })
        .collect()
}

fn key_id(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::db::hex(&sha2::Sha256::digest(bytes)[..4])
}

impl SecretBox {
    /// A box from raw 32-byte keys, newest first.
    pub fn new(keys: &[[u8; 32]]) -> Result<SecretBox, SecretError> {
        Ok(SecretBox { keys: std::sync::RwLock::new(make_keys(keys)?), file: None })
    }

    fn from_file(file: &Path, keys: &[[u8; 32]]) -> Result<SecretBox, SecretError> {
        Ok(SecretBox { keys: std::sync::RwLock::new(make_keys(keys)?), file: Some(file.to_path_buf()) })
    }

    /// The box for a deployment: `CXB_SECRET_KEY` if set, else the key file at `file`, made
    /// (mode 0600) with a fresh key if it does not exist.
    pub fn load(file: &Path) -> Result<SecretBox, SecretError> {
        if let Some(env) = std::env::var("CXB_SECRET_KEY").ok().filter(|v| !v.trim().is_empty()) {
            return SecretBox::new(&parse_keys(&env)?);
        }
        match std::fs::read_to_string(file) {
            Ok(text) => SecretBox::from_file(file, &parse_keys(&text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_key()?;
                write_key_file(file, &[key])?;
                SecretBox::from_file(file, &[key])
            }
            Err(e) => Err(SecretError::Key(format!("{}: {e}", file.display()))),
        }
    }

    /// The id of the key that seals.
    pub fn current(&self) -> String {
        self.keys.read().map(|k| k[0].id.clone()).unwrap_or_default()
    }

    /// Whether `value` is a sealed secret.
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }

    /// Seals `plain` with the newest key.
    pub fn seal(&self, plain: &str) -> Result<String, SecretError> {
        let keys = self.keys.read().map_err(|_| SecretError::Key("poisoned".into()))?;
        let key = &keys[0];
        let mut nonce = [0u8; 12];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SecretError::Key("no randomness".into()))?;
        let mut data = plain.as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut data)
            .map_err(|_| SecretError::Corrupt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}:{}", key.id, URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens a sealed value; a value that is not sealed (a row from before sealing) is
    /// returned as it is.
    pub fn open(&self, value: &str) -> Result<String, SecretError> {
        let Some(rest) = value.strip_prefix(PREFIX) else { return Ok(value.to_string()) };
        let (id, data) = rest.split_once(':').ok_or(SecretError::Corrupt)?;
        let known = |b: &SecretBox| b.keys.read().is_ok_and(|k| k.iter().any(|k| k.id == id));
        if !known(self)
            && let Some(file) = &self.file
            && let Ok(text) = std::fs::read_to_string(file)
            && let Ok(keys) = parse_keys(&text).and_then(|k| make_keys(&k))
            && let Ok(mut held) = self.keys.write()
        {
            *held = keys;
        }
        let keys = self.keys.read().map_err(|_| SecretError::Key("poisoned".into()))?;
        let key = keys.iter().find(|k| k.id == id).ok_or_else(|| SecretError::UnknownKey(id.to_string()))?;
        let mut bytes = URL_SAFE_NO_PAD.decode(data).map_err(|_| SecretError::Corrupt)?;
        if bytes.len() < 12 + 16 {
            return Err(SecretError::Corrupt);
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[..12]).map_err(|_| SecretError::Corrupt)?;
        let mut body = bytes.split_off(12);
        let plain = key.key.open_in_place(nonce, Aad::from(AAD), &mut body).map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Corrupt)
    }

    /// Seals every value of every `secrets` map in `doc` that is not sealed yet (or, with
    /// `reseal`, not sealed with the newest key).
    pub fn seal_document(&self, doc: &mut Value, reseal: bool) -> Result<(), SecretError> {
        for_each_secret(doc, &mut |v| {
            let current = self.current();
            let stale = reseal && Self::is_sealed(v) && !v[PREFIX.len()..].starts_with(&format!("{current}:"));
            if !Self::is_sealed(v) || stale {
                *v = self.seal(&self.open(v)?)?;
            }
            Ok(())
        })
    }

    /// Opens every sealed value of every `secrets` map in `doc`.
    pub fn open_document(&self, doc: &mut Value) -> Result<(), SecretError> {
        for_each_secret(doc, &mut |v| {
            *v = self.open(v)?;
            Ok(())
        })
    }
}

/// The tables whose documents hold `secrets` maps, and their key column.
const SEALED_TABLES: [(&str, &str); 5] = [("bots", "id"), ("ai_assistants", "id"), ("webhooks", "id"), ("phone_numbers", "id"), ("settings", "org_id")];

/// Seals every stored secret that is not sealed yet (at start: rows from before sealing), or,
/// with `reseal`, every one not sealed with the newest key (a key rotation). Returns how many
/// documents changed.
pub async fn seal_stored_rows(db: &sqlx::AnyPool, secrets: &SecretBox, reseal: bool) -> anyhow::Result<usize> {
    let mut changed = 0;
    // The call-token keys: a column of their own, each a secret.
    let current = secrets.current();
    let keys: Vec<(String, String)> = sqlx::query_as("SELECT id, secret FROM call_token_keys").fetch_all(db).await?;
    for (id, secret) in keys {
        let stale = reseal && SecretBox::is_sealed(&secret) && !secret[PREFIX.len()..].starts_with(&format!("{current}:"));
        if !SecretBox::is_sealed(&secret) || stale {
            let sealed = secrets.seal(&secrets.open(&secret)?)?;
            sqlx::query("UPDATE call_token_keys SET secret = $1 WHERE id = $2 AND secret = $3").bind(sealed).bind(&id).bind(&secret).execute(db).await?;
            changed += 1;
        }
    }
    for (table, key) in SEALED_TABLES {
        let sql = format!("SELECT {key}, body FROM {table} WHERE body LIKE '%\"secrets\"%'");
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(db).await?;
        for (id, body) in rows {
            let mut doc: Value = serde_json::from_str(&body)?;
            let before = doc.clone();
            secrets.seal_document(&mut doc, reseal)?;
            if doc != before {
                let sql = format!("UPDATE {table} SET body = $1 WHERE {key} = $2 AND body = $3");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(doc.to_string()).bind(&id).bind(&body).execute(db).await?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// Fields that say where a document's secrets are sent.
const DESTINATION_FIELDS: [&str; 7] = ["url", "base_url", "url_template", "api_base", "provider", "domain", "host"];

/// A secret is bound to its destination: wherever `after` (a document after an edit) holds a
/// `secrets` map beside a destination field that differs from `before` (the stored document),
/// and the edit (`patch`) did not send that map again, the secrets are removed. Returns the
/// paths of the maps cleared (`""` for the document itself, `stt`, `carrier`, …).
pub fn bind_to_destinations(before: &Value, after: &mut Value, patch: &Value) -> Vec<String> {
    let mut cleared = Vec::new();
    bind(before, after, Some(patch), &mut String::new(), &mut cleared);
    cleared
}

fn bind(before: &Value, after: &mut Value, patch: Option<&Value>, path: &mut String, cleared: &mut Vec<String>) {
    let Value::Object(map) = after else { return };
    let moved = DESTINATION_FIELDS.iter().any(|f| map.get(*f) != before.get(*f));
    let resent = patch.and_then(|p| p.get("secrets")).is_some_and(|s| s.as_object().is_some_and(|m| !m.is_empty()));
    if moved && !resent && map.get("secrets").and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
        map.remove("secrets");
        cleared.push(path.clone());
    }
    for (k, v) in map.iter_mut() {
        if k == "secrets" || !v.is_object() {
            continue;
        }
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k);
        bind(before.get(k).unwrap_or(&Value::Null), v, patch.and_then(|p| p.get(k)), path, cleared);
        path.truncate(len);
    }
}

fn for_each_secret(doc: &mut Value, f: &mut dyn FnMut(&mut String) -> Result<(), SecretError>) -> Result<(), SecretError> {
    match doc {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match (k.as_str(), v) {
                    ("secrets", Value::Object(secrets)) => {
                        for s in secrets.values_mut() {
                            if let Value::String(text) = s {
                                f(text)?;
                            }
                        }
                    }
                    (_, v) => for_each_secret(v, f)?,
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                for_each_secret(v, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse_keys(text: &str) -> Result<Vec<[u8; 32]>, SecretError> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let bytes = STANDARD.decode(l).map_err(|_| SecretError::Key("a key is 32 bytes in standard base64".into()))?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| SecretError::Key("a key is 32 bytes in standard base64".into()))
        })
        .collect()
}

fn random_key() -> Result<[u8; 32], SecretError> {
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).map_err(|_| SecretError::Key("no randomness".into()))?;
    Ok(key)
}

/// Writes the key file (mode 0600, newest key first) atomically.
fn write_key_file(file: &Path, keys: &[[u8; 32]]) -> Result<(), SecretError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| SecretError::Key(format!("{}: {e}", file.display()));
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let tmp = file.with_extension("key.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(failed)?;
    let mut text = String::from("# CX Bridge secret keys, newest first. Keep this file private and backed up.\n");
    for k in keys {
        text.push_str(&STANDARD.encode(k));
        text.push('\n');
    }
    f.write_all(text.as_bytes()).map_err(failed)?;
    f.sync_all().map_err(failed)?;
    std::fs::rename(&tmp, file).map_err(failed)
}

/// Where the key file of a database lives: beside a SQLite file, else in `data_dir`.
pub fn key_file(database: &str, data_dir: &Path) -> PathBuf {
    let sqlite = database.strip_prefix("sqlite://").or_else(|| database.strip_prefix("sqlite:"));
    match sqlite.map(Path::new).and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir.join("secret.key"),
        None => data_dir.join("secret.key"),
    }
}

/// Adds a fresh key at the front of the key file and returns the new box (the old keys stay
/// until [`drop_old_keys`]). Refused when the keys come from `CXB_SECRET_KEY`.
pub fn add_key(file: &Path) -> Result<SecretBox, SecretError> {
    if std::env::var("CXB_SECRET_KEY").is_ok_and(|v| !v.trim().is_empty()) {
        return Err(SecretError::Key("the keys come from CXB_SECRET_KEY: put the new key first there (comma-separated), run the rotation, then drop the old one".into()));
    }
    let text = std::fs::read_to_string(file).map_err(|e| SecretError::Key(format!("{}: {e}", file.display())))?;
    let mut keys = parse_keys(&text)?;
    keys.insert(0, random_key()?);
    write_key_file(file, &keys)?;
    SecretBox::from_file(file, &keys)
}

/// Keeps only the newest key in the key file (once every process has been restarted after a
/// rotation: a process that still seals with an old key would write values nobody can open).
pub fn drop_old_keys(file: &Path) -> Result<(), SecretError> {
    let text = std::fs::read_to_string(file).map_err(|e| SecretError::Key(format!("{}: {e}", file.display())))?;
    let keys = parse_keys(&text)?;
    write_key_file(file, &keys[..1.min(keys.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_seal_and_open_and_plain_rows_stay_readable() {
        let b = SecretBox::new(&[[7; 32]]).expect("box");
        let mut doc = json!({"stt": {"provider": "deepgram", "secrets": {"api_key": "dg-1"}}, "tools": [{"secrets": {"Authorization": "Bearer x"}}], "name": "secrets"});
        b.seal_document(&mut doc, false).expect("sealed");
        let sealed = doc["stt"]["secrets"]["api_key"].as_str().expect("string").to_string();
        assert!(sealed.starts_with("enc:v1:") && !doc.to_string().contains("dg-1") && !doc.to_string().contains("Bearer x"), "{doc}");
        let again = doc.clone();
        b.seal_document(&mut doc, false).expect("idempotent");
        assert_eq!(doc, again, "sealed values are not sealed twice");
        b.open_document(&mut doc).expect("opened");
        assert_eq!(doc["stt"]["secrets"]["api_key"], "dg-1");
        assert_eq!(doc["tools"][0]["secrets"]["Authorization"], "Bearer x");
        assert_eq!(b.open("plain-legacy").expect("plain"), "plain-legacy");
        let other = SecretBox::new(&[[8; 32]]).expect("box");
        assert!(matches!(other.open(&sealed), Err(SecretError::UnknownKey(_))));
        // One character of the ciphertext changed (not the last: its low bits may not count).
        let mut tampered = sealed.clone().into_bytes();
        let at = tampered.len() - 10;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        assert!(b.open(&String::from_utf8(tampered).expect("ascii")).is_err());
    }

    #[test]
    fn a_rotation_reseals_with_the_new_key_and_old_values_still_open() {
        let old = SecretBox::new(&[[1; 32]]).expect("box");
        let mut doc = json!({"secrets": {"k": "v"}});
        old.seal_document(&mut doc, false).expect("sealed");
        let both = SecretBox::new(&[[2; 32], [1; 32]]).expect("box");
        assert_eq!(both.open(doc["secrets"]["k"].as_str().expect("s")).expect("opens"), "v");
        both.seal_document(&mut doc, true).expect("resealed");
        let new = SecretBox::new(&[[2; 32]]).expect("box");
        assert_eq!(new.open(doc["secrets"]["k"].as_str().expect("s")).expect("opens with the new key alone"), "v");
    }

    #[test]
    fn moving_a_destination_without_resending_its_secrets_clears_them() {
        let before = json!({"stt": {"provider": "deepgram", "base_url": "https://api.deepgram.com", "secrets": {"api_key": "k"}},
                            "tts": {"provider": "elevenlabs", "secrets": {"api_key": "x"}}, "url": "https://a", "secrets": {"s": "1"}});
        let patch = json!({"stt": {"base_url": "https://evil.example"}, "tts": {"voice": "v"}});
        let mut after = before.clone();
        crate::model::merge_patch(&mut after, patch.clone());
        assert_eq!(bind_to_destinations(&before, &mut after, &patch), ["stt"]);
        assert_eq!(after["stt"].get("secrets"), None, "the key does not follow the new URL");
        assert_eq!(after["tts"]["secrets"]["api_key"], "x", "untouched destinations keep theirs");
        let resend = json!({"stt": {"base_url": "https://self-hosted.example", "secrets": {"api_key": "k2"}}});
        let mut after = before.clone();
        crate::model::merge_patch(&mut after, resend.clone());
        assert!(bind_to_destinations(&before, &mut after, &resend).is_empty(), "sent again: kept");
        let top = json!({"url": "https://b"});
        let mut after = before.clone();
        crate::model::merge_patch(&mut after, top.clone());
        assert_eq!(bind_to_destinations(&before, &mut after, &top), [""]);
    }

    #[test]
    fn the_key_file_is_made_private_and_rotates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cxb-secrets-{}", std::process::id()));
        let file = dir.join("secret.key");
        let _ = std::fs::remove_file(&file);
        if std::env::var("CXB_SECRET_KEY").is_ok() {
            return; // the environment decides the key; nothing to make
        }
        let first = SecretBox::load(&file).expect("made");
        assert_eq!(std::fs::metadata(&file).expect("file").permissions().mode() & 0o777, 0o600);
        let sealed = first.seal("s").expect("sealed");
        assert_eq!(SecretBox::load(&file).expect("read back").open(&sealed).expect("same key"), "s");
        let rotated = add_key(&file).expect("rotated");
        assert_ne!(rotated.current(), first.current());
        assert_eq!(rotated.open(&sealed).expect("the old key still opens"), "s");
        drop_old_keys(&file).expect("dropped");
        assert!(SecretBox::load(&file).expect("read").open(&sealed).is_err());
        assert_eq!(key_file("sqlite:///var/lib/cxb/cxb.db", Path::new("/x")), Path::new("/var/lib/cxb/secret.key"));
        assert_eq!(key_file("postgres://h/db", Path::new("/x")), Path::new("/x/secret.key"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
