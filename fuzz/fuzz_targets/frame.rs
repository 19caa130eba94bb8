//! The helpers' frame decoder (`helper::receive`), which reads what another
//! process wrote to a Unix socket: any bytes, cut anywhere. Never a panic;
//! memory follows the bytes that arrived, not the length a header claims;
//! what decodes is a message `send` writes so that it decodes again (to the
//! same value, floats aside: serde_json's float parsing is not exact).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ohno::agent::protocol::{receive, send, MAX_FRAME};
use serde_json::Value;

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = std::io::Cursor::new(data);
    // A stream of frames: read until the first that does not decode.
    while let Ok(msg) = receive::<Value>(&mut input) {
        let mut again = Vec::new();
        send(&mut again, &msg).expect("a decoded message re-encodes");
        assert!(again.len() <= 4 + MAX_FRAME);
        let back: Value = receive(&mut std::io::Cursor::new(&again)).expect("and decodes again");
        if !has_float(&msg) {
            assert_eq!(back, msg);
        }
    }
    assert!(input.position() as usize <= data.len());
});
