//! IP address management, written once against `store::Kv`.
//!
//! The model (Calico's, which scales): a pool is split into blocks; a node claims a
//! free block with a create-if-absent transaction and allocates from its own blocks,
//! so nodes almost never contend. One key per address and one key per attachment,
//! written in the same transaction with "does not exist" compares: an address can
//! never be handed out twice, and a repeated ADD finds its attachment. See
//! `ipam/README.md` for the key layout and the reasoning.

pub mod allocator;
pub mod audit;
pub mod block;
mod claims;
mod hints;
pub mod keys;
pub mod model;
pub mod nodes;
#[cfg(test)]
pub(crate) mod suite;

pub use allocator::{Allocator, Want};
pub use model::{AttachmentId, AttachmentRecord, IpRecord, Owner};
