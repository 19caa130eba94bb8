//! The helpers' frame decoder (`helper::receive`), which reads what another
//! process wrote to a Unix socket: any bytes, cut anywhere. Never a panic;
//! memory follows the bytes that arrived, not the length a header claims;
//! what decodes is a message `send` would write the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ohno::helper::{receive, send, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let mut input = std::io::Cursor::new(data);
    // A stream of frames: read until the first that does not decode.
    while let Ok(msg) = receive::<serde_json::Value>(&mut input) {
        let mut again = Vec::new();
        send(&mut again, &msg).expect("a decoded message re-encodes");
        assert!(again.len() <= 4 + MAX_FRAME);
        let back: serde_json::Value =
            receive(&mut std::io::Cursor::new(&again)).expect("and decodes again");
        assert_eq!(back, msg);
    }
    assert!(input.position() as usize <= data.len());
});
