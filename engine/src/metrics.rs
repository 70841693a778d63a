//! Per-worker counters, written by their worker with relaxed atomics (no locks, no lookups on
//! the media path) and rendered as Prometheus text by whichever worker serves `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::error::{EndReason, ProtocolErrorKind};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the latency buckets, in microseconds.
const LATENESS_BUCKETS_US: [u64; 16] = [
    250, 500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 40_000, 80_000,
    160_000, 320_000, 1_000_000,
];

/// A fixed-bucket histogram of short durations (playout lateness, the engine's own latency).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENESS_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one frame's lateness.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENESS_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENESS_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

/// What one worker counts.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Calls in progress.
    pub live_calls: AtomicU64,
    /// Calls accepted (WebSocket upgraded).
    pub calls_started: Counter,
    ended: [Counter; EndReason::SIMPLE.len()],
    protocol_errors: [Counter; ProtocolErrorKind::ALL.len()],
    /// 20 ms frames received.
    pub frames_in: Counter,
    /// 20 ms frames sent.
    pub frames_out: Counter,
    /// Inbound frames that arrived after their turn.
    pub late_frames: Counter,
    /// Inbound frames never received (filled with silence).
    pub lost_frames: Counter,
    /// How late outbound frames left relative to their playout schedule.
    pub lateness: Histogram,
    /// AI bots: from synthesised audio arriving to its first frame on the carrier's wire
    /// (audio that went into an empty playout queue).
    pub agent_wire: Histogram,
    /// AI bots: from a provider's event arriving to the provider request it caused being
    /// issued (a final transcript to the language model, a sentence to synthesis).
    pub agent_dispatch: Histogram,
    /// Upgrades refused with 503 because every slot was taken.
    pub rejected_busy: Counter,
    /// AI calls refused with 503 because the outbox could not take their results (over its
    /// disk cap, or its writes fail).
    pub rejected_outbox: Counter,
    /// Requests for a bot that does not exist.
    pub rejected_unknown_bot: Counter,
    /// Connections refused with 429 by their address's limits (too many waiting for their
    /// heads, or backing off after failed admissions).
    pub rejected_address: Counter,
    /// Calls refused for want of a valid credential, by [`Refusal::ALL`](crate::admission::Refusal::ALL) reason.
    pub refused: [Counter; crate::admission::Refusal::ALL.len()],
}

impl WorkerMetrics {
    /// Counts a refused admission.
    pub fn refused(&self, reason: crate::admission::Refusal) {
        let label = reason.label();
        if let Some(i) = crate::admission::Refusal::ALL.iter().position(|l| *l == label) {
            self.refused[i].add(1);
        }
    }

    /// Admissions refused for `label` (one of [`Refusal::ALL`](crate::admission::Refusal::ALL)).
    pub fn refused_count(&self, label: &str) -> u64 {
        crate::admission::Refusal::ALL.iter().position(|l| *l == label).map_or(0, |i| self.refused[i].get())
    }

    /// Counts a call's end.
    pub fn call_ended(&self, reason: EndReason) {
        match reason {
            EndReason::Protocol(kind) => {
                let i = ProtocolErrorKind::ALL
                    .iter()
                    .position(|k| *k == kind)
                    .unwrap_or(0);
                self.protocol_errors[i].add(1);
            }
            other => {
                let i = EndReason::SIMPLE
                    .iter()
                    .position(|r| *r == other)
                    .unwrap_or(0);
                self.ended[i].add(1);
            }
        }
    }

    /// Calls ended for `reason` (protocol errors of every kind count together).
    pub fn ended(&self, reason: EndReason) -> u64 {
        match reason {
            EndReason::Protocol(_) => self.protocol_errors.iter().map(Counter::get).sum(),
            other => EndReason::SIMPLE
                .iter()
                .position(|r| *r == other)
                .map_or(0, |i| self.ended[i].get()),
        }
    }

    /// Protocol errors of `kind`.
    pub fn protocol_errors(&self, kind: ProtocolErrorKind) -> u64 {
        ProtocolErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.protocol_errors[i].get())
    }

    /// Adds the jitter buffer's late and lost counts.
    pub fn add_jitter(&self, late: u64, lost: u64) {
        if late > 0 {
            self.late_frames.add(late);
        }
        if lost > 0 {
            self.lost_frames.add(lost);
        }
    }
}

