//! Routing and placing one call, shared by campaign attempts and direct calls: pick the
//! destination (an assistant, a balancer's member, a CX Bridge bot on the engine host with the
//! most free capacity, or hang-up), write the CXML, and hand the call to the carrier.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cxb_contract::call_token::{CallClaims, Direction};
use cxb_contract::ids::{CampaignId, ContactId};
use cxb_control_plane::attempts::{self, CallEnd};
use cxb_control_plane::call_tokens;
use cxb_control_plane::error::ApiError;
use cxb_control_plane::fleet::{SlotHold, release, reserve_slot};
use cxb_control_plane::model::{AiAssistant, AssistantKind, LoadBalancer, RoutingType, Strategy as ModelStrategy};
use serde_json::{Value, json};

use crate::balance::{self, Member, Strategy};
use crate::carrier::{Answer, CallRequest, Carrier, CarrierError};
use crate::cxml::{self, Destination, Placeholders, TemplateError};
use crate::run::Shared;

/// How long a WebSocket assistant's reachability is remembered.
const PROBE_KEEP: Duration = Duration::from_secs(10);
/// At most this many `<Parameter>`s ride on a stream.
const MAX_PARAMETERS: usize = 32;

/// Who is called and what the far end learns about it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    pub org: String,
    /// The call's id (the `{session}` placeholder).
    pub session: String,
    pub from: String,
    pub to: String,
    pub campaign_id: Option<String>,
    pub contact_id: Option<String>,
    /// Extra stream parameters: the contact's name and custom fields, a direct call's metadata.
    pub metadata: Vec<(String, String)>,
    /// The campaign's answering-machine action, passed to the engine.
    pub amd: Option<String>,
    /// How long after routing the carrier gets the call (the campaign's pacing).
    pub wait: Duration,
}

/// Where a call goes.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    pub destination: Destination,
    pub assistant_id: Option<String>,
    pub bot_id: Option<String>,
    /// An engine runs the call and will report a result.
    pub expects_result: bool,
    /// Kept in the call record: destination type, balancer, members tried.
    pub notes: Value,
    /// The engine slot reserved for the call (CX Bridge bots on the fleet).
    pub slot: Option<SlotHold>,
}

/// Why a call cannot be routed now.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("the routing target {0} no longer exists")]
    Missing(String),
    #[error("no engine host has a free slot")]
    NoCapacity,
    #[error("every assistant of the balancer is down")]
    AllDown,
    #[error("the assistant's URL template: {0}")]
    Template(#[from] TemplateError),
    #[error("database: {0}")]
    Db(String),
}

impl From<ApiError> for RouteError {
    fn from(e: ApiError) -> RouteError {
        RouteError::Db(e.to_string())
    }
}

impl From<sqlx::Error> for RouteError {
    fn from(e: sqlx::Error) -> RouteError {
        RouteError::Db(e.to_string())
    }
}

fn strategy(s: ModelStrategy) -> Strategy {
    match s {
        ModelStrategy::RoundRobin => Strategy::RoundRobin,
        ModelStrategy::LeastConnections => Strategy::LeastConnections,
        ModelStrategy::Random => Strategy::Random,
        ModelStrategy::Weighted => Strategy::Weighted,
    }
}

