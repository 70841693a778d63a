//! The console: pages for people at `/`, beside the JSON API under `/v1`. Server-rendered HTML
//! from templates compiled into the binary (`templates/`), one stylesheet and one small script
//! (`assets/`) for the live parts; charts are SVG drawn here.
//!
//! Every page reads and writes through the handler the JSON API routes to, with the signed-in
//! user as its [`Caller`]: the page shows what `GET /v1/…` answers and a form submits what
//! `POST /v1/…` would take, so the two cannot disagree and the same role checks refuse.
//!
//! Sign-in makes an API session (the same `sessions` row a `POST /v1/auth/login` makes) and
//! keeps its token in a cookie: `HttpOnly`, `SameSite=Lax`, `Secure` when the API is reached
//! over TLS (`ApiConfig::secure_cookies`). Every form carries a CSRF token derived from the
//! session's token and is refused without it, or when the browser says it came from another
//! origin.

mod analytics;
mod bots;
mod calls;
mod campaigns;
mod charts;
mod desk;
mod home;
mod routing;
mod settings;

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sqlx::Row;
use std::net::SocketAddr;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::db::token_hash;
use crate::error::ApiError;
use crate::extract::Body;

/// The largest contact file an import takes (as `POST /v1/campaigns/{id}/contacts/import`),
/// with room for the multipart framing.
const UPLOAD_LIMIT: usize = (32 << 20) + (64 << 10);

/// The cookie holding the session token.
const COOKIE: &str = "cxb_session";

/// The console's routes (merged into the API's router, so the same limits and deadline apply).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home::page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/console.css", get(|| async { asset("text/css; charset=utf-8", include_str!("../../assets/console.css")) }))
        .route("/console.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("../../assets/console.js")) }))
        .route("/calls", get(calls::list))
        .route("/calls/{id}", get(calls::page))
        .route("/calls/{id}/recording", get(calls::recording))
        .route("/bots", get(bots::list))
        .route("/bots/new", get(bots::new_page).post(bots::create))
        .route("/bots/{id}", get(bots::page).post(bots::save))
        .route("/bots/{id}/delete", post(bots::delete))
        .route("/campaigns", get(campaigns::list))
        .route("/campaigns/new", get(campaigns::new_page).post(campaigns::create))
        .route("/campaigns/{id}", get(campaigns::page))
        .route("/campaigns/{id}/edit", get(campaigns::edit_page).post(campaigns::save))
        .route("/campaigns/{id}/action", post(campaigns::act))
        .route("/campaigns/{id}/import", post(campaigns::import).layer(axum::extract::DefaultBodyLimit::max(UPLOAD_LIMIT)))
        .route("/dnc", get(campaigns::dnc).post(campaigns::dnc_change))
        .route("/routing", get(routing::page).post(routing::change))
        .route("/analytics", get(analytics::page))
        .route("/desk", get(desk::queue))
        .route("/desk/{id}", get(desk::page).post(desk::act))
        .route("/desk/{id}/takeover", post(desk::takeover))
        .route("/desk.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("../../assets/desk.js")) }))
        .route("/settings", get(settings::page).post(settings::change))
        .route("/settings/webhooks/{id}", get(settings::webhook))
}

/// What every page's frame shows: who is signed in, where, and what they may do.
#[derive(Debug, Clone)]
pub(crate) struct Nav {
    pub user: String,
    pub org: String,
    pub role: Role,
    /// The form token of this session.
    pub csrf: String,
    /// The section of the page, for the menu.
    pub section: &'static str,
}

impl Nav {
    pub(crate) fn can_edit(&self) -> bool {
        self.role >= Role::Operator
    }

    /// Agents see only the desk.
    pub(crate) fn is_agent(&self) -> bool {
        self.role == Role::Agent
    }

    pub(crate) fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }

    pub(crate) fn role_name(&self) -> &'static str {
        self.role.as_str()
    }

    fn at(mut self, section: &'static str) -> Nav {
        self.section = section;
        self
    }
}

/// A signed-in person: the API's caller and the page frame. Without a valid session cookie a
/// page answers with a redirect to the sign-in page.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub caller: Caller,
    pub nav: Nav,
}

impl Signed {
    /// The frame for a page of `section`.
    pub(crate) fn nav(&self, section: &'static str) -> Nav {
        self.nav.clone().at(section)
    }

    /// Refuses a form without this session's token or sent from another origin (403).
    pub(crate) fn check_form(&self, headers: &HeaderMap, form: &Form) -> Result<(), PageError> {
        same_origin(headers)?;
        let sent = form.get("_csrf").unwrap_or("");
        if !cxb_contract::carrier::constant_time_eq(sent.as_bytes(), self.nav.csrf.as_bytes()) {
            return Err(PageError(ApiError::forbidden("the form is stale or did not come from this console; reload the page and try again")));
        }
        Ok(())
    }
}

