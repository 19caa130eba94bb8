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
pub mod keys;
pub mod model;

pub use allocator::{Allocator, Want};
pub use model::{AttachmentId, AttachmentRecord, IpRecord, Owner};

/// Stable 64-bit FNV-1a hash: seeds block choice by node name and names host veths.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
