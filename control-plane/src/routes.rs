//! Every route of the API in one table. The same table builds the axum router and the
//! OpenAPI 3.1 document, so a route cannot exist without being documented.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, on};
use serde_json::{Value, json};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::Caller;
use crate::calls::{self, CallResult};
use crate::campaigns::{self, NewContact, NewDnc};
use crate::error::ApiError;
use crate::fleet::{self, Heartbeat, HeartbeatAnswer, Reserved};
use crate::knowledge::{self, Matches, NewDocument, Search};
use crate::model::{AiAssistant, Bot, Campaign, LoadBalancer, Settings, Webhook};
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

/// One documented operation.
pub(crate) struct Op {
    pub(crate) method: &'static str,
    pub(crate) path: String,
    pub(crate) tag: &'static str,
    pub(crate) summary: String,
    pub(crate) auth: Auth,
    request: Option<(&'static str, RefOr<Schema>)>,
    responses: Vec<(u16, &'static str, Option<RefOr<Schema>>)>,
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

/// A named schema: registered once in the components, referenced everywhere.
fn named<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    let name = T::name().to_string();
    if !schemas.iter().any(|(n, _)| *n == name) {
        T::schemas(schemas);
        schemas.push((name.clone(), T::schema()));
    }
    RefOr::Ref(Ref::from_schema_name(name))
}

fn page_of(item: RefOr<Schema>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .property("items", ArrayBuilder::new().items(item))
        .required("items")
        .property("next_cursor", ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null])))
        .into()
}

fn any_object() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Object).into()
}

impl Routes {
    fn new() -> Routes {
        Routes { router: Router::new(), ops: Vec::new(), schemas: Vec::new() }
    }

    /// Adds `handler` at `method path` with its documentation.
    fn add<H, T>(&mut self, method: &'static str, path: &str, handler: H, doc: Doc) -> &mut Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let router = std::mem::take(&mut self.router);
        self.router = router.route(path, on(filter(method), handler));
        self.ops.push(Op {
            method,
            path: path.to_string(),
            tag: doc.tag,
            summary: doc.summary,
            auth: doc.auth,
            request: doc.request,
            responses: doc.responses,
        });
        self
    }

    /// The five routes of a document resource under `base`.
    fn documents<D: Document>(&mut self, base: &str, tag: &'static str, plural: &str) {
        let one = named::<D>(&mut self.schemas);
        let item = format!("{base}/{{id}}");
        let what = D::WHAT;
        let d = |s: &str| Doc::user(tag, s);
        self.add("GET", base, resources::list::<D>, d(&format!("List {plural}, newest first")).ok(page_of(one.clone())));
        self.add("POST", base, resources::create::<D>, d(&format!("Create a {what}")).body(one.clone()).created(one.clone()));
        self.add("GET", &item, resources::get::<D>, d(&format!("Get a {what}")).ok(one.clone()));
        self.add(
            "PATCH",
            &item,
            resources::update::<D>,
            d(&format!("Change a {what} (JSON merge patch; secrets kept unless replaced)")).body(any_object()).ok(one),
        );
        self.add("DELETE", &item, resources::delete::<D>, d(&format!("Delete a {what}")).no_content());
    }

