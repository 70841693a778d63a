//! `cxb`: the CX Bridge binary. Parses arguments and wires the services together; the
//! services themselves live in their crates.

// Printing to standard output is what a command-line front end is for.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use cxb_contract::egress::EgressPolicy;
use cxb_control_plane::secrets::SecretBox;
use cxb_control_plane::client::{Capacity, HeartbeatConfig, Host, heartbeat_loop};
use cxb_control_plane::clock::{Clock, SystemClock};
use cxb_control_plane::{ApiConfig, ApiServer, admin};
use cxb_control_plane::recordings::{RecordingsConfig, S3Read};
use cxb_dialler::carrier::Carrier;
use cxb_dialler::carriers::Carriers;
use cxb_dialler::simulator::{OutcomeMix, Simulator, SimulatorConfig};
use cxb_dialler::{Dialler, DiallerConfig, DiallerTelephony, Shared};
use cxb_engine::registry::Segment;
use cxb_engine::agent::ApiLink;
use cxb_engine::{Engine, EngineConfig, EngineHandle, ResultSink};
use cxb_engine::results::CallResult;
use cxb_outbox::{ApiTarget, Outbox, OutboxConfig, OutboxGuard, OutboxHandle, RecordingStore, S3Config};

mod otel;

/// A line for whoever started a service. A closed standard output (`cxb up | head`) must
/// not stop the service, so a failed write is ignored where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cxb", version, about = "CX Bridge: AI phone calls at scale")]
struct Cli {
    /// How log lines on standard error look: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// What to log, as `RUST_LOG` directives: a level (`info`), or per module
    /// (`warn,cxb_engine=debug`).
    #[arg(long = "log", global = true, env = "RUST_LOG", default_value = "info")]
    log_filter: String,
    /// Export each call's span and its turns' spans (with their stage latencies) to this
    /// OpenTelemetry collector over OTLP/HTTP (JSON), e.g. `http://127.0.0.1:4318`; spans go
    /// to `URL/v1/traces`. Off when not given.
    #[arg(long, global = true, env = "CXB_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to standard error through `tracing`; standard output is for what a command prints
/// for its user (credentials, status tables). With `otlp`, call and turn spans also go to that
/// collector (`otel`), whatever `filter` says; the guard sends the last ones when dropped.
fn init_logging(format: LogFormat, filter: &str, otlp: Option<&str>) -> anyhow::Result<Option<otel::OtlpGuard>> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("--log {filter:?}"))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().with_current_span(true).with_span_list(false).boxed(),
    };
    let (otlp, guard) = match otlp.filter(|url| !url.is_empty()) {
        Some(url) => {
            let (layer, guard) = otel::layer(url)?;
            (Some(layer.with_filter(otel::filter())), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otlp).try_init().map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    Ok(guard)
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this host with embedded defaults: the API over SQLite in the data
    /// directory and the engine heartbeating into it. The first start creates an organization
    /// and prints its admin's credentials once.
    Up {
        /// Address for carriers (the engine).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the API.
        #[arg(long, default_value = "127.0.0.1:8081")]
        api_listen: SocketAddr,
        /// Address for SIP (UDP): trunks and softphones call `sip:BOT@ADDR`.
        #[arg(long, default_value = "127.0.0.1:5060")]
        sip: SocketAddr,
        /// The address browsers' WebRTC media reaches this host at (default: the address of the
        /// interface the default route uses; browsers do not take loopback).
        #[arg(long)]
        webrtc_advertise: Option<std::net::IpAddr>,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        results: ResultArgs,
        #[command(flatten)]
        sim: SimulatorArgs,
    },
    /// The media engine: live calls over telephony WebSockets.
    Core(CoreCommand),
    /// The control plane: accounts, bots, campaigns, call records, the fleet registry; also
    /// places direct calls and takes carriers' call-end webhooks.
    Api {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// The API's address as carriers reach it, for their call-end webhooks (default:
        /// http://LISTEN); an organization's `settings.webhook_url` wins.
        #[arg(long)]
        public_url: Option<String>,
        /// Mark the console's session cookie `Secure`: set it when people reach the API over
        /// HTTPS (through a proxy that terminates TLS).
        #[arg(long)]
        secure_cookies: bool,
        /// The folder engines on this host keep recordings below (default: DATA_DIR).
        #[arg(long)]
        recordings_dir: Option<PathBuf>,
        #[command(flatten)]
        s3: S3Args,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        sim: SimulatorArgs,
        #[command(flatten)]
        egress: EgressArgs,
    },
    /// Campaign execution: leases active campaigns (several processes split them), paces,
    /// routes and retries their calls.
    Dialler {
        /// The API's address as carriers reach it, for their call-end webhooks; an
        /// organization's `settings.webhook_url` wins.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        public_url: String,
        /// An id for this process among the diallers (default: random).
        #[arg(long)]
        id: Option<String>,
        /// Seconds a campaign lease lasts unless renewed (another dialler takes the campaign over
        /// after this when this one dies).
        #[arg(long, default_value_t = 15.0)]
        lease_seconds: f64,
        /// Seconds a live call's lease lasts unless the carrier says it still lives (a call whose
        /// call-end record is lost holds its CAC place at most this long).
        #[arg(long, default_value_t = 60.0)]
        call_lease_seconds: f64,
        /// Serve Prometheus metrics (campaign tasks, leases, claims, pacing waits, carrier
        /// requests and errors) at http://ADDR/metrics.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        sim: SimulatorArgs,
        #[command(flatten)]
        egress: EgressArgs,
    },
    /// Administration that needs no account: first organizations, fleet tokens.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Args)]
struct DataArgs {
    /// Where embedded state lives (default: $CXB_DATA_DIR, else $XDG_DATA_HOME/cxb, else
    /// ~/.local/share/cxb).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://…` (default: sqlite://DATA_DIR/cxb.db).
    #[arg(long)]
    database: Option<String>,
    /// The built-in embedding model for knowledge search, the directory `cargo xtask
    /// embed-model` fills (default: DATA_DIR/embed-model, else ./target/embed-model, when
    /// either holds it; without one, knowledge bases are searched by keywords alone).
    #[arg(long, env = "CXB_EMBED_MODEL")]
    embed_model: Option<PathBuf>,
}

impl DataArgs {
    /// Where the key sealing stored secrets lives (`CXB_SECRET_KEY` wins).
    fn secret_key_file(&self) -> PathBuf {
        cxb_control_plane::secrets::key_file(&self.database(), &data_dir(self.data_dir.as_ref()))
    }

    /// The API's configuration over this data: its database, its secret key, the egress policy.
    fn api_config(&self, listen: SocketAddr, egress: EgressPolicy) -> ApiConfig {
        let mut config = ApiConfig::new(listen, self.database());
        config.secret_key_file = self.secret_key_file();
        config.egress = egress;
        let found = [data_dir(self.data_dir.as_ref()).join("embed-model"), PathBuf::from("target/embed-model")];
        config.embed_model = self.embed_model.clone().or_else(|| found.into_iter().find(|d| d.join(cxb_control_plane::EMBED_WEIGHTS_FILE).is_file()));
        config
    }

    fn database(&self) -> String {
        if let Some(url) = &self.database {
            return url.clone();
        }
        format!("sqlite://{}", data_dir(self.data_dir.as_ref()).join("cxb.db").display())
    }
}

/// Which private ranges requests made for tenants may reach.
#[derive(Args, Clone)]
struct EgressArgs {
    /// (`cxb api`) Let engine hosts advertise plain ws:// to addresses that are not loopback
    /// (otherwise only wss://).
    #[arg(long)]
    allow_ws_hosts: bool,
    /// Let requests made for tenants (webhooks, carrier APIs) reach this private or special
    /// range, e.g. 10.0.0.0/8 (repeatable; only public addresses otherwise).
    #[arg(long = "allow-private-egress", value_name = "CIDR")]
    allow_private_egress: Vec<ipnet::IpNet>,
}

impl EgressArgs {
    fn policy(&self) -> EgressPolicy {
        EgressPolicy::allowing(self.allow_private_egress.clone())
    }
}

/// The built-in carrier simulator, used by organizations whose carrier is `simulator`.
#[derive(Args, Clone)]
struct SimulatorArgs {
    /// Outcome weights, e.g. `answer=60,busy=10,no_answer=15,voicemail=10,failed=5`.
    #[arg(long, default_value = "answer=60,busy=10,no_answer=15,voicemail=10,failed=5")]
    sim_mix: String,
    /// Multiplies ring and talk times (0.1: ten times faster); audio stays real time.
    #[arg(long, default_value_t = 1.0)]
    sim_time_scale: f64,
    /// Seeds the simulator's draws, for repeatable runs.
    #[arg(long)]
    sim_seed: Option<u64>,
}

impl SimulatorArgs {
    fn config(&self) -> anyhow::Result<SimulatorConfig> {
        let mut mix = OutcomeMix { answer: 0, busy: 0, no_answer: 0, voicemail: 0, failed: 0 };
        for part in self.sim_mix.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part.split_once('=').with_context(|| format!("--sim-mix: `{part}` is not name=weight"))?;
            let weight: u32 = weight.trim().parse().with_context(|| format!("--sim-mix: `{weight}` is not a whole number"))?;
            match name.trim() {
                "answer" => mix.answer = weight,
                "busy" => mix.busy = weight,
                "no_answer" => mix.no_answer = weight,
                "voicemail" => mix.voicemail = weight,
                "failed" => mix.failed = weight,
                other => bail!("--sim-mix: unknown outcome `{other}` (answer, busy, no_answer, voicemail, failed)"),
            }
        }
        if !(self.sim_time_scale.is_finite() && self.sim_time_scale >= 0.0) {
            bail!("--sim-time-scale must be a number >= 0");
        }
        Ok(SimulatorConfig { mix, time_scale: self.sim_time_scale, seed: self.sim_seed, ..SimulatorConfig::default() })
    }
}

/// The dialler's shared state over `db`: carriers (the simulator included) and its settings.
fn telephony(db: sqlx::AnyPool, public_url: String, sim: &SimulatorArgs, egress: EgressPolicy, secrets: Arc<SecretBox>, id: Option<String>, leases: Option<(Duration, Duration)>) -> anyhow::Result<Arc<Shared>> {
    let http = cxb_control_plane::http_client(Duration::from_secs(10))?;
    // Requests for tenants (their carriers' APIs) go through the guard; the simulator's
    // call-end records go to this platform's own API.
    let egress = cxb_control_plane::egress::Egress::new(egress, Duration::from_secs(10))?;
    let simulator: Arc<dyn Carrier> = Simulator::start(sim.config()?, http.clone());
    let mut config = DiallerConfig::new(public_url);
    config.id = id.unwrap_or_default();
    if let Some((campaign, call)) = leases {
        config.campaign_lease_ttl = campaign;
        config.call_lease_ttl = call;
    }
    Ok(Shared::new(db, Carriers::new(Some(simulator), egress, secrets), config))
}

/// The data directory: the flag, else $CXB_DATA_DIR, $XDG_DATA_HOME/cxb, ~/.local/share/cxb.
fn data_dir(flag: Option<&PathBuf>) -> PathBuf {
    flag.cloned().unwrap_or_else(|| {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("CXB_DATA_DIR")
            .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("cxb")))
            .or_else(|| env("HOME").map(|h| h.join(".local/share/cxb")))
            .unwrap_or_else(|| PathBuf::from("cxb-data"))
    })
}

