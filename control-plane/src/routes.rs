//! Every route of the API in one table. The same table builds the axum router and the
//! OpenAPI 3.1 document, so a route cannot exist without being documented.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, on};
use serde_json::{Map, Value, json};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApiBuilder, PathsBuilder, RefOr};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::calls::{self, CallResult};
use crate::campaigns::{self, NewContact, NewDnc};
use crate::error::ApiError;
use crate::fleet::{self, Heartbeat, HeartbeatAnswer, Reserved};
use crate::knowledge::{self, Matches, NewDocument, Search};
use crate::model::{AiAssistant, Bot, Campaign, LoadBalancer, PhoneNumber, Settings, Webhook};
use crate::resources::{self, Document};
use crate::users::{self, Login, NewApiKey, NewUser, UserPatch};
use crate::{AppState, metrics, settings, webhooks};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    Public,
    /// Session token or API key.
    User,
    /// Fleet token.
    Fleet,
}

/// A documented response: status, description, and the content type and schema of its body.
type Response = (u16, &'static str, Option<(&'static str, Value)>);

/// One documented operation.
pub(crate) struct Op {
    pub(crate) method: &'static str,
    pub(crate) path: String,
    pub(crate) tag: &'static str,
    pub(crate) summary: String,
    pub(crate) auth: Auth,
    request: Option<(&'static str, Value)>,
    responses: Vec<Response>,
    /// Error statuses, each with what it means on this route (else [`error_description`]).
    errors: Vec<(u16, Option<&'static str>)>,
    query: Vec<(&'static str, &'static str, Value)>,
}

/// The router and its documentation, built together.
pub(crate) struct Routes {
    pub(crate) router: Router<AppState>,
    pub(crate) ops: Vec<Op>,
    schemas: Vec<(String, RefOr<Schema>)>,
}

fn filter(method: &str) -> MethodFilter {
    match method {
        "POST" => MethodFilter::POST,
        "PATCH" => MethodFilter::PATCH,
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        _ => MethodFilter::GET,
    }
}

/// `{"$ref": "#/components/schemas/NAME"}`.
fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A named schema: registered once in the components, referenced everywhere.
fn named<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) -> Value {
    let name = T::name().to_string();
    if !schemas.iter().any(|(n, _)| *n == name) {
        T::schemas(schemas);
        schemas.push((name.clone(), T::schema()));
    }
    reference(&name)
}

/// `{"items": [...], "next_cursor": ...}`, the answer of every list.
fn page_of(item: Value) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["items", "next_cursor"],
        "properties": {
            "items": { "type": "array", "items": item },
            "next_cursor": { "type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last page." },
        },
    })
}

fn any_object() -> Value {
    json!({ "type": "object" })
}

/// Path ids and query values: the server refuses URLs holding encoded control characters (400).
fn no_control(min_length: u32) -> Value {
    json!({ "type": "string", "minLength": min_length, "pattern": "^[^\\x00-\\x1f\\x7f]*$" })
}

/// What an error status means, unless a route says more.
fn error_description(status: u16) -> &'static str {
    match status {
        400 => "The request cannot be read: a body that is not JSON (or not an object), a malformed query string, or an encoded control character in the URL (`bad_request`)",
        401 => "No credentials, or unknown, expired or revoked ones (`unauthorized`)",
        403 => "The credentials may not do this: a role below the one needed, or a fleet token of another scope or bound to another host (`forbidden`, `wrong_scope`, `wrong_host`)",
        404 => "No such record in the caller's organization (`not_found`)",
        409 => "The record's state does not allow this, or another record holds these values (`invalid_state`, `invalid_transition`, `edit_conflict`, `email_taken`, `last_admin`, `already_exists`, `limit_reached`)",
        413 => "The body is larger than this route takes (`payload_too_large`)",
        415 => "The body is not of the documented media type (`unsupported_media_type`)",
        422 => "A field or query value the API does not accept, including rules beyond this document's schemas (references to other records, phone numbers, time zones, URLs); `field` names it (`validation_failed`, `egress_forbidden`)",
        429 => "Too many requests; retry after `Retry-After` seconds (`rate_limited`)",
        503 => "Busy: too many requests in flight, or the request did not finish in time; retry after `Retry-After` seconds (`overloaded`, `timeout`)",
        _ => "An error",
    }
}

fn error_response(status: u16, description: &str) -> Value {
    let mut r = json!({
        "description": description,
        "content": { "application/json": { "schema": reference("Error") } },
    });
    if matches!(status, 429 | 503) {
        r["headers"] = json!({
            "Retry-After": { "description": "Seconds to wait before trying again.", "schema": { "type": "integer", "minimum": 0 } },
        });
    }
    r
}

impl Routes {
    fn new() -> Routes {
        Routes { router: Router::new(), ops: Vec::new(), schemas: Vec::new() }
    }

    /// Adds `handler` at `method path` with its documentation. The error statuses every route
    /// of its kind can answer are added here: 400 and 503 to all; 401 to routes that take
    /// credentials, 403 where a role or scope is needed; 404 with path ids; 413, 415 and 422
    /// with a body; 422 with query values.
    /// A route outside the API's documented surface (a page, a script, a CORS preflight).
    fn raw(&mut self, path: &str, route: axum::routing::MethodRouter<AppState>) -> &mut Routes {
        let router = std::mem::take(&mut self.router);
        self.router = router.route(path, route);
        self
    }

