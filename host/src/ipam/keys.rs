//! The key layout in the store. Every key lives under the configured prefix
//! (default `/ohno`):
//!
//! ```text
//! <prefix>/pools/<pool>                          pool definition {subnet, blockSize}
//! <prefix>/blocks/<pool>/<block>                 block claim {node, claimed}
//! <prefix>/affinity/<node>/<pool>/<block>        index of a node's blocks (same txn as the claim)
//! <prefix>/ips/<pool>/<block>/<ip>               owner of one address
//! <prefix>/attachments/<network>/<cid>/<ifname>  one attachment and its addresses
//! <prefix>/leases/<name>                         a lease (store::lease), e.g. node-cleanup
//! ```
//!
//! `<block>` is the block's network and prefix joined by `-` (`10.85.4.0-26`,
//! `fd00:85::40-122`), because `/` separates key segments.

use std::net::IpAddr;

use crate::ip::cidr::Cidr;

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn pool(&self, pool: &str) -> String {
        format!("{}/pools/{pool}", self.prefix)
    }

    pub fn blocks_of_pool(&self, pool: &str) -> String {
        format!("{}/blocks/{pool}/", self.prefix)
    }

    pub fn block(&self, pool: &str, block: &Cidr) -> String {
        format!("{}{}", self.blocks_of_pool(pool), block_id(block))
    }

    pub fn affinities(&self, node: &str, pool: &str) -> String {
        format!("{}/affinity/{node}/{pool}/", self.prefix)
    }

    /// A lease: one agent of the cluster at a time does `name`'s work.
    pub fn lease(&self, name: &str) -> String {
        format!("{}/leases/{name}", self.prefix)
    }

    pub fn all_affinities(&self) -> String {
        format!("{}/affinity/", self.prefix)
    }

    pub fn affinity(&self, node: &str, pool: &str, block: &Cidr) -> String {
        format!("{}{}", self.affinities(node, pool), block_id(block))
    }

    pub fn ips_of_block(&self, pool: &str, block: &Cidr) -> String {
        format!("{}/ips/{pool}/{}/", self.prefix, block_id(block))
    }

    pub fn all_ips(&self) -> String {
        format!("{}/ips/", self.prefix)
    }

    pub fn ip(&self, pool: &str, block: &Cidr, ip: IpAddr) -> String {
        format!("{}{ip}", self.ips_of_block(pool, block))
    }

    pub fn attachments_of_network(&self, network: &str) -> String {
        format!("{}/attachments/{network}/", self.prefix)
    }

    pub fn all_attachments(&self) -> String {
        format!("{}/attachments/", self.prefix)
    }

    pub fn attachment(&self, network: &str, container_id: &str, ifname: &str) -> String {
        format!(
            "{}{container_id}/{ifname}",
            self.attachments_of_network(network)
        )
    }
}

/// `10.85.4.0/26` → `10.85.4.0-26`.
pub fn block_id(block: &Cidr) -> String {
    format!("{}-{}", block.network(), block.prefix())
}

/// `10.85.4.0-26` → the block, or None when the segment is not a block id.
pub fn parse_block_id(s: &str) -> Option<Cidr> {
    let (a, p) = s.rsplit_once('-')?;
    Cidr::new(a.parse().ok()?, p.parse().ok()?).ok()
}

/// The last segment of a key.
pub fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("/ohno/");
        let b = Cidr::parse("10.85.4.0/26").unwrap();
        assert_eq!(k.block("default", &b), "/ohno/blocks/default/10.85.4.0-26");
        assert_eq!(
            k.ip("default", &b, "10.85.4.2".parse().unwrap()),
            "/ohno/ips/default/10.85.4.0-26/10.85.4.2"
        );
        assert_eq!(
            k.attachment("podnet", "abc", "eth0"),
            "/ohno/attachments/podnet/abc/eth0"
        );
        assert_eq!(
            k.affinity("n1", "default", &b),
            "/ohno/affinity/n1/default/10.85.4.0-26"
        );
        assert_eq!(parse_block_id("10.85.4.0-26"), Some(b));
        let v6 = Cidr::parse("fd00:85::40/122").unwrap();
        assert_eq!(parse_block_id(&block_id(&v6)), Some(v6));
        assert_eq!(parse_block_id("junk"), None);
    }
}
