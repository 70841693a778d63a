//! The web call widget's side of the API: `GET /widget.js` (the script a page embeds with one
//! tag), `GET /v1/widget/config` (the bot's button), `POST /v1/widget/sessions` (a short-lived
//! call token and the WebRTC URL of the engine host with the most free capacity, through the
//! same fleet reservation as phone calls) and a demo page. Public routes: the bot's widget key
//! names the widget (it is in the page's HTML, so it is no secret), the page's `Origin` must
//! be one the bot allows (or the API's own, for the demo page), and each client address may
//! open a few sessions a minute.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use cxb_contract::bot::Widget;
use cxb_contract::call_token::{CallClaims, Direction};

use crate::AppState;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query};

/// How long a widget's call token admits its call.
const TOKEN_SECONDS: u64 = 60;

/// `POST /v1/widget/sessions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WidgetSessionRequest {
    /// The bot the page embeds (`data-bot`).
    pub(crate) bot_id: String,
    /// The bot's widget key (`data-key`).
    pub(crate) key: String,
}

/// `GET /v1/widget/config`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConfigQuery {
    #[serde(default)]
    bot_id: String,
    #[serde(default)]
    key: String,
}

/// Sessions opened per client address in a sliding window.
#[derive(Debug)]
pub struct SessionLimiter {
    hits: Mutex<HashMap<String, VecDeque<i64>>>,
    window_ms: i64,
    limit: usize,
}

impl SessionLimiter {
    /// At most `limit` sessions per address in `window`.
    pub fn new(limit: usize, window: std::time::Duration) -> SessionLimiter {
        SessionLimiter { hits: Mutex::new(HashMap::new()), window_ms: window.as_millis() as i64, limit }
    }

    /// Counts a session from `ip` at `now`; `Err(seconds)` to wait when over the limit.
    fn take(&self, ip: IpAddr, now: i64) -> Result<(), u64> {
        let mut hits = self.hits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = now - self.window_ms;
        if hits.len() > 10_000 {
            hits.retain(|_, times| times.back().is_some_and(|t| *t > since));
        }
        let times = hits.entry(crate::auth::address_key(ip)).or_default();
        while times.front().is_some_and(|t| *t <= since) {
            times.pop_front();
        }
        if times.len() >= self.limit {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(((oldest + self.window_ms - now).max(0) as u64).div_ceil(1000).max(1));
        }
        times.push_back(now);
        Ok(())
    }
}

/// The page's origin when the bot's widget lets it in: one of `allowed`, or the API's own
/// (the origin of a page this API served, as the browser addressed it in `Host`).
fn allowed_origin(headers: &HeaderMap, widget: &Widget) -> ApiResult<String> {
    let Some(origin) = origin(headers) else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", "the widget works only from a web page (no Origin header)"));
    };
    let origin = origin.as_str();
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let own = text(header::HOST).is_some_and(|host| [format!("http://{host}"), format!("https://{host}")].iter().any(|o| o.eq_ignore_ascii_case(origin)));
    let listed = widget.allowed_origins.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if own || listed {
        Ok(origin.to_string())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", format!("this bot's widget is not allowed on {origin}")))
    }
}

/// The request's `Origin`, when it has one.
fn origin(headers: &HeaderMap) -> Option<String> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::trim).filter(|o| !o.is_empty() && *o != "null").map(str::to_string)
}

