//! `CniArgs::parse` on an arbitrary `CNI_ARGS` value: a parse or a code-4 error,
//! never a panic; what it keeps is consistent with what it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ohno::cni::args::CniArgs;

fuzz_target!(|data: &[u8]| {
    // Environment values reach the plugin as UTF-8 through std::env::var.
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    match CniArgs::parse(raw) {
        Ok(a) => {
            let parts = raw.split(';').filter(|p| !p.is_empty()).count();
            assert_eq!(a.pairs.len(), parts, "{raw:?}");
            for (k, v) in &a.pairs {
                assert!(!k.is_empty());
                assert!(!k.contains(';') && !v.contains(';'));
            }
            // Addresses only ever come from IP= pairs.
            if !a.pairs.iter().any(|(k, _)| k == "IP") {
                assert!(a.ips.is_empty(), "{raw:?}");
            }
        }
        Err(e) => assert_eq!(e.code(), 4, "{e}"),
    }
});