impl Shared {
    async fn document<T: serde::de::DeserializeOwned>(&self, table: &str, org: &str, id: &str) -> Result<T, RouteError> {
        let sql = format!("SELECT body FROM {table} WHERE id = $1 AND org_id = $2");
        let body: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).bind(org).fetch_optional(&self.db).await?;
        let body = body.ok_or_else(|| RouteError::Missing(id.to_string()))?;
        let mut doc: Value = serde_json::from_str(&body).map_err(|e| RouteError::Db(format!("stored {table} {id}: {e}")))?;
        self.carriers.open_secrets(&mut doc).map_err(|e| RouteError::Db(format!("stored {table} {id}: {e}")))?;
        serde_json::from_value(doc).map_err(|e| RouteError::Db(format!("stored {table} {id}: {e}")))
    }

    /// Routes a campaign's answered call by its routing type and target.
    pub(crate) async fn route(&self, kind: RoutingType, target_id: Option<&str>, t: &Target) -> Result<Routed, RouteError> {
        match (kind, target_id) {
            (RoutingType::Hangup, _) => Ok(Routed {
                destination: Destination::Hangup,
                assistant_id: None,
                bot_id: None,
                expects_result: false,
                notes: json!({ "type": "hangup" }),
                slot: None,
            }),
            (RoutingType::AiAssistant, Some(id)) => {
                let a: AiAssistant = self.document("ai_assistants", &t.org, id).await?;
                if a.down {
                    return Err(RouteError::AllDown);
                }
                let mut routed = self.to_assistant(id, &a, t).await?;
                routed.notes = json!({ "type": "ai_assistant", "assistant_id": id });
                Ok(routed)
            }
            (RoutingType::AiLoadBalancer, Some(id)) => self.through_balancer(id, t).await,
            (_, None) => Err(RouteError::Missing("routing.target_id".into())),
        }
    }

    async fn through_balancer(&self, id: &str, t: &Target) -> Result<Routed, RouteError> {
        let lb: LoadBalancer = self.document("load_balancers", &t.org, id).await?;
        let mut assistants = Vec::with_capacity(lb.members.len());
        for m in &lb.members {
            // A member deleted since the balancer was written is down, not an error.
            assistants.push(self.document::<AiAssistant>("ai_assistants", &t.org, &m.assistant_id).await.ok());
        }
        let now = self.now();
        let mut members = Vec::with_capacity(lb.members.len());
        for (m, a) in lb.members.iter().zip(&assistants) {
            let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_leases WHERE assistant_id = $1 AND expires_at > $2")
                .bind(&m.assistant_id)
                .bind(now)
                .fetch_one(&self.db)
                .await?;
            let down = match a {
                None => true,
                Some(a) => a.down || !self.reachable(a).await,
            };
            members.push(Member { weight: m.weight, live: live.max(0) as u64, down });
        }
        let choice = {
            let mut states = self.balancers.lock().map_err(|_| RouteError::Db("balancer state poisoned".into()))?;
            let state = states.entry(id.to_string()).or_default();
            balance::choose(strategy(lb.strategy), &members, state, |n| rand::random_range(0..n.max(1)))
        };
        let tried: Vec<&str> = choice.tried.iter().map(|&i| lb.members[i].assistant_id.as_str()).collect();
        let Some(picked) = choice.picked else { return Err(RouteError::AllDown) };
        let (member, Some(a)) = (&lb.members[picked], &assistants[picked]) else { return Err(RouteError::AllDown) };
        let mut routed = self.to_assistant(&member.assistant_id, a, t).await?;
        routed.notes = json!({ "type": "ai_load_balancer", "load_balancer_id": id, "assistant_id": member.assistant_id, "tried": tried });
        Ok(routed)
    }

    /// Whether an assistant can take a call: CX Bridge bots need a free engine slot somewhere;
    /// external WebSocket assistants must accept a TCP connection (remembered 10 s).
    async fn reachable(&self, a: &AiAssistant) -> bool {
        match (a.kind, &a.url_template, &a.bot_id) {
            (AssistantKind::Websocket, None, Some(_)) => {
                let cutoff = self.now() - self.config.host_ttl.as_millis() as i64;
                let free: Result<i64, _> = sqlx::query_scalar("SELECT COUNT(*) FROM hosts WHERE last_seen >= $1 AND slots_free - pending > 0")
                    .bind(cutoff)
                    .fetch_one(&self.db)
                    .await;
                free.is_ok_and(|n| n > 0)
            }
            (AssistantKind::Websocket, Some(template), _) => match host_port(template) {
                Some(addr) => self.probe(&addr).await,
                None => false,
            },
            _ => true,
        }
    }

    async fn probe(&self, addr: &str) -> bool {
        if let Ok(probes) = self.probes.lock()
            && let Some((at, up)) = probes.get(addr)
            && at.elapsed() < PROBE_KEEP
        {
            return *up;
        }
        // The probe is a request made for the tenant: only to addresses the egress policy allows.
        let probe = async {
            let addrs = tokio::net::lookup_host(addr).await.ok()?;
            let allowed: Vec<std::net::SocketAddr> = addrs.filter(|a| self.carriers.egress_allows(a.ip())).collect();
            for a in allowed {
                if tokio::net::TcpStream::connect(a).await.is_ok() {
                    return Some(());
                }
            }
            None
        };
        let up = matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Some(())));
        if let Ok(mut probes) = self.probes.lock() {
            probes.insert(addr.to_string(), (Instant::now(), up));
        }
        up
    }

    async fn to_assistant(&self, id: &str, a: &AiAssistant, t: &Target) -> Result<Routed, RouteError> {
        let mut slot = None;
        let (destination, bot_id, expects_result) = match a.kind {
            AssistantKind::Sip => {
                let d = Destination::Sip { provider: a.sip_provider.clone().unwrap_or_default(), uri: a.sip_uri.clone().unwrap_or_default() };
                (d, None, false)
            }
            AssistantKind::Websocket => match &a.url_template {
                Some(template) => {
                    let values = Placeholders {
                        session: &t.session,
                        from: &t.from,
                        to: &t.to,
                        bot_id: a.bot_id.as_deref().unwrap_or_default(),
                        auth_token: a.secrets.get("auth_token").map(String::as_str).unwrap_or_default(),
                    };
                    let url = cxml::fill_template(template, &values)?;
                    (Destination::Stream { url, parameters: parameters(t) }, a.bot_id.clone(), false)
                }
                None => {
                    let bot = a.bot_id.clone().unwrap_or_default();
                    // The engine's built-in bots report no result; AI bots do.
                    let ai: Option<String> = sqlx::query_scalar("SELECT id FROM bots WHERE id = $1 AND org_id = $2").bind(&bot).bind(&t.org).fetch_optional(&self.db).await?;
                    let (destination, hold) = self.engine_stream(&bot, t).await?;
                    slot = Some(hold);
                    (destination, Some(bot), ai.is_some())
                }
            },
        };
        Ok(Routed { destination, assistant_id: Some(id.to_string()), bot_id, expects_result, notes: Value::Null, slot })
    }

    /// A stream to a CX Bridge bot on the engine host with the most free capacity, with a slot
    /// reserved there for this call. The URL carries a call token signed for that bot and host:
    /// the engine admits the call with it and takes the call's ids and the reservation from it.
    /// The token expires once the callee can no longer answer (the pacing wait and the ring
    /// timeout) plus a minute; the reservation is bounded by the same wait and ring timeout
    /// plus [`crate::DiallerConfig::reservation_margin`], and given back when the call ends
    /// without reaching the engine (`attempts::record_end`).
    pub(crate) async fn engine_stream(&self, bot_id: &str, t: &Target) -> Result<(Destination, SlotHold), RouteError> {
        let now = self.now();
        let ttl = (t.wait + self.config.ring_timeout + self.config.reservation_margin).as_millis() as i64;
        let r = reserve_slot(&self.db, now, self.config.host_ttl.as_millis() as i64, ttl).await?;
        let r = r.ok_or(RouteError::NoCapacity)?;
        let claims = CallClaims {
            bot_id: bot_id.into(),
            call_id: t.session.as_str().into(),
            org_id: t.org.as_str().into(),
            campaign_id: t.campaign_id.as_deref().map(CampaignId::from),
            contact_id: t.contact_id.as_deref().map(ContactId::from),
            exp: (now.max(0) as u64 / 1000) + (t.wait + self.config.ring_timeout).as_secs() + 60,
            host_id: Some(r.host_id.clone()),
            reservation: Some(r.token.clone()),
            direction: Direction::Outbound,
            from: Some(t.from.as_str().into()),
            to: Some(t.to.as_str().into()),
            amd: t.amd.clone(),
            ..CallClaims::default()
        };
        let hold = SlotHold { host_id: r.host_id, token: r.token, until: now + ttl };
        let token = match call_tokens::issue(&self.db, self.carriers.secrets(), now, claims).await {
            Ok(token) => token,
            Err(e) => {
                let _ = release(&self.db, &hold, now).await;
                return Err(e.into());
            }
        };
        let bot: String = percent_encoding::utf8_percent_encode(bot_id, cxml::COMPONENT).collect();
        let url = format!("{}/ws/{bot}?token={token}", r.address.trim_end_matches('/'));
        Ok((Destination::Stream { url, parameters: parameters(t) }, hold))
    }

    /// Writes nothing: hands a call already recorded to its carrier, in the background. A
    /// refusal ends the call's record as failed; an unreachable carrier ends it with reason
    /// `carrier_unavailable`. Either way its engine slot is given back (`attempts::record_end`).
    pub(crate) fn dial(self: &Arc<Self>, carrier: Arc<dyn Carrier>, request: CallRequest) {
        let shared = self.clone();
        tokio::spawn(async move {
            let session = request.session.clone();
            let placed = carrier.create_call(&request).await;
            crate::metrics::carrier_request(carrier.name(), "create_call", &placed);
            match placed {
                Ok(placed) => {
                    if let Err(e) = attempts::set_carrier_call_id(&shared.db, &session, &placed.carrier_call_id).await {
                        tracing::warn!(call = %session, "noting the carrier's id: {e}");
                    }
                }
                Err(e) => {
                    let reason = match &e {
                        CarrierError::Rejected { status, .. } if *status == 404 => "invalid_number".to_string(),
                        CarrierError::Rejected { .. } => "carrier_rejected".to_string(),
                        CarrierError::Unavailable(_) => "carrier_unavailable".to_string(),
                        CarrierError::Config(_) => "carrier_settings".to_string(),
                    };
                    tracing::warn!(call = %session, "{e}");
                    let now = shared.now();
                    let end = CallEnd { outcome: "failed", reason: Some(reason), answered_at: None, ended_at: now };
                    if let Err(e) = attempts::record_end(&shared.db, &session, &end, now).await {
                        tracing::warn!(call = %session, "recording the failure: {e}");
                    }
                }
            }
        });
    }

    /// The carrier request for a call: the CXML of its destination and the per-call CDR URL.
    pub(crate) fn request(&self, t: &Target, routed: &Routed, webhook_base: Option<&str>, cdr_token: &str) -> CallRequest {
        let base = webhook_base.unwrap_or(&self.config.public_url).trim_end_matches('/');
        CallRequest {
            session: t.session.clone(),
            to: t.to.clone(),
            from: t.from.clone(),
            answer: Answer::Cxml(cxml::document(&routed.destination)),
            ring_timeout: self.config.ring_timeout,
            cdr_url: format!("{base}/v1/carriers/{}/cdr?token={cdr_token}", t.org),
            engine: match (&routed.destination, &routed.slot) {
                (Destination::Stream { url, .. }, Some(_)) => Some(url.clone()),
                _ => None,
            },
        }
    }
}

