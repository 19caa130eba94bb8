//! `myclusters/compose.yaml` for real, through `myclusters/devenv.sh` (what
//! `make devenv` runs): three etcd members over mutual TLS, the certificate
//! generator and the dev container, under a compose project of this run's own
//! (`ohno-test-<pid>`) on free loopback ports, with the images built from this
//! machine's Debian binaries (`myclusters/local-images.sh`; cached between
//! runs, keyed on what they are built from).
//!
//! Checked: the health check through `compose exec` reports three
//! healthy members; every container's /etc/etcd/pki holds the generator's
//! bytes and each member serves the generator's certificate; the debug `ohno`,
//! copied into the dev container and run there (`docker exec`), allocates through
//! `https://etcd1:2379,https://etcd2:2379,https://etcd3:2379` as an IPAM plugin
//! and wires a pod namespace it finds inside the dev container (bridge mode);
//! with etcd2 stopped ADDs still succeed, with etcd3 stopped too an ADD fails
//! with code 11 within the store's bound; after both return DEL releases
//! everything; `down` leaves no container, network, volume or directory.
//! `OHNO_ARCH` of another architecture fails before compose runs.
//!
//! Skipped (with a message) when no Docker engine answers.

use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const OHNO: &str = env!("CARGO_BIN_EXE_ohno");
/// The endpoints as the dev container sees them (compose's DNS names).
const ENDPOINTS: [&str; 3] = [
    "https://etcd1:2379",
    "https://etcd2:2379",
    "https://etcd3:2379",
];
const NETWORK: &str = "composenet";
const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 0);
const SUBNET_LEN: u8 = 16;
/// The store's per-attempt timeout and attempts: an unreachable quorum is
/// code 11 after about their product.
const TIMEOUT_MS: u64 = 1000;
const RETRIES: u64 = 3;
/// What `docker exec` and the process start add on top of that.
const EXEC_SLACK: Duration = Duration::from_secs(3);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .to_path_buf()
}