/// The form token of a session: derived from its secret token, so it needs no storage and a
/// page from another site cannot know it.
fn csrf_token(session: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("cxb-console-csrf\0{session}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..18])
}

/// A browser's `Origin` on a form post must be this host's (browsers send it on every POST).
fn same_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")).unwrap_or("");
    if host.is_empty() || authority != host {
        return Err(PageError(ApiError::forbidden("the form came from another site")));
    }
    Ok(())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cxb_contract::http::cookie(v, COOKIE))
        .filter(|t| t.starts_with("cxs_"))
}

impl Signed {
    /// The person a session token belongs to, if it is a live session.
    async fn of_session(state: &AppState, token: &str) -> Result<Option<Signed>, ApiError> {
        let row = sqlx::query(
            "SELECT s.org_id, s.user_id, u.role, u.name, u.email, o.name FROM sessions s JOIN users u ON u.id = s.user_id \
             JOIN orgs o ON o.id = s.org_id WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash(token))
        .bind(state.now())
        .fetch_optional(&state.db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let get = |i: usize| row.try_get::<String, _>(i);
        let role = Role::parse(&get(2)?).unwrap_or(Role::Viewer);
        let (name, email) = (get(3)?, get(4)?);
        Ok(Some(Signed {
            caller: Caller { org_id: get(0)?, user_id: Some(get(1)?), role },
            nav: Nav {
                user: if name.trim().is_empty() { email } else { name },
                org: get(5)?,
                role,
                csrf: csrf_token(token),
                section: "",
            },
        }))
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Signed, Response> {
        let signed = match session_cookie(&parts.headers) {
            Some(token) => Signed::of_session(state, token).await.map_err(|e| PageError(e).into_response())?,
            None => None,
        };
        let signed = signed.ok_or_else(|| {
            let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            see_other(&format!("/login?next={}", urlencode(next)))
        })?;
        // Agents see only the desk (the API refuses them everything else too).
        let path = parts.uri.path();
        if signed.caller.role == Role::Agent && !(path == "/desk" || path.starts_with("/desk/") || path == "/logout") {
            return Err(see_other("/desk"));
        }
        Ok(signed)
    }
}

/// A posted form's fields, in order (a name may repeat).
#[derive(Debug, Default)]
pub(crate) struct Form(pub Vec<(String, String)>);

impl Form {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The field, trimmed; empty as `None`.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// A checkbox: present when ticked.
    pub(crate) fn ticked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Form {
    type Rejection = PageError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Form, PageError> {
        let axum::Form(fields) = axum::Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(|e| PageError(ApiError::bad_request(format!("the form cannot be read: {e}"))))?;
        if fields.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
            return Err(PageError(ApiError::invalid("", "NUL characters are not allowed")));
        }
        Ok(Form(fields))
    }
}

/// An error shown as a page with the API's status and message.
#[derive(Debug)]
pub(crate) struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        PageError(e)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status == StatusCode::UNAUTHORIZED {
            return see_other("/login");
        }
        let page = ErrorPage { status: e.status.as_u16(), code: e.code, message: &e.message };
        let mut response = html(&page);
        *response.status_mut() = e.status;
        response
    }
}

pub(crate) type PageResult = Result<Response, PageError>;

/// A rendered page with the console's headers: no caching, no framing, scripts and styles
/// only from this origin.
pub(crate) fn html(page: &impl Template) -> Response {
    html_connecting(page, None)
}

/// [`html`] for a page whose script also talks to `origin` (an engine host's WebRTC
/// signalling).
pub(crate) fn html_connecting(page: &impl Template, origin: Option<&str>) -> Response {
    let body = match page.render() {
        Ok(body) => body,
        Err(e) => return PageError(ApiError::internal(format!("rendering a page: {e}"))).into_response(),
    };
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    const POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
    let policy = match origin {
        Some(origin) => HeaderValue::from_str(&format!("{POLICY}; connect-src 'self' {origin}")).unwrap_or(HeaderValue::from_static(POLICY)),
        None => HeaderValue::from_static(POLICY),
    };
    h.insert(header::CONTENT_SECURITY_POLICY, policy);
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// 303 to `to` (a path on this host).
/// A JSON value as page text: strings as they are, null as nothing, others as JSON.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// The items of a JSON API list page.
pub(crate) fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v["items"].as_array().into_iter().flatten()
}

/// The fixed message a redirect after a change asks a page to show (`?notice=…`).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Notice {
    pub notice: Option<String>,
}

pub(crate) fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// Percent-encodes a query value.
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Only a path on this site is followed after sign-in (not `//elsewhere` or a URL).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') && !p.chars().any(char::is_control) => p,
        _ => "/",
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    next: &'a str,
    email: &'a str,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    html(&LoginPage { next: local_path(q.next.as_deref()), email: "", error: None })
}

