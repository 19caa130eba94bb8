//! The little of the Kubernetes API the node clean-up needs: list Nodes (in
//! pages, at one resource version), watch them from that version, get one
//! by name. HTTP/1.1 over TLS (hyper and rustls, both already in the tree
//! through etcd's client), the service account's bearer token read again
//! for every request (projected tokens rotate), every read bounded in time
//! and size.
//!
//! Why not kube-rs: it and k8s-openapi are hundreds of thousands of lines
//! of generated types and minutes of build on a small machine, for three
//! GET requests whose answers we read four fields of. The shapes read here
//! are the API's documented ones: `NodeList` (`metadata.resourceVersion`,
//! `metadata.continue`, `items[].metadata.name`), watch events
//! (`{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": …}`,
//! one JSON document per line), and `Status` for errors (`code`, `reason`,
//! `message`; 410 `Expired`/`Gone` when a resource version is too old).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::view::Event;
use crate::config::agent::NodeCleanupConf;

/// Connecting, the TLS handshake and a whole list or get answer end by then.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Nodes per list page.
const PAGE: u32 = 500;
/// The largest list page or error body read.
const MAX_BODY: usize = 32 << 20;
/// The largest single watch event.
const MAX_EVENT: usize = 4 << 20;
/// A watch the server ends after this long (it is then resumed).
pub const WATCH_SECONDS: u64 = 290;

/// What went wrong talking to the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The API answered with an error `Status`.
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    /// No usable answer: connection, TLS, time-out, a body we cannot read.
    Other(String),
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { code: 404, .. })
    }
    /// 410: the resource version (or continue token) is too old.
    pub fn is_expired(&self) -> bool {
        matches!(self, ApiError::Status { code: 410, .. })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Status {
                code,
                reason,
                message,
            } => write!(f, "{code} {reason}: {message}"),
            ApiError::Other(s) => f.write_str(s),
        }
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Other(format!("{what}: {e}"))
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
    #[serde(default, rename = "continue")]
    cont: String,
}

#[derive(Debug, Deserialize)]
struct Object {
    #[serde(default)]
    metadata: Meta,
}

#[derive(Debug, Deserialize)]
struct List {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    items: Vec<Object>,
}

#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// Percent-encode a query value (continue tokens are base64).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One watch event line, decoded.
pub fn decode_event(line: &[u8]) -> Result<Event, ApiError> {
    let raw: RawEvent =
        serde_json::from_slice(line).map_err(|e| other("decode a watch event", e))?;
    let meta = || -> Result<Meta, ApiError> {
        match raw.object.get("metadata") {
            Some(m) => serde_json::from_value(m.clone()).map_err(|e| other("decode metadata", e)),
            None => Ok(Meta::default()),
        }
    };
    let named = |m: Meta| -> Result<(String, String), ApiError> {
        if m.name.is_empty() {
            return Err(ApiError::Other(format!(
                "a {} event without a node name",
                raw.kind
            )));
        }
        Ok((m.name, m.resource_version))
    };
    Ok(match raw.kind.as_str() {
        "ADDED" => {
            let (name, rv) = named(meta()?)?;
            Event::Added { name, rv }
        }
        "MODIFIED" => {
            let (name, rv) = named(meta()?)?;
            Event::Modified { name, rv }
        }
        "DELETED" => {
            let (name, rv) = named(meta()?)?;
            Event::Deleted { name, rv }
        }
        "BOOKMARK" => Event::Bookmark {
            rv: meta()?.resource_version,
        },
        "ERROR" => {
            let st: Status = serde_json::from_value(raw.object.clone()).unwrap_or_default();
            if st.code == 410 {
                Event::Expired(st.message)
            } else {
                return Err(ApiError::Status {
                    code: st.code,
                    reason: st.reason,
                    message: st.message,
                });
            }
        }
        other => {
            return Err(ApiError::Other(format!(
                "unknown watch event type {other:?}"
            )))
        }
    })
}

/// A client of one API server.
pub struct Api {
    rt: tokio::runtime::Runtime,
    /// `host:port` to connect to, and the `Host` header.
    authority: String,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    token_file: PathBuf,
}