    /// The OpenAPI 3.1 document.
    pub(crate) fn openapi(&self) -> Value {
        let mut paths = PathsBuilder::new();
        let mut by_path: Vec<(String, Vec<&Op>)> = Vec::new();
        for op in &self.ops {
            match by_path.iter_mut().find(|(p, _)| *p == op.path) {
                Some((_, ops)) => ops.push(op),
                None => by_path.push((op.path.clone(), vec![op])),
            }
        }
        for (path, ops) in by_path {
            let mut item: Option<PathItem> = None;
            for op in ops {
                let mut b = OperationBuilder::new()
                    .tag(op.tag)
                    .summary(Some(op.summary.clone()))
                    .operation_id(Some(format!("{} {}", op.method, op.path)));
                for name in op.path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')) {
                    b = b.parameter(
                        ParameterBuilder::new()
                            .name(name)
                            .parameter_in(ParameterIn::Path)
                            .required(Required::True)
                            .schema(Some(String::schema())),
                    );
                }
                if let Some((media, schema)) = &op.request {
                    b = b.request_body(Some(
                        RequestBodyBuilder::new().content(*media, ContentBuilder::new().schema(Some(schema.clone())).build()).required(Some(Required::True)).build(),
                    ));
                }
                for (status, description, schema) in &op.responses {
                    let mut r = ResponseBuilder::new().description(*description);
                    if let Some(schema) = schema {
                        r = r.content("application/json", ContentBuilder::new().schema(Some(schema.clone())).build());
                    }
                    b = b.response(status.to_string(), r.build());
                }
                if op.auth != Auth::Public {
                    b = b.response("4XX", RefOr::Ref(Ref::from_response_name("Error")));
                    let scheme = if op.auth == Auth::Fleet { "fleet_token" } else { "bearer" };
                    b = b.security(SecurityRequirement::new::<_, _, &str>(scheme, []));
                }
                let method = match op.method {
                    "POST" => HttpMethod::Post,
                    "PATCH" => HttpMethod::Patch,
                    "PUT" => HttpMethod::Put,
                    "DELETE" => HttpMethod::Delete,
                    _ => HttpMethod::Get,
                };
                let operation = b.build();
                item = Some(match item {
                    None => PathItem::new(method, operation),
                    Some(mut existing) => {
                        existing.merge_operations(PathItem::new(method, operation));
                        existing
                    }
                });
            }
            if let Some(item) = item {
                paths = paths.path(path, item);
            }
        }
        let error = ObjectBuilder::new()
            .property(
                "error",
                ObjectBuilder::new()
                    .property("code", String::schema())
                    .required("code")
                    .property("message", String::schema())
                    .required("message")
                    .property("field", String::schema()),
            )
            .required("error");
        let mut components = ComponentsBuilder::new()
            .schemas_from_iter(self.schemas.clone())
            .schema("Error", error)
            .response("Error", ResponseBuilder::new().description("`{\"error\":{\"code\",\"message\",\"field\"?}}`").content(
                "application/json",
                ContentBuilder::new().schema(Some(RefOr::Ref(Ref::from_schema_name("Error")))).build(),
            ))
            .security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components = components.security_scheme("fleet_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let doc = OpenApiBuilder::new()
            .info(
                InfoBuilder::new()
                    .title("CX Bridge API")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some("The control plane: organizations, bots, campaigns, call records and the fleet registry.")),
            )
            .paths(paths.build())
            .components(Some(components.build()))
            .build();
        serde_json::to_value(doc).unwrap_or(Value::Null)
    }
}

