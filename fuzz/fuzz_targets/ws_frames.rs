//! Any bytes, cut anywhere, as WebSocket frames from a carrier.
#![no_main]

use cxb_engine::ws::WsSocket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, u8)| {
    let (data, cut) = input;
    let mut ws = WsSocket::new();
    let at = usize::from(cut).min(data.len());
    for piece in [&data[..at], &data[at..]] {
        ws.feed(piece);
        for _ in 0..64 {
            match ws.read() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
});
