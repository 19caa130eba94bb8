//! The node-local processes that keep state warm between plugin calls: the
//! socket protocol and its bounds, and what is served over it.

#[cfg(feature = "wasm")]
pub mod policy;
pub mod protocol;
#[cfg(feature = "etcd")]
pub mod store;
