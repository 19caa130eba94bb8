//! An ADD that fails after its first side effect undoes everything it did: the
//! address is released, the veth removed, an unused masquerade chain dropped.
//! Debug builds of `ohno` honour `OHNO_FAULT=<step>`, which fails the ADD right
//! after that step; this file has one test, so setting the variable is race-free.

mod common;

use common::*;
use serde_json::json;

const STEPS: &[&str] = &["ipam", "bridge", "veth", "address", "routes", "masquerade"];

#[test]
fn add_failing_after_any_step_leaves_no_address_link_or_rule() {
    require_root();
    for step in STEPS {
        let node = Node::new();
        let pod = Pod::new();
        let mut conf = node.ohno_conf("1.1.0");
        conf["ipMasq"] = json!(true);

        std::env::set_var("OHNO_FAULT", step);
        let failed = node.ohno("ADD", &pod, &conf);
        std::env::remove_var("OHNO_FAULT");
        failed.error_with_code(102);
        let details = failed.json()["details"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            details.contains(&format!("injected fault after {step}")),
            "{step}: {details}"
        );

        // Nothing of the attachment is left: no host veth, no pod interface,
        // no allocation, no masquerade rule.
        assert!(
            node.host_veths().is_empty(),
            "{step}: host veths left: {:?}",
            node.host_veths()
        );
        assert!(
            pod.ns.link("eth0").is_none(),
            "{step}: pod interface left behind"
        );
        assert!(
            node.allocations(&conf).is_empty(),
            "{step}: allocation left behind"
        );
        let ruleset = node.host.nft_ruleset().to_string();
        assert!(
            !ruleset.contains("masquerade"),
            "{step}: masquerade rule left: {ruleset}"
        );

        // The address was really released: the next ADD gets the block's first address.
        let ok = node.add(&pod, &conf);
        let (addr, _, gw) = first_ipv4(&ok);
        let gw = gw.expect("gateway");
        assert_eq!(u32::from(addr), u32::from(gw) + 1, "{step}: {ok}");
        assert_eq!(node.allocations(&conf).len(), 1);
        node.ohno("DEL", &pod, &conf).success();
    }
}
