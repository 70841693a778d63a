//! Request extractors whose rejections are the API's own JSON errors: JSON bodies (400 when
//! not JSON, 413 when too large, 415 for another media type, 422 naming the field when the
//! shape is wrong or a string holds NUL) and query strings; plus the cursor page every list
//! answers with.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};

/// A JSON object body, not yet typed.
#[derive(Debug)]
pub(crate) struct JsonObject(pub serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<JsonObject> {
        let bytes = body_bytes(req, state, "application/json").await?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => {
                // JSON writes NUL only as `\u0000`: most bodies need no walk.
                if bytes.windows(6).any(|w| w == b"\\u0000") {
                    for (key, value) in &map {
                        no_nul(key, key, value)?;
                    }
                }
                Ok(JsonObject(map))
            }
            Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
            Err(e) => Err(ApiError::bad_request(format!("the body is not valid JSON: {e}"))),
        }
    }
}

/// Refuses NUL in any key or string of a body (422 naming the field, such as `tools[1].name`):
/// no field of this API takes one, and PostgreSQL cannot store one in a text column.
fn no_nul(path: &str, key: &str, value: &Value) -> ApiResult<()> {
    let bad = |s: &str| s.contains('\0');
    if bad(key) {
        return Err(ApiError::invalid(path, "NUL characters are not allowed in keys"));
    }
    match value {
        Value::String(s) if bad(s) => Err(ApiError::invalid(path, "NUL characters are not allowed")),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| no_nul(&format!("{path}[{i}]"), "", v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| no_nul(&format!("{path}.{k}"), k, v)),
        _ => Ok(()),
    }
}

/// A JSON body of type `T`.
#[derive(Debug)]
pub(crate) struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Body<T>> {
        let JsonObject(map) = JsonObject::from_request(req, state).await?;
        typed(Value::Object(map)).map(Body)
    }
}

/// Reads the body, refusing other media types and bodies over the route's limit.
pub(crate) async fn body_bytes<S: Send + Sync>(req: Request, state: &S, media: &str) -> ApiResult<Bytes> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        let ok = essence.eq_ignore_ascii_case(media) || (media == "application/json" && essence.ends_with("+json"));
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("send the body as {media}"),
            ));
        }
    }
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the body is larger than this endpoint accepts")
        } else {
            ApiError::bad_request(format!("could not read the body: {e}"))
        }
    })
}

/// Types a JSON value; a shape error is a 422 that names the field (`stt.provider`).
pub(crate) fn typed<T: DeserializeOwned>(value: Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(value).map_err(shape_error)
}

/// [`typed`], also refusing a field `T` would ignore, at any depth (422 naming it, such as
/// `tools[0].timeout`): the parts of a bot the API shares with the engine
/// (`cxb_contract::bot`) ignore fields they do not know, so that an older engine reads a
/// newer API's bots; the API itself refuses them.
pub(crate) fn typed_strict<T: DeserializeOwned>(value: Value) -> ApiResult<T> {
    let mut unknown = None;
    let mut note = |path: serde_ignored::Path<'_>| {
        unknown.get_or_insert_with(|| field_of(&path));
    };
    let typed = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note)).map_err(shape_error)?;
    match unknown {
        Some(field) => Err(ApiError::invalid(field, "unknown field")),
        None => Ok(typed),
    }
}

fn shape_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let field = if path == "." { String::new() } else { path };
    ApiError::invalid(field, e.into_inner().to_string())
}

/// An ignored field's path as the API names fields: `tools[0].timeout`.
fn field_of(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_of(parent)),
        Path::Map { parent, key } => match field_of(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_of(parent),
    }
}

/// A query string of type `T`.
#[derive(Debug)]
pub(crate) struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> ApiResult<Query<T>> {
        let q = parts.uri.query().unwrap_or("");
        parse_query(q).map(Query)
    }
}

/// Parses a query string with axum's own (serde_urlencoded) reader.
fn parse_query<T: DeserializeOwned>(q: &str) -> ApiResult<T> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{q}").parse().map_err(|_| ApiError::bad_request("malformed query string"))?)
        .map(|axum::extract::Query(t)| t)
        .map_err(|e| ApiError::bad_request(format!("query string: {}", e.body_text())))
}

/// Page size: 50 unless asked, at most 500.
pub(crate) fn limit(asked: Option<u32>) -> ApiResult<usize> {
    match asked {
        None => Ok(50),
        Some(n @ 1..=500) => Ok(n as usize),
        Some(_) => Err(ApiError::invalid("limit", "between 1 and 500")),
    }
}

/// [`page`] for lists whose cursor is the row id.
pub(crate) fn page_of_ids(items: Vec<Value>, limit: usize) -> Value {
    page(items, limit, |v| v["id"].as_str().unwrap_or_default().to_string())
}

/// `{"items": […], "next_cursor": …}` from up to `limit + 1` rows: the extra row only says
/// there is another page, whose cursor is the last shown row's.
pub(crate) fn page(mut items: Vec<Value>, limit: usize, cursor_of: impl Fn(&Value) -> String) -> Value {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(&cursor_of) } else { None };
    json!({ "items": items, "next_cursor": next })
}

/// A value bound to a query.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// A `SELECT … WHERE` built clause by clause: each `?` in a clause becomes the next `$n`, so
/// optional filters never misnumber their parameters.
#[derive(Debug)]
pub(crate) struct Filter {
    sql: String,
    args: Vec<Arg>,
}

impl Filter {
    pub(crate) fn new(select: &str) -> Filter {
        Filter { sql: select.to_string(), args: Vec::new() }
    }

    /// Appends `clause`, binding `args` to its `?`s in order.
    pub(crate) fn and(&mut self, clause: &str, args: impl IntoIterator<Item = Arg>) -> &mut Filter {
        let mut args = args.into_iter();
        for (i, part) in clause.split('?').enumerate() {
            if i > 0 {
                self.args.extend(args.next());
                self.sql.push_str(&format!("${}", self.args.len()));
            }
            self.sql.push_str(part);
        }
        self
    }

    /// Newest first by id, after `cursor` when given, at most `limit + 1` rows (see [`page`]).
    pub(crate) fn newest_first(&mut self, cursor: Option<String>, limit: usize) -> &mut Filter {
        if let Some(cursor) = cursor {
            self.and(" AND id < ?", [Arg::Text(cursor)]);
        }
        self.push(&format!(" ORDER BY id DESC LIMIT {}", limit + 1))
    }

    /// Appends a clause with no parameters.
    pub(crate) fn push(&mut self, sql: &str) -> &mut Filter {
        self.sql.push_str(sql);
        self
    }

    /// Runs the query and pages its rows, shown through `view`, by id.
    pub(crate) async fn page_by_id(self, db: &sqlx::AnyPool, limit: usize, view: fn(&sqlx::any::AnyRow) -> ApiResult<Value>) -> ApiResult<Value> {
        let rows = self.fetch_all(db).await?;
        let items = rows.iter().map(view).collect::<ApiResult<Vec<_>>>()?;
        Ok(page_of_ids(items, limit))
    }

    pub(crate) async fn fetch_all(self, db: &sqlx::AnyPool) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.sql));
        for a in self.args {
            q = match a {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
            };
        }
        q.fetch_all(db).await
    }
}
