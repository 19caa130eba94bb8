//! The raw netlink socket shared by rtnetlink ([`super::link`]) and nftables
//! ([`super::nft`]): one blocking socket, a sequence counter, and a reader that
//! splits datagrams into messages. Typed encoding lives in the callers; this
//! module only knows the 16-byte `nlmsghdr` and `NLMSG_ERROR`/`NLMSG_DONE`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use netlink_sys::{Socket, SocketAddr};

/// Size of `struct nlmsghdr`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x01;
pub(crate) const NLM_F_ACK: u16 = 0x04;
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;

/// A receive that takes longer than this means the kernel will not answer
/// (a lost datagram after ENOBUFS); fail instead of hanging the CNI call.
const RECV_TIMEOUT_SECS: libc::time_t = 30;

/// One message read back from the kernel; `payload` excludes the header.
#[derive(Debug)]
pub(crate) struct RawMessage {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl RawMessage {
    /// For `NLMSG_ERROR` and `NLMSG_DONE`: the (negative errno or 0) code.
    pub fn code(&self) -> io::Result<i32> {
        let bytes: [u8; 4] = self
            .payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("truncated netlink error/done message"))?;
        Ok(i32::from_ne_bytes(bytes))
    }

    /// `Err` for a failing `NLMSG_ERROR`/`NLMSG_DONE`, `Ok` otherwise.
    pub fn check(&self) -> io::Result<()> {
        if self.ty == NLMSG_ERROR || self.ty == NLMSG_DONE {
            let code = self.code()?;
            if code < 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
        }
        Ok(())
    }
}

/// A connected, blocking netlink socket of one protocol family.
pub(crate) struct NlSocket {
    sock: Socket,
    seq: u32,
}

impl NlSocket {
    /// Open a socket of `protocol` (e.g. `NETLINK_ROUTE`) in the calling
    /// thread's network namespace.
    pub fn open(protocol: isize) -> io::Result<NlSocket> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        set_recv_timeout(sock.as_raw_fd(), RECV_TIMEOUT_SECS)?;
        // Sequence numbers only need to be unique per socket (per port id);
        // starting from the clock keeps stray replies of a reused port apart.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NlSocket { sock, seq })
    }

    /// A socket of `protocol` that receives the multicast `groups` (a
    /// bitmask of `RTMGRP_*`), in the calling thread's netns; a receive
    /// returns `WouldBlock` after `timeout` without a message.
    pub fn subscribe(
        protocol: isize,
        groups: u32,
        timeout: std::time::Duration,
    ) -> io::Result<NlSocket> {
        let mut sock = Socket::new(protocol)?;
        sock.bind(&SocketAddr::new(0, groups))?;
        set_recv_timeout_exact(sock.as_raw_fd(), timeout)?;
        Ok(NlSocket { sock, seq: 0 })
    }

    /// The next sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send one datagram (one message or a whole batch).
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        let n = self.sock.send(buf, 0)?;
        if n != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short netlink send: {n} of {} bytes", buf.len()),
            ));
        }
        Ok(())
    }

    /// Receive one datagram, whatever its size, and split it into messages.
    pub fn recv(&self) -> io::Result<Vec<RawMessage>> {
        loop {
            let mut peek: Vec<u8> = Vec::with_capacity(0);
            let len = match self.sock.recv(&mut peek, libc::MSG_PEEK | libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut buf: Vec<u8> = Vec::with_capacity(len.max(NLMSG_HDRLEN));
            let n = match self.sock.recv(&mut buf, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            buf.truncate(n);
            return split(&buf);
        }
    }
}

/// Split a datagram into its netlink messages.
pub(crate) fn split(mut buf: &[u8]) -> io::Result<Vec<RawMessage>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(invalid("malformed netlink message length"));
        }
        out.push(RawMessage {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: buf[NLMSG_HDRLEN..len].to_vec(),
        });
        let aligned = align4(len).min(buf.len());
        buf = &buf[aligned..];
    }
    Ok(out)
}

/// Round up to the 4-byte netlink alignment.
pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An `InvalidData` error for a reply we cannot parse.
pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn set_recv_timeout(fd: RawFd, secs: libc::time_t) -> io::Result<()> {
    set_recv_timeout_exact(fd, std::time::Duration::from_secs(secs as u64))
}

fn set_recv_timeout_exact(fd: RawFd, d: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `fd` is a live socket owned by the caller and `tv` is a valid
    // `timeval` whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reads_consecutive_messages_and_error_codes() {
        let mut buf = Vec::new();
        for (ty, code) in [(NLMSG_ERROR, 0i32), (NLMSG_ERROR, -libc::EEXIST)] {
            buf.extend_from_slice(&20u32.to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&7u32.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&code.to_ne_bytes());
        }
        let msgs = split(&buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert!(msgs[0].check().is_ok());
        let err = msgs[1].check().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    }

    #[test]
    fn split_rejects_a_length_past_the_buffer() {
        let mut buf = vec![0u8; 16];
        buf[0] = 40;
        assert!(split(&buf).is_err());
    }
}
