//! The Kubernetes manifests of examples/kubernetes, without a cluster:
//! `scripts/check-manifests.py` builds the kustomization (kubectl, when
//! present), validates every resource strictly against a pinned Kubernetes
//! version's schemas, checks the DaemonSet against what `ohnod` reads and
//! serves, and renders the ConfigMap's template with the real `ohnod install`.

use std::path::Path;
use std::process::Command;

#[test]
fn manifests_validate_and_agree_with_ohnod() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-manifests.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_ohnod"))
        .output()
        .expect("run python3 scripts/check-manifests.py (scripts/setup.sh installs what it needs)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("7 resources valid against Kubernetes 1.30.0 (strict)"),
        "{text}"
    );
}