/// The bot's organization and widget, when the widget is enabled and `key` is its key; a
/// wrong bot, key or a disabled widget all answer the same 404.
async fn widget(s: &AppState, bot_id: &str, key: &str) -> ApiResult<(String, Widget)> {
    let row: Option<(String, String)> = sqlx::query_as("SELECT org_id, body FROM bots WHERE id = $1").bind(bot_id).fetch_optional(&s.db).await?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such widget (check data-bot and data-key, and that the bot's widget is enabled)");
    let (org, body) = row.ok_or_else(not_found)?;
    let body: Value = serde_json::from_str(&body).map_err(ApiError::internal)?;
    let widget: Widget = serde_json::from_value(body["widget"].clone()).unwrap_or_default();
    if !widget.enabled || widget.key.is_empty() || !cxb_contract::carrier::constant_time_eq(widget.key.as_bytes(), key.as_bytes()) {
        return Err(not_found());
    }
    Ok((org, widget))
}

/// A JSON answer with the CORS headers that let `origin` read it.
fn with_cors(status: StatusCode, body: Value, origin: Option<&str>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    cors(response.headers_mut(), origin);
    response
}

fn cors(headers: &mut HeaderMap, origin: Option<&str>) {
    if let Some(origin) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// An error a page can read (CORS for the origin it came from; the check is the server's).
fn refused(e: ApiError, headers: &HeaderMap) -> Response {
    let mut response = e.into_response();
    cors(response.headers_mut(), origin(headers).as_deref());
    response
}

/// `OPTIONS` on the widget's routes: the preflight of a page's `fetch` with a JSON body.
pub(crate) async fn preflight(headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    cors(h, origin(&headers).as_deref());
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

/// `GET /v1/widget/config?bot_id=&key=`: what the page shows before a call.
pub(crate) async fn config(State(s): State<AppState>, headers: HeaderMap, q: Result<Query<ConfigQuery>, ApiError>) -> Response {
    let answer = async {
        let Query(q) = q?;
        let (_, widget) = widget(&s, &q.bot_id, &q.key).await?;
        // A same-origin GET carries no `Origin` (the demo page): the button's text is no
        // secret. A page elsewhere must be allowed.
        let origin = match origin(&headers) {
            Some(_) => Some(allowed_origin(&headers, &widget)?),
            None => None,
        };
        Ok::<_, ApiError>(with_cors(StatusCode::OK, json!({ "button_text": widget.button_text, "show_transcript": widget.show_transcript }), origin.as_deref()))
    };
    answer.await.unwrap_or_else(|e| refused(e, &headers))
}

/// `POST /v1/widget/sessions`: a call token for one web call, on the engine host with the
/// most free capacity.
pub(crate) async fn create_session(State(s): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, Body(request): Body<WidgetSessionRequest>) -> Response {
    let answer = async {
        let (org, widget) = widget(&s, &request.bot_id, &request.key).await?;
        let origin = allowed_origin(&headers, &widget)?;
        let now = s.now();
        s.widget_sessions.take(peer.ip(), now).map_err(|wait| ApiError::too_many(wait, "too many web calls from this address; try again later"))?;
        let reserved = crate::fleet::reserve_slot(&s.db, now, s.config.host_ttl.as_millis() as i64, s.config.reservation_ttl.as_millis() as i64).await?;
        let Some(reserved) = reserved else {
            return Err(ApiError { retry_after: Some(5), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", "no engine host has a free slot") });
        };
        let call_id = crate::db::new_id("cl", now);
        let exp = now.max(0) as u64 / 1000 + TOKEN_SECONDS;
        let claims = CallClaims {
            bot_id: request.bot_id.as_str().into(),
            call_id: call_id.as_str().into(),
            org_id: org.as_str().into(),
            exp,
            host_id: Some(reserved.host_id.clone()),
            reservation: Some(reserved.token.clone()),
            direction: Direction::Inbound,
            ..CallClaims::default()
        };
        let token = crate::call_tokens::issue(&s.db, &s.secrets, now, claims).await?;
        let base = engine_http(&reserved.address);
        metrics::counter!("cxb_api_widget_sessions_total").increment(1);
        let body = json!({
            "token": token,
            "webrtc_url": format!("{base}/webrtc/{}", request.bot_id),
            "call_id": call_id,
            "expires_at": rfc3339(exp as i64 * 1000),
            "button_text": widget.button_text,
            "show_transcript": widget.show_transcript,
        });
        Ok::<_, ApiError>(with_cors(StatusCode::CREATED, body, Some(&origin)))
    };
    answer.await.unwrap_or_else(|e| refused(e, &headers))
}

/// An engine host's HTTP base URL from the address it announces (`ws://` or `wss://`).
pub(crate) fn engine_http(address: &str) -> String {
    let address = address.trim_end_matches('/');
    match address.split_once("://") {
        Some(("wss", rest)) => format!("https://{rest}"),
        Some((_, rest)) => format!("http://{rest}"),
        None => format!("http://{address}"),
    }
}

const SCRIPT: &str = include_str!("../assets/widget.js");
const DEMO: &str = include_str!("../assets/widget-demo.html");

/// `GET /widget.js`.
pub(crate) async fn script() -> Response {
    let mut response = SCRIPT.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

#[derive(Debug, Deserialize)]
pub(crate) struct DemoQuery {
    #[serde(default)]
    bot: String,
    #[serde(default)]
    key: String,
}

/// `GET /widget/demo?bot=&key=`: a page embedding the widget for that bot, served from the
/// API's own origin (which every enabled widget allows).
pub(crate) async fn demo(headers: HeaderMap, q: Result<Query<DemoQuery>, ApiError>) -> Response {
    let Ok(Query(q)) = q else { return ApiError::bad_request("malformed query string").into_response() };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text("host").unwrap_or("127.0.0.1");
    // Behind a proxy that ends TLS, the page's own scheme.
    let scheme = if text("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https")) { "https" } else { "http" };
    let page = DEMO.replace("{{API}}", &escape(&format!("{scheme}://{host}"))).replace("{{BOT}}", &escape(&q.bot)).replace("{{KEY}}", &escape(&q.key));
    let mut response = page.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// Text safe inside an HTML attribute or element.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A widget's settings as a bot is saved: a key made when it is enabled without one, and
/// origins that are origins.
pub(crate) fn check(widget: &mut Widget) -> ApiResult<()> {
    if widget.enabled && widget.key.is_empty() {
        let mut key = [0u8; 18];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        widget.key = format!("wk_{}", base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, key));
    }
    if !widget.key.is_empty() && (widget.key.len() < 16 || widget.key.len() > 128 || !widget.key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')) {
        return Err(ApiError::invalid("widget.key", "16 to 128 letters, digits, '_' or '-'"));
    }
    if widget.allowed_origins.len() > 50 {
        return Err(ApiError::invalid("widget.allowed_origins", "at most 50 origins"));
    }
    for (i, origin) in widget.allowed_origins.iter_mut().enumerate() {
        *origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
        let valid = rest.is_some_and(|r| !r.is_empty() && r.len() <= 253 && !r.contains(['/', '?', '#', '@', ' ', '*']));
        if !valid {
            return Err(ApiError::invalid(format!("widget.allowed_origins[{i}]"), "an origin such as https://shop.example.com (scheme, host and port only)"));
        }
    }
    let chars = widget.button_text.chars().count();
    if !(1..=60).contains(&chars) || widget.button_text.chars().any(char::is_control) {
        return Err(ApiError::invalid("widget.button_text", "1 to 60 characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_per_address_are_limited_in_a_sliding_window() {
        let limiter = SessionLimiter::new(3, std::time::Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("198.51.100.7".parse().expect("ip"), "198.51.100.8".parse().expect("ip"));
        for t in [0, 1_000, 2_000] {
            assert!(limiter.take(a, t).is_ok());
        }
        assert_eq!(limiter.take(a, 3_000), Err(57), "the oldest leaves the window in 57 s");
        assert!(limiter.take(b, 3_000).is_ok(), "another address is not held back");
        assert!(limiter.take(a, 60_001).is_ok(), "the window slid");
    }

    #[test]
    fn widget_settings_are_checked_and_a_key_is_made() {
        let mut w = Widget { enabled: true, allowed_origins: vec!["HTTPS://Shop.Example.com/".into(), "http://localhost:3000".into()], ..Widget::default() };
        check(&mut w).expect("valid");
        assert!(w.key.starts_with("wk_") && w.key.len() >= 16, "{}", w.key);
        assert_eq!(w.allowed_origins, ["https://shop.example.com", "http://localhost:3000"]);
        for bad in ["shop.example.com", "https://shop.example.com/path", "https://*.example.com", "ftp://x", "https://"] {
            let mut w = Widget { allowed_origins: vec![bad.into()], ..Widget::default() };
            assert!(check(&mut w).is_err(), "{bad}");
        }
        let mut w = Widget { key: "short".into(), ..Widget::default() };
        assert!(check(&mut w).is_err());
        let mut w = Widget { button_text: String::new(), ..Widget::default() };
        assert!(check(&mut w).is_err());
    }

    #[test]
    fn engine_addresses_become_http_urls() {
        assert_eq!(engine_http("ws://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(engine_http("wss://engine.example.com/"), "https://engine.example.com");
        assert_eq!(escape(r#""><script>"#), "&quot;&gt;&lt;script&gt;");
    }
}