    fn add<H, T>(&mut self, method: &'static str, path: &str, handler: H, doc: Doc) -> &mut Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let router = std::mem::take(&mut self.router);
        self.router = router.route(path, on(filter(method), handler));
        let mut errors: Vec<(u16, Option<&'static str>)> = vec![(400, None), (503, None)];
        if doc.auth != Auth::Public {
            errors.push((401, None));
        }
        if doc.auth == Auth::Fleet || (doc.auth == Auth::User && method != "GET") {
            errors.push((403, None));
        }
        if path.contains('{') {
            errors.push((404, None));
        }
        if doc.request.as_ref().is_some_and(|(media, _)| *media == "application/json") {
            errors.extend([(413, None), (415, None), (422, None)]);
        }
        if !doc.query.is_empty() {
            errors.push((422, None));
        }
        // A route's own words for a status win.
        for (status, says) in doc.errors {
            errors.retain(|(s, _)| *s != status);
            errors.push((status, says));
        }
        errors.sort_by_key(|(s, _)| *s);
        errors.dedup_by_key(|(s, _)| *s);
        self.ops.push(Op {
            method,
            path: path.to_string(),
            tag: doc.tag,
            summary: doc.summary,
            auth: doc.auth,
            request: doc.request,
            responses: doc.responses,
            errors,
            query: doc.query,
        });
        self
    }

    /// The five routes of a document resource under `base`: requests take `D`'s schema (a
    /// merge patch of it for PATCH), answers `D`'s view (`…View`: with id and times, secrets as
    /// `secrets_set`).
    fn documents<D: Document>(&mut self, base: &str, tag: &'static str, plural: &str) {
        let one = named::<D>(&mut self.schemas);
        let name = <D as ToSchema>::name().to_string();
        let view = reference(&format!("{name}View"));
        let patch = reference(&format!("{name}Patch"));
        let item = format!("{base}/{{id}}");
        let what = D::WHAT;
        let d = |s: &str| Doc::user(tag, s);
        let mut list = d(&format!("List {plural}, newest first (filter: name{})", if D::STATEFUL { ", state" } else { "" }))
            .list(view.clone())
            .query("name", "Names containing this text", no_control(0));
        if D::STATEFUL {
            list = list.query("state", "Campaigns in this state", reference("CampaignState"));
        }
        self.add("GET", base, resources::list::<D>, list);
        self.add("POST", base, resources::create::<D>, d(&format!("Create a {what}")).body(one).created(view.clone()).err(409));
        self.add("GET", &item, resources::get::<D>, d(&format!("Get a {what}")).ok(view.clone()));
        let changed = d(&format!("Change a {what} (JSON merge patch; secrets kept unless replaced)")).body(patch).ok(view);
        self.add("PATCH", &item, resources::update::<D>, changed.err(409));
        let deleted = d(&format!("Delete a {what}")).no_content();
        self.add("DELETE", &item, resources::delete::<D>, if D::STATEFUL { deleted.err(409) } else { deleted });
    }

    /// The OpenAPI 3.1 document.
    pub(crate) fn openapi(&self) -> Value {
        let mut paths = Map::new();
        for op in &self.ops {
            let mut parameters = Vec::new();
            for name in op.path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')) {
                parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": no_control(1) }));
            }
            for (name, description, schema) in &op.query {
                parameters.push(json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema }));
            }
            let mut o = json!({
                "tags": [op.tag],
                "summary": op.summary,
                "operationId": format!("{} {}", op.method, op.path),
            });
            if !parameters.is_empty() {
                o["parameters"] = Value::Array(parameters);
            }
            if let Some((media, schema)) = &op.request {
                o["requestBody"] = json!({ "required": true, "content": { *media: { "schema": schema } } });
            }
            let mut responses = Map::new();
            for (status, description, content) in &op.responses {
                let mut r = json!({ "description": description });
                if let Some((media, schema)) = content {
                    r["content"] = json!({ *media: { "schema": schema } });
                }
                responses.insert(status.to_string(), r);
            }
            for (status, says) in &op.errors {
                if !responses.contains_key(&status.to_string()) {
                    responses.insert(status.to_string(), error_response(*status, says.unwrap_or_else(|| error_description(*status))));
                }
            }
            o["responses"] = Value::Object(responses);
            if op.auth != Auth::Public {
                let scheme = if op.auth == Auth::Fleet { "fleet_token" } else { "bearer" };
                o["security"] = json!([{ scheme: [] }]);
            }
            let item = paths.entry(op.path.clone()).or_insert_with(|| json!({}));
            item[op.method.to_lowercase()] = o;
        }
        let components = ComponentsBuilder::new()
            .schemas_from_iter(self.schemas.clone())
            .security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))
            .security_scheme("fleet_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let doc = OpenApiBuilder::new()
            .info(
                InfoBuilder::new()
                    .title("CX Bridge API")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some("The control plane: organizations, bots, campaigns, call records and the fleet registry.")),
            )
            .paths(PathsBuilder::new().build())
            .components(Some(components.build()))
            .build();
        let mut doc = serde_json::to_value(doc).unwrap_or(Value::Null);
        doc["paths"] = Value::Object(paths);
        if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
            close(schemas, "Bot", &mut Vec::new());
            answer_schemas(schemas);
        }
        doc
    }
}

/// Closes the object schema `name` and every object schema it refers to
/// (`additionalProperties: false`): the parts of a bot shared with the engine
/// (`cxb_contract::bot`) ignore unknown fields there, and the API refuses them
/// (`extract::typed_strict`).
fn close(schemas: &mut Map<String, Value>, name: &str, seen: &mut Vec<String>) {
    if seen.iter().any(|s| s == name) {
        return;
    }
    seen.push(name.to_string());
    let Some(Value::Object(schema)) = schemas.get_mut(name) else { return };
    if schema.contains_key("properties") {
        schema.insert("additionalProperties".into(), Value::Bool(false));
    }
    let mut refs = Vec::new();
    refs_in(&Value::Object(schema.clone()), &mut refs);
    for r in refs {
        close(schemas, &r, seen);
    }
}

