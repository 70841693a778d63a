//! `GET /v1/calls/{id}/recording`: a call's recording, streamed from where the engine's
//! outbox put it (this host's recordings folder, or the S3-compatible bucket), with HTTP range
//! requests so an audio player can seek. The location comes from the call record; only a file
//! under the configured folder or an object in the configured bucket is ever read.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// Where the API reads recordings from: the outbox's settings on the engine side.
#[derive(Debug, Clone, Default)]
pub struct RecordingsConfig {
    /// The folder holding `recordings/` (an engine's data directory on this host).
    pub local_root: Option<PathBuf>,
    /// An S3-compatible bucket.
    pub s3: Option<S3Read>,
}

/// Read access to the bucket recordings are uploaded to.
#[derive(Clone)]
pub struct S3Read {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Read {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Read").field("bucket", &self.bucket).field("endpoint", &self.endpoint).field("secret_access_key", &"<redacted>").finish_non_exhaustive()
    }
}

/// The stores recordings are read from, opened once.
#[derive(Debug, Default)]
pub(crate) struct Stores {
    local: Option<(PathBuf, Arc<LocalFileSystem>)>,
    s3: Option<(String, Arc<dyn ObjectStore>)>,
}

impl Stores {
    pub(crate) fn open(config: &RecordingsConfig) -> anyhow::Result<Stores> {
        let local = match &config.local_root {
            Some(root) => {
                std::fs::create_dir_all(root)?;
                let root = root.canonicalize()?;
                Some((root.clone(), Arc::new(LocalFileSystem::new_with_prefix(&root)?)))
            }
            None => None,
        };
        let s3 = match &config.s3 {
            Some(s3) => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key)
                    .with_allow_http(s3.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")));
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                let store: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
                Some((s3.bucket.clone(), store))
            }
            None => None,
        };
        Ok(Stores { local, s3 })
    }

    /// The store and key of a recording's location, if it is one this API may read.
    fn find(&self, location: &str) -> Option<(Arc<dyn ObjectStore>, Key)> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/')?;
            let (ours, store) = self.s3.as_ref()?;
            return (bucket == ours).then(|| Some((store.clone(), Key::parse(key).ok()?))).flatten();
        }
        let url = reqwest::Url::parse(location).ok().filter(|u| u.scheme() == "file")?;
        let path = url.to_file_path().ok()?;
        let (root, store) = self.local.as_ref()?;
        // Canonical paths: a `..` or a link cannot lead out of the folder.
        let path = path.canonicalize().ok()?;
        let relative = path.strip_prefix(root).ok()?;
        let key = Key::from_iter(relative.iter().map(|p| p.to_string_lossy().into_owned()));
        Some((store.clone() as Arc<dyn ObjectStore>, key))
    }
}

/// The recording of a call in the caller's organization, whole or the range asked for.
pub(crate) async fn stream(s: &AppState, caller: &Caller, id: &str, headers: &HeaderMap) -> ApiResult<Response> {
    let call = crate::calls::view_call(s, &caller.org_id, id).await?;
    let location = call["recording"]["location"].as_str().ok_or_else(|| ApiError::not_found("recording"))?;
    let (store, key) = s.recordings.find(location).ok_or_else(|| {
        tracing::warn!(call_id = id, location, "a recording is stored where this API does not read (set --recordings-dir or the S3 flags)");
        ApiError::not_found("recording")
    })?;
    let missing = |e: object_store::Error| match e {
        object_store::Error::NotFound { .. } => ApiError::not_found("recording"),
        e => ApiError::internal(format!("reading recording {key}: {e}")),
    };
    let size = store.head(&key).await.map_err(missing)?.size;
    let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = match cxb_contract::http::byte_range(asked, size) {
        Ok(range) => range,
        Err(()) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            r.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{size}")).map_err(ApiError::internal)?);
            return Ok(r);
        }
    };
    let options = GetOptions { range: range.clone().map(GetRange::Bounded), ..GetOptions::default() };
    let got = if size == 0 { None } else { Some(store.get_opts(&key, options).await.map_err(missing)?) };
    let sent = got.as_ref().map_or(0..0, |g| g.range.clone());
    let body = got.map_or_else(Body::empty, |g| Body::from_stream(g.into_stream()));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(sent.end - sent.start));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    if range.is_some() {
        let value = format!("bytes {}-{}/{size}", sent.start, sent.end.saturating_sub(1));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).map_err(ApiError::internal)?);
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// `GET /v1/calls/{id}/recording`.
pub(crate) async fn get(State(s): State<AppState>, caller: Caller, Path(id): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    stream(&s, &caller, &id, &headers).await
}