/// Where finished AI calls and recordings go.
#[derive(Args, Clone)]
struct ResultArgs {
    /// Bot files (`ID.json`, the API's bot shape) served without an API (default:
    /// DATA_DIR/bots when it exists). Local files win over the API.
    #[arg(long)]
    bots: Option<PathBuf>,
    /// The turn-completion model for bots whose `turn_detection.mode` is `model`: the
    /// directory `cargo xtask turn-model` fills (Smart Turn v3.2 and ONNX Runtime's library).
    #[arg(long, env = "CXB_TURN_MODEL")]
    turn_model: Option<PathBuf>,
    #[command(flatten)]
    s3: S3Args,
}

/// The S3-compatible bucket recordings go to (engines) and are read from (the API).
#[derive(Args, Clone)]
struct S3Args {
    /// Recordings in this S3-compatible bucket instead of DATA_DIR/recordings.
    #[arg(long, env = "CXB_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// The bucket's region.
    #[arg(long, env = "CXB_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// An S3-compatible endpoint (MinIO, R2, …); unset for AWS.
    #[arg(long, env = "CXB_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// The access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    s3_access_key_id: Option<String>,
    /// The secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_access_key: Option<String>,
}

impl S3Args {
    /// The bucket's settings, when a bucket is named (then both keys are needed).
    fn config(&self) -> anyhow::Result<Option<S3Config>> {
        let Some(bucket) = &self.s3_bucket else { return Ok(None) };
        let key = |v: &Option<String>, name: &str| v.clone().with_context(|| format!("--s3-bucket needs {name}"));
        Ok(Some(S3Config {
            bucket: bucket.clone(),
            region: self.s3_region.clone(),
            endpoint: self.s3_endpoint.clone(),
            access_key_id: key(&self.s3_access_key_id, "AWS_ACCESS_KEY_ID")?,
            secret_access_key: key(&self.s3_secret_access_key, "AWS_SECRET_ACCESS_KEY")?,
            allow_http: self.s3_endpoint.as_deref().is_some_and(|e| e.starts_with("http://")),
        }))
    }

