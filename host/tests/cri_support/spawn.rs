//! Starting containerd: its config, the namespaces it runs in, the wait
//! for its CRI socket, and the pause image.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri_client::{CriClient, Timeouts};

use super::{repo_root, PAUSE_IMAGE, READY_TIMEOUT};

/// containerd's config: everything under `dir`, no TCP listener but the
/// streaming server on the namespace's loopback, no plugin that would write
/// elsewhere (`opt` installs into /opt/containerd) or that the node lacks,
/// no OOM score below containerd's.
pub(super) fn containerd_config(
    dir: &Path,
    socket: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # The sandbox's OOM score no lower than containerd's own: lowering it
  # needs CAP_SYS_RESOURCE, which a test machine's root may lack (runc then
  # fails with "failed to update /proc/self/oom_score_adj").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
        socket = socket.display(),
        bin = bin_dir.display(),
        conf = conf_dir.display(),
    )
}

/// Starts containerd inside `netns` and a private mount namespace with a
/// fresh tmpfs on `/run` and on `/var/lib`, its output to `log`.
pub(super) fn spawn_in_namespaces(netns: &str, config: &Path, log: &Path) -> Child {
    let ns = File::open(netns).unwrap_or_else(|e| panic!("open {netns}: {e}"));
    let out = File::create(log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("dup {log:?}: {e}"));
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let fd = ns.as_raw_fd();
    let root = c"/".to_owned();
    let run = c"/run".to_owned();
    let var_lib = c"/var/lib".to_owned();
    let tmpfs = c"tmpfs".to_owned();
    let mode = c"mode=0755".to_owned();
    // SAFETY: between fork and exec only setns(2), unshare(2) and mount(2)
    // run, all async-signal-safe, on a descriptor and strings made before
    // the fork. If one fails, spawn fails and containerd never runs, so it
    // never runs in the machine's own namespaces.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for target in [&run, &var_lib] {
                check(libc::mount(
                    tmpfs.as_ptr(),
                    target.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    mode.as_ptr().cast(),
                ))?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start containerd in {netns}: {e}"));
    drop(ns);
    child
}

/// Polls the socket until `Version` answers (bounded by [`READY_TIMEOUT`]).
pub(super) fn connect_when_ready(socket: &Path, child: &mut Child) -> CriClient {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("socket not there yet");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("containerd exited during start-up ({status}); see its log below");
        }
        if socket.exists() {
            let timeouts = Timeouts {
                connect: Duration::from_secs(1),
                call: Duration::from_secs(120),
            };
            match CriClient::connect(socket, timeouts).and_then(|c| c.version().map(|v| (c, v))) {
                Ok((client, version)) => {
                    eprintln!(
                        "cri: {} {} (CRI {}) on {}",
                        version.runtime_name,
                        version.runtime_version,
                        version.runtime_api_version,
                        socket.display()
                    );
                    return client;
                }
                Err(e) => last = e.to_string(),
            }
        }
        assert!(
            Instant::now() < deadline,
            "containerd did not serve CRI on {} within {READY_TIMEOUT:?}: {last}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Builds the pause image (once per process) and imports it with `ctr`;
/// waits until the CRI plugin lists it (it learns of images by events).
pub(super) fn import_pause_image(dir: &Path, socket: &Path, cri: &CriClient) {
    let tarball = pause_image();
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args([
            "-n",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
        ])
        .arg(tarball)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run ctr images import: {e}"));
    assert!(
        out.status.success(),
        "ctr images import {} into {}: {}",
        tarball.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match cri.image_id(PAUSE_IMAGE) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => panic!("ImageStatus {PAUSE_IMAGE}: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the CRI plugin did not list {PAUSE_IMAGE} within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `target/ohno-pause.tar`, built once per process by `pause-image.sh`
/// (reproducible, and written by rename: concurrent builds agree).
pub fn pause_image() -> &'static Path {
    static IMAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        let out = target.join("ohno-pause.tar");
        let script = repo_root().join("tests/cri-client/pause-image.sh");
        let run = Command::new(&script)
            .arg(&out)
            .arg(PAUSE_IMAGE)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {script:?}: {e}"));
        assert!(
            run.status.success(),
            "{script:?} failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    })
}
