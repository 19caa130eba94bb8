//! CNI spec types: the environment (`CNI_*`), the network configuration, results in
//! every supported version, and the error document.

pub mod args;
pub mod env;
pub mod result;
pub mod version;

pub use env::{Command, Env};
pub use result::CniResult;
