//! How the engine runs: [`EngineConfig`] and its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::results::ResultSink;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where to listen for carriers and HTTP.
    pub listen: SocketAddr,
    /// Worker threads (one per core by default).
    pub workers: usize,
    /// Call slots per worker.
    pub slots_per_worker: usize,
    /// Use epoll even where io_uring is available.
    pub force_epoll: bool,
    /// Pin each worker to its own core.
    pub pin: bool,
    /// The slot registry's shared-memory file.
    pub registry: PathBuf,
    /// The Unix socket for commands.
    pub control_socket: PathBuf,
    /// Offer the built-in `echo` and `turn-echo` bots to anyone who reaches the engine (demos,
    /// load tests). Without it they answer 404.
    pub demo_bots: bool,
    /// Offer the `fault` bot (panics on DTMF), for isolation tests (with `demo_bots`).
    pub fault_injection: bool,
    /// Call-token keys held locally (a standalone engine, tests); the fleet's come with the
    /// heartbeat's answer.
    pub call_keys: cxb_contract::call_token::KeyRing,
    /// This host's id in the fleet: call tokens for another host are refused.
    pub host_id: Option<String>,
    /// How carriers reach this engine (`wss://host`), for the URL Twilio signs.
    pub advertise: Option<String>,
    /// Which addresses calls' requests for their tenant may reach (public only by default).
    pub egress: cxb_contract::egress::EgressPolicy,
    /// AI calls one worker (core) carries at most; beyond, new AI calls answer 503 before the
    /// upgrade instead of the core falling behind every call it has. Default 500: the load
    /// measured to keep the engine's added latency under 20 ms at p99 (docs/PERFORMANCE.md).
    pub ai_calls_per_worker: usize,
    /// Per-address limits before the upgrade.
    pub address_limits: crate::limits::AddressLimitConfig,
    /// Serve `wss://` (and `https://` for health and metrics) with this certificate.
    pub tls: Option<crate::tls::TlsConfig>,
    /// A call with no inbound bytes for this long ends.
    pub idle_timeout: Duration,
    /// A write the peer does not take within this long ends the call (it stopped reading).
    pub write_timeout: Duration,
    /// The kernel send buffer of each call's socket: with `write_timeout`, the bound on what
    /// a peer that stops reading can hold up.
    pub send_buffer: usize,
    /// Where AI bots come from (local files, the API).
    pub bots: crate::agent::BotSource,
    /// Where finished AI calls go (the durable outbox); without one, results are logged and
    /// dropped.
    pub results: Option<std::sync::Arc<dyn ResultSink>>,
    /// The turn-completion model, for bots whose turn detection is `model`.
    pub turn_model: Option<std::sync::Arc<dyn crate::turn_model::TurnJudge>>,
    /// Speak SIP (UDP) with RTP media, as well as the carriers' WebSockets.
    pub sip: Option<crate::sip::SipConfig>,
    /// Take browsers' calls over WebRTC (`POST /webrtc/BOT`).
    pub webrtc: Option<WebRtcConfig>,
}

/// Browser calls over WebRTC: ICE-lite, one host candidate per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebRtcConfig {
    /// The address browsers send to (the calls' host candidates): this host as they reach it.
    pub advertise: std::net::IpAddr,
    /// The address the calls' UDP sockets bind.
    pub bind: std::net::IpAddr,
    /// The UDP ports calls take, `low` to `high` inclusive, shared out among the workers.
    pub ports: (u16, u16),
}

impl WebRtcConfig {
    /// Calls on ports 50000–51999, advertised as `advertise` and bound on every interface.
    pub fn new(advertise: std::net::IpAddr) -> WebRtcConfig {
        WebRtcConfig { advertise, bind: std::net::IpAddr::from([0, 0, 0, 0]), ports: (50_000, 51_999) }
    }
}

impl EngineConfig {
    /// Defaults for listening on `listen`: every core, 1,000 slots each, files named after
    /// the port under the runtime directory.
    pub fn new(listen: SocketAddr) -> EngineConfig {
        let dir = runtime_dir();
        EngineConfig {
            listen,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            slots_per_worker: 1_000,
            force_epoll: false,
            pin: true,
            registry: dir.join(format!("cxb-core-{}.slots", listen.port())),
            control_socket: dir.join(format!("cxb-core-{}.sock", listen.port())),
            demo_bots: false,
            fault_injection: false,
            call_keys: cxb_contract::call_token::KeyRing::default(),
            host_id: None,
            advertise: None,
            egress: cxb_contract::egress::EgressPolicy::public_only(),
            ai_calls_per_worker: 500,
            address_limits: crate::limits::AddressLimitConfig::default(),
            tls: None,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(2),
            send_buffer: 64 * 1024,
            bots: crate::agent::BotSource {
                cache_ttl: Duration::from_secs(10),
                ..Default::default()
            },
            results: None,
            turn_model: None,
            sip: None,
            webrtc: None,
        }
    }
}

/// Where the registry and control socket live by default: `/dev/shm` when present (memory,
/// never written back to disk), else the temporary directory.
pub fn runtime_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}
