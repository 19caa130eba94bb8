//! A minimal client of the Kubernetes Container Runtime Interface (CRI,
//! `runtime.v1`), the gRPC API the kubelet drives containerd and CRI-O with,
//! over the runtime's Unix socket.
//!
//! Only what Ohno's end-to-end test of the kubelet's path and its benchmark
//! need: `Version`, the pod sandbox lifecycle (`RunPodSandbox`,
//! `PodSandboxStatus`, `StopPodSandbox`, `RemovePodSandbox`) and
//! `ImageStatus`. The messages are generated from `proto/runtime.proto`, a
//! subset of k8s.io/cri-api's `api.proto` with identical field numbers.
//!
//! The API is blocking: a [`CriClient`] owns a current-thread tokio runtime
//! and one HTTP/2 connection, on which [`CriClient::run_pod_sandboxes`]
//! multiplexes concurrent calls the way the kubelet does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated `runtime.v1` messages and clients.
pub mod runtime {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
}

use runtime::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    ImageSpec, ImageStatusRequest, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest, VersionRequest,
};
pub use runtime::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatusResponse, VersionResponse,
};

/// The CRI version this client speaks.
pub const CRI_VERSION: &str = "v1";

/// What can go wrong talking to a runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("start the client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered with a gRPC error: its code and message are what
    /// the kubelet would log (a CNI plugin's error text ends up here).
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
}

impl Error {
    /// The gRPC status of a failed call, if the runtime answered.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Call { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// A connection to a CRI runtime's socket.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// How long a connection attempt and each call may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Per call; the kubelet's default runtime request timeout is 2 minutes.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            call: Duration::from_secs(120),
        }
    }
}

impl CriClient {
    /// Connects to the runtime listening on the Unix socket `socket`.
    pub fn connect(socket: &Path, timeouts: Timeouts) -> Result<CriClient, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let path = socket.to_path_buf();
        // The URI is required by the API but unused: the connector below
        // ignores it and dials the socket.
        let endpoint = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.call);
        let dial = path.clone();
        let channel = rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let dial = dial.clone();
                    async move { UnixStream::connect(dial).await.map(TokioIo::new) }
                })),
            )
            .map_err(|source| Error::Connect { path, source })?;
        Ok(CriClient {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// `Version`: the runtime's name and versions.
    pub fn version(&self) -> Result<VersionResponse, Error> {
        let mut client = self.runtime.clone();
        let request = VersionRequest {
            version: CRI_VERSION.to_owned(),
        };
        self.call("Version", client.version(request))
    }

    /// `RunPodSandbox` with the default runtime handler: the sandbox's id.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, Error> {
        let client = self.runtime.clone();
        self.rt.block_on(run_one(client, config))
    }

    /// `RunPodSandbox` for every config at once, multiplexed on this
    /// connection; the answers in the configs' order.
    pub fn run_pod_sandboxes(&self, configs: Vec<PodSandboxConfig>) -> Vec<Result<String, Error>> {
        let calls: Vec<_> = configs
            .into_iter()
            .map(|config| run_one(self.runtime.clone(), config))
            .collect();
        self.rt.block_on(async move {
            let handles: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
            let mut out = Vec::with_capacity(handles.len());
            for handle in handles {
                out.push(match handle.await {
                    Ok(result) => result,
                    Err(join) => Err(Error::Call {
                        call: "RunPodSandbox",
                        status: tonic::Status::internal(format!("client task failed: {join}")),
                    }),
                });
            }
            out
        })
    }

    /// `PodSandboxStatus`; `verbose` asks for the runtime's `info` map
    /// (containerd puts the sandbox's pid, netns and CNI result there).
    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<PodSandboxStatusResponse, Error> {
        let mut client = self.runtime.clone();
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose,
        };
        self.call("PodSandboxStatus", client.pod_sandbox_status(request))
    }

    /// `StopPodSandbox`: the runtime tears the network down (CNI DEL).
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), Error> {
        let mut client = self.runtime.clone();
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("StopPodSandbox", client.stop_pod_sandbox(request))
            .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), Error> {
        let mut client = self.runtime.clone();
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("RemovePodSandbox", client.remove_pod_sandbox(request))
            .map(drop)
    }

    /// `ImageStatus`: the image's id if the runtime knows `image`.
    pub fn image_id(&self, image: &str) -> Result<Option<String>, Error> {
        let mut client = self.images.clone();
        let request = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
            }),
            verbose: false,
        };
        self.call("ImageStatus", client.image_status(request))
            .map(|r| r.image.map(|i| i.id))
    }

    /// Runs one call to completion; a gRPC error becomes [`Error::Call`].
    fn call<T>(
        &self,
        call: &'static str,
        response: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        self.rt
            .block_on(response)
            .map(tonic::Response::into_inner)
            .map_err(|status| Error::Call { call, status })
    }
}

async fn run_one(
    mut client: RuntimeServiceClient<Channel>,
    config: PodSandboxConfig,
) -> Result<String, Error> {
    let request = RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    };
    client
        .run_pod_sandbox(request)
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
        .map_err(|status| Error::Call {
            call: "RunPodSandbox",
            status,
        })
}

/// A sandbox config as the kubelet builds one for a pod: metadata, hostname
/// (the pod's name), the log directory `<log_root>/<namespace>_<name>_<uid>`,
/// the kubelet's labels (`io.kubernetes.pod.*`), the pod's annotations and
/// the cgroup parent.
pub fn pod_sandbox_config(
    pod: &PodSandboxMetadata,
    annotations: BTreeMap<String, String>,
    log_root: &Path,
    cgroup_parent: &str,
) -> PodSandboxConfig {
    let labels = [
        ("io.kubernetes.pod.name", &pod.name),
        ("io.kubernetes.pod.namespace", &pod.namespace),
        ("io.kubernetes.pod.uid", &pod.uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.clone()))
    .collect();
    let log_directory = log_root.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid));
    PodSandboxConfig {
        metadata: Some(pod.clone()),
        hostname: pod.name.clone(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        labels,
        annotations: annotations.into_iter().collect(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_owned(),
        }),
    }
}
