//! The built-in demo bots (`cxb core --demo-bots`) and the lookup of a bot id.

/// A bot the engine can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BotKind {
    /// Every inbound frame runs the whole media path and comes straight back out.
    Echo,
    /// Records the caller's turn and plays it back after it ends; barge-in clears playback.
    TurnEcho,
    /// Echo that panics on any DTMF digit: for proving that a panic ends only its own call.
    /// Only available when the engine is started with fault injection enabled.
    Fault,
    /// An AI bot: speech-to-text, a language model and text-to-speech, configured per bot
    /// (from the API or a local file).
    Agent,
}

impl BotKind {
    /// The built-in bot an id from the URL path names, if there is one: `echo` and
    /// `turn-echo` only with `demo_bots`, `fault` only with `fault_injection` as well.
    pub fn lookup(id: &str, demo_bots: bool, fault_injection: bool) -> Option<BotKind> {
        match id {
            "echo" if demo_bots => Some(BotKind::Echo),
            "turn-echo" if demo_bots => Some(BotKind::TurnEcho),
            "fault" if demo_bots && fault_injection => Some(BotKind::Fault),
            _ => None,
        }
    }

    /// The id the bot answers to.
    pub const fn id(self) -> &'static str {
        match self {
            BotKind::Echo => "echo",
            BotKind::TurnEcho => "turn-echo",
            BotKind::Fault => "fault",
            BotKind::Agent => "agent",
        }
    }
}