    /// Where the API reads recordings: the folder engines on this host write below, and the bucket.
    fn recordings(&self, local_root: PathBuf) -> anyhow::Result<RecordingsConfig> {
        let s3 = self.config()?.map(|c| S3Read {
            bucket: c.bucket,
            region: c.region,
            endpoint: c.endpoint,
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
        });
        Ok(RecordingsConfig { local_root: Some(local_root), s3 })
    }
}

/// The engine's durable outbox as the engine sees it: AI calls are admitted while it can
/// write, and their recordings stream into it as the calls go. Handoffs to the Agent Desk go to
/// a second outbox of their own (`DATA_DIR/handoffs`), when there is an API to deliver to.
#[derive(Debug)]
struct OutboxSink(OutboxHandle, Option<OutboxHandle>);

/// A result as the outbox stores it and the API takes it (a typed result always serializes).
fn result_json(result: &CallResult) -> serde_json::Value {
    serde_json::to_value(result).unwrap_or(serde_json::Value::Null)
}

impl ResultSink for OutboxSink {
    fn submit(&self, result: CallResult, recording: Option<Vec<u8>>) -> flume::Receiver<Result<(), String>> {
        self.0.submit_plain(result_json(&result), recording)
    }

    fn writable(&self) -> bool {
        self.0.writable()
    }

    fn submit_record(&self, url: &str, body: serde_json::Value) -> Option<flume::Receiver<Result<(), String>>> {
        Some(self.0.submit_record(url.to_string(), body))
    }

    fn submit_handoff(&self, handoff: serde_json::Value) -> Option<flume::Receiver<Result<(), String>>> {
        self.1.as_ref().map(|h| h.submit_plain(handoff, None))
    }

    fn gauges(&self) -> Vec<(&'static str, &'static str, u64)> {
        let s = self.0.stats();
        vec![
            ("cxb_outbox_bytes", "Bytes of the files in the result outbox (its cap refuses new AI calls).", s.bytes_used),
            ("cxb_outbox_writable", "1 while the outbox can take new calls' results.", u64::from(s.writable)),
            ("cxb_outbox_pending", "Results on disk waiting for delivery.", s.pending),
            ("cxb_outbox_parked", "Of those, results parked after failing while others were delivered.", s.parked),
            ("cxb_outbox_delivered_total", "Results the API accepted.", s.delivered),
            ("cxb_outbox_dead_total", "Results moved to dead/.", s.dead),
            ("cxb_outbox_write_errors_total", "Outbox writes that failed.", s.write_errors),
        ]
    }

    fn recording_stream(&self) -> Option<Box<dyn cxb_codecs::wav::RecordingSink>> {
        Some(Box::new(self.0.recording_stream()))
    }

    fn submit_streamed(
        &self,
        result: CallResult,
        recording: Box<dyn cxb_codecs::wav::RecordingSink>,
        summary: cxb_codecs::wav::RecordingSummary,
    ) -> flume::Receiver<Result<(), String>> {
        let recording: Box<dyn std::any::Any> = recording;
        match recording.downcast::<cxb_outbox::RecordingStream>() {
            Ok(stream) => self.0.submit_stream_plain(result_json(&result), *stream, summary),
            // Only the streams made above come back here; anything else has no file to keep.
            Err(_) => self.0.submit_plain(result_json(&result), None),
        }
    }
}

