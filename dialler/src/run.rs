//! The dialler process: it heartbeats into the database, leases its fair share of the active
//! campaigns (so several processes split them, and a dead one's campaigns are taken over once
//! their leases lapse), and runs one task per leased campaign.
//!
//! A campaign task, while it holds the lease: reads the campaign, and if it is ACTIVE and inside
//! its calling window, takes due contacts one at a time: contacts outside their own local
//! window wait, numbers on the do-not-call list are closed as `dnc`, the rest are paced (calls
//! at least 1/CPS apart) and claimed in one transaction that also checks the lease is still
//! held, the campaign still ACTIVE and fewer than CAC live-call leases exist, and writes the
//! call record and its lease. Then the carrier gets the call. The task also sweeps its calls
//! (see [`Shared::sweep`]): renews the leases of live calls while the carrier says they live or
//! cannot be asked (an outage, up to a grace), closes calls the carrier says ended without a
//! call-end record once their lease runs out, decides answered calls whose engine result is
//! overdue or whose engine host died, and completes the campaign when no contact has an attempt
//! left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cxb_control_plane::attempts::{self, CallEnd, NewCall, NoResult};
use cxb_control_plane::clock::{Clock, SystemClock};
use cxb_control_plane::db::new_id;
use cxb_control_plane::fleet;
use cxb_control_plane::model::{Campaign, MachineAction};
use rand::RngCore;
use serde_json::Value;
use sqlx::{AnyPool, Row};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::balance;
use crate::carrier::CallState;
use crate::carriers::Carriers;
use crate::place::{RouteError, Target};
use crate::schedule;

/// How a dialler process runs.
#[derive(Debug, Clone)]
pub struct DiallerConfig {
    /// This process's id among the diallers (made when empty).
    pub id: String,
    /// The base URL carriers post call-end records to (`…/v1/carriers/{org}/cdr`), when an
    /// organization's settings name none: the API's public address.
    pub public_url: String,
    /// How often a campaign task looks for work.
    pub tick: Duration,
    pub campaign_lease_ttl: Duration,
    /// A live call's lease; renewed while the carrier says the call lives or cannot be asked.
    pub call_lease_ttl: Duration,
    /// While the carrier cannot be asked about a live call (its API fails), the call keeps its
    /// lease (it may still be ringing or talking; its contact is not dialled again) for this
    /// long from the first failed question; then it is closed as failed
    /// (`carrier_unreachable`) and its contact retried by the campaign's policy.
    pub carrier_outage_grace: Duration,
    /// Diallers not seen for this long no longer count when campaigns are shared out.
    pub node_ttl: Duration,
    /// How long an answered call's engine result is awaited after its call-end record (unless
    /// its engine host is seen dead first).
    pub result_grace: Duration,
    /// Ringing longer than this ends as no-answer.
    pub ring_timeout: Duration,
    /// Engine hosts whose last heartbeat is older do not take calls, and the results of calls
    /// they ran are no longer awaited.
    pub host_ttl: Duration,
    /// An engine slot reserved for a call is held for the pacing wait before the carrier
    /// request, the ring timeout, and this much more (the carrier's request, the answer and the
    /// stream's connection); it is given back as soon as the call ends without reaching it.
    pub reservation_margin: Duration,
    pub clock: Arc<dyn Clock>,
}

impl DiallerConfig {
    pub fn new(public_url: impl Into<String>) -> DiallerConfig {
        DiallerConfig {
            id: String::new(),
            public_url: public_url.into(),
            tick: Duration::from_millis(200),
            campaign_lease_ttl: Duration::from_secs(15),
            call_lease_ttl: Duration::from_secs(60),
            carrier_outage_grace: Duration::from_secs(600),
            node_ttl: Duration::from_secs(10),
            result_grace: Duration::from_secs(60),
            ring_timeout: Duration::from_secs(30),
            host_ttl: Duration::from_secs(10),
            reservation_margin: Duration::from_secs(15),
            clock: Arc::new(SystemClock),
        }
    }
}

