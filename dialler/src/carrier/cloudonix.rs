//! Cloudonix: calls through its REST API, call ends through its CDR webhook.