/// Wires AI bots into `config`: bot files, the API (bots and result delivery) and the outbox
/// in `data`. The guard keeps the outbox thread running.
fn wire_results(config: &mut EngineConfig, args: &ResultArgs, data: &std::path::Path, api: Option<(String, String)>) -> anyhow::Result<Results> {
    let bots = args.bots.clone().or_else(|| Some(data.join("bots")).filter(|d| d.is_dir()));
    config.bots.dir = bots;
    if let Some(dir) = &args.turn_model {
        let model = cxb_engine::turn_model::SmartTurn::load(dir).map_err(anyhow::Error::msg)?;
        tracing::info!(dir = %dir.display(), "turn-completion model loaded");
        config.turn_model = Some(Arc::new(model));
    }
    let mut outbox = OutboxConfig::new(data);
    if let Some(s3) = args.s3.config()? {
        outbox.recordings = RecordingStore::S3(s3);
    }
    let mut handoffs = None;
    if let Some((base_url, fleet_token)) = api {
        config.bots.api = Some(ApiLink { base_url: base_url.clone(), fleet_token: fleet_token.clone() });
        let mut desk = OutboxConfig::new(data);
        desk.dir = data.join("handoffs");
        desk.endpoint = "/v1/runtime/handoffs".into();
        desk.api = Some(ApiTarget { base_url: base_url.clone(), fleet_token: fleet_token.clone() });
        handoffs = Some(Outbox::start(desk).context("starting the handoff outbox")?);
        outbox.api = Some(ApiTarget { base_url, fleet_token });
    }
    let (handle, guard) = Outbox::start(outbox).context("starting the result outbox")?;
    config.results = Some(Arc::new(OutboxSink(handle.clone(), handoffs.as_ref().map(|(h, _)| h.clone()))));
    Ok(Results { handle, guard, handoffs })
}

/// The running outbox: its handle (for its counters) and the guard that keeps its threads.
struct Results {
    handle: OutboxHandle,
    guard: OutboxGuard,
    /// The Agent Desk's outbox, with an API.
    handoffs: Option<(OutboxHandle, OutboxGuard)>,
}

impl Results {
    /// Gives the outbox up to `within` to deliver what it holds, then stops it. Whatever is
    /// not delivered stays on disk for the next start.
    fn finish(self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        let pending = || self.handle.stats().pending + self.handoffs.as_ref().map_or(0, |(h, _)| h.stats().pending);
        while pending() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let pending = self.handle.stats().pending;
        if pending > 0 {
            tracing::warn!(pending, "call results stay in the outbox for the next start");
        }
        drop(self.guard);
        drop(self.handoffs);
    }
}