/// What the process's tasks share.
#[derive(Debug)]
pub struct Shared {
    pub(crate) db: AnyPool,
    pub(crate) carriers: Carriers,
    pub(crate) config: DiallerConfig,
    pub(crate) balancers: Mutex<HashMap<String, balance::State>>,
    pub(crate) probes: Mutex<HashMap<String, (std::time::Instant, bool)>>,
}

impl Shared {
    pub fn new(db: AnyPool, carriers: Carriers, mut config: DiallerConfig) -> Arc<Shared> {
        if config.id.is_empty() {
            config.id = format!("dlr_{:016x}", rand::rng().next_u64());
        }
        Arc::new(Shared { db, carriers, config, balancers: Mutex::default(), probes: Mutex::default() })
    }

    pub(crate) fn now(&self) -> i64 {
        self.config.clock.now_ms()
    }

    fn ms(d: Duration) -> i64 {
        d.as_millis() as i64
    }
}

/// A running dialler process; dropping it stops its tasks.
#[derive(Debug)]
pub struct Dialler {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    node: Option<JoinHandle<()>>,
}

impl Dialler {
    /// Starts the node loop (heartbeat, campaign leases, direct calls' leases).
    pub fn start(shared: Arc<Shared>) -> Dialler {
        let (stop, stopped) = watch::channel(false);
        let node = tokio::spawn(node_loop(shared.clone(), stopped));
        Dialler { shared, stop, node: Some(node) }
    }

    pub fn id(&self) -> &str {
        &self.shared.config.id
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops leasing and dialling and gives this process's campaign leases back.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(node) = self.node.take() {
            let _ = node.await;
        }
    }
}

impl Drop for Dialler {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn node_loop(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    let every = s.config.tick.max(Duration::from_millis(50)) * 5;
    loop {
        tasks.retain(|_, t| !t.is_finished());
        if let Err(e) = share_out(&s, &mut tasks, &stopped).await {
            tracing::warn!("leasing campaigns: {e}");
        }
        if let Err(e) = s.sweep(None).await {
            tracing::warn!("direct calls: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => break,
        }
    }
    for (_, t) in tasks.drain() {
        let _ = t.await;
    }
    let _ = sqlx::query("DELETE FROM campaign_leases WHERE holder = $1").bind(&s.config.id).execute(&s.db).await;
    let _ = sqlx::query("DELETE FROM diallers WHERE id = $1").bind(&s.config.id).execute(&s.db).await;
}

/// Heartbeats, then takes campaign leases up to this process's fair share (the campaigns that
/// want a dialler over the live diallers, rounded up) and gives back any above it.
async fn share_out(s: &Arc<Shared>, tasks: &mut HashMap<String, JoinHandle<()>>, stopped: &watch::Receiver<bool>) -> Result<(), sqlx::Error> {
    let now = s.now();
    let me = &s.config.id;
    sqlx::query("INSERT INTO diallers (id, started_at, last_seen) VALUES ($1, $2, $2) ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen")
        .bind(me)
        .bind(now)
        .execute(&s.db)
        .await?;
    let nodes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM diallers WHERE last_seen >= $1").bind(now - Shared::ms(s.config.node_ttl)).fetch_one(&s.db).await?;
    let wanted: Vec<String> = sqlx::query_scalar("SELECT id FROM campaigns WHERE state IN ('ACTIVE', 'PAUSED') ORDER BY id").fetch_all(&s.db).await?;
    let fair = (wanted.len() as i64 + nodes.max(1) - 1) / nodes.max(1);
    let mine: Vec<String> = sqlx::query_scalar("SELECT campaign_id FROM campaign_leases WHERE holder = $1 AND expires_at > $2 ORDER BY campaign_id")
        .bind(me)
        .bind(now)
        .fetch_all(&s.db)
        .await?;
    let mut held = mine.len() as i64;
    // Above the fair share (another dialler joined): give back the surplus.
    for extra in mine.iter().skip(fair as usize) {
        if let Some(t) = tasks.remove(extra) {
            t.abort();
        }
        sqlx::query("DELETE FROM campaign_leases WHERE campaign_id = $1 AND holder = $2").bind(extra).bind(me).execute(&s.db).await?;
        held -= 1;
    }
    for id in &wanted {
        if held >= fair {
            break;
        }
        if tasks.contains_key(id) {
            continue;
        }
        let took = sqlx::query(
            "INSERT INTO campaign_leases (campaign_id, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (campaign_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE campaign_leases.expires_at <= $4 OR campaign_leases.holder = excluded.holder",
        )
        .bind(id)
        .bind(me)
        .bind(now + Shared::ms(s.config.campaign_lease_ttl))
        .bind(now)
        .execute(&s.db)
        .await?;
        if took.rows_affected() > 0 {
            held += 1;
            tasks.insert(id.clone(), tokio::spawn(campaign_task(s.clone(), id.clone(), stopped.clone())));
        }
    }
    tasks.retain(|_, t| !t.is_finished());
    let call_leases: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM call_leases c JOIN campaign_leases l ON l.campaign_id = c.campaign_id WHERE l.holder = $1 AND c.expires_at > $2",
    )
    .bind(me)
    .bind(now)
    .fetch_one(&s.db)
    .await?;
    crate::metrics::held(tasks.len(), held, call_leases);
    Ok(())
}

/// Paces attempts at least `1/cps` apart, measured between the attempts actually made.
#[derive(Debug, Default)]
struct Pacer {
    last: Option<tokio::time::Instant>,
}

impl Pacer {
    fn gap(cps: f64) -> Duration {
        Duration::from_secs_f64(1.0 / cps.max(0.001))
    }

