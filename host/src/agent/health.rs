//! `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1 on the agent's
//! metrics address (default loopback): a small server of its own, as the
//! three endpoints need nothing of a web framework. Requests are read with a
//! timeout and a size limit; each is answered and the connection closed.
//!
//! - `/healthz`: 200 while the agent's server loop runs (liveness).
//! - `/readyz`: 200 when the agent's store answers and its policy is loaded,
//!   503 otherwise (readiness: false while etcd is unreachable at start).
//! - `/metrics`: the Prometheus text exposition.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The largest request head read.
const MAX_REQUEST: usize = 8 << 10;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints answer from.
pub trait Health: Send + Sync {
    fn ready(&self) -> bool;
    /// The metrics text, refreshed as needed.
    fn metrics(&self) -> String;
}

/// Serve the endpoints on `listener` until `stop` is set.
pub fn serve(listener: TcpListener, health: Arc<dyn Health>, stop: Arc<AtomicBool>) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let health = health.clone();
                let _ = std::thread::Builder::new()
                    .name("ohnod-http".into())
                    .spawn(move || answer(stream, &*health));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                log::warn!("metrics listener: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn answer(mut stream: TcpStream, health: &dyn Health) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let text = "text/plain; charset=utf-8";
    let _ = match (method, path) {
        ("GET" | "HEAD", "/healthz") => respond(&mut stream, "200 OK", text, "ok\n"),
        ("GET" | "HEAD", "/readyz") if health.ready() => {
            respond(&mut stream, "200 OK", text, "ready\n")
        }
        ("GET" | "HEAD", "/readyz") => {
            respond(&mut stream, "503 Service Unavailable", text, "not ready\n")
        }
        ("GET" | "HEAD", "/metrics") => respond(
            &mut stream,
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &health.metrics(),
        ),
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", text, "not found\n"),
        _ => respond(&mut stream, "405 Method Not Allowed", text, ""),
    };
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
