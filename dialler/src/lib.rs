//! `cxb dialler`: campaign execution. It will hold campaign leases, pace calls by CPS and
//! CAC, retry by outcome, respect calling windows and the do-not-call list, route answered
//! calls to AI assistants with the seed's CXML, and screen answering machines.
//!
//! Nothing is implemented yet; the dialler issue fills this crate.