/// Renders every worker's metrics in the Prometheus text format.
pub fn render<'a>(workers: impl Iterator<Item = &'a WorkerMetrics> + Clone) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let each = |out: &mut String,
                name: &str,
                kind: &str,
                help: &str,
                f: &dyn Fn(&WorkerMetrics) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (w, m) in workers.clone().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", f(m));
        }
    };
    each(
        &mut out,
        "cxb_live_calls",
        "gauge",
        "Calls in progress.",
        &|m| m.live_calls.load(Relaxed),
    );
    each(
        &mut out,
        "cxb_calls_started_total",
        "counter",
        "Calls accepted.",
        &|m| m.calls_started.get(),
    );
    let _ = writeln!(
        out,
        "# HELP cxb_calls_ended_total Calls ended, by reason.\n# TYPE cxb_calls_ended_total counter"
    );
    for (w, m) in workers.clone().enumerate() {
        for (i, reason) in EndReason::SIMPLE.iter().enumerate() {
            let _ = writeln!(
                out,
                "cxb_calls_ended_total{{worker=\"{w}\",reason=\"{}\"}} {}",
                reason.label(),
                m.ended[i].get()
            );
        }
        let protocol: u64 = m.protocol_errors.iter().map(Counter::get).sum();
        let _ = writeln!(
            out,
            "cxb_calls_ended_total{{worker=\"{w}\",reason=\"protocol_error\"}} {protocol}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP cxb_protocol_errors_total Peers cut off for breaking the protocol, by kind.\n# TYPE cxb_protocol_errors_total counter"
    );
    for (w, m) in workers.clone().enumerate() {
        for (i, kind) in ProtocolErrorKind::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cxb_protocol_errors_total{{worker=\"{w}\",kind=\"{}\"}} {}",
                kind.label(),
                m.protocol_errors[i].get()
            );
        }
    }
    each(
        &mut out,
        "cxb_frames_in_total",
        "counter",
        "20 ms frames received.",
        &|m| m.frames_in.get(),
    );
    each(
        &mut out,
        "cxb_frames_out_total",
        "counter",
        "20 ms frames sent.",
        &|m| m.frames_out.get(),
    );
    each(
        &mut out,
        "cxb_late_frames_total",
        "counter",
        "Inbound frames that arrived after their turn.",
        &|m| m.late_frames.get(),
    );
    each(
        &mut out,
        "cxb_lost_frames_total",
        "counter",
        "Inbound frames never received.",
        &|m| m.lost_frames.get(),
    );
    each(
        &mut out,
        "cxb_rejected_busy_total",
        "counter",
        "Upgrades refused: no free slot.",
        &|m| m.rejected_busy.get(),
    );
    each(
        &mut out,
        "cxb_rejected_outbox_total",
        "counter",
        "AI calls refused (503): the outbox could not take their results.",
        &|m| m.rejected_outbox.get(),
    );
    each(
        &mut out,
        "cxb_rejected_unknown_bot_total",
        "counter",
        "Requests for an unknown bot.",
        &|m| m.rejected_unknown_bot.get(),
    );
    each(
        &mut out,
        "cxb_rejected_address_total",
        "counter",
        "Connections refused by their address's limits (429).",
        &|m| m.rejected_address.get(),
    );
    let _ = writeln!(
        out,
        "# HELP cxb_admission_refused_total Calls refused with 401, by reason.\n# TYPE cxb_admission_refused_total counter"
    );
    for (w, m) in workers.clone().enumerate() {
        for (i, reason) in crate::admission::Refusal::ALL.iter().enumerate() {
            let _ = writeln!(out, "cxb_admission_refused_total{{worker=\"{w}\",reason=\"{reason}\"}} {}", m.refused[i].get());
        }
    }
    let workers: Vec<&WorkerMetrics> = workers.collect();
    histogram(
        &mut out,
        "cxb_playout_lateness_seconds",
        "Outbound frame lateness against the playout schedule.",
        &workers,
        |m| &m.lateness,
    );
    histogram(
        &mut out,
        "cxb_agent_wire_seconds",
        "AI bots: synthesised audio arriving to its first frame on the wire.",
        &workers,
        |m| &m.agent_wire,
    );
    histogram(
        &mut out,
        "cxb_agent_dispatch_seconds",
        "AI bots: a provider event arriving to the request it causes.",
        &workers,
        |m| &m.agent_dispatch,
    );
    out
}

/// Appends host-wide gauges (name, help, value), e.g. the result outbox's.
pub fn render_gauges(out: &mut String, gauges: &[(&str, &str, u64)]) {
    for (name, help, value) in gauges {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    workers: &[&WorkerMetrics],
    pick: impl Fn(&WorkerMetrics) -> &Histogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (w, m) in workers.iter().enumerate() {
        let h = pick(m);
        let mut cumulative = 0;
        for (i, bound) in LATENESS_BUCKETS_US.iter().enumerate() {
            cumulative += h.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{worker=\"{w}\",le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += h.buckets[LATENESS_BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{worker=\"{w}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{worker=\"{w}\"}} {}",
            h.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{worker=\"{w}\"}} {cumulative}");
    }
}
