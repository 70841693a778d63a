#![no_main]
//! The simulator's CXML reader on any bytes: never panics, and what it reads keeps its bounds.
use cxb_dialler::simulator::{MAX_PARAMETERS, Plan, read_plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match read_plan(data) {
        Ok(Plan::Stream { url, parameters }) => {
            assert!(!url.trim().is_empty());
            assert!(parameters.len() <= MAX_PARAMETERS);
            assert!(parameters.iter().all(|(name, _)| !name.is_empty()));
        }
        Ok(Plan::Service { provider, .. }) => assert!(!provider.is_empty()),
        Ok(Plan::Hangup | Plan::Unsupported(_)) | Err(_) => {}
    }
});