    /// How long [`Pacer::wait`] would wait now.
    fn delay(&self, cps: f64) -> Duration {
        self.last.map_or(Duration::ZERO, |last| (last + Pacer::gap(cps)).saturating_duration_since(tokio::time::Instant::now()))
    }

    async fn wait(&mut self, cps: f64) {
        if let Some(last) = self.last {
            let waited = self.delay(cps);
            tokio::time::sleep_until(last + Pacer::gap(cps)).await;
            crate::metrics::pacing_wait(waited);
        }
        self.last = Some(tokio::time::Instant::now());
    }
}

/// One leased campaign, until the lease is lost, the campaign leaves ACTIVE/PAUSED, or the
/// process stops.
async fn campaign_task(s: Arc<Shared>, id: String, mut stopped: watch::Receiver<bool>) {
    let mut pacer = Pacer::default();
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        if *stopped.borrow() {
            return;
        }
        let pause = match campaign_step(&s, &id, &mut pacer, &mut last_sweep).await {
            Ok(Step::Continue) => Duration::ZERO,
            Ok(Step::Idle) => s.config.tick,
            Ok(Step::Wait(d)) => d,
            Ok(Step::Stop) => return,
            Err(e) => {
                tracing::warn!(campaign = %id, "{e}");
                s.config.tick * 5
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped.changed() => return,
            }
        }
    }
}

enum Step {
    /// Made an attempt: look again at once.
    Continue,
    /// Nothing to do now.
    Idle,
    Wait(Duration),
    Stop,
}