/// Signs in through the API's own sign-in (its limits and checks), then sets the cookie.
async fn login(State(s): State<AppState>, peer: ConnectInfo<SocketAddr>, headers: HeaderMap, form: Form) -> PageResult {
    same_origin(&headers)?;
    let email = form.get("email").unwrap_or("");
    let next = local_path(form.get("next"));
    let login = crate::users::Login { email: email.to_string(), password: form.get("password").unwrap_or("").to_string() };
    let answer = match crate::users::login(State(s.clone()), peer, Body(login)).await {
        Ok(axum::Json(answer)) => answer,
        Err(e) if matches!(e.status.as_u16(), 401 | 422 | 429 | 503) => {
            let mut page = html(&LoginPage { next, email, error: Some(e.message.clone()) });
            *page.status_mut() = e.status;
            return Ok(page);
        }
        Err(e) => return Err(e.into()),
    };
    let token = answer["token"].as_str().unwrap_or_default();
    let max_age = s.config.session_ttl.as_secs();
    let secure = if s.config.secure_cookies { "; Secure" } else { "" };
    let mut response = see_other(next);
    let cookie = format!("{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(ApiError::internal)?);
    Ok(response)
}

/// Ends the session (the API's sign-out) and clears the cookie.
async fn logout(State(s): State<AppState>, signed: Signed, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    if let Some(token) = session_cookie(&headers) {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash(token)).execute(&s.db).await.map_err(ApiError::from)?;
    }
    let mut response = see_other("/login");
    let cookie = format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(ApiError::internal)?);
    Ok(response)
}

/// The merge patch (RFC 7396) that turns `current` into `new`: what `new` leaves out of an
/// object is set to `null` (removed), so a form that shows a whole map replaces it.
pub(crate) fn replacing(current: &Value, new: Value) -> Value {
    match (current, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch: serde_json::Map<String, Value> = old.keys().filter(|k| !new.contains_key(*k)).map(|k| (k.clone(), Value::Null)).collect();
            for (k, v) in new {
                let p = match old.get(&k) {
                    Some(o) => replacing(o, v),
                    None => v,
                };
                patch.insert(k, p);
            }
            Value::Object(patch)
        }
        (_, new) => new,
    }
}

/// Display helpers the templates share.
pub(crate) mod show {
    use crate::clock::parse_time;

    /// `2026-12-07 06:40:12` (UTC) from an RFC 3339 time; empty for none.
    pub(crate) fn time(t: Option<&str>) -> String {
        t.and_then(parse_time)
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    }

    /// `1 h 02 min`, `3 min 07 s`, `12.4 s` from milliseconds.
    pub(crate) fn duration(ms: Option<i64>) -> String {
        let Some(ms) = ms else { return String::new() };
        let s = ms / 1000;
        match s {
            3600.. => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
            60.. => format!("{} min {:02} s", s / 60, s % 60),
            _ => format!("{:.1} s", ms as f64 / 1000.0),
        }
    }

    /// `42%`, or an en dash when there is nothing to divide.
    pub(crate) fn percent(part: i64, whole: i64) -> String {
        if whole <= 0 { "–".to_string() } else { format!("{}%", (part * 100 + whole / 2) / whole) }
    }

    /// An outcome's words: `no_answer` → `no answer`.
    pub(crate) fn words(s: &str) -> String {
        s.replace('_', " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/calls?outcome=failed")), "/calls?outcome=failed");
        for bad in ["//evil.example/", "https://evil.example/", "/\\evil", "calls", "/a\nb"] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; cxb_session=cxs_abc; b=2"));
        assert_eq!(session_cookie(&h), Some("cxs_abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("cxb_session=cxk_apikey"));
        assert_eq!(session_cookie(&h), None, "only session tokens sign a console in");
    }

    #[test]
    fn forms_from_another_origin_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8081"));
        assert!(same_origin(&h).is_ok(), "no Origin: not a cross-site browser post");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8081"));
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(same_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h).is_err());
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_hold_steady() {
        assert_eq!(csrf_token("cxs_a"), csrf_token("cxs_a"));
        assert_ne!(csrf_token("cxs_a"), csrf_token("cxs_b"));
        assert_eq!(csrf_token("cxs_a").len(), 24);
    }

    #[test]
    fn a_replacing_patch_removes_what_the_new_map_leaves_out() {
        use serde_json::json;
        let current = json!({"a": {"x": 1, "y": 2}, "b": 3});
        let new = json!({"a": {"x": 5}, "c": 4});
        let patch = replacing(&current, new.clone());
        assert_eq!(patch, json!({"a": {"x": 5, "y": null}, "b": null, "c": 4}));
        let mut doc = current;
        crate::model::merge_patch(&mut doc, patch);
        assert_eq!(doc, new);
    }

    #[test]
    fn durations_and_rates_read_as_people_write_them() {
        assert_eq!(show::duration(Some(12_400)), "12.4 s");
        assert_eq!(show::duration(Some(187_000)), "3 min 07 s");
        assert_eq!(show::duration(Some(3_720_000)), "1 h 02 min");
        assert_eq!(show::percent(1, 3), "33%");
        assert_eq!(show::percent(0, 0), "–");
    }
}
