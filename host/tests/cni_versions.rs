//! Results are written in the version the runtime asked for, and VERSION
//! reports every version Ohno speaks.

mod common;

use common::{run_plugin, Invocation, Node, Pod, ALL_VERSIONS};

/// ADD in `version`, then DEL; the result speaks `version`.
fn add_answers_in(version: &str) {
    let node = Node::new();
    let conf = node.ohno_conf(version);
    let pod = Pod::new();
    let result = node.add(&pod, &conf);

    assert_eq!(result["cniVersion"], version, "{result}");
    let ips = result["ips"].as_array().expect("ips");
    assert!(!ips.is_empty(), "{result}");
    for ip in ips {
        if version.starts_with("0.") {
            assert_eq!(
                ip["version"], "4",
                "{version} needs ips[].version: {result}"
            );
        } else {
            assert!(
                ip.get("version").is_none(),
                "{version} has no ips[].version: {result}"
            );
        }
        assert!(ip["address"].is_string(), "{result}");
    }
    assert!(result["interfaces"].is_array(), "{result}");

    node.ohno("DEL", &pod, &node.with_prev_result(&conf, &result))
        .success();
    assert!(
        node.host_veths_eventually_gone(),
        "{:?}",
        node.host.link_names()
    );
}

#[test]
fn add_answers_in_version_0_3_0() {
    add_answers_in("0.3.0");
}

#[test]
fn add_answers_in_version_0_3_1() {
    add_answers_in("0.3.1");
}

#[test]
fn add_answers_in_version_0_4_0() {
    add_answers_in("0.4.0");
}

#[test]
fn add_answers_in_version_1_0_0() {
    add_answers_in("1.0.0");
}

#[test]
fn add_answers_in_version_1_1_0() {
    add_answers_in("1.1.0");
}

#[test]
fn version_command_lists_every_supported_version() {
    let node = Node::new();
    let pod = Pod::new();
    let out = run_plugin(
        &node.host,
        &Invocation::ohno("VERSION", &pod),
        r#"{"cniVersion":"1.1.0"}"#,
    );
    out.success();
    let doc = out.json();
    assert_eq!(doc["cniVersion"], "1.1.0", "{doc}");
    let supported = doc["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("no supportedVersions: {doc}"));
    for version in ALL_VERSIONS {
        assert!(
            supported.iter().any(|v| v == version),
            "{version} missing from {doc}"
        );
    }
}
