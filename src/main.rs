//! `cxb`: the CX Bridge binary. Parses arguments and wires the services together; the
//! services themselves live in their crates.

// Printing to standard output is what a command-line front end is for.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use cxb_engine::registry::Segment;
use cxb_engine::{Engine, EngineConfig};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cxb", version, about = "CX Bridge: AI phone calls at scale")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything that exists on this host with embedded defaults (today: the engine
    /// with its built-in bots).
    Up {
        /// Address for carriers and HTTP.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// The media engine: live calls over telephony WebSockets.
    Core(CoreCommand),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct CoreCommand {
    #[command(subcommand)]
    action: Option<CoreAction>,
    #[command(flatten)]
    run: CoreArgs,
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
    /// Offer the `fault` bot, which panics on DTMF (for isolation tests).
    #[arg(long)]
    fault_injection: bool,
    /// End a call after this many seconds without inbound bytes.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up { listen } => {
            let engine = Engine::start(EngineConfig::new(listen)).context("starting the engine")?;
            print_welcome(&engine);
            engine.wait();
            Ok(())
        }
        Command::Core(CoreCommand { action: None, run }) => {
            let engine = Engine::start(engine_config(run)).context("starting the engine")?;
            print_welcome(&engine);
            engine.wait();
            Ok(())
        }
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

fn engine_config(a: CoreArgs) -> EngineConfig {
    let mut c = EngineConfig::new(a.listen);
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
    c.fault_injection = a.fault_injection;
    c.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
    c
}

fn print_welcome(engine: &Engine) {
    let addr = engine.local_addr();
    let c = engine.config();
    println!("CX Bridge is up.");
    println!("  engine      {} workers x {} call slots", c.workers, c.slots_per_worker);
    println!("  health      http://{addr}/health");
    println!("  metrics     http://{addr}/metrics");
    println!("  Twilio      ws://{addr}/ws/echo        (also /ws/turn-echo)");
    println!("  Exotel      ws://{addr}/exotel/echo    (also /exotel/turn-echo)");
    println!("  registry    {}", c.registry.display());
    println!("  control     {}", c.control_socket.display());
    println!("  status      cxb core status --port {}", addr.port());
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