impl Api {
    /// Reads the CA now; the token is read for each request.
    pub fn new(conf: &NodeCleanupConf) -> Result<Api, ApiError> {
        let given = conf
            .api_server
            .strip_prefix("https://")
            .ok_or_else(|| ApiError::Other(format!("{}: not https://", conf.api_server)))?;
        // `host:port`, `[v6]:port`, or no port (443).
        let (host, authority) = match given.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, given.to_string()),
            _ => (given, format!("{given}:443")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| other(&format!("server name {host:?}"), e))?;
        let mut roots = RootCertStore::empty();
        let pem = crate::config::agent::read_capped("nodeCleanup.caFile", &conf.ca_file)
            .map_err(|e| ApiError::Other(e.to_string()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| other(&conf.ca_file.display().to_string(), e))?;
            roots
                .add(cert)
                .map_err(|e| other(&conf.ca_file.display().to_string(), e))?;
        }
        if roots.is_empty() {
            return Err(ApiError::Other(format!(
                "{}: no certificate",
                conf.ca_file.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| other("TLS", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| other("start the Kubernetes client runtime", e))?;
        Ok(Api {
            rt,
            authority,
            name,
            tls: Arc::new(tls),
            token_file: conf.token_file.clone(),
        })
    }

    fn token(&self) -> Result<String, ApiError> {
        let raw = crate::config::agent::read_capped("nodeCleanup.tokenFile", &self.token_file)
            .map_err(|e| ApiError::Other(e.to_string()))?;
        let token = String::from_utf8_lossy(&raw).trim().to_string();
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(ApiError::Other(format!(
                "{}: not a bearer token",
                self.token_file.display()
            )));
        }
        Ok(token)
    }

    /// GET `path` on a new connection; an error status is read into
    /// [`ApiError::Status`].
    async fn get(&self, path: &str) -> Result<hyper::Response<Incoming>, ApiError> {
        let token = self.token()?;
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| other(&format!("connect {}", self.authority), e))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| other(&format!("TLS with {}", self.authority), e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| other("HTTP", e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("ohnod/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| other("request", e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| other(&format!("GET {path}"), e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), 64 << 10)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let st: Status = serde_json::from_slice(&body).unwrap_or_default();
        Err(ApiError::Status {
            code,
            reason: st.reason,
            message: if st.message.is_empty() {
                format!("GET {path}")
            } else {
                st.message
            },
        })
    }

    /// GET `path` and read the whole (bounded) answer as `T`.
    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, async {
                let resp = self.get(path).await?;
                let body = Limited::new(resp.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| other(&format!("read GET {path}"), e))?
                    .to_bytes();
                serde_json::from_slice(&body).map_err(|e| other(&format!("decode GET {path}"), e))
            })
            .await
            .map_err(|_| {
                ApiError::Other(format!("GET {path}: no answer within {REQUEST_TIMEOUT:?}"))
            })?
        })
    }

