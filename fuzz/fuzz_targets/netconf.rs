//! `NetConf::parse` on arbitrary stdin: it must return a config or an error
//! carrying a CNI code (1, 6 or 7), never panic; and the peeks the plugin does
//! before parsing (error version, logging) must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ohno::cni::version::SUPPORTED;
use ohno::config::{peek_version, NetConf};

fuzz_target!(|data: &[u8]| {
    let _ = peek_version(data);
    let _ = NetConf::peek_logging(data);
    match NetConf::parse(data, &[]) {
        Ok(conf) => {
            // The negotiated version is one Ohno speaks and parses.
            assert!(
                SUPPORTED.contains(&conf.cni_version.as_str()),
                "{}",
                conf.cni_version
            );
            let _ = conf.version();
            assert!(!conf.ipam.pools.is_empty());
            for p in &conf.ipam.pools {
                // Validation promised: a block fits its subnet, no host bits.
                assert!(p.block_size >= p.subnet.prefix(), "{p:?}");
                assert!(p.block_size <= p.subnet.bits(), "{p:?}");
                assert_eq!(p.subnet.addr(), p.subnet.network(), "{p:?}");
            }
        }
        Err(e) => {
            assert!(
                matches!(e.code(), 1 | 5 | 6 | 7),
                "code {} for {e}",
                e.code()
            );
            let _ = e.to_string();
        }
    }
});