/// Stops the engine gracefully: no new calls, live calls run for up to `drain`, then the rest
/// are ended with their results written to the outbox, which gets a few seconds to deliver.
fn stop_engine(engine: Engine, outbox: Results, drain: Duration) {
    let live = engine.health()["live_calls"].as_u64().unwrap_or(0);
    tracing::info!(live, drain_seconds = drain.as_secs(), "stopping; live calls get the drain time to finish");
    let left = engine.drain(drain);
    if left > 0 {
        tracing::info!(left, "ending the calls still live");
    }
    engine.shutdown();
    outbox.finish(Duration::from_secs(10));
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("listening for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[derive(Subcommand)]
enum AdminAction {
    /// Create an organization and its first admin; the password is read from standard input.
    CreateOrg {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        /// Read the admin's password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Create a token for an engine or dialler (`cxb core --api … --fleet-token …`); printed once.
    CreateFleetToken {
        #[arg(long, default_value = "fleet")]
        name: String,
        /// `engine` (heartbeat, runtime endpoints) or `dialler` (slot reservations).
        #[arg(long, default_value = "engine")]
        scope: cxb_control_plane::auth::FleetScope,
        /// Bind the engine token to this host id (`hostname:port`, what `cxb core` heartbeats
        /// as); unbound, it is bound to the first host it heartbeats as.
        #[arg(long)]
        host_id: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the fleet tokens: id, name, scope, bound host, creation time (never their values).
    ListFleetTokens {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a fleet token by its id (from list-fleet-tokens): its engine or dialler is
    /// refused from its next request.
    RevokeFleetToken {
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Seal stored secrets with a new key: adds it to the key file and reseals every stored
    /// secret with it. The old keys stay in the file (processes still running use them until
    /// they restart); run again with --drop-old once every API and dialler has restarted.
    RotateSecretKey {
        /// Only remove the old keys from the key file.
        #[arg(long)]
        drop_old: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Start signing call tokens with a new key; the previous keys stay valid for an hour.
    /// Engines learn the new key from their next heartbeat, and signing switches to it 12 s
    /// later.
    RotateCallTokenKey {
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct CoreCommand {
    #[command(subcommand)]
    action: Option<CoreAction>,
    #[command(flatten)]
    run: Box<CoreArgs>,
}

#[derive(Subcommand)]
enum CoreAction {
    /// Print per-worker slot usage, read from the shared-memory registry by this separate
    /// process (no request to the engine).
    Status {
        /// The engine's port, to find its registry.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The registry file itself.
        #[arg(long)]
        registry: Option<PathBuf>,
        /// List every slot that is not free.
        #[arg(long)]
        slots: bool,
    },
    /// Send one command to the engine's control socket and print the answer, e.g.
    /// '{"cmd":"reserve","ttl_ms":5000}', '{"cmd":"hangup","call_id":"w0-3"}',
    /// '{"cmd":"drain"}', '{"cmd":"report"}'.
    Ctl {
        /// The command, as JSON.
        json: String,
        /// The engine's port, to find its socket.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The control socket itself.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Args)]
struct CoreArgs {
    /// Address for carriers and HTTP.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Worker threads, one per core (default: every online core).
    #[arg(long)]
    workers: Option<usize>,
    /// Call slots per worker.
    #[arg(long, default_value_t = 1000)]
    slots_per_worker: usize,
    /// Use epoll even where io_uring is available (to measure one against the other).
    #[arg(long)]
    force_epoll: bool,
    /// Do not pin workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// The slot registry file (default: /dev/shm/cxb-core-PORT.slots).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// The control socket (default: /dev/shm/cxb-core-PORT.sock).
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Offer the built-in `echo` and `turn-echo` bots to anyone who reaches the engine (demos
    /// and load tests); without it they answer 404.
    #[arg(long)]
    demo_bots: bool,
    /// Let calls' requests for their tenant (tools, providers, Wyoming hosts) reach this
    /// private or special range, e.g. 10.0.0.0/8 for self-hosted models (repeatable; only
    /// public addresses otherwise).
    #[arg(long = "allow-private-egress", value_name = "CIDR")]
    allow_private_egress: Vec<ipnet::IpNet>,
    /// Serve wss:// (and https:// health and metrics) with this PEM certificate chain (with
    /// --tls-key). The address announced to the API becomes wss://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// AI calls one worker (core) carries at most; beyond, new AI calls answer 503 so the core
    /// never falls behind (500 held the engine's added latency under 20 ms p99 on this
    /// project's 2-core VM; see docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 500)]
    ai_calls_per_worker: usize,
    /// Connections one client address may have waiting for their request head (429 beyond).
    #[arg(long, default_value_t = 64)]
    pending_per_address: u32,
    /// Offer the `fault` bot, which panics on DTMF (for isolation tests; with --demo-bots).
    #[arg(long)]
    fault_injection: bool,
    /// End a call after this many seconds without inbound bytes.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Heartbeat this host's capacity to the API at this base URL (e.g. http://10.0.0.2:8081).
    #[arg(long, requires = "fleet_token")]
    api: Option<String>,
    /// The fleet token for `--api`.
    #[arg(long, env = "CXB_FLEET_TOKEN", hide_env_values = true)]
    fleet_token: Option<String>,
    /// How carriers reach this host, as announced to the API (default: ws://LISTEN).
    #[arg(long)]
    advertise: Option<String>,
    /// Speak SIP on this address (UDP), with RTP media on --rtp-ports.
    #[arg(long)]
    sip: Option<SocketAddr>,
    /// The RTP ports SIP calls take, LOW-HIGH (even ports from LOW to below HIGH).
    #[arg(long, default_value = "20000-30000", value_parser = parse_port_range)]
    rtp_ports: (u16, u16),
    /// The address put in SIP Contact headers and SDP, when peers reach this host through
    /// NAT (default: the --sip address, or 127.0.0.1 when that is unspecified).
    #[arg(long)]
    sip_advertise: Option<std::net::IpAddr>,
    /// Also speak SIP over TLS (`transport=tls`) on this TCP address, with the certificate of
    /// --tls-cert and --tls-key (needs --sip).
    #[arg(long, requires_all = ["sip", "tls_cert", "tls_key"])]
    sip_tls: Option<SocketAddr>,
    /// The address browsers' WebRTC media reaches this host at (the calls' ICE host
    /// candidates; behind 1:1 NAT, the public one). Default: the --listen address, or
    /// 127.0.0.1 when that is unspecified.
    #[arg(long)]
    webrtc_advertise: Option<std::net::IpAddr>,
    /// The UDP ports WebRTC calls take, LOW-HIGH (one per call).
    #[arg(long, default_value = "50000-51999", value_parser = parse_port_range)]
    webrtc_ports: (u16, u16),
    /// Take no WebRTC calls (`POST /webrtc/BOT` answers 404).
    #[arg(long, conflicts_with = "webrtc_advertise")]
    no_webrtc: bool,
    /// On SIGTERM or SIGINT: stop taking calls and let live calls run this long before they
    /// are ended (their results written to the outbox either way).
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
    /// Where the result outbox and local recordings live (default: $CXB_DATA_DIR, else
    /// $XDG_DATA_HOME/cxb, else ~/.local/share/cxb).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    results: ResultArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Held to the end of `main`: dropping it sends the spans still queued.
    let _otlp = init_logging(cli.log_format, &cli.log_filter, cli.otlp_endpoint.as_deref())?;
    match cli.command {
        Command::Up { listen, api_listen, sip, webrtc_advertise, data, results, sim } => up(listen, api_listen, sip, webrtc_advertise, &data, &results, &sim),
        Command::Core(CoreCommand { action: None, run }) => {
            let heartbeat = run.api.clone().zip(run.fleet_token.clone());
            let advertise = run.advertise.clone();
            let scheme = if run.tls_cert.is_some() { "wss" } else { "ws" };
            let data = data_dir(run.data_dir.as_ref());
            let results = run.results.clone();
            let drain = Duration::from_secs(run.drain_seconds);
            let mut config = engine_config(*run)?;
            let outbox = wire_results(&mut config, &results, &data, heartbeat.clone())?;
            let engine = Engine::start(config).context("starting the engine")?;
            print_welcome(&engine);
            if let Some((api, token)) = heartbeat {
                let address = advertise.unwrap_or_else(|| format!("{scheme}://{}", engine.local_addr()));
                let config = heartbeat_config(api, token, address, engine.local_addr().port());
                let host = EngineHost(engine.handle());
                std::thread::Builder::new().name("cxb-heartbeat".into()).spawn(move || {
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt.block_on(heartbeat_loop(config, host)),
                        Err(e) => tracing::error!("no heartbeat: {e}"),
                    }
                })?;
            }
            let signals = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            signals.block_on(stop_signal())?;
            stop_engine(engine, outbox, drain);
            Ok(())
        }
        Command::Api { listen, public_url, secure_cookies, recordings_dir, s3, data, sim, egress } => tokio_runtime()?.block_on(async {
            let mut config = data.api_config(listen, egress.policy());
            config.allow_ws_hosts = egress.allow_ws_hosts;
            config.secure_cookies = secure_cookies;
            config.recordings = s3.recordings(recordings_dir.unwrap_or_else(|| data_dir(data.data_dir.as_ref())))?;
            let api = ApiServer::start(config).await?;
            let public_url = public_url.unwrap_or_else(|| format!("http://{}", api.local_addr()));
            let shared = telephony(api.state().db.clone(), public_url, &sim, egress.policy(), api.state().secrets.clone(), None, None)?;
            api.attach_telephony(Arc::new(DiallerTelephony(shared)));
            say!("CX Bridge API on http://{}  (console: /, OpenAPI: /v1/openapi.json)", api.local_addr());
            let _ = std::io::stdout().flush();
            stop_signal().await?;
            api.shutdown().await;
            Ok(())
        }),
        Command::Dialler { public_url, id, lease_seconds, call_lease_seconds, metrics_listen, data, sim, egress } => tokio_runtime()?.block_on(async {
            let db = cxb_control_plane::db::connect(&data.database()).await?;
            let lease = Duration::try_from_secs_f64(lease_seconds).context("--lease-seconds")?;
            let call_lease = Duration::try_from_secs_f64(call_lease_seconds).context("--call-lease-seconds")?;
            let secrets = Arc::new(SecretBox::load(&data.secret_key_file())?);
            let dialler = Dialler::start(telephony(db, public_url, &sim, egress.policy(), secrets, id, Some((lease, call_lease)))?);
            say!("CX Bridge dialler {} running", dialler.id());
            if let Some(addr) = metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics-listen {addr}"))?;
                say!("  metrics     http://{}/metrics", listener.local_addr()?);
                tokio::spawn(async move {
                    if let Err(e) = cxb_dialler::metrics::serve(listener).await {
                        tracing::error!("dialler metrics: {e}");
                    }
                });
            }
            let _ = std::io::stdout().flush();
            stop_signal().await?;
            dialler.shutdown().await;
            Ok(())
        }),
        Command::Admin { action } => tokio_runtime()?.block_on(admin_command(action)),
        Command::Core(CoreCommand { action: Some(CoreAction::Status { port, registry, slots }), .. }) => {
            let path = registry.unwrap_or_else(|| EngineConfig::new(([127, 0, 0, 1], port).into()).registry);
            status(&path, slots)
        }
        Command::Core(CoreCommand { action: Some(CoreAction::Ctl { json, port, socket }), .. }) => {
            let path = socket.unwrap_or_else(|| EngineConfig::new(([127, 0, 0, 1], port).into()).control_socket);
            let mut stream = UnixStream::connect(&path).with_context(|| format!("connecting to {}", path.display()))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            writeln!(stream, "{}", json.trim())?;
            let mut answer = String::new();
            BufReader::new(stream).read_line(&mut answer)?;
            print!("{answer}");
            Ok(())
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")
}

async fn admin_command(action: AdminAction) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    match action {
        AdminAction::CreateOrg { name, email, password_stdin: _, data } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            let db = cxb_control_plane::db::connect(&data.database()).await?;
            let org = admin::create_org(&db, &name, &email, password, now).await?;
            println!("organization {} ({name}) created; sign in as {} with the password given", org.org_id, org.email);
        }
        AdminAction::CreateFleetToken { name, scope, host_id, data } => {
            let db = cxb_control_plane::db::connect(&data.database()).await?;
            let token = admin::create_scoped_fleet_token(&db, &name, scope, host_id.as_deref(), now).await?;
            println!("{token}");
        }
        AdminAction::ListFleetTokens { data } => {
            let db = cxb_control_plane::db::connect(&data.database()).await?;
            for t in admin::list_fleet_tokens(&db).await? {
                let created = cxb_control_plane::clock::rfc3339(t.created_at);
                println!("{}\t{}\t{}\t{}\t{created}", t.id, t.name, t.scope, t.host_id.as_deref().unwrap_or("-"));
            }
        }
        AdminAction::RevokeFleetToken { id, data } => {
            let db = cxb_control_plane::db::connect(&data.database()).await?;
            if !admin::revoke_fleet_token(&db, &id).await? {
                anyhow::bail!("no fleet token {id}");
            }
            println!("revoked {id}");
        }
        AdminAction::RotateSecretKey { drop_old, data } => {
            let file = data.secret_key_file();
            if drop_old {
                cxb_control_plane::secrets::drop_old_keys(&file)?;
                println!("kept only the newest key in {}", file.display());
                return Ok(());
            }
            let db = cxb_control_plane::db::connect(&data.database()).await?;
            let secrets = cxb_control_plane::secrets::add_key(&file)?;
            let resealed = cxb_control_plane::secrets::seal_stored_rows(&db, &secrets, true).await?;
            println!("sealed the secrets of {resealed} documents with the new key {}; run again with --drop-old once every API and dialler has restarted", secrets.current());
        }
        AdminAction::RotateCallTokenKey { data } => {
            let db = cxb_control_plane::db::connect(&data.database()).await?;
            let secrets = cxb_control_plane::secrets::SecretBox::load(&data.secret_key_file())?;
            let id = cxb_control_plane::call_tokens::rotate(&db, &secrets, now).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("new call-token key {id}; the previous keys stay valid for an hour");
        }
    }
    Ok(())
}

/// The fleet token `cxb up` makes for its own engine at each start (the previous one is revoked).
const UP_TOKEN: &str = "cxb up (local engine)";

fn up(listen: SocketAddr, api_listen: SocketAddr, sip: SocketAddr, webrtc_advertise: Option<std::net::IpAddr>, data: &DataArgs, results: &ResultArgs, sim: &SimulatorArgs) -> anyhow::Result<()> {
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let database = data.database();
        // Webhooks to local receivers and self-hosted services on this host keep working.
        // One recorder for the API and the dialler, installed before either counts anything.
        cxb_control_plane::metrics::install();
        let mut config = data.api_config(api_listen, EgressPolicy::with_loopback());
        // The engine below keeps its recordings in the data directory (or the bucket).
        config.recordings = results.s3.recordings(data_dir(data.data_dir.as_ref()))?;
        let api = ApiServer::start(config).await.context("starting the API")?;
        let db = &api.state().db;
        let now = SystemClock.now_ms();
        let first = if admin::org_count(db).await? == 0 {
            let password = admin::generate_password();
            let org = admin::create_org(db, "Default", "admin@cxb.local", password.clone(), now).await?;
            Some((org, password))
        } else {
            None
        };
        admin::revoke_fleet_tokens(db, UP_TOKEN).await?;
        let token = admin::create_fleet_token(db, UP_TOKEN, now).await?;
        let api_url = format!("http://{}", api.local_addr());
        let shared = telephony(api.state().db.clone(), api_url.clone(), sim, EgressPolicy::with_loopback(), api.state().secrets.clone(), None, None)?;
        api.attach_telephony(Arc::new(DiallerTelephony(shared.clone())));
        let dialler = Dialler::start(shared);
        let mut config = EngineConfig::new(listen);
        config.demo_bots = true;
        config.sip = Some(cxb_engine::sip::SipConfig::new(sip));
        config.webrtc = Some(cxb_engine::config::WebRtcConfig::new(webrtc_advertise.unwrap_or_else(primary_address)));
        // Local speech servers (Wyoming, espeak) and self-hosted models on this host keep working.
        config.egress = EgressPolicy::with_loopback();
        if listen.port() != 0 {
            config.host_id = Some(host_id(listen.port()));
        }
        let dir = data_dir(data.data_dir.as_ref());
        let outbox = wire_results(&mut config, results, &dir, Some((api_url.clone(), token.clone())))?;
        let engine = Engine::start(config).context("starting the engine")?;
        print_welcome(&engine);
        say!("  console     {api_url}/   (sign in with the admin below)");
        say!("  API         {api_url}   (OpenAPI: {api_url}/v1/openapi.json)");
        say!("  database    {database}");
        say!("  dialler     {} (carrier: the built-in simulator unless settings name one)", dialler.id());
        say!("  metrics     {api_url}/metrics   (the API's and the dialler's)");
        say!("  web calls   {api_url}/widget/demo?bot=BOT&key=KEY   (a page with the call widget; a bot's widget key is in its `widget` settings)");
        if let Some((org, password)) = first {
            say!();
            say!("First start: organization {} was created. Its admin (shown only this once):", org.org_id);
            say!("  email       {}", org.email);
            say!("  password    {password}");
            say!("  sign in     curl -s {api_url}/v1/auth/login -H 'content-type: application/json' \\");
            say!("                -d '{{\"email\":\"{}\",\"password\":\"{password}\"}}'", org.email);
        }
        let _ = std::io::stdout().flush();
        // The fleet takes plain ws:// only on loopback: a wildcard listener is announced there.
        let mut announced = engine.local_addr();
        if announced.ip().is_unspecified() {
            announced.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let config = heartbeat_config(api_url, token, format!("ws://{announced}"), engine.local_addr().port());
        let beat = tokio::spawn(heartbeat_loop(config, EngineHost(engine.handle())));
        stop_signal().await?;
        // Calls first (their results go to the API, which is still up), then what places them.
        dialler.shutdown().await;
        tokio::task::block_in_place(|| stop_engine(engine, outbox, Duration::from_secs(30)));
        beat.abort();
        api.shutdown().await;
        Ok(())
    })
}

fn heartbeat_config(api: String, fleet_token: String, address: String, port: u16) -> HeartbeatConfig {
    HeartbeatConfig { api, fleet_token, host_id: host_id(port), address, every: Duration::from_secs(2) }
}

/// This engine's id in the fleet: `hostname:port`. Call tokens name it.
fn host_id(port: u16) -> String {
    let host = std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty());
    let host = host.or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "localhost".into());
    format!("{host}:{port}")
}

/// The engine as the fleet heartbeat sees it.
struct EngineHost(EngineHandle);

impl Host for EngineHost {
    fn capacity(&self) -> Capacity {
        let h = self.0.health();
        let n = |k: &str| h[k].as_u64().unwrap_or(0);
        Capacity {
            workers: h["workers"].as_array().map_or(0, |w| w.len() as u32),
            slots_total: n("slots_total"),
            slots_free: n("slots_free"),
            live_calls: n("live_calls"),
        }
    }

    fn hold(&self, token: &str, ttl: Duration) -> bool {
        self.0.hold_reservation(token, ttl)
    }

    fn set_call_keys(&self, keys: cxb_contract::call_token::KeyRing) {
        self.0.set_call_keys(keys);
    }

    fn release(&self, token: &str) -> bool {
        self.0.release_reservation(token)
    }
}

fn engine_config(a: CoreArgs) -> anyhow::Result<EngineConfig> {
    let mut c = EngineConfig::new(a.listen);
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        c.tls = Some(cxb_engine::tls::TlsConfig::load(cert, key)?);
        if c.advertise.is_none() {
            c.advertise = Some(format!("wss://{}", a.listen));
        }
    }
    if let Some(w) = a.workers {
        c.workers = w;
    }
    c.slots_per_worker = a.slots_per_worker;
    c.force_epoll = a.force_epoll;
    c.pin = !a.no_pin;
    if let Some(r) = a.registry {
        c.registry = r;
    }
    if let Some(s) = a.control_socket {
        c.control_socket = s;
    }
    c.demo_bots = a.demo_bots;
    c.ai_calls_per_worker = a.ai_calls_per_worker;
    c.address_limits.pending_per_address = a.pending_per_address;
    c.egress = EgressPolicy::allowing(a.allow_private_egress);
    c.fault_injection = a.fault_injection;
    if a.advertise.is_some() {
        c.advertise = a.advertise;
    }
    if a.api.is_some() && a.listen.port() != 0 {
        c.host_id = Some(host_id(a.listen.port()));
    }
    c.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
    c.sip = a.sip.map(|listen| cxb_engine::sip::SipConfig { listen, advertise: a.sip_advertise, rtp_ports: a.rtp_ports, tls_listen: a.sip_tls });
    if !a.no_webrtc {
        let advertise = a.webrtc_advertise.unwrap_or_else(|| webrtc_default_address(a.listen));
        c.webrtc = Some(cxb_engine::config::WebRtcConfig { ports: a.webrtc_ports, ..cxb_engine::config::WebRtcConfig::new(advertise) });
    }
    Ok(c)
}

/// Where browsers reach a host listening on `listen` when no address is given: that address,
/// or for a wildcard one the address of the interface the default route leaves by.
fn webrtc_default_address(listen: SocketAddr) -> std::net::IpAddr {
    if listen.ip().is_unspecified() { primary_address() } else { listen.ip() }
}

/// This host's address on the interface its default route uses (a routing lookup: connecting
/// a UDP socket sends nothing), or loopback without one. Browsers do not use loopback for
/// WebRTC, so a local demo needs this address even when everything else is on loopback.
fn primary_address() -> std::net::IpAddr {
    let probe = || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect("192.0.2.1:9").ok()?;
        Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
    };
    probe().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
}

/// `LOW-HIGH`, both even-able ports with at least two between them.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (low, high) = s.split_once('-').ok_or("expected LOW-HIGH, e.g. 20000-30000")?;
    let low: u16 = low.trim().parse().map_err(|e| format!("LOW: {e}"))?;
    let high: u16 = high.trim().parse().map_err(|e| format!("HIGH: {e}"))?;
    if low == 0 || high < low + 2 {
        return Err("LOW must be above 0 and HIGH at least LOW + 2".into());
    }
    Ok((low + low % 2, high))
}

fn print_welcome(engine: &Engine) {
    let addr = engine.local_addr();
    let c = engine.config();
    say!("CX Bridge is up.");
    say!("  engine      {} workers x {} call slots", c.workers, c.slots_per_worker);
    let (http, ws) = if c.tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    say!("  health      {http}://{addr}/health");
    say!("  metrics     {http}://{addr}/metrics");
    if c.demo_bots {
        say!("  Twilio      {ws}://{addr}/ws/echo        (also /ws/turn-echo)");
        say!("  Exotel      {ws}://{addr}/exotel/echo    (also /exotel/turn-echo)");
    }
    if let Some(sip) = engine.sip_addr() {
        let bot = if c.demo_bots { "echo" } else { "BOT" };
        say!("  SIP         sip:{bot}@{sip}   (UDP and TCP; RTP on ports {}-{})", c.sip.as_ref().map_or(0, |s| s.rtp_ports.0), c.sip.as_ref().map_or(0, |s| s.rtp_ports.1));
    }
    if let Some(tls) = engine.sip_tls_addr() {
        let bot = if c.demo_bots { "echo" } else { "BOT" };
        say!("  SIP (TLS)   sip:{bot}@{tls};transport=tls");
    }
    if let Some(webrtc) = &c.webrtc {
        let bot = if c.demo_bots { "echo" } else { "BOT" };
        say!("  WebRTC      POST {http}://{addr}/webrtc/{bot}   (SDP offer; media to {} on UDP {}-{})", webrtc.advertise, webrtc.ports.0, webrtc.ports.1);
    }
    say!("  registry    {}", c.registry.display());
    say!("  control     {}", c.control_socket.display());
    say!("  status      cxb core status --port {}", addr.port());
    let _ = std::io::stdout().flush();
}

fn status(path: &std::path::Path, list_slots: bool) -> anyhow::Result<()> {
    let seg = Segment::open(path).with_context(|| format!("reading the slot registry {}", path.display()))?;
    let h = seg.header();
    let now = cxb_engine::server::unix_ms();
    let age = now.saturating_sub(h.heartbeat_ms);
    println!("engine pid {}  up {:.0} s  heartbeat {:.1} s ago{}", h.pid, now.saturating_sub(h.started_ms) as f64 / 1e3, age as f64 / 1e3,
        if age > 5_000 { "  (stale: the engine may be gone)" } else { "" });
    println!("{:>6}  {:>8}  {:>6}  {:>6}  {:>8}  {:>6}  {:>8}", "worker", "driver", "slots", "active", "reserved", "free", "draining");
    if h.workers == 0 {
        bail!("the registry lists no workers");
    }
    for w in 0..h.workers {
        let rec = seg.worker(w);
        let (mut active, mut reserved) = (0, 0);
        for s in 0..h.slots_per_worker {
            let r = seg.slot(w, s);
            match r.state {
                cxb_engine::registry::SlotState::Active | cxb_engine::registry::SlotState::Draining => active += 1,
                cxb_engine::registry::SlotState::Reserved => reserved += 1,
                cxb_engine::registry::SlotState::Free => continue,
            }
            if list_slots {
                println!("        slot {s:>5}  {:<9} {:<12} bot {:<10} frames in {} out {}", r.state.name(), r.call_id, r.bot_id, r.frames_in, r.frames_out);
            }
        }
        let driver = match rec.driver { 1 => "io_uring", 2 => "epoll", _ => "-" };
        println!("{w:>6}  {driver:>8}  {:>6}  {active:>6}  {reserved:>8}  {:>6}  {:>8}", h.slots_per_worker, rec.free, if rec.draining { "yes" } else { "no" });
    }
    Ok(())
}
