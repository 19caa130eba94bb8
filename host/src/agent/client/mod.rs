//! The plugin's side of the socket: one connection per service ([`Conn`]),
//! and the fallback clients that finish a call in-process when the server
//! fails it ([`store::FallbackKv`], [`policy::FallbackPolicy`]).
//!
//! A connection sends its [`Hello`] at once and reads the server's
//! [`Greeting`] with the first reply, so talking to a server costs no round
//! trip of its own. A refused greeting, a closed connection or a reply of the
//! wrong shape all end the same way: the rest of the call runs in-process,
//! and the call's report to the agent names the service it fell back from.

#[cfg(feature = "wasm")]
pub mod policy;
#[cfg(feature = "etcd")]
pub mod store;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::agent::protocol::{
    self, receive, send, AgentStatus, CallReport, Greeting, Hello, Service, PROTOCOL,
};

/// One connection to a server, for one service.
pub struct Conn {
    stream: UnixStream,
    greeted: bool,
    socket: PathBuf,
}

impl Conn {
    /// Connect to the server at `socket` (answered by our own uid) and ask for
    /// `service`; `budget` bounds every read and write.
    pub fn open(socket: &Path, service: Service, budget: Duration) -> std::io::Result<Conn> {
        let mut stream = protocol::connect(socket, budget)?;
        send(
            &mut stream,
            &Hello {
                protocol: PROTOCOL,
                service,
            },
        )?;
        Ok(Conn {
            stream,
            greeted: false,
            socket: socket.to_path_buf(),
        })
    }

    /// A connection on `stream`, as if already greeted (tests).
    #[cfg(test)]
    pub fn from_stream(stream: UnixStream) -> Conn {
        Conn {
            stream,
            greeted: true,
            socket: PathBuf::from("(test)"),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The stream, once the server has welcomed us (read now if not yet).
    pub fn welcomed(&mut self) -> std::io::Result<&mut UnixStream> {
        if !self.greeted {
            match receive::<Greeting>(&mut self.stream)? {
                Greeting::Welcome { .. } => self.greeted = true,
                Greeting::Refused(why) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        crate::Error::from(why).to_string(),
                    ))
                }
            }
        }
        Ok(&mut self.stream)
    }

    /// The stream before the greeting is read (to pipeline a first request).
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}

/// The agent's socket in `lock_dir`.
pub fn agent_socket(lock_dir: &Path) -> PathBuf {
    lock_dir.join(protocol::AGENT_SOCKET)
}

/// Services this call did in-process after a server failed them.
static FALLBACKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The agent this call reached, to report the call to.
static AGENT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Remember that `service` fell back in-process (for the call's report).
pub fn note_fallback(service: &str) {
    let mut f = FALLBACKS.lock().unwrap_or_else(|p| p.into_inner());
    if !f.iter().any(|s| s == service) {
        f.push(service.to_string());
    }
}

/// Remember the agent this call reached.
pub fn note_agent(socket: &Path) {
    *AGENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(socket.to_path_buf());
}

/// Tell the agent this call reached how it ended: fire-and-forget (a
/// non-blocking connect and write; nothing is read, nothing waited for).
pub fn report(verb: &str, code: u32, seconds: f64) {
    let Some(socket) = AGENT.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        return;
    };
    let fallbacks = FALLBACKS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let hello = Hello {
        protocol: PROTOCOL,
        service: Service::Report(CallReport {
            verb: verb.to_string(),
            code,
            seconds,
            fallbacks,
        }),
    };
    let sent = protocol::connect(&socket, Duration::from_millis(50)).and_then(|mut s| {
        s.set_nonblocking(true)?;
        send(&mut s, &hello)
    });
    if let Err(e) = sent {
        log::debug!("report to the agent at {}: {e}", socket.display());
    }
}

/// The state of the agent on `socket` (`ohnoctl status`).
pub fn status(socket: &Path) -> std::io::Result<AgentStatus> {
    let mut conn = Conn::open(socket, Service::Status, Duration::from_secs(5))?;
    let stream = conn.welcomed()?;
    receive::<AgentStatus>(stream)
}

/// Hand the retired link `index` in `ns` to the agent on `socket` to delete.
pub fn reap(socket: &Path, ns: &crate::net::netns::NetNs, index: u32) -> std::io::Result<()> {
    let mut conn = Conn::open(socket, Service::Reap { index }, Duration::from_secs(2))?;
    let stream = conn.welcomed()?;
    protocol::send_fd(stream, ns.fd())
}