/// The stream parameters the far end receives: the call's ids, direction and numbers, the
/// answering-machine action, then metadata.
fn parameters(t: &Target) -> Vec<(String, String)> {
    let mut p = vec![
        ("call_id".to_string(), t.session.clone()),
        ("direction".into(), "outbound".into()),
        ("from".into(), t.from.clone()),
        ("to".into(), t.to.clone()),
    ];
    for (name, value) in [("campaign_id", &t.campaign_id), ("contact_id", &t.contact_id), ("amd", &t.amd)] {
        if let Some(v) = value {
            p.push((name.to_string(), v.clone()));
        }
    }
    for (name, value) in &t.metadata {
        if p.len() >= MAX_PARAMETERS {
            break;
        }
        if !p.iter().any(|(n, _)| n == name) {
            p.push((name.clone(), value.clone()));
        }
    }
    p
}

/// `host:port` of a `ws://` or `wss://` URL (template placeholders may sit in the path only).
fn host_port(url: &str) -> Option<String> {
    let (rest, port) = match url.split_once("://")? {
        ("wss", rest) => (rest, 443),
        ("ws", rest) => (rest, 80),
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority.is_empty() || authority.contains('{') {
        return None;
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !authority.ends_with(']');
    Some(if has_port { authority.to_string() } else { format!("{authority}:{port}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_from_stream_urls() {
        assert_eq!(host_port("wss://ai.example.com/stream?s={session}").as_deref(), Some("ai.example.com:443"));
        assert_eq!(host_port("ws://127.0.0.1:9000/x").as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(host_port("ws://[::1]/x").as_deref(), Some("[::1]:80"));
        assert_eq!(host_port("ws://u:p@h.example:81").as_deref(), Some("h.example:81"));
        assert_eq!(host_port("https://h.example/"), None);
        assert_eq!(host_port("wss://{session}.example/"), None);
    }

    #[test]
    fn parameters_carry_ids_first_and_metadata_bounded() {
        let t = Target {
            session: "cl_1".into(),
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            campaign_id: Some("cmp_1".into()),
            contact_id: Some("ct_1".into()),
            amd: Some("hangup".into()),
            metadata: (0..100).map(|i| (format!("f{i}"), i.to_string())).chain([("call_id".to_string(), "spoof".to_string())]).collect(),
            ..Target::default()
        };
        let p = parameters(&t);
        assert_eq!(p.len(), MAX_PARAMETERS);
        assert_eq!(p[0], ("call_id".to_string(), "cl_1".to_string()));
        assert_eq!(p.iter().filter(|(n, _)| n == "call_id").count(), 1);
        assert!(p.contains(&("amd".to_string(), "hangup".to_string())));
    }
}