async fn campaign_step(s: &Arc<Shared>, id: &str, pacer: &mut Pacer, last_sweep: &mut tokio::time::Instant) -> anyhow::Result<Step> {
    let now = s.now();
    let renewed = sqlx::query("UPDATE campaign_leases SET expires_at = $1 WHERE campaign_id = $2 AND holder = $3 AND expires_at > $4")
        .bind(now + Shared::ms(s.config.campaign_lease_ttl))
        .bind(id)
        .bind(&s.config.id)
        .bind(now)
        .execute(&s.db)
        .await?;
    if renewed.rows_affected() == 0 {
        return Ok(Step::Stop); // lost to another dialler
    }
    let row = sqlx::query("SELECT org_id, state, body FROM campaigns WHERE id = $1").bind(id).fetch_optional(&s.db).await?;
    let Some(row) = row else { return Ok(Step::Stop) };
    let (org, state): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    let campaign: Campaign = serde_json::from_str(&row.try_get::<String, _>(2)?)?;
    if last_sweep.elapsed() >= s.config.tick * 5 {
        *last_sweep = tokio::time::Instant::now();
        s.sweep(Some(id)).await?;
    }
    match state.as_str() {
        "ACTIVE" => {}
        "PAUSED" => return Ok(Step::Idle),
        _ => {
            sqlx::query("DELETE FROM campaign_leases WHERE campaign_id = $1 AND holder = $2").bind(id).bind(&s.config.id).execute(&s.db).await?;
            return Ok(Step::Stop);
        }
    }
    if !schedule::campaign_open(&campaign.schedule, now) {
        return Ok(Step::Wait(Duration::from_secs(5).max(s.config.tick)));
    }
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_leases WHERE campaign_id = $1 AND expires_at > $2").bind(id).bind(now).fetch_one(&s.db).await?;
    if live >= i64::from(campaign.cac) {
        return Ok(Step::Idle);
    }
    // Due contacts, oldest due first; those outside their own window are passed over.
    let due = sqlx::query(
        "SELECT id, phone, name, time_zone, fields, attempts FROM contacts WHERE campaign_id = $1 AND status = 'pending' \
         AND (next_attempt_at IS NULL OR next_attempt_at <= $2) ORDER BY COALESCE(next_attempt_at, 0), id LIMIT 200",
    )
    .bind(id)
    .bind(now)
    .fetch_all(&s.db)
    .await?;
    let contact = due.iter().find(|c| schedule::contact_open(&campaign.schedule, c.try_get::<Option<String>, _>(3).ok().flatten().as_deref(), now));
    let Some(contact) = contact else {
        if due.is_empty() {
            complete_if_done(s, id).await?;
        }
        return Ok(Step::Idle);
    };
    let contact_id: String = contact.try_get(0)?;
    let phone: String = contact.try_get(1)?;
    let attempts_made: i64 = contact.try_get(5)?;
    let on_dnc: Option<String> = sqlx::query_scalar("SELECT id FROM dnc WHERE org_id = $1 AND phone = $2").bind(&org).bind(&phone).fetch_optional(&s.db).await?;
    if on_dnc.is_some() {
        sqlx::query("UPDATE contacts SET status = 'done', disposition = 'dnc', updated_at = $1 WHERE id = $2 AND status = 'pending'")
            .bind(now)
            .bind(&contact_id)
            .execute(&s.db)
            .await?;
        return Ok(Step::Continue);
    }
    let (carrier, settings) = match s.carriers.for_org(&s.db, &org).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(campaign = %id, "{e}");
            return Ok(Step::Wait(Duration::from_secs(5)));
        }
    };
    let caller_ids: Vec<&String> =
        if campaign.caller_ids.is_empty() { settings.default_caller_id.iter().collect() } else { campaign.caller_ids.iter().collect() };
    let Some(&from) = caller_ids.get(attempts_rotation(s, id, caller_ids.len().max(1)).await?) else {
        tracing::warn!(campaign = %id, "no caller ID (set the campaign's caller_ids or the organization's default_caller_id)");
        return Ok(Step::Wait(Duration::from_secs(5)));
    };
    let name: String = contact.try_get(2)?;
    let mut metadata = vec![("name".to_string(), name)];
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&contact.try_get::<String, _>(4)?) {
        metadata.extend(fields.into_iter().map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string))));
    }
    let session = new_id("cl", now);
    let target = Target {
        org: org.clone(),
        session: session.clone(),
        from: from.clone(),
        to: phone,
        campaign_id: Some(id.to_string()),
        contact_id: Some(contact_id.clone()),
        metadata,
        amd: campaign.amd.enabled.then(|| amd_action(campaign.amd.action).to_string()),
        // A reserved engine slot must outlast the pacing wait too.
        wait: pacer.delay(campaign.cps),
    };
    let routed = match s.route(campaign.routing.kind, campaign.routing.target_id.as_deref(), &target).await {
        Ok(r) => r,
        Err(e @ (RouteError::NoCapacity | RouteError::AllDown)) => {
            tracing::warn!(campaign = %id, "{e}; waiting");
            return Ok(Step::Wait(Duration::from_secs(1)));
        }
        Err(e) => return Err(e.into()),
    };
    let now = s.now();
    let cdr_token = token();
    let call = NewCall {
        id: session.clone(),
        org_id: org.clone(),
        campaign_id: Some(id.to_string()),
        contact_id: Some(contact_id.clone()),
        attempt: Some(attempts_made + 1),
        from: from.clone(),
        to: target.to.clone(),
        bot_id: routed.bot_id.clone(),
        assistant_id: routed.assistant_id.clone(),
        carrier: carrier.name().to_string(),
        cdr_token: cdr_token.clone(),
        expects_result: routed.expects_result,
        routing: routed.notes.clone(),
        lease_until: now + Shared::ms(s.config.call_lease_ttl),
        slot: routed.slot.clone(),
    };
    let claimed = claim(s, id, &contact_id, attempts_made, campaign.cac, &call, now).await;
    if !matches!(claimed, Ok(true))
        && let Some(slot) = &routed.slot
    {
        // No call will come for the slot reserved while routing.
        if let Err(e) = fleet::release(&s.db, slot, s.now()).await {
            tracing::warn!(campaign = %id, "giving back an engine slot: {e}");
        }
    }
    let claimed = claimed?;
    crate::metrics::claim(claimed);
    if !claimed {
        return Ok(Step::Continue); // paused, lease lost, CAC reached or contact taken meanwhile
    }
    // Paced where the carrier sees it: each request at least 1/CPS after the one before.
    pacer.wait(campaign.cps).await;
    let request = s.request(&target, &routed, settings.webhook_url.as_deref(), &cdr_token);
    s.dial(carrier, request);
    Ok(Step::Continue)
}

