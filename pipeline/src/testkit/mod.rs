//! Local servers that speak each vendor's protocol.

pub mod tools;
