//! A bot's runtime config: the JSON `GET /v1/runtime/bots/{id}` returns (secrets included),
//! or a local bot file for `cxb core` without an API. Defined once in `cxb_contract::bot`,
//! which the API's bot document is made of too; unknown fields are ignored so an older engine
//! keeps working against a newer API.

pub use cxb_contract::bot::{
    AnsweringMachine, BotConfig, Idle, Inbound, Interruptions, MachineAction, OutboundGreeting, Provider as ProviderConfig, Tool as ToolConfig, ToolKind,
};