/// The names of the component schemas `value` refers to.
fn refs_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(name) = map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")) {
                out.push(name.to_string());
            }
            map.values().for_each(|v| refs_in(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

/// Fields of request schemas that answers leave out when they are empty.
const LEFT_OUT_WHEN_EMPTY: &[&str] = &["options", "headers", "released"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Derive {
    /// As the API shows a stored document: every field it stores (required unless it may be
    /// left out), no nulls, `secrets` as `secrets_set`.
    View,
    /// A JSON merge patch (RFC 7396) of the document: every field optional, null resets an
    /// optional field to its default, objects are merged, arrays replaced.
    Patch,
}

/// `schema` without `null` among its types; and whether it had it.
fn strip_null(schema: &Value) -> (Value, bool) {
    let mut s = schema.clone();
    let mut nullable = false;
    if let Some(Value::Array(types)) = s.get_mut("type")
        && let Some(i) = types.iter().position(|t| t == "null")
    {
        types.remove(i);
        nullable = true;
        if types.len() == 1 {
            let only = types[0].clone();
            s["type"] = only;
        }
    }
    if let Some(Value::Array(alternatives)) = s.get("oneOf").cloned() {
        let rest: Vec<Value> = alternatives.iter().filter(|a| a.get("type") != Some(&json!("null"))).cloned().collect();
        if rest.len() < alternatives.len()
            && let Value::Object(map) = &mut s
        {
            nullable = true;
            map.remove("oneOf");
            match <[Value; 1]>::try_from(rest) {
                Ok([Value::Object(only)]) => map.extend(only),
                Ok([other]) => {
                    map.insert("oneOf".into(), json!([other]));
                }
                Err(rest) => {
                    map.insert("oneOf".into(), Value::Array(rest));
                }
            }
        }
    }
    (s, nullable)
}

/// `schema` that also takes `null`.
fn add_null(mut schema: Value) -> Value {
    match schema.get_mut("type") {
        Some(Value::String(t)) => {
            let t = std::mem::take(t);
            schema["type"] = json!([t, "null"]);
            return schema;
        }
        Some(Value::Array(types)) => {
            if !types.iter().any(|t| t == "null") {
                types.push(json!("null"));
            }
            return schema;
        }
        _ => {}
    }
    let mut wrapper = Map::new();
    if let Value::Object(map) = &mut schema
        && let Some(description) = map.remove("description")
    {
        wrapper.insert("description".into(), description);
    }
    wrapper.insert("oneOf".into(), json!([{ "type": "null" }, schema]));
    Value::Object(wrapper)
}

/// Derives `NAME` + `View` or `Patch` from the object schema `name` (and the object schemas it
/// refers to); `None` when `name` is not an object schema (an enum, a map).
fn derive(schemas: &mut Map<String, Value>, name: &str, kind: Derive) -> Option<String> {
    let base = schemas.get(name)?.clone();
    let props = base.get("properties")?.as_object()?.clone();
    let new = format!("{name}{}", if kind == Derive::View { "View" } else { "Patch" });
    if schemas.contains_key(&new) {
        return Some(new);
    }
    schemas.insert(new.clone(), Value::Null);
    let required: Vec<String> = base["required"].as_array().map(|r| r.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
    let mut out_props = Map::new();
    let mut out_required = Vec::new();
    for (p, schema) in props {
        if p == "secrets" {
            if kind == Derive::View {
                out_props.insert(
                    "secrets_set".into(),
                    json!({ "type": "array", "items": { "type": "string" }, "description": "The names of the write-only `secrets` that are set; left out when none are." }),
                );
            } else {
                out_props.insert(
                    "secrets".into(),
                    json!({
                        "type": ["object", "null"],
                        "additionalProperties": { "type": ["string", "null"] },
                        "description": "Write-only, merged by name (null removes one); kept unless sent, and cleared when the destination beside them changes and they are not sent again.",
                    }),
                );
                out_props.insert("secrets_set".into(), json!({ "description": "Read-only: ignored." }));
            }
            continue;
        }
        let (mut s, nullable) = strip_null(&schema);
        let target = s.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")).map(String::from);
        if let Some(target) = target
            && let Some(derived) = derive(schemas, &target, kind)
        {
            s["$ref"] = json!(format!("#/components/schemas/{derived}"));
        }
        // Answers show array items redacted too (a tool's `secrets`); a patch replaces arrays
        // whole, so their items stay the request's.
        let item = s.pointer("/items/$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")).map(String::from);
        if kind == Derive::View
            && let Some(item) = item
            && let Some(derived) = derive(schemas, &item, kind)
        {
            s["items"]["$ref"] = json!(format!("#/components/schemas/{derived}"));
        }
        let is_required = required.contains(&p);
        match kind {
            Derive::View => {
                if is_required || (!nullable && !LEFT_OUT_WHEN_EMPTY.contains(&p.as_str())) {
                    out_required.push(Value::String(p.clone()));
                }
                out_props.insert(p, s);
            }
            Derive::Patch => {
                out_props.insert(p, if is_required { s } else { add_null(s) });
            }
        }
    }
    let mut out = base.as_object().cloned().unwrap_or_default();
    out.insert("properties".into(), Value::Object(out_props));
    out.remove("required");
    if !out_required.is_empty() {
        out.insert("required".into(), Value::Array(out_required));
    }
    schemas.insert(new.clone(), Value::Object(out));
    Some(new)
}

fn time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

fn string() -> Value {
    json!({ "type": "string" })
}

/// An object schema of `properties`, all required, no others.
fn record(properties: Value) -> Value {
    let required: Vec<Value> = properties.as_object().map(|p| p.keys().cloned().map(Value::String).collect()).unwrap_or_default();
    json!({ "type": "object", "additionalProperties": false, "required": required, "properties": properties })
}

/// Adds properties to the object schema `name`, required or not.
fn extend(schemas: &mut Map<String, Value>, name: &str, properties: Value, required: bool) {
    let Some(Value::Object(schema)) = schemas.get_mut(name) else { return };
    let Value::Object(properties) = properties else { return };
    if required {
        let list = schema.entry("required").or_insert_with(|| json!([]));
        if let Value::Array(list) = list {
            list.extend(properties.keys().cloned().map(Value::String));
        }
    }
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.extend(properties);
    }
}

/// The schemas of answers: the views and merge patches of the stored documents, and the
/// records the other routes answer with.
fn answer_schemas(schemas: &mut Map<String, Value>) {
    let cleared = json!({
        "secrets_cleared": { "type": "array", "items": { "type": "string" }, "description": "Edits only: the secrets maps removed because their destination changed (`\"\"` for the document's own)." },
    });
    for (name, stateful) in [("Bot", false), ("AiAssistant", false), ("LoadBalancer", false), ("Webhook", false), ("Campaign", true)] {
        if let Some(view) = derive(schemas, name, Derive::View) {
            let mut always = json!({ "id": string(), "created_at": time(), "updated_at": time() });
            if stateful {
                always["state"] = reference("CampaignState");
            }
            extend(schemas, &view, always, true);
            extend(schemas, &view, cleared.clone(), false);
        }
        if let Some(patch) = derive(schemas, name, Derive::Patch) {
            let ignored = json!({ "description": "Read-only: ignored." });
            extend(schemas, &patch, json!({ "id": ignored, "created_at": ignored, "updated_at": ignored, "state": ignored }), false);
        }
    }
    extend(
        schemas,
        "WebhookView",
        json!({ "signing_secret": { "type": "string", "description": "Shown once: when the webhook is created without one, or its secrets were cleared." } }),
        false,
    );
    if let Some(view) = derive(schemas, "Settings", Derive::View) {
        extend(schemas, &view, json!({ "updated_at": { "type": ["string", "null"], "format": "date-time", "description": "Null until first changed." } }), true);
        extend(schemas, &view, cleared, false);
    }
    if let Some(patch) = derive(schemas, "Settings", Derive::Patch) {
        extend(schemas, &patch, json!({ "updated_at": { "description": "Read-only: ignored." } }), false);
    }
    if let Some(mut bot) = schemas.get("Bot").cloned() {
        bot["description"] = json!("A bot as an engine runs it: its document with secrets, id, organization and last change.");
        schemas.insert("RuntimeBot".into(), bot);
        extend(schemas, "RuntimeBot", json!({ "id": string(), "org_id": string(), "updated_at": time() }), true);
    }
    let nullable_string = json!({ "type": ["string", "null"] });
    let mut number = record(json!({
        "id": string(), "org_id": string(), "number": string(), "bot_id": string(),
        "allowed_sources": { "type": "array", "items": string() },
        "digest_username": nullable_string, "digest_password": nullable_string,
    }));
    number["description"] = json!("Where a SIP call to a number goes, as an engine needs it: secrets open.");
    schemas.insert("RuntimePhoneNumber".into(), number);
    let nullable_time = json!({ "type": ["string", "null"], "format": "date-time" });
    let user = record(json!({
        "id": string(), "org_id": string(), "email": string(), "name": string(), "role": reference("Role"),
        "created_at": time(), "updated_at": time(),
    }));
    let key = json!({
        "id": string(), "name": string(), "role": reference("Role"), "hint": { "type": "string", "description": "The key's first characters." },
        "created_at": time(), "expires_at": nullable_time, "last_used_at": nullable_time,
    });
    let mut created_key = key.clone();
    created_key["key"] = json!({ "type": "string", "description": "The key: shown only here." });
    let host = record(json!({
        "host_id": string(), "address": string(), "version": string(), "workers": { "type": "integer" },
        "slots_total": { "type": "integer" }, "slots_free": { "type": "integer" }, "live_calls": { "type": "integer" },
        "pending_reservations": { "type": "integer" }, "available": { "type": "integer", "minimum": 0 },
        "first_seen": time(), "last_seen": time(),
    }));
    let answers = [
        ("User", user),
        ("ApiKey", record(key)),
        ("CreatedApiKey", record(created_key)),
        (
            "Session",
            record(json!({
                "token": { "type": "string", "description": "Send as `Authorization: Bearer <token>`." },
                "expires_at": time(),
                "user": record(json!({ "id": string(), "org_id": string(), "email": string(), "role": reference("Role"), "name": string() })),
            })),
        ),
        (
            "Me",
            record(json!({
                "org": record(json!({ "id": string(), "name": string() })),
                "role": reference("Role"),
                "user": { "oneOf": [{ "type": "null" }, reference("User")], "description": "The signed-in user; null for API keys." },
            })),
        ),
        (
            "Contact",
            record(json!({
                "id": string(), "campaign_id": string(), "phone": string(), "name": string(), "time_zone": { "type": ["string", "null"] },
                "fields": { "type": ["object", "null"], "additionalProperties": { "type": "string" } },
                "status": string(), "disposition": { "type": ["string", "null"] }, "attempts": { "type": "integer" },
                "next_attempt_at": nullable_time, "created_at": time(), "updated_at": time(),
            })),
        ),
        (
            "ImportReport",
            record(json!({
                "imported": { "type": "integer", "minimum": 0 }, "updated": { "type": "integer", "minimum": 0 },
                "merged_in_file": { "type": "integer", "minimum": 0 },
                "rejected": { "type": "array", "items": record(json!({ "row": { "type": "integer" }, "reason": string() })) },
                "truncated": { "type": "boolean" },
            })),
        ),
        ("DncEntry", record(json!({ "id": string(), "phone": string(), "note": string(), "created_at": time() }))),
        (
            "KnowledgeDocument",
            record(json!({
                "id": string(), "bot_id": string(), "title": string(), "bytes": { "type": "integer" }, "chunks": { "type": "integer" }, "created_at": time(),
            })),
        ),
        (
            "Delivery",
            record(json!({
                "id": string(), "event": string(), "subject_id": string(), "status": string(), "attempts": { "type": "integer" },
                "next_attempt_at": nullable_time, "last_status": { "type": ["integer", "null"] }, "last_error": { "type": ["string", "null"] },
                "created_at": time(), "updated_at": time(),
            })),
        ),
        ("ResultStored", record(json!({ "call_id": string(), "duplicate": { "type": "boolean", "description": "The call was stored before." } }))),
        ("Hosts", record(json!({ "items": { "type": "array", "items": host } }))),
        (
            "Health",
            record(json!({ "status": { "type": "string", "enum": ["ok", "degraded"] }, "database": { "type": "boolean" }, "version": string() })),
        ),
        (
            "Error",
            record(json!({
                "error": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["code", "message"],
                    "properties": {
                        "code": { "type": "string", "description": "Stable, for programs: `not_found`, `validation_failed`, …" },
                        "message": { "type": "string", "description": "For people." },
                        "field": { "type": "string", "description": "The field a `validation_failed` error is about, e.g. `tools[1].name`." },
                    },
                },
            })),
        ),
    ];
    for (name, schema) in answers {
        schemas.insert(name.into(), schema);
    }
}

/// Documentation of one route.
pub(crate) struct Doc {
    tag: &'static str,
    summary: String,
    auth: Auth,
    request: Option<(&'static str, Value)>,
    responses: Vec<Response>,
    errors: Vec<(u16, Option<&'static str>)>,
    query: Vec<(&'static str, &'static str, Value)>,
}

impl Doc {
    fn new(tag: &'static str, summary: &str, auth: Auth) -> Doc {
        Doc { tag, summary: summary.to_string(), auth, request: None, responses: Vec::new(), errors: Vec::new(), query: Vec::new() }
    }
    fn user(tag: &'static str, summary: &str) -> Doc {
        Doc::new(tag, summary, Auth::User)
    }
    fn fleet(tag: &'static str, summary: &str) -> Doc {
        Doc::new(tag, summary, Auth::Fleet)
    }
    fn public(tag: &'static str, summary: &str) -> Doc {
        Doc::new(tag, summary, Auth::Public)
    }
    fn body(mut self, schema: Value) -> Doc {
        self.request = Some(("application/json", schema));
        self
    }
    fn csv(mut self) -> Doc {
        self.request = Some(("text/csv", json!({ "type": "string" })));
        self
    }
    fn answer(mut self, status: u16, description: &'static str, schema: Value) -> Doc {
        self.responses.push((status, description, Some(("application/json", schema))));
        self
    }
    fn ok(self, schema: Value) -> Doc {
        self.answer(200, "OK", schema)
    }
    fn created(self, schema: Value) -> Doc {
        self.answer(201, "Created", schema)
    }
    /// A page of `item`s, with the `limit` and `cursor` query values.
    fn list(self, item: Value) -> Doc {
        self.ok(page_of(item))
            .query("limit", "Page size, 1 to 500 (default 50)", json!({ "type": "integer", "minimum": 1, "maximum": 500 }))
            .query("cursor", "`next_cursor` of the previous page", no_control(0))
    }
    fn query(mut self, name: &'static str, description: &'static str, schema: Value) -> Doc {
        self.query.push((name, description, schema));
        self
    }
    fn no_content(mut self) -> Doc {
        self.responses.push((204, "Done", None));
        self
    }
    /// A WAV file, whole or the byte range asked for (`Range`).
    fn wav(mut self) -> Doc {
        let wav = json!({ "type": "string", "format": "binary" });
        self.responses.push((200, "The recording (WAV)", Some(("audio/wav", wav.clone()))));
        self.responses.push((206, "The byte range the `Range` header asked for, with `Content-Range`", Some(("audio/wav", wav))));
        self.responses.push((416, "The range starts past the end; `Content-Range: bytes */SIZE` says the size", None));
        self
    }
    fn text(mut self) -> Doc {
        self.responses.push((200, "Plain text", Some(("text/plain", json!({ "type": "string" })))));
        self
    }
    /// Also answers `status` ([`error_description`] says what it means).
    fn err(mut self, status: u16) -> Doc {
        self.errors.push((status, None));
        self
    }
    /// Also answers `status`, meaning `description` here.
    fn err_says(mut self, status: u16, description: &'static str) -> Doc {
        self.errors.push((status, Some(description)));
        self
    }
}

impl std::fmt::Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doc").field("summary", &self.summary).finish_non_exhaustive()
    }
}

/// Every route.
pub(crate) fn build() -> Routes {
    let mut r = Routes::new();
    let obj = any_object;
    let doc = |name: &str| reference(name);

    r.add(
        "GET",
        "/health",
        health,
        Doc::public("service", "Liveness and database reachability")
            .ok(doc("Health"))
            .answer(503, "Degraded: the database does not answer", json!({ "anyOf": [doc("Health"), doc("Error")] })),
    );
    r.add("GET", "/metrics", metrics::render, Doc::public("service", "Prometheus metrics").text());
    r.add("GET", "/v1/openapi.json", openapi_json, Doc::public("service", "This document").ok(obj()));

    let login = named::<Login>(&mut r.schemas);
    r.add(
        "POST",
        "/v1/auth/login",
        users::login,
        Doc::public("auth", "Sign in; returns a session token")
            .body(login)
            .ok(doc("Session"))
            .err_says(401, "Wrong email or password (`unauthorized`)")
            .err_says(429, "Too many failed sign-ins to this account or from this address; retry after `Retry-After` seconds (`rate_limited`)")
            .err_says(503, "Too many sign-ins at once (`busy`), too many requests in flight (`overloaded`), or too slow (`timeout`); retry after `Retry-After` seconds"),
    );
    r.add(
        "POST",
        "/v1/auth/logout",
        users::logout,
        Doc::user("auth", "End this session").no_content().err_says(400, "API keys are revoked, not signed out (`bad_request`); or a malformed URL"),
    );
    let session = named::<crate::widget::WidgetSessionRequest>(&mut r.schemas);
    r.add(
        "POST",
        "/v1/widget/sessions",
        crate::widget::create_session,
        Doc::public("widget", "A web call for a page that embeds the widget: a call token good for 60 s and the WebRTC URL of the engine host with the most free capacity")
            .body(session)
            .created(obj())
            .err_says(403, "The page's Origin is not one the bot's widget allows (`origin_not_allowed`)")
            .err_says(404, "No such bot, a wrong key, or the widget is off (`not_found`)")
            .err_says(429, "Too many web calls from this address; retry after `Retry-After` seconds (`rate_limited`)")
            .err_says(503, "No engine host has a free slot (`no_capacity`)"),
    );
    r.add(
        "GET",
        "/v1/widget/config",
        crate::widget::config,
        Doc::public("widget", "What the widget shows before a call: its button text and whether the transcript is shown")
            .ok(obj())
            .query("bot_id", "The bot", no_control(1))
            .query("key", "The bot's widget key", no_control(1))
            .err_says(403, "The page's Origin is not one the bot's widget allows (`origin_not_allowed`)")
            .err_says(404, "No such bot, a wrong key, or the widget is off (`not_found`)"),
    );
    r.raw("/v1/widget/sessions", axum::routing::options(crate::widget::preflight));
    r.raw("/v1/widget/config", axum::routing::options(crate::widget::preflight));
    r.raw("/widget.js", axum::routing::get(crate::widget::script));
    r.raw("/widget/demo", axum::routing::get(crate::widget::demo));

    r.add("GET", "/v1/me", users::me, Doc::user("auth", "The caller, its role and organization").ok(doc("Me")));

    named::<crate::auth::Role>(&mut r.schemas);
    let new_user = named::<NewUser>(&mut r.schemas);
    let user_patch = named::<UserPatch>(&mut r.schemas);
    r.add("GET", "/v1/users", users::list_users, Doc::user("users", "List the organization's users").list(doc("User")));
    r.add("POST", "/v1/users", users::create_user, Doc::user("users", "Add a user (admin)").body(new_user).created(doc("User")).err(409));
    r.add("GET", "/v1/users/{id}", users::get_user, Doc::user("users", "Get a user").ok(doc("User")));
    r.add(
        "PATCH",
        "/v1/users/{id}",
        users::update_user,
        Doc::user("users", "Change a user's name, role or password").body(user_patch).ok(doc("User")).err(409),
    );
    r.add("DELETE", "/v1/users/{id}", users::delete_user, Doc::user("users", "Remove a user (admin)").no_content().err(409));

    let new_key = named::<NewApiKey>(&mut r.schemas);
    r.add(
        "GET",
        "/v1/api-keys",
        users::list_keys,
        Doc::user("api-keys", "List API keys (values are never shown again; admin)").list(doc("ApiKey")).err(403),
    );
    r.add("POST", "/v1/api-keys", users::create_key, Doc::user("api-keys", "Create an API key; the response shows it once").body(new_key).created(doc("CreatedApiKey")));
    r.add("DELETE", "/v1/api-keys/{id}", users::delete_key, Doc::user("api-keys", "Revoke an API key").no_content());

    r.documents::<Bot>("/v1/bots", "bots", "bots");
    let new_document = named::<NewDocument>(&mut r.schemas);
    r.add(
        "GET",
        "/v1/bots/{id}/knowledge",
        knowledge::list,
        Doc::user("knowledge", "The bot's knowledge documents, newest first").list(doc("KnowledgeDocument")),
    );
    r.add(
        "POST",
        "/v1/bots/{id}/knowledge",
        knowledge::add,
        Doc::user("knowledge", "Add a document to the bot's knowledge base (split into chunks for search)")
            .body(new_document)
            .created(doc("KnowledgeDocument"))
            .err(409),
    );
    r.add("DELETE", "/v1/bots/{id}/knowledge/{doc_id}", knowledge::delete, Doc::user("knowledge", "Remove a knowledge document").no_content());
    r.documents::<AiAssistant>("/v1/ai-assistants", "routing", "AI assistants");
    r.documents::<LoadBalancer>("/v1/load-balancers", "routing", "load balancers");
    r.documents::<Webhook>("/v1/webhooks", "webhooks", "webhooks");
    r.documents::<PhoneNumber>("/v1/phone-numbers", "routing", "phone numbers");
    r.add("GET", "/v1/webhooks/{id}/deliveries", webhooks::deliveries, Doc::user("webhooks", "The webhook's delivery log").list(doc("Delivery")));

    named::<crate::model::CampaignState>(&mut r.schemas);
    r.documents::<Campaign>("/v1/campaigns", "campaigns", "campaigns");
    for action in ["start", "pause", "resume", "complete", "archive"] {
        let handler = move |State(s): State<AppState>, caller: Caller, Path(id): Path<String>| campaigns::transition(s, caller, id, action);
        let says = Doc::user("campaigns", &format!("{action} the campaign")).ok(doc("CampaignView"));
        r.add("POST", &format!("/v1/campaigns/{{id}}/{action}"), handler, says.err(409));
    }
    let new_contact = named::<NewContact>(&mut r.schemas);
    r.add(
        "GET",
        "/v1/campaigns/{id}/contacts",
        campaigns::list_contacts,
        Doc::user("contacts", "List the campaign's contacts").list(doc("Contact")).query("status", "Contacts in this status", no_control(0)),
    );
    r.add(
        "POST",
        "/v1/campaigns/{id}/contacts",
        campaigns::add_contact,
        Doc::user("contacts", "Add a contact (merged with one of the same number)")
            .body(new_contact)
            .created(doc("Contact"))
            .answer(200, "Merged into the campaign's contact with the same number", doc("Contact"))
            .err(409),
    );
    r.add(
        "POST",
        "/v1/campaigns/{id}/contacts/import",
        campaigns::import.layer(DefaultBodyLimit::max(32 << 20)),
        Doc::user("contacts", "Import contacts from CSV; reports rejected rows")
            .csv()
            .ok(doc("ImportReport"))
            .query("default_country_code", "Calling code for this file's national numbers", no_control(0))
            .err(409)
            .err(413)
            .err(415),
    );
    r.add("GET", "/v1/campaigns/{id}/contacts/{contact_id}", campaigns::get_contact, Doc::user("contacts", "Get a contact").ok(doc("Contact")));
    r.add("DELETE", "/v1/campaigns/{id}/contacts/{contact_id}", campaigns::delete_contact, Doc::user("contacts", "Remove a contact").no_content());

    let new_dnc = named::<NewDnc>(&mut r.schemas);
    r.add(
        "GET",
        "/v1/dnc",
        campaigns::list_dnc,
        Doc::user("dnc", "The do-not-call list (filter: phone)").list(doc("DncEntry")).query("phone", "This number only", no_control(0)),
    );
    r.add(
        "POST",
        "/v1/dnc",
        campaigns::add_dnc,
        Doc::user("dnc", "Add a number to the do-not-call list")
            .body(new_dnc)
            .created(doc("DncEntry"))
            .answer(200, "The number was on the list already", doc("DncEntry")),
    );
    r.add("DELETE", "/v1/dnc/{id}", campaigns::delete_dnc, Doc::user("dnc", "Remove a number from the list").no_content());

    let direct = named::<crate::telephony::DirectCall>(&mut r.schemas);
    r.add(
        "POST",
        "/v1/calls",
        crate::telephony::place_call,
        Doc::user("calls", "Place one outbound call from a bot through the organization's carrier")
            .body(direct)
            .created(obj())
            .err_says(409, "The number is on the do-not-call list (`do_not_call`)")
            .err_says(502, "The carrier refused the call (`carrier_rejected`)")
            .err_says(
                503,
                "No engine host has a free slot (`no_capacity`), the carrier cannot be reached (`carrier_unavailable`), the API runs without a dialler (`telephony_unavailable`), or it is busy (`overloaded`, `timeout`); retry after `Retry-After` seconds when given",
            ),
    );
    r.add(
        "POST",
        "/v1/carriers/{org_id}/cdr",
        crate::telephony::carrier_webhook,
        Doc::public("carriers", "A carrier's call-end record (CDR) webhook; authenticated by the per-call token or the carrier's signature")
            .body(obj())
            .ok(obj())
            .err_says(400, "A record the dialler cannot read (`malformed_cdr`), or a malformed URL (`bad_request`)")
            .err_says(401, "Neither the per-call token nor the carrier's signature checks out (`unauthorized`)")
            .err_says(404, "No such call (`not_found`)")
            .err(413)
            .err_says(503, "The API runs without a dialler (`telephony_unavailable`), or it is busy (`overloaded`, `timeout`)"),
    );
    r.add(
        "GET",
        "/v1/campaigns/{id}/stats",
        crate::attempts::stats,
        Doc::user("campaigns", "The campaign's statistics: attempts by outcome, live calls, durations, answer-to-first-audio").ok(obj()),
    );
    let calls = Doc::user("calls", "Call records, newest first (filters: since, until, campaign_id, bot_id, outcome, direction, number)")
        .list(obj())
        .query("since", "Calls started at or after (RFC 3339)", no_control(0))
        .query("until", "Calls started before (RFC 3339)", no_control(0))
        .query("campaign_id", "Calls of this campaign", no_control(0))
        .query("bot_id", "Calls of this bot", no_control(0))
        .query("outcome", "Calls that ended so", no_control(0))
        .query("direction", "`inbound` or `outbound`", no_control(0))
        .query("number", "Calls from or to this number", no_control(0));
    r.add("GET", "/v1/calls", calls::list, calls);
    r.add("GET", "/v1/calls/{id}", calls::get, Doc::user("calls", "One call record").ok(obj()));
    r.add(
        "GET",
        "/v1/calls/{id}/recording",
        crate::recordings::get,
        Doc::user("calls", "The call's recording (WAV), streamed; `Range` requests answer 206 so players can seek")
            .wav()
            .err_says(404, "No such call, or it has no recording this API can read (`not_found`)"),
    );
    let note = named::<crate::handoffs::Note>(&mut r.schemas);
    let resolve = named::<crate::handoffs::Resolve>(&mut r.schemas);
    r.add(
        "GET",
        "/v1/handoffs",
        crate::handoffs::list,
        Doc::user("agent-desk", "Handoffs from bots to people: open ones oldest first (the desk's queue), or by status")
            .ok(page_of(obj()))
            .query("status", "`open` (waiting and claimed; the default), `waiting`, `claimed` or `resolved`", no_control(0))
            .query("limit", "Page size, 1 to 500 (default 50)", json!({ "type": "integer", "minimum": 1, "maximum": 500 })),
    );
    r.add("GET", "/v1/handoffs/{id}", crate::handoffs::get, Doc::user("agent-desk", "One handoff with the transcript up to it and its notes").ok(obj()));
    r.add(
        "POST",
        "/v1/handoffs/{id}/claim",
        crate::handoffs::claim,
        Doc::user("agent-desk", "Take a waiting handoff (agent, operator or admin)").ok(obj()).err_says(409, "Already claimed or resolved (`invalid_state`)"),
    );
    r.add(
        "POST",
        "/v1/handoffs/{id}/takeover",
        crate::handoffs::takeover,
        Doc::user("agent-desk", "Join a handed-off call that is still live, from the browser: a one-use token and the engine's WebRTC URL to offer SDP to (agent, operator or admin)")
            .ok(obj())
            .err_says(409, "The call is over (`not_live`), its host is gone (`host_gone`) or someone else has the handoff (`invalid_state`)"),
    );
    r.add("POST", "/v1/handoffs/{id}/notes", crate::handoffs::note, Doc::user("agent-desk", "Add a note to a handoff").body(note).ok(obj()).err(409));
    r.add(
        "POST",
        "/v1/handoffs/{id}/resolve",
        crate::handoffs::resolve,
        Doc::user("agent-desk", "Close a handoff: called back, ticket or no action").body(resolve).ok(obj()).err_says(409, "Already resolved (`invalid_state`)"),
    );
    r.add(
        "GET",
        "/v1/analytics",
        crate::analytics::get,
        Doc::user("calls", "Calls and outcomes per day, answer rate, answer-to-first-audio and turn latency percentiles, cost by provider per day")
            .ok(obj())
            .query("days", "Days back from today (UTC), today included: 1 to 90 (default 14)", json!({ "type": "integer", "minimum": 1, "maximum": 90 })),
    );
    r.add(
        "GET",
        "/v1/overview",
        crate::overview::get,
        Doc::user("calls", "What operators look at first: calls live now, today's calls and answer rate, running campaigns with progress, recent failures; for admins the fleet's capacity").ok(obj()),
    );

    named::<Settings>(&mut r.schemas);
    r.add("GET", "/v1/settings", settings::get, Doc::user("settings", "Organization settings (secrets as names only)").ok(doc("SettingsView")));
    r.add(
        "PATCH",
        "/v1/settings",
        settings::update,
        Doc::user("settings", "Change settings (admin; JSON merge patch)").body(doc("SettingsPatch")).ok(doc("SettingsView")),
    );

    let heartbeat = named::<Heartbeat>(&mut r.schemas);
    let answer = named::<HeartbeatAnswer>(&mut r.schemas);
    let result = named::<CallResult>(&mut r.schemas);
    let reserved = named::<Reserved>(&mut r.schemas);
    named::<Bot>(&mut r.schemas);
    let handoff = named::<crate::handoffs::NewHandoff>(&mut r.schemas);
    r.add(
        "POST",
        "/v1/runtime/handoffs",
        crate::handoffs::post,
        Doc::fleet("runtime", "A bot's handoff to people, from an engine's handoff outbox: stored once per handoff id (a repeat answers 200), a `handoff.created` webhook queued")
            .body(handoff)
            .created(obj())
            .answer(200, "Already stored (`duplicate`: true)", obj())
            .err(422),
    );
    r.add("GET", "/v1/runtime/bots/{id}", fleet::runtime_bot, Doc::fleet("runtime", "A bot's runtime config, secrets included").ok(doc("RuntimeBot")));
    r.add(
        "GET",
        "/v1/runtime/phone-numbers/{number}",
        fleet::runtime_number,
        Doc::fleet("runtime", "Where a SIP call to this number goes: its bot, organization and trunk credentials (secrets included)").ok(doc("RuntimePhoneNumber")),
    );
    let search = named::<Search>(&mut r.schemas);
    let matches = named::<Matches>(&mut r.schemas);
    r.add(
        "POST",
        "/v1/runtime/knowledge/search",
        knowledge::search,
        Doc::fleet("runtime", "The bot's knowledge chunks that best match a query").body(search).ok(matches).err(404),
    );
    r.add(
        "POST",
        "/v1/runtime/results",
        calls::post_result,
        Doc::fleet("runtime", "Store a finished call (idempotent by call_id)")
            .body(result)
            .created(doc("ResultStored"))
            .answer(200, "Stored before: nothing changed", doc("ResultStored")),
    );
    r.add("POST", "/v1/runtime/hosts/heartbeat", fleet::heartbeat, Doc::fleet("runtime", "An engine host's capacity report").body(heartbeat).ok(answer));
    r.add("GET", "/v1/fleet/hosts", fleet::hosts, Doc::fleet("fleet", "Live engine hosts (fleet token or admin)").ok(doc("Hosts")));
    r.add(
        "POST",
        "/v1/fleet/reserve",
        fleet::reserve,
        Doc::fleet("fleet", "Reserve a slot on the host with the most free capacity (dialler token)")
            .created(reserved)
            .err_says(503, "No live engine host has a free slot (`no_capacity`), or the API is busy (`overloaded`, `timeout`); retry after `Retry-After` seconds"),
    );

    let router = std::mem::take(&mut r.router);
    // Timeouts, the in-flight limit and metrics are added around this by `server::app`.
    r.router = router.fallback(not_found).layer(DefaultBodyLimit::max(1 << 20));
    r
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route; see /v1/openapi.json")
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    let db = sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&s.db).await.is_ok();
    let status = if db { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "status": if db { "ok" } else { "degraded" }, "database": db, "version": env!("CARGO_PKG_VERSION") })))
}

async fn openapi_json() -> axum::Json<Value> {
    axum::Json(crate::openapi())
}