/// The caller ID to use next: round robin over the pool by the campaign's attempt count.
async fn attempts_rotation(s: &Shared, campaign: &str, pool: usize) -> Result<usize, sqlx::Error> {
    let made: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE campaign_id = $1").bind(campaign).fetch_one(&s.db).await?;
    Ok((made.max(0) as usize) % pool)
}

fn amd_action(a: MachineAction) -> &'static str {
    match a {
        MachineAction::Hangup => "hangup",
        MachineAction::Continue => "continue",
        MachineAction::LeaveVoicemail => "leave_voicemail",
    }
}

/// 128 random bits, hex: a call's webhook token.
fn token() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// In one transaction: the lease is still ours, the campaign still ACTIVE, fewer than `cac`
/// live calls, the contact still pending with the attempts we read; then the contact becomes
/// `dialing` and the call record and its lease are written. `false`: any check failed.
async fn claim(s: &Shared, campaign: &str, contact: &str, attempts_made: i64, cac: u32, call: &NewCall, now: i64) -> anyhow::Result<bool> {
    let mut tx = s.db.begin().await?;
    // The write comes first, so SQLite takes its write lock at once (see `attempts::record_end`).
    let took = sqlx::query(
        "UPDATE contacts SET status = 'dialing', attempts = attempts + 1, updated_at = $1 WHERE id = $2 AND status = 'pending' AND attempts = $3",
    )
    .bind(now)
    .bind(contact)
    .bind(attempts_made)
    .execute(&mut *tx)
    .await?;
    let ours: Option<String> = sqlx::query_scalar(
        "SELECT l.holder FROM campaign_leases l JOIN campaigns c ON c.id = l.campaign_id \
         WHERE l.campaign_id = $1 AND l.holder = $2 AND l.expires_at > $3 AND c.state = 'ACTIVE'",
    )
    .bind(campaign)
    .bind(&s.config.id)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_leases WHERE campaign_id = $1 AND expires_at > $2").bind(campaign).bind(now).fetch_one(&mut *tx).await?;
    if took.rows_affected() == 0 || ours.is_none() || live >= i64::from(cac) {
        tx.rollback().await?;
        return Ok(false);
    }
    attempts::insert_call(&mut tx, call, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// Completes an ACTIVE campaign none of whose contacts has an attempt left or in flight.
async fn complete_if_done(s: &Shared, id: &str) -> Result<(), sqlx::Error> {
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE campaign_id = $1 AND status IN ('pending', 'dialing')").bind(id).fetch_one(&s.db).await?;
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE campaign_id = $1 AND status <> 'final'").bind(id).fetch_one(&s.db).await?;
    if open == 0 && live == 0 {
        sqlx::query("UPDATE campaigns SET state = 'COMPLETED', updated_at = $1 WHERE id = $2 AND state = 'ACTIVE'").bind(s.now()).bind(id).execute(&s.db).await?;
    }
    Ok(())
}

/// What the carrier said about a live call whose lease is running out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Live,
    /// Ended, or unknown to the carrier (never placed there, or forgotten).
    Gone,
    /// The carrier could not be asked (its API failed, the organization's carrier could not be
    /// built): the call may be ringing or talking.
    Unreachable,
    /// The call never got a carrier id (its dialler died placing it): nothing to ask.
    NotPlaced,
}

/// What happens to a live call's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseStep {
    /// Renew until then; `unknown_since` starts, continues or (None) ends an outage streak.
    Renew { until: i64, unknown_since: Option<i64> },
    /// Close the call as failed with this reason (once: `attempts::record_end`).
    Close(&'static str),
    /// Let the lease run: the call-end record may still come.
    Wait,
}

/// The lease rule, decided once per sweep of a call: renew while the carrier says it lives or
/// cannot be asked (an outage, counted from its first failed question, up to `grace`); close
/// when the carrier says it ended (or does not know it) and the lease has run out with no
/// call-end record (`no_cdr`), or when the outage outlasts the grace (`carrier_unreachable`).
fn lease_step(asked: Asked, now: i64, expires: Option<i64>, unknown_since: Option<i64>, ttl: i64, grace: i64) -> LeaseStep {
    match asked {
        Asked::Live => LeaseStep::Renew { until: now + ttl, unknown_since: None },
        Asked::Unreachable => {
            let since = unknown_since.unwrap_or(now).min(now);
            let deadline = since + grace;
            if now >= deadline {
                LeaseStep::Close("carrier_unreachable")
            } else {
                LeaseStep::Renew { until: (now + ttl).min(deadline), unknown_since: Some(since) }
            }
        }
        Asked::Gone | Asked::NotPlaced if expires.is_none_or(|e| e <= now) => LeaseStep::Close("no_cdr"),
        Asked::Gone | Asked::NotPlaced => LeaseStep::Wait,
    }
}

impl Shared {
    /// Sweeps the live and ended calls of a campaign (or the direct calls, `None`): asks the
    /// carrier about each live call whose lease runs out within half a TTL and renews, closes or
    /// waits by [`lease_step`]; decides answered calls whose engine result is overdue by the
    /// grace, or at once when their engine host stopped heartbeating. Campaign tasks run it every
    /// few ticks and the node loop for direct calls; it is safe to run at any time, from any
    /// process, as often as wanted.
    pub async fn sweep(self: &Arc<Self>, campaign: Option<&str>) -> anyhow::Result<()> {
        let s = self;
        let now = s.now();
        let ttl = Shared::ms(s.config.call_lease_ttl);
        let scope = if campaign.is_some() { "c.campaign_id = $2" } else { "c.campaign_id IS NULL AND $2 = ''" };
        let sql = format!(
            "SELECT c.id, c.org_id, c.carrier_call_id, l.expires_at, l.unknown_since FROM calls c LEFT JOIN call_leases l ON l.call_id = c.id \
             WHERE c.status = 'live' AND {scope} AND (l.expires_at IS NULL OR l.expires_at < $1)"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now + ttl / 2).bind(campaign.unwrap_or_default()).fetch_all(&s.db).await?;
        for row in rows {
            let (call, org): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            let carrier_id: Option<String> = row.try_get(2)?;
            let expires: Option<i64> = row.try_get(3)?;
            let unknown_since: Option<i64> = row.try_get(4)?;
            let asked = match (&carrier_id, s.carriers.for_org(&s.db, &org).await) {
                (None, _) => Asked::NotPlaced,
                (Some(cid), Ok((carrier, _))) => {
                    let state = carrier.call_state(cid).await;
                    crate::metrics::carrier_request(carrier.name(), "call_state", &state);
                    match state {
                        Ok(CallState::Live) => Asked::Live,
                        Ok(CallState::Ended | CallState::Unknown) => Asked::Gone,
                        Err(e) => {
                            if unknown_since.is_none() {
                                tracing::warn!(call = %call, "the carrier cannot say whether it lives ({e}); keeping it");
                            }
                            Asked::Unreachable
                        }
                    }
                }
                (Some(_), Err(e)) => {
                    if unknown_since.is_none() {
                        tracing::warn!(call = %call, "no carrier to ask ({e}); keeping it");
                    }
                    Asked::Unreachable
                }
            };
            let now = s.now();
            match lease_step(asked, now, expires, unknown_since, ttl, Shared::ms(s.config.carrier_outage_grace)) {
                LeaseStep::Renew { until, unknown_since } => {
                    sqlx::query("UPDATE call_leases SET expires_at = $1, unknown_since = $2 WHERE call_id = $3")
                        .bind(until)
                        .bind(unknown_since)
                        .bind(&call)
                        .execute(&s.db)
                        .await?;
                }
                LeaseStep::Close(reason) => {
                    let end = CallEnd { outcome: "failed", reason: Some(reason.into()), answered_at: None, ended_at: now };
                    attempts::record_end(&s.db, &call, &end, now).await?;
                }
                LeaseStep::Wait => {}
            }
        }
        // Answered calls whose engine host stopped heartbeating: no result can come.
        let lost_sql = format!(
            "SELECT c.id FROM calls c JOIN hosts h ON h.id = c.engine_host \
             WHERE c.status = 'ended' AND {scope} AND c.result_at IS NULL AND h.last_seen < $1"
        );
        let lost: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(lost_sql))
            .bind(now - Shared::ms(s.config.host_ttl))
            .bind(campaign.unwrap_or_default())
            .fetch_all(&s.db)
            .await?;
        for call in lost {
            attempts::give_up_result(&s.db, &call, NoResult::HostLost, now).await?;
        }
        let overdue_sql = format!("SELECT c.id FROM calls c WHERE c.status = 'ended' AND {scope} AND c.cdr_at < $1");
        let overdue: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(overdue_sql))
            .bind(now - Shared::ms(s.config.result_grace))
            .bind(campaign.unwrap_or_default())
            .fetch_all(&s.db)
            .await?;
        for call in overdue {
            attempts::give_up_result(&s.db, &call, NoResult::Overdue, now).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 60_000;
    const GRACE: i64 = 600_000;

    #[test]
    fn a_live_call_is_renewed_and_an_outage_ends_its_streak() {
        assert_eq!(lease_step(Asked::Live, 1_000, Some(900), Some(500), TTL, GRACE), LeaseStep::Renew { until: 61_000, unknown_since: None });
    }

    #[test]
    fn an_outage_keeps_the_lease_up_to_the_grace_from_its_first_failed_question() {
        assert_eq!(lease_step(Asked::Unreachable, 1_000, Some(900), None, TTL, GRACE), LeaseStep::Renew { until: 61_000, unknown_since: Some(1_000) });
        // Even a lease that already ran out (the sweep came late): the call may live.
        assert_eq!(lease_step(Asked::Unreachable, 100_000, Some(90_000), Some(1_000), TTL, GRACE), LeaseStep::Renew { until: 160_000, unknown_since: Some(1_000) });
        // Never renewed past the grace, and closed once it is over.
        assert_eq!(lease_step(Asked::Unreachable, 580_000, Some(590_000), Some(1_000), TTL, GRACE), LeaseStep::Renew { until: 601_000, unknown_since: Some(1_000) });
        assert_eq!(lease_step(Asked::Unreachable, 601_000, Some(601_000), Some(1_000), TTL, GRACE), LeaseStep::Close("carrier_unreachable"));
    }

    #[test]
    fn an_ended_or_unplaced_call_waits_for_its_record_until_the_lease_runs_out() {
        for asked in [Asked::Gone, Asked::NotPlaced] {
            assert_eq!(lease_step(asked, 1_000, Some(20_000), None, TTL, GRACE), LeaseStep::Wait);
            assert_eq!(lease_step(asked, 20_000, Some(20_000), Some(5), TTL, GRACE), LeaseStep::Close("no_cdr"));
            assert_eq!(lease_step(asked, 20_000, None, None, TTL, GRACE), LeaseStep::Close("no_cdr"));
        }
    }
}
