//! The one error type of the crate, and the one place that maps an error to its
//! CNI error code. Messages are lower-case and say what was being done
//! ("create veth vethab12 in /var/run/netns/p1: file exists").

use std::io;

/// CNI error codes (spec 1.1.0 §"Error") plus Ohno's plugin-specific codes (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    pub const POOL_EXHAUSTED: u32 = 100;
    pub const ADDRESS_UNAVAILABLE: u32 = 101;
    pub const NETWORK_SETUP: u32 = 102;
    pub const POLICY_DENIED: u32 = 103;
    pub const POLICY_FAULT: u32 = 104;
    pub const STORE: u32 = 105;
    pub const CHECK_FAILED: u32 = 106;
    pub const AGENT: u32 = 107;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config's cniVersion (or the verb at that version) is not supported.
    #[error("incompatible cni version: {0}")]
    IncompatibleVersion(String),
    /// A field the plugin understands but does not support in this form.
    #[error("unsupported field {field}: {msg}")]
    UnsupportedField { field: String, msg: String },
    /// The container (attachment) is not known.
    #[error("unknown container: {0}")]
    UnknownContainer(String),
    /// A CNI_* environment variable is missing or invalid.
    #[error("invalid environment variable {var}: {msg}")]
    InvalidEnv { var: &'static str, msg: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// stdin (or a stored document) is not the JSON we expect.
    #[error("decode {what}: {msg}")]
    Decode { what: String, msg: String },
    /// The network configuration is invalid; `field` names the offending field.
    #[error("invalid network config field {field}: {msg}")]
    InvalidConfig { field: String, msg: String },
    /// Transient: the store is unreachable or contended; the runtime should retry.
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// STATUS: an ADD cannot succeed now.
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    #[error("pool {pool} is exhausted: {msg}")]
    PoolExhausted { pool: String, msg: String },
    #[error("address {address} unavailable: {msg}")]
    AddressUnavailable { address: String, msg: String },
    /// A netlink, netns, sysctl or nftables operation failed.
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("policy {policy} denied the request: {reason}")]
    PolicyDenied { policy: String, reason: String },
    #[error("policy {policy} failed: {reason}")]
    PolicyFault { policy: String, reason: String },
    /// The store answered, but with something we cannot use.
    #[error("store: {0}")]
    Store(String),
    /// CHECK found the attachment different from what ADD made.
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// The node agent (or an on-demand server) answered with something the
    /// plugin cannot use. A server that is down, refuses or is slow is not
    /// this: the call then completes in-process.
    #[error("agent: {0}")]
    Agent(String),
    /// An error the agent met doing this call's work, with the code it has
    /// there (an I/O or decode failure in the server).
    #[error("{msg}")]
    Relayed { code: u32, msg: String },
}

impl Error {
    /// The CNI error code this error is reported with.
    pub fn code(&self) -> u32 {
        use code::*;
        match self {
            Error::IncompatibleVersion(_) => INCOMPATIBLE_VERSION,
            Error::UnsupportedField { .. } => UNSUPPORTED_FIELD,
            Error::UnknownContainer(_) => UNKNOWN_CONTAINER,
            Error::InvalidEnv { .. } => INVALID_ENV,
            Error::Io { .. } => IO,
            Error::Decode { .. } => DECODE,
            Error::InvalidConfig { .. } => INVALID_CONFIG,
            Error::TryAgainLater(_) => TRY_AGAIN_LATER,
            Error::NotAvailable(_) => NOT_AVAILABLE,
            Error::PoolExhausted { .. } => POOL_EXHAUSTED,
            Error::AddressUnavailable { .. } => ADDRESS_UNAVAILABLE,
            Error::Netlink { .. } => NETWORK_SETUP,
            Error::PolicyDenied { .. } => POLICY_DENIED,
            Error::PolicyFault { .. } => POLICY_FAULT,
            Error::Store(_) => STORE,
            Error::CheckFailed(_) => CHECK_FAILED,
            Error::Agent(_) => AGENT,
            Error::Relayed { code, .. } => *code,
        }
    }

    /// The CNI error document's `msg`: short, but naming the field, variable, pool
    /// or address at fault. `details` carries the whole message.
    pub fn msg(&self) -> String {
        match self {
            Error::InvalidConfig { field, .. } => format!("invalid network config field {field}"),
            Error::InvalidEnv { var, .. } => format!("invalid environment variable {var}"),
            Error::UnsupportedField { field, .. } => format!("unsupported field {field}"),
            Error::PoolExhausted { pool, .. } => format!("pool {pool} is exhausted"),
            Error::AddressUnavailable { address, .. } => format!("address {address} unavailable"),
            Error::PolicyDenied { policy, .. } => format!("policy {policy} denied the request"),
            Error::PolicyFault { policy, .. } => format!("policy {policy} failed"),
            _ => self.summary().to_string(),
        }
    }

    /// The CNI error document's `details`: the cause, once. `msg` already says
    /// what failed (the field, variable, pool, address or policy), so `details`
    /// does not repeat it; runtimes print the two together ("msg; details").
    pub fn details(&self) -> String {
        match self {
            Error::InvalidConfig { msg, .. }
            | Error::InvalidEnv { msg, .. }
            | Error::UnsupportedField { msg, .. }
            | Error::PoolExhausted { msg, .. }
            | Error::AddressUnavailable { msg, .. } => msg.clone(),
            Error::PolicyDenied { reason, .. } | Error::PolicyFault { reason, .. } => {
                reason.clone()
            }
            Error::IncompatibleVersion(s)
            | Error::UnknownContainer(s)
            | Error::TryAgainLater(s)
            | Error::NotAvailable(s)
            | Error::Store(s)
            | Error::CheckFailed(s)
            | Error::Agent(s) => s.clone(),
            Error::Relayed { msg, .. } => msg.clone(),
            Error::Io { .. } | Error::Netlink { .. } | Error::Decode { .. } => self.to_string(),
        }
    }

    /// The category of the error, in a few words.
    pub fn summary(&self) -> &'static str {
        match self {
            Error::IncompatibleVersion(_) => "incompatible CNI version",
            Error::UnsupportedField { .. } => "unsupported field",
            Error::UnknownContainer(_) => "unknown container",
            Error::InvalidEnv { .. } => "invalid environment variables",
            Error::Io { .. } => "I/O failure",
            Error::Decode { .. } => "failed to decode content",
            Error::InvalidConfig { .. } => "invalid network config",
            Error::TryAgainLater(_) => "try again later",
            Error::NotAvailable(_) => "plugin not available",
            Error::PoolExhausted { .. } => "pool exhausted",
            Error::AddressUnavailable { .. } => "address unavailable",
            Error::Netlink { .. } => "network setup failed",
            Error::PolicyDenied { .. } => "policy denied",
            Error::PolicyFault { .. } => "policy fault",
            Error::Store(_) => "store failure",
            Error::CheckFailed(_) => "check failed",
            Error::Agent(_) => "node agent failure",
            Error::Relayed { .. } => "failure in the node agent",
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn netlink(context: impl Into<String>, source: io::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            source,
        }
    }

    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// True when a netlink/io error is "already exists" (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.raw_os_error() == Some(libc::EEXIST)
    }

    /// True when a netlink/io error is "not found" (ENODEV/ENOENT/ESRCH/EADDRNOTAVAIL).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.raw_os_error(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }

    fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Netlink { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