    /// Every Node's name, and the resource version of the list (all pages
    /// are read at the first page's version; an expired continue token
    /// starts the list over, once).
    pub fn list_nodes(&self) -> Result<(Vec<String>, String), ApiError> {
        let mut restarted = false;
        'list: loop {
            let mut names = Vec::new();
            let mut rv = String::new();
            let mut cont = String::new();
            loop {
                let mut path = format!("/api/v1/nodes?limit={PAGE}");
                if !cont.is_empty() {
                    path.push_str(&format!("&continue={}", escape(&cont)));
                }
                let page: List = match self.get_json(&path) {
                    Ok(p) => p,
                    Err(e) if e.is_expired() && !cont.is_empty() && !restarted => {
                        restarted = true;
                        continue 'list;
                    }
                    Err(e) => return Err(e),
                };
                if rv.is_empty() {
                    rv = page.metadata.resource_version.clone();
                }
                names.extend(
                    page.items
                        .into_iter()
                        .map(|o| o.metadata.name)
                        .filter(|n| !n.is_empty()),
                );
                if page.metadata.cont.is_empty() {
                    if rv.is_empty() {
                        return Err(ApiError::Other(
                            "a node list without a resource version".into(),
                        ));
                    }
                    return Ok((names, rv));
                }
                cont = page.metadata.cont;
            }
        }
    }

    /// Whether Node `name` exists now (asked by name, not from a view).
    pub fn node_exists(&self, name: &str) -> Result<bool, ApiError> {
        match self.get_json::<Object>(&format!("/api/v1/nodes/{}", escape(name))) {
            Ok(o) if o.metadata.name == name => Ok(true),
            Ok(o) => Err(ApiError::Other(format!(
                "asked for node {name}, got {:?}",
                o.metadata.name
            ))),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Watch Nodes from `rv` (with bookmarks); the server ends it after
    /// [`WATCH_SECONDS`].
    pub fn watch_nodes(&self, rv: &str) -> Result<Watch, ApiError> {
        let path = format!(
            "/api/v1/nodes?watch=true&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={WATCH_SECONDS}",
            escape(rv)
        );
        let resp = self.rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, self.get(&path))
                .await
                .map_err(|_| {
                    ApiError::Other(format!("watch: no answer within {REQUEST_TIMEOUT:?}"))
                })?
        })?;
        Ok(Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// The next event of `watch`, waiting at most `wait`: `Ok(None)` when
    /// none came, `Err` when the watch ended (the server's time-out, a
    /// broken connection, an undecodable event).
    pub fn next_event(&self, watch: &mut Watch, wait: Duration) -> Result<Option<Event>, ApiError> {
        loop {
            if let Some(i) = watch.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = watch.buf.drain(..=i).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return decode_event(&line).map(Some);
            }
            if watch.buf.len() > MAX_EVENT {
                return Err(ApiError::Other(format!(
                    "a watch event over {MAX_EVENT} bytes"
                )));
            }
            let frame = self
                .rt
                .block_on(async { tokio::time::timeout(wait, watch.body.frame()).await });
            match frame {
                Err(_) => return Ok(None),
                Ok(None) => return Err(ApiError::Other("the watch ended".into())),
                Ok(Some(Err(e))) => return Err(other("read the watch", e)),
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        watch.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// An open watch: its body and what was read of its next line.
pub struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_events_of_the_api_decode() {
        let added = br#"{"type":"ADDED","object":{"kind":"Node","apiVersion":"v1","metadata":{"name":"node-b","uid":"1f0c","resourceVersion":"1201","labels":{"kubernetes.io/hostname":"node-b"}},"spec":{"podCIDR":"10.244.1.0/24"},"status":{"conditions":[]}}}"#;
        assert_eq!(
            decode_event(added).unwrap(),
            Event::Added {
                name: "node-b".into(),
                rv: "1201".into()
            }
        );
        let deleted = br#"{"type":"DELETED","object":{"kind":"Node","apiVersion":"v1","metadata":{"name":"node-b","resourceVersion":"1300","deletionTimestamp":"2026-12-06T04:00:00Z"}}}"#;
        assert_eq!(
            decode_event(deleted).unwrap(),
            Event::Deleted {
                name: "node-b".into(),
                rv: "1300".into()
            }
        );
        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"Node","apiVersion":"v1","metadata":{"resourceVersion":"1400","annotations":{"k8s.io/initial-events-end":"true"}}}}"#;
        assert_eq!(
            decode_event(bookmark).unwrap(),
            Event::Bookmark { rv: "1400".into() }
        );
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (1400)","reason":"Expired","code":410}}"#;
        assert_eq!(
            decode_event(gone).unwrap(),
            Event::Expired("too old resource version: 1 (1400)".into())
        );
        let forbidden = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nodes is forbidden","reason":"Forbidden","code":403}}"#;
        assert!(matches!(
            decode_event(forbidden),
            Err(ApiError::Status { code: 403, .. })
        ));
        assert!(decode_event(br#"{"type":"ADDED","object":{"metadata":{}}}"#).is_err());
        assert!(decode_event(b"not json").is_err());
    }

    #[test]
    fn continue_tokens_are_escaped() {
        assert_eq!(escape("eyJ2Ijoi+/="), "eyJ2Ijoi%2B%2F%3D");
        assert_eq!(escape("node-a.example"), "node-a.example");
    }
}
