//! `ohnod install` and `ohnod uninstall` through the binary, into a
//! temporary root laid out as a node is (/opt/cni/bin, /etc/cni/net.d,
//! /var/lib/ohno) with a Secret mounted the way the kubelet mounts one
//! (files as symlinks into a `..data` directory): the binaries and the
//! rendered conflist land by rename, the certificates root-only, a second
//! install changes nothing, and uninstall removes exactly what install wrote.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use common::*;

const OHNOD: &str = env!("CARGO_BIN_EXE_ohnod");

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(OHNOD);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ohnod");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TEMPLATE: &str = r#"{
  "cniVersion": "1.1.0", "name": "podnet",
  "plugins": [
    { "type": "ohno", "bridge": "ohno0", "node": "${NODE_NAME}",
      "policy": { "path": "${POLICY}", "cacheDir": "${ROOT}/var/lib/ohno/policy-cache" },
      "ipam": { "type": "ohno", "lockDir": "${ROOT}/run/ohno",
                "pools": ${OHNO_POOLS},
                "store": { "type": "etcd", "endpoints": ["https://192.0.2.1:2379"],
                           "caFile": "${OHNO_CERTS_DIR}/ca.pem",
                           "certFile": "${OHNO_CERTS_DIR}/client.pem",
                           "keyFile": "${OHNO_CERTS_DIR}/client-key.pem" } } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}"#;

#[test]
fn install_writes_by_rename_changes_nothing_twice_and_uninstall_removes_exactly_it() {
    let root = TempDir::new();
    let r = root.path();
    let bin = r.join("opt/cni/bin");
    let conf = r.join("etc/cni/net.d");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    // Someone else's files, which must survive.
    std::fs::write(bin.join("bridge"), b"not ours").unwrap();
    std::fs::write(conf.join("99-other.conflist"), b"{}").unwrap();
    // A Secret as the kubelet mounts it.
    let secret = r.join("secret");
    let data = secret.join("..2026_12_04_00_00_00.1");
    std::fs::create_dir_all(&data).unwrap();
    for (name, body) in [
        ("ca.pem", "CA"),
        ("client.pem", "CERT"),
        ("client-key.pem", "KEY"),
    ] {
        std::fs::write(data.join(name), body).unwrap();
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), secret.join("..data")).unwrap();
    for name in ["ca.pem", "client.pem", "client-key.pem"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), secret.join(name)).unwrap();
    }
    let template = r.join("template.json");
    std::fs::write(&template, TEMPLATE).unwrap();
    let certs = r.join("var/lib/ohno/etcd");
    let state = r.join("var/lib/ohno");
    let root_s = r.to_str().unwrap();
    let args: Vec<String> = [
        "install",
        "--template",
        template.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
        "--conf-dir",
        conf.to_str().unwrap(),
        "--certs-from",
        secret.to_str().unwrap(),
        "--certs-dir",
        certs.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/namespace_pools.wasm");
    assert!(policy.is_file(), "build the policies first (make policies)");
    let policy_s = policy.to_str().unwrap().to_string();
    let env = [
        ("NODE_NAME", "node-x"),
        ("ROOT", root_s),
        ("POLICY", policy_s.as_str()),
        (
            "OHNO_POOLS",
            r#"[{"name": "default", "subnet": "10.85.0.0/16"}]"#,
        ),
    ];

    // A variable without a value: nothing is installed.
    let (ok, _, err) = run(&argv, &env[..3]);
    assert!(!ok);
    assert!(err.contains("${OHNO_POOLS} has no value"), "{err}");
    assert!(!bin.join("ohno").exists());
    assert!(!conf.join("10-ohno.conflist").exists());

    let (ok, out, err) = run(&argv, &env);
    assert!(ok, "{out}\n{err}");
    let built = Path::new(OHNOD).parent().unwrap();
    for b in ["ohno", "ohnoctl", "ohnod"] {
        let installed = bin.join(b);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(built.join(b)).unwrap(),
            "{b} is the built binary"
        );
        assert_eq!(mode(&installed), 0o755);
    }
    let conflist = std::fs::read_to_string(conf.join("10-ohno.conflist")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&conflist).expect("valid JSON");
    assert_eq!(doc["plugins"][0]["node"], "node-x");
    assert_eq!(
        doc["plugins"][0]["ipam"]["store"]["caFile"],
        certs.join("ca.pem").to_str().unwrap()
    );
    assert_eq!(mode(&certs), 0o700);
    for name in ["ca.pem", "client.pem", "client-key.pem"] {
        let p = certs.join(name);
        assert!(
            std::fs::symlink_metadata(&p).unwrap().file_type().is_file(),
            "{name} copied, not linked"
        );
        assert_eq!(mode(&p), 0o600, "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(certs.join("client-key.pem")).unwrap(),
        "KEY"
    );
    assert!(
        !certs.join("..data").exists(),
        "the Secret's own links are not copied"
    );
    // The policy is precompiled: its cache holds one entry.
    let cache = r.join("var/lib/ohno/policy-cache");
    let entries = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert!(entries >= 1, "no precompiled entry in {}", cache.display());
    let leftovers: Vec<String> = std::fs::read_dir(&conf)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Again: every file unchanged, the conflist not even touched.
    let before = std::fs::metadata(conf.join("10-ohno.conflist"))
        .unwrap()
        .modified()
        .unwrap();
    let (ok, out, _) = run(&argv, &env);
    assert!(ok);
    assert!(!out.contains("wrote"), "{out}");
    assert_eq!(
        std::fs::metadata(conf.join("10-ohno.conflist"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );

    // A file changed since install is someone else's: uninstall keeps it.
    std::fs::write(certs.join("ca.pem"), "ROTATED").unwrap();
    let (ok, out, err) = run(&["uninstall", "--state-dir", state.to_str().unwrap()], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("kept") && out.contains("ca.pem"), "{out}");
    for b in ["ohno", "ohnoctl", "ohnod"] {
        assert!(!bin.join(b).exists(), "{b} removed");
    }
    assert!(!conf.join("10-ohno.conflist").exists());
    assert!(bin.join("bridge").exists() && conf.join("99-other.conflist").exists());
    assert!(certs.join("ca.pem").exists());
    assert!(!certs.join("client.pem").exists());
    assert!(!state.join("install.json").exists());
    assert!(
        !cache.exists(),
        "the precompiled entry and its directory are install's"
    );
    // Not installed: uninstall says so.
    let (ok, _, err) = run(&["uninstall", "--state-dir", state.to_str().unwrap()], &[]);
    assert!(!ok && err.contains("install.json"), "{err}");
}
