#!/usr/bin/env python3
"""Checks examples/kubernetes without a cluster (a test of `make test`):

1. `kubectl kustomize` builds the kustomization (when kubectl is present;
   otherwise the files it lists are read as they are);
2. every resource validates, strictly, against the pinned Kubernetes version's
   schemas (kubernetes-validate, installed by scripts/setup.sh);
3. the DaemonSet agrees with what `ohnod` does: its commands, the environment
   variables `ohnod install --help` names, the probes' paths and port against
   the agent config's metricsAddress, the host paths against the conflist
   template's lockDir and the agent config's network, the Secret's mode;
4. `ohnod install` itself renders the ConfigMap's template into a temporary
   root (the plugin's part parses as the plugin parses it).

Usage: check-manifests.py OHNOD
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml
import kubernetes_validate

KUBERNETES_VERSION = "1.30.0"
DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "kubernetes")
problems = []


def check(ok, what):
    if not ok:
        problems.append(what)


def resources():
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", DIR], check=True, capture_output=True, text=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    print("check-manifests: kubectl not found; reading the kustomization's files as they are")
    with open(os.path.join(DIR, "kustomization.yaml")) as f:
        files = yaml.safe_load(f)["resources"]
    docs = []
    for name in files:
        with open(os.path.join(DIR, name)) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def main():
    ohnod = sys.argv[1]
    docs = resources()
    for d in docs:
        try:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{d['kind']}/{d['metadata']['name']}: {e.message}")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    ds = by[("DaemonSet", "ohnod")]
    cm = by[("ConfigMap", "ohno-config")]["data"]
    spec = ds["spec"]["template"]["spec"]
    check(spec.get("hostNetwork") is True, "DaemonSet: hostNetwork")
    check(spec.get("priorityClassName") == "system-node-critical", "DaemonSet: priorityClassName")
    check({"operator": "Exists"} in spec.get("tolerations", []), "DaemonSet: tolerate everything")
    check(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1, "maxUnavailable 1")
    init = spec["initContainers"][0]
    main_c = spec["containers"][0]
    check(init["command"][-1] == "install", f"init command {init['command']}")
    check(main_c["command"][1:3] == ["run", "--config"], f"main command {main_c['command']}")

    # The environment the init container sets is what `ohnod install` reads.
    helptext = subprocess.run([ohnod, "install", "--help"], check=True, capture_output=True, text=True).stdout
    # clap prints each flag's variable as "[env: NAME=]".
    known = {w.split("=")[0] for w in helptext.replace("]", " ").split() if w.startswith("OHNO_")}
    check(len(known) >= 6, f"ohnod install --help names too few variables: {sorted(known)}")
    env = {e["name"]: e.get("value") for e in init["env"]}
    for name in env:
        if name.startswith("OHNO_"):
            check(name in known, f"init env {name} is not an ohnod install variable ({sorted(known)})")
    check(env.get("NODE_NAME") is None and any(
        e["name"] == "NODE_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" for e in init["env"]
    ), "NODE_NAME from the downward API")

    mounts = lambda c: {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec["volumes"]}
    host = {v["hostPath"]["path"]: n for n, v in vols.items() if "hostPath" in v}
    for p in ["/opt/cni/bin", "/etc/cni/net.d", "/run/ohno", "/var/lib/ohno"]:
        check(p in host, f"hostPath {p}")
    secret = [v for v in vols.values() if "secret" in v]
    check(secret and secret[0]["secret"].get("defaultMode") == 0o400, "the Secret mounted 0400")

    # The agent's config and the conflist template, as install and run see them.
    agent_path = main_c["command"][3]
    check(os.path.basename(agent_path) in cm, f"{agent_path} is not a key of the ConfigMap")
    agent = json.loads(cm[os.path.basename(agent_path)])
    port = int(agent["metricsAddress"].rsplit(":", 1)[1])
    check(main_c["ports"][0]["containerPort"] == port, "metrics port")
    check(main_c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}, "liveness probe")
    check(main_c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}, "readiness probe")
    net_dir = os.path.dirname(agent["network"])
    check(mounts(main_c).get(net_dir) == host.get("/etc/cni/net.d"), f"the agent sees {net_dir}")
    check(os.path.basename(agent["network"]) == env.get("OHNO_CONF_NAME"), "agent network = installed conflist")
    template_key = os.path.basename(env.get("OHNO_CONFLIST_TEMPLATE", ""))
    check(template_key in cm, f"template {template_key} in the ConfigMap")
    template = cm[template_key]
    plugin = json.loads(template.replace("${NODE_NAME}", "n").replace("${OHNO_CERTS_DIR}", "/x"))["plugins"][0]
    lock = plugin["ipam"]["lockDir"]
    check(mounts(main_c).get(lock) == host.get(lock), f"the agent mounts the lockDir {lock} from the host")
    # The certificates land on the host (the plugin reads them there), at
    # the same path inside the init container and on the node.
    certs = env.get("OHNO_ETCD_CERTS_DIR", "")
    on_host = [mp for mp, n in mounts(init).items()
               if certs.startswith(mp + "/") and "hostPath" in vols[n] and vols[n]["hostPath"]["path"] == mp]
    check(bool(on_host), f"certs dir {certs} is not on a host path mounted at the same place")

    # `ohnod install` renders the template into a temporary root.
    with tempfile.TemporaryDirectory() as root:
        t = os.path.join(root, "template")
        with open(t, "w") as f:
            f.write(template)
        r = subprocess.run([ohnod, "install", "--template", t,
                            "--bin-dir", os.path.join(root, "bin"), "--conf-dir", os.path.join(root, "conf"),
                            "--certs-dir", os.path.join(root, "certs"), "--state-dir", os.path.join(root, "state")],
                           env={"PATH": os.environ.get("PATH", ""), "NODE_NAME": "node-x"},
                           capture_output=True, text=True)
        check(r.returncode == 0, f"ohnod install of the template failed: {r.stderr}")
        if r.returncode == 0:
            with open(os.path.join(root, "conf", env.get("OHNO_CONF_NAME"))) as f:
                rendered = json.load(f)
            check(rendered["plugins"][0]["node"] == "node-x", "rendered node name")

    if problems:
        print("check-manifests: FAILED")
        for p in problems:
            print("  -", p)
        sys.exit(1)
    print(f"check-manifests: {len(docs)} resources valid against Kubernetes {KUBERNETES_VERSION} (strict), "
          "and consistent with ohnod")


main()