/// Documentation of one route.
pub(crate) struct Doc {
    tag: &'static str,
    summary: String,
    auth: Auth,
    request: Option<(&'static str, RefOr<Schema>)>,
    responses: Vec<(u16, &'static str, Option<RefOr<Schema>>)>,
}

impl Doc {
    fn new(tag: &'static str, summary: &str, auth: Auth) -> Doc {
        Doc { tag, summary: summary.to_string(), auth, request: None, responses: Vec::new() }
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
    fn body(mut self, schema: RefOr<Schema>) -> Doc {
        self.request = Some(("application/json", schema));
        self
    }
    fn csv(mut self) -> Doc {
        self.request = Some(("text/csv", String::schema()));
        self
    }
    fn ok(mut self, schema: RefOr<Schema>) -> Doc {
        self.responses.push((200, "OK", Some(schema)));
        self
    }
    fn created(mut self, schema: RefOr<Schema>) -> Doc {
        self.responses.push((201, "Created", Some(schema)));
        self
    }
    fn no_content(mut self) -> Doc {
        self.responses.push((204, "Done", None));
        self
    }
    fn text(mut self) -> Doc {
        self.responses.push((200, "Plain text", None));
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

    r.add("GET", "/health", health, Doc::public("service", "Liveness and database reachability").ok(obj()));
    r.add("GET", "/metrics", metrics::render, Doc::public("service", "Prometheus metrics").text());
    r.add("GET", "/v1/openapi.json", openapi_json, Doc::public("service", "This document").ok(obj()));

    let login = named::<Login>(&mut r.schemas);
    r.add("POST", "/v1/auth/login", users::login, Doc::public("auth", "Sign in; returns a session token").body(login).ok(obj()));
    r.add("POST", "/v1/auth/logout", users::logout, Doc::user("auth", "End this session").no_content());
    r.add("GET", "/v1/me", users::me, Doc::user("auth", "The caller, its role and organization").ok(obj()));

    let new_user = named::<NewUser>(&mut r.schemas);
    let user_patch = named::<UserPatch>(&mut r.schemas);
    r.add("GET", "/v1/users", users::list_users, Doc::user("users", "List the organization's users").ok(page_of(obj())));
    r.add("POST", "/v1/users", users::create_user, Doc::user("users", "Add a user (admin)").body(new_user).created(obj()));
    r.add("GET", "/v1/users/{id}", users::get_user, Doc::user("users", "Get a user").ok(obj()));
    r.add("PATCH", "/v1/users/{id}", users::update_user, Doc::user("users", "Change a user's name, role or password").body(user_patch).ok(obj()));
    r.add("DELETE", "/v1/users/{id}", users::delete_user, Doc::user("users", "Remove a user (admin)").no_content());

    let new_key = named::<NewApiKey>(&mut r.schemas);
    r.add("GET", "/v1/api-keys", users::list_keys, Doc::user("api-keys", "List API keys (values are never shown again)").ok(page_of(obj())));
    r.add("POST", "/v1/api-keys", users::create_key, Doc::user("api-keys", "Create an API key; the response shows it once").body(new_key).created(obj()));
    r.add("DELETE", "/v1/api-keys/{id}", users::delete_key, Doc::user("api-keys", "Revoke an API key").no_content());

    r.documents::<Bot>("/v1/bots", "bots", "bots");
    let new_document = named::<NewDocument>(&mut r.schemas);
    r.add("GET", "/v1/bots/{id}/knowledge", knowledge::list, Doc::user("knowledge", "The bot's knowledge documents, newest first").ok(page_of(obj())));
    r.add(
        "POST",
        "/v1/bots/{id}/knowledge",
        knowledge::add,
        Doc::user("knowledge", "Add a document to the bot's knowledge base (split into chunks for search)").body(new_document).created(obj()),
    );
    r.add("DELETE", "/v1/bots/{id}/knowledge/{doc_id}", knowledge::delete, Doc::user("knowledge", "Remove a knowledge document").no_content());
    r.documents::<AiAssistant>("/v1/ai-assistants", "routing", "AI assistants");
    r.documents::<LoadBalancer>("/v1/load-balancers", "routing", "load balancers");
    r.documents::<Webhook>("/v1/webhooks", "webhooks", "webhooks");
    r.add("GET", "/v1/webhooks/{id}/deliveries", webhooks::deliveries, Doc::user("webhooks", "The webhook's delivery log").ok(page_of(obj())));

    r.documents::<Campaign>("/v1/campaigns", "campaigns", "campaigns");
    let campaign = named::<Campaign>(&mut r.schemas);
    for action in ["start", "pause", "resume", "complete", "archive"] {
        let handler = move |State(s): State<AppState>, caller: Caller, Path(id): Path<String>| campaigns::transition(s, caller, id, action);
        r.add("POST", &format!("/v1/campaigns/{{id}}/{action}"), handler, Doc::user("campaigns", &format!("{action} the campaign")).ok(campaign.clone()));
    }
    let new_contact = named::<NewContact>(&mut r.schemas);
    r.add("GET", "/v1/campaigns/{id}/contacts", campaigns::list_contacts, Doc::user("contacts", "List the campaign's contacts").ok(page_of(obj())));
    r.add("POST", "/v1/campaigns/{id}/contacts", campaigns::add_contact, Doc::user("contacts", "Add a contact (merged with one of the same number)").body(new_contact).created(obj()));
    r.add(
        "POST",
        "/v1/campaigns/{id}/contacts/import",
        campaigns::import.layer(DefaultBodyLimit::max(32 << 20)),
        Doc::user("contacts", "Import contacts from CSV; reports rejected rows").csv().ok(obj()),
    );
    r.add("GET", "/v1/campaigns/{id}/contacts/{contact_id}", campaigns::get_contact, Doc::user("contacts", "Get a contact").ok(obj()));
    r.add("DELETE", "/v1/campaigns/{id}/contacts/{contact_id}", campaigns::delete_contact, Doc::user("contacts", "Remove a contact").no_content());

    let new_dnc = named::<NewDnc>(&mut r.schemas);
    r.add("GET", "/v1/dnc", campaigns::list_dnc, Doc::user("dnc", "The do-not-call list (filter: phone)").ok(page_of(obj())));
    r.add("POST", "/v1/dnc", campaigns::add_dnc, Doc::user("dnc", "Add a number to the do-not-call list").body(new_dnc).created(obj()));
    r.add("DELETE", "/v1/dnc/{id}", campaigns::delete_dnc, Doc::user("dnc", "Remove a number from the list").no_content());

    let direct = named::<crate::telephony::DirectCall>(&mut r.schemas);
    r.add("POST", "/v1/calls", crate::telephony::place_call, Doc::user("calls", "Place one outbound call from a bot through the organization's carrier").body(direct).created(obj()));
    r.add(
        "POST",
        "/v1/carriers/{org_id}/cdr",
        crate::telephony::carrier_webhook,
        Doc::public("carriers", "A carrier's call-end record (CDR) webhook; authenticated by the per-call token or the carrier's signature").body(obj()).ok(obj()),
    );
    r.add("GET", "/v1/campaigns/{id}/stats", crate::attempts::stats, Doc::user("campaigns", "The campaign's statistics: attempts by outcome, live calls, durations, answer-to-first-audio").ok(obj()));
    r.add("GET", "/v1/calls", calls::list, Doc::user("calls", "Call records, newest first (filters: since, until, campaign_id, bot_id, outcome, direction)").ok(page_of(obj())));
    r.add("GET", "/v1/calls/{id}", calls::get, Doc::user("calls", "One call record").ok(obj()));

    let settings_schema = named::<Settings>(&mut r.schemas);
    r.add("GET", "/v1/settings", settings::get, Doc::user("settings", "Organization settings (secrets as names only)").ok(settings_schema.clone()));
    r.add("PATCH", "/v1/settings", settings::update, Doc::user("settings", "Change settings (admin; JSON merge patch)").body(obj()).ok(settings_schema));

    let heartbeat = named::<Heartbeat>(&mut r.schemas);
    let answer = named::<HeartbeatAnswer>(&mut r.schemas);
    let result = named::<CallResult>(&mut r.schemas);
    let reserved = named::<Reserved>(&mut r.schemas);
    let bot = named::<Bot>(&mut r.schemas);
    r.add("GET", "/v1/runtime/bots/{id}", fleet::runtime_bot, Doc::fleet("runtime", "A bot's runtime config, secrets included").ok(bot));
    let search = named::<Search>(&mut r.schemas);
    let matches = named::<Matches>(&mut r.schemas);
    r.add("POST", "/v1/runtime/knowledge/search", knowledge::search, Doc::fleet("runtime", "The bot's knowledge chunks that best match a query").body(search).ok(matches));
    r.add("POST", "/v1/runtime/results", calls::post_result, Doc::fleet("runtime", "Store a finished call (idempotent by call_id)").body(result).created(obj()));
    r.add("POST", "/v1/runtime/hosts/heartbeat", fleet::heartbeat, Doc::fleet("runtime", "An engine host's capacity report").body(heartbeat).ok(answer));
    r.add("GET", "/v1/fleet/hosts", fleet::hosts, Doc::fleet("fleet", "Live engine hosts (fleet token or admin)").ok(obj()));
    r.add("POST", "/v1/fleet/reserve", fleet::reserve, Doc::fleet("fleet", "Reserve a slot on the host with the most free capacity").created(reserved));

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
