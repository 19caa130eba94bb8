//! `CniResult::parse` on arbitrary JSON (a prevResult), then `to_json` in every
//! supported version and parse again: the result must round-trip unchanged; and
//! appending Ohno's own result to it (what ADD does with a prevResult) must leave
//! its entries alone and re-index Ohno's past its interfaces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ohno::cni::result::{CniResult, Interface, IpConfig};
use ohno::cni::version::SUPPORTED;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(r) = CniResult::parse(&v) else {
        return;
    };
    for version in SUPPORTED {
        let j = r.to_json(version);
        assert_eq!(j["cniVersion"], *version);
        let back = CniResult::parse(&j)
            .unwrap_or_else(|e| panic!("to_json({version}) does not parse back: {e}\n{j}"));
        assert_eq!(back, r, "round trip through {version}\n{j}");
        // Through text as well, the way it travels between plugins.
        let text = serde_json::to_string(&j).expect("serialize");
        let reparsed: Value = serde_json::from_str(&text).expect("reparse text");
        assert_eq!(CniResult::parse(&reparsed).expect("parse text"), r);
    }
    // ADD appends its own result to the (untrusted) prevResult: the earlier
    // plugins' entries stay as they were, ours are re-indexed past theirs.
    let ours = CniResult {
        interfaces: vec![
            Interface {
                name: "ohno0".into(),
                ..Default::default()
            },
            Interface {
                name: "eth0".into(),
                sandbox: Some("/var/run/netns/p".into()),
                ..Default::default()
            },
        ],
        ips: vec![IpConfig {
            address: "10.85.4.2/26".into(),
            gateway: Some("10.85.4.1".into()),
            interface: Some(1),
        }],
        ..Default::default()
    };
    let n = r.interfaces.len();
    let merged = r.clone().merge(ours.clone());
    assert_eq!(merged.interfaces.len(), n + ours.interfaces.len());
    assert_eq!(&merged.ips[..r.ips.len()], &r.ips[..]);
    assert_eq!(merged.ips[r.ips.len()].interface, Some(1 + n));
    let merged_json = merged.to_json("1.1.0");
    assert_eq!(
        CniResult::parse(&merged_json).expect("merged parses"),
        merged
    );
});
