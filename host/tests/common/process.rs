//! Long-running processes inside a namespace.

use super::netns::NetNs;
use std::io::Read;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A process started inside a namespace, killed (by its PID) and reaped on drop.
pub struct Background {
    child: std::process::Child,
}

impl Background {
    /// Starts `argv` in `ns` and waits until it prints its first line
    /// (a readiness signal), which is returned.
    pub fn start(ns: &NetNs, argv: &[&str]) -> (Background, String) {
        let mut child = ns
            .command(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {ns:?}: {e}"));
        let stdout = child.stdout.take();
        let bg = Background { child };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = Vec::new();
            if let Some(mut pipe) = stdout {
                let mut byte = [0u8; 1];
                while let Ok(1) = pipe.read(&mut byte) {
                    if byte[0] == b'\n' {
                        break;
                    }
                    line.push(byte[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                // Keep draining so the process never blocks on a full pipe.
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{argv:?} in {ns:?} did not report ready"));
        (bg, ready)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