fn devenv_script() -> PathBuf {
    repo_root().join("myclusters/devenv.sh")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` under coreutils' `timeout`, so a hung docker call fails the
/// test instead of holding it.
fn run(limit: Duration, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(limit.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// This machine's architecture and one it is not, in `uname -m` spelling.
fn foreign_arch() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    }
}

/// Everything of compose project `project` that Docker still holds.
fn project_leftovers(project: &str) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={project}");
    let mut left = Vec::new();
    for (kind, args) in [
        ("container", vec!["ps", "-aq", "--filter", &label]),
        ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
    ] {
        let out = run(Duration::from_secs(30), "docker", &args);
        assert!(out.status.success(), "docker {args:?}: {}", text(&out));
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("{kind} {l}")),
        );
    }
    left
}

/// Take down what a run of this test killed before its `Drop` ran left
/// behind: a `<tmp>/ohno-test-<pid>-<tag>` environment whose process is
/// gone (a live PID, even a reused one, is left alone). Only projects this
/// test names, through the state devenv.sh recorded for them.
fn sweep_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ohno-test-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path().display().to_string();
        let script = devenv_script().display().to_string();
        let out = run(
            Duration::from_secs(180),
            "bash",
            &[&script, "down", "--dir", &dir],
        );
        eprintln!(
            "swept {dir} (its test process {pid} is gone): {}",
            text(&out)
        );
    }
}

/// One environment of devenv.sh: a temporary directory and a compose project
/// of this run. Dropping it takes it down (compose logs first if the test
/// failed), so no exit path leaves it behind.
struct Devenv {
    dir: PathBuf,
    project: String,
    down: bool,
    /// The dev container, looked up once.
    dev: std::cell::OnceCell<String>,
}

impl Devenv {
    fn up(tag: &str) -> Devenv {
        let project = format!("ohno-test-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&project);
        let env = Devenv {
            dir: dir.clone(),
            project: project.clone(),
            down: false,
            dev: std::cell::OnceCell::new(),
        };
        let dir_s = dir.display().to_string();
        let out = run(
            Duration::from_secs(600),
            "bash",
            &[
                &devenv_script().display().to_string(),
                "up",
                "--dir",
                &dir_s,
                "--project",
                &project,
                "--images",
                "local",
                "--ports",
                "free",
            ],
        );
        assert!(out.status.success(), "devenv.sh up: {}", text(&out));
        env
    }

    fn devenv(&self, args: &[&str]) -> Output {
        let script = devenv_script().display().to_string();
        let dir = self.dir.display().to_string();
        let mut all = vec![script.as_str(), args[0], "--dir", dir.as_str()];
        all.extend_from_slice(&args[1..]);
        run(Duration::from_secs(180), "bash", &all)
    }

    /// `docker compose ARGS` with this environment's settings.
    fn compose(&self, args: &[&str]) -> Output {
        let mut all = vec!["compose", "--"];
        all.extend_from_slice(args);
        self.devenv(&all)
    }

    /// The settings devenv.sh recorded (KEY=VALUE lines).
    fn setting(&self, key: &str) -> String {
        let out = self.devenv(&["env"]);
        assert!(out.status.success(), "devenv.sh env: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .unwrap_or_else(|| panic!("{key} not in devenv.sh env: {}", text(&out)))
    }

    /// The container of `service`, running or not (certgen has exited), by
    /// compose's labels: plain docker, for speed (compose v1 starts a Python
    /// per call).
    fn container_id(&self, service: &str) -> String {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let service_label = format!("label=com.docker.compose.service={service}");
        let out = run(
            Duration::from_secs(30),
            "docker",
            &[
                "ps",
                "-aq",
                "--filter",
                &project,
                "--filter",
                &service_label,
            ],
        );
        assert!(out.status.success(), "docker ps {service}: {}", text(&out));
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(ids.len(), 1, "containers of {service}: {}", text(&out));
        ids[0].clone()
    }

    /// `docker exec` of `command` in the dev container with `env` (KEY=VALUE).
    fn dev_exec(&self, env: &[String], command: &[&str]) -> Output {
        let id = self.dev.get_or_init(|| self.container_id("dev"));
        let mut all = vec!["exec"];
        for kv in env {
            all.extend(["-e", kv.as_str()]);
        }
        all.push(id.as_str());
        all.extend_from_slice(command);
        run(Duration::from_secs(120), "docker", &all)
    }

    /// The health table of the etcdctl command, and which endpoints
    /// it reports healthy.
    fn health(&self) -> (String, Vec<String>) {
        let out = self.devenv(&["health"]);
        let table = text(&out);
        let healthy = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells.len() >= 3 && cells[2] == "true").then(|| cells[1].to_owned())
            })
            .collect();
        (table, healthy)
    }

    /// Waits until exactly `want` are the healthy endpoints.
    fn wait_health(&self, want: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (table, mut healthy) = self.health();
            healthy.sort();
            if healthy == want {
                return table;
            }
            assert!(
                Instant::now() < deadline,
                "health never became {want:?}; last table:\n{table}"
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn take_down(&mut self) -> Output {
        self.down = true;
        self.devenv(&["down"])
    }
}

impl Drop for Devenv {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail", "20"]);
            eprintln!("compose logs of {}:\n{}", self.project, text(&logs));
        }
        let out = self.take_down();
        if !out.status.success() {
            eprintln!("devenv.sh down of {}: {}", self.project, text(&out));
        }
    }
}

/// One `ohno` call in the dev container: `CNI_*` from `env`, `conf` on stdin.
struct Call<'a> {
    command: &'a str,
    container_id: &'a str,
    netns: &'a str,
    conf: &'a Value,
}

struct CniOutput {
    code: Option<i32>,
    json: Value,
    elapsed: Duration,
    text: String,
}

fn ohno(env: &Devenv, call: &Call) -> CniOutput {
    let vars = [
        format!("CNI_COMMAND={}", call.command),
        format!("CNI_CONTAINERID={}", call.container_id),
        format!("CNI_NETNS={}", call.netns),
        "CNI_IFNAME=eth0".to_owned(),
        "CNI_PATH=/usr/local/bin".to_owned(),
        format!("OHNO_TEST_CONF={}", call.conf),
    ];
    let script = "printf '%s' \"$OHNO_TEST_CONF\" | /usr/local/bin/ohno";
    let t0 = Instant::now();
    let out = env.dev_exec(&vars, &["sh", "-c", script]);
    let elapsed = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    CniOutput {
        code: out.status.code(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        elapsed,
        text: format!("{} {}: {}", call.command, call.container_id, text(&out)),
    }
}

/// The etcd store of the dev container's view, with the generator's client
/// certificate.
fn store() -> Value {
    json!({
        "type": "etcd",
        "endpoints": ENDPOINTS,
        "prefix": "/ohno",
        "caFile": "/etc/etcd/pki/ca.pem",
        "certFile": "/etc/etcd/pki/client.pem",
        "keyFile": "/etc/etcd/pki/client-key.pem",
        "timeoutMs": TIMEOUT_MS,
        "retries": RETRIES,
        "persistMs": 0,
    })
}

/// Ohno as the IPAM plugin of a bridge: it allocates and touches no link.
fn ipam_conf() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "bridge",
        "ipam": {
            "type": "ohno",
            "node": "compose-dev",
            "logFile": "/tmp/ohno.log",
            "pools": [ { "name": "default", "subnet": format!("{SUBNET}/{SUBNET_LEN}") } ],
            "store": store(),
        }
    })
}

/// Ohno as the plugin (bridge mode), in the dev container's namespace.
fn bridge_conf() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "ohno",
        "bridge": "ohno0",
        "node": "compose-dev",
        "logFile": "/tmp/ohno.log",
        "ipam": {
            "type": "ohno",
            "pools": [ { "name": "default", "subnet": format!("{SUBNET}/{SUBNET_LEN}") } ],
            "store": store(),
        }
    })
}

/// The first address of a result, checked to be in the pool.
fn address_of(out: &CniOutput) -> (Ipv4Addr, Option<Ipv4Addr>) {
    assert_eq!(out.code, Some(0), "{}", out.text);
    let ip = &out.json["ips"][0];
    let cidr = ip["address"].as_str().unwrap_or_default();
    let addr: Ipv4Addr = cidr
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address in the result: {}", out.text));
    let mask = u32::MAX << (32 - SUBNET_LEN);
    assert_eq!(
        u32::from(addr) & mask,
        u32::from(SUBNET),
        "{addr} is not from the pool: {}",
        out.text
    );
    let gateway = ip["gateway"].as_str().and_then(|g| g.parse().ok());
    (addr, gateway)
}

/// Attachment keys of the network, read from this machine through the
/// member's published port (etcdctl with the generator's client certificate).
fn attachments(env: &Devenv, member: u8) -> Vec<String> {
    let certs = env.setting("OHNO_CERT_DIR");
    let port = env.setting(&format!("OHNO_ETCD{member}_PORT"));
    let out = run(
        Duration::from_secs(30),
        "etcdctl",
        &[
            &format!("--endpoints=https://127.0.0.1:{port}"),
            &format!("--cacert={certs}/ca.pem"),
            &format!("--cert={certs}/client.pem"),
            &format!("--key={certs}/client-key.pem"),
            "get",
            "--prefix",
            "--keys-only",
            &format!("/ohno/attachments/{NETWORK}/"),
        ],
    );
    assert!(out.status.success(), "etcdctl get: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The SHA-256 fingerprint of a PEM certificate (openssl's spelling).
fn fingerprint_of_file(path: &Path) -> String {
    let out = run(
        Duration::from_secs(30),
        "openssl",
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            &path.display().to_string(),
        ],
    );
    assert!(out.status.success(), "openssl x509: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The fingerprint of the certificate a member serves on `port`.
fn served_fingerprint(certs: &Path, port: &str) -> String {
    let c = |f: &str| certs.join(f).display().to_string();
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -CAfile {} -cert {} -key {} \
         -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        c("ca.pem"),
        c("client.pem"),
        c("client-key.pem")
    );
    let out = run(Duration::from_secs(30), "sh", &["-c", &script]);
    assert!(out.status.success(), "s_client to {port}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The names of the files in `dir`, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every container's /etc/etcd/pki holds exactly the generator's files, and
/// each member serves the generator's etcd.pem.
fn assert_certificates_are_the_generators(env: &Devenv) {
    let certs = PathBuf::from(env.setting("OHNO_CERT_DIR"));
    let names = file_names(&certs);
    for must in [
        "ca.pem",
        "etcd.pem",
        "etcd-key.pem",
        "client.pem",
        "client-key.pem",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} not in {names:?}");
    }
    let copies = env.dir.join("copies");
    for service in ["certgen", "etcd1", "etcd2", "etcd3", "dev"] {
        let id = env.container_id(service);
        let into = copies.join(service);
        std::fs::create_dir_all(&into).unwrap_or_else(|e| panic!("mkdir {into:?}: {e}"));
        // docker cp works on any image, even a distroless one without cat.
        let out = run(
            Duration::from_secs(60),
            "docker",
            &[
                "cp",
                &format!("{id}:/etc/etcd/pki/."),
                &into.display().to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "docker cp from {service}: {}",
            text(&out)
        );
        assert_eq!(file_names(&into), names, "{service}'s /etc/etcd/pki");
        for name in &names {
            let a = std::fs::read(certs.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let b = std::fs::read(into.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                a == b,
                "{service}:/etc/etcd/pki/{name} differs from the generator's"
            );
        }
    }
    let generated = fingerprint_of_file(&certs.join("etcd.pem"));
    assert!(generated.contains("Fingerprint="), "{generated}");
    for member in 1..=3 {
        let port = env.setting(&format!("OHNO_ETCD{member}_PORT"));
        assert_eq!(
            served_fingerprint(&certs, &port),
            generated,
            "etcd{member} (port {port}) serves another certificate than the generator's etcd.pem"
        );
    }
}

/// Wall time per phase, on stderr (the test's cost is watched in CI's budget).
struct Phases(Instant);

impl Phases {
    fn new() -> Phases {
        Phases(Instant::now())
    }

    fn done(&mut self, what: &str) {
        eprintln!("{what}: {:.1} s", self.0.elapsed().as_secs_f64());
        self.0 = Instant::now();
    }
}

#[test]
fn compose_cluster_serves_ohno_through_a_member_outage() {
    if !docker_answers() {
        eprintln!(
            "skipped: no Docker engine answers (`docker info` failed); \
             myclusters/compose.yaml needs one"
        );
        return;
    }
    sweep_dead_runs();

    // Another architecture fails before compose creates anything.
    let arch_dir = std::env::temp_dir().join(format!("ohno-test-{}-arch", std::process::id()));
    let arch_project = format!("ohno-test-{}-arch", std::process::id());
    let out = Command::new("bash")
        .arg(devenv_script())
        .args(["up", "--dir"])
        .arg(&arch_dir)
        .args(["--project", &arch_project, "--ports", "free"])
        .env("OHNO_ARCH", foreign_arch())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run devenv.sh: {e}"));
    let said = text(&out);
    assert!(
        !out.status.success(),
        "OHNO_ARCH={} went up: {said}",
        foreign_arch()
    );
    assert!(
        said.contains(&format!("OHNO_ARCH={}", foreign_arch()))
            && said.contains(&format!("this machine is {}", std::env::consts::ARCH)),
        "no clear message for a foreign OHNO_ARCH: {said}"
    );
    assert!(!said.contains("pull"), "{said}");
    assert!(!arch_dir.exists(), "{} was created", arch_dir.display());
    assert!(project_leftovers(&arch_project).is_empty());

    let t0 = Instant::now();
    let mut phase = Phases::new();
    let mut env = Devenv::up("c");

    phase.done("up");
    // The health check, through compose exec.
    let table = env.wait_health(&ENDPOINTS);
    assert!(
        table.contains("ENDPOINT") && table.contains("HEALTH"),
        "{table}"
    );

    assert_certificates_are_the_generators(&env);

    // The debug ohno into the dev container.
    let dev = env.container_id("dev");
    let out = run(
        Duration::from_secs(60),
        "docker",
        &["cp", OHNO, &format!("{dev}:/usr/local/bin/ohno")],
    );
    assert!(out.status.success(), "docker cp ohno: {}", text(&out));

    phase.done("health and certificates");
    // IPAM-plugin mode: the allocation lands in etcd, visible through every
    // member's published port.
    let ipam = ipam_conf();
    let netns = "/proc/1/ns/net"; // the dev container's own; IPAM touches no link
    let add = |id: &str| {
        ohno(
            &env,
            &Call {
                command: "ADD",
                container_id: id,
                netns,
                conf: &ipam,
            },
        )
    };
    let first = add("ctr-a");
    let (a, _) = address_of(&first);
    let again = add("ctr-a");
    assert_eq!(
        address_of(&again).0,
        a,
        "a repeated ADD changed the address"
    );
    for member in 1..=3 {
        assert_eq!(
            attachments(&env, member),
            vec![format!("/ohno/attachments/{NETWORK}/ctr-a/eth0")],
            "etcd{member}"
        );
    }

    phase.done("IPAM-plugin mode");
    // Bridge mode into a pod namespace made inside the dev container.
    let out = env.dev_exec(&[], &["/usr/bin/ip", "netns", "add", "pod1"]);
    assert!(out.status.success(), "ip netns add: {}", text(&out));
    let wired = ohno(
        &env,
        &Call {
            command: "ADD",
            container_id: "ctr-pod1",
            netns: "/var/run/netns/pod1",
            conf: &bridge_conf(),
        },
    );
    let (pod_addr, gateway) = address_of(&wired);
    let gateway = gateway.unwrap_or_else(|| panic!("no gateway: {}", wired.text));
    let out = env.dev_exec(
        &[],
        &[
            "/usr/bin/ip",
            "-n",
            "pod1",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ],
    );
    assert!(
        out.status.success() && text(&out).contains(&format!("inet {pod_addr}/")),
        "pod1's eth0 lacks {pod_addr}: {}",
        text(&out)
    );
    let gw = gateway.to_string();
    let out = env.dev_exec(
        &[],
        &[
            "/usr/bin/ip",
            "netns",
            "exec",
            "pod1",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &gw,
        ],
    );
    assert!(
        out.status.success(),
        "the pod cannot ping its gateway: {}",
        text(&out)
    );

    phase.done("bridge mode");
    // One member down: the others keep a quorum and ADDs still succeed,
    // whichever endpoint each process starts with.
    let out = env.compose(&["stop", "etcd2"]);
    assert!(out.status.success(), "stop etcd2: {}", text(&out));
    env.wait_health(&[ENDPOINTS[0], ENDPOINTS[2]]);
    let mut taken = vec![a, pod_addr];
    for id in ["ctr-b", "ctr-c", "ctr-d", "ctr-e"] {
        let out = add(id);
        let (addr, _) = address_of(&out);
        assert!(
            !taken.contains(&addr),
            "{addr} handed out twice: {}",
            out.text
        );
        taken.push(addr);
    }

    phase.done("one member down");
    // Two down: no quorum. Code 11, within timeoutMs × retries (plus exec).
    let out = env.compose(&["stop", "etcd3"]);
    assert!(out.status.success(), "stop etcd3: {}", text(&out));
    let failed = add("ctr-f");
    assert_eq!(failed.code, Some(1), "{}", failed.text);
    assert_eq!(failed.json["code"], 11, "{}", failed.text);
    let bound = Duration::from_millis(TIMEOUT_MS * RETRIES) + EXEC_SLACK;
    assert!(
        failed.elapsed <= bound,
        "code 11 after {:?}, more than {bound:?}: {}",
        failed.elapsed,
        failed.text
    );
    eprintln!("no quorum: code 11 after {:?}", failed.elapsed);

    phase.done("no quorum");
    // Both back: DEL releases everything, ctr-f took nothing.
    let out = env.compose(&["start", "etcd2", "etcd3"]);
    assert!(out.status.success(), "start etcd2 etcd3: {}", text(&out));
    env.wait_health(&ENDPOINTS);
    for (id, conf, netns) in [
        ("ctr-a", &ipam, netns),
        ("ctr-b", &ipam, netns),
        ("ctr-c", &ipam, netns),
        ("ctr-d", &ipam, netns),
        ("ctr-e", &ipam, netns),
        ("ctr-f", &ipam, netns),
        ("ctr-pod1", &bridge_conf(), "/var/run/netns/pod1"),
    ] {
        let out = ohno(
            &env,
            &Call {
                command: "DEL",
                container_id: id,
                netns,
                conf,
            },
        );
        assert_eq!(out.code, Some(0), "{}", out.text);
    }
    assert_eq!(attachments(&env, 2), Vec::<String>::new());

    phase.done("recovery and DEL");
    // Down: nothing of the project and no directory is left.
    let dir = env.dir.clone();
    let project = env.project.clone();
    let out = env.take_down();
    assert!(out.status.success(), "devenv.sh down: {}", text(&out));
    assert_eq!(project_leftovers(&project), Vec::<String>::new());
    assert!(!dir.exists(), "{} is still there", dir.display());
    phase.done("down");
    eprintln!("whole run in {:?}", t0.elapsed());
}
