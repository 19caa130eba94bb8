//! nftables masquerade over raw netlink (NETLINK_NETFILTER, subsystem
//! NFNL_SUBSYS_NFTABLES), hand-encoded: no libnftnl, no `nft` binary.
//!
//! Layout: table `ohno` in family `ip` (IPv4 subnets) and `ip6` (IPv6
//! subnets); in it one base chain per CNI network (`type nat hook postrouting
//! priority srcnat`), named exactly as the network (see [`chain_name`]), so two
//! networks never share a chain. Each chain holds one rule per subnet of the
//! network's pools (all of them, whichever pool an ADD allocated from), and
//! each rule excludes every pool of its family as a destination, so traffic
//! from a pod to any pod of the network, on this node or another, in the same
//! pool or another, keeps its source address:
//!
//! ```text
//! ip saddr S ip daddr != S ip daddr != S2 … ip daddr != 224.0.0.0/4 masquerade comment "ohno S"
//! ip6 saddr S ip6 daddr != S ip6 daddr != S2 … masquerade comment "ohno S"
//! ```
//!
//! Every change is one nfnetlink batch (BATCH_BEGIN … BATCH_END), which the
//! kernel applies atomically: the chain is never seen half-filled, and a
//! failing message aborts the whole batch. Each message asks for an ack and
//! every ack is checked.
//!
//! The `ohno` table is left in place when its last chain goes: an empty table
//! has no hooks and costs nothing, and deleting it would race with a
//! concurrent ADD of another network (DELTABLE deletes whatever the table
//! holds by then).

use std::io;
use std::net::IpAddr;

use super::nl::{self, NlSocket, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};
use crate::error::{Error, Result};
use crate::ip::Family;

/// The table every Ohno chain lives in.
pub const TABLE: &str = "ohno";
/// Longest chain name the kernel accepts: NFT_CHAIN_MAXNAMELEN (256, with the
/// NUL) since Linux 4.14; older kernels took 31 bytes and refuse a longer
/// network's chain (the ADD fails, naming the chain).
pub const MAX_CHAIN_NAME_LEN: usize = 255;

// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16; // NLMSG_MIN_TYPE
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNETLINK_V0: u8 = 0;
// linux/netfilter.h
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_INET_POST_ROUTING: u32 = 4;
/// NF_IP_PRI_NAT_SRC / NF_IP6_PRI_NAT_SRC ("srcnat").
const NAT_SRC_PRIORITY: i32 = 100;
// linux/netfilter/nf_tables.h: enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
// enum nft_table_attributes
const NFTA_TABLE_NAME: u16 = 1;
// enum nft_chain_attributes
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
// enum nft_hook_attributes
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
// enum nft_rule_attributes
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
// enum nft_list_attributes / nft_expr_attributes
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
// enum nft_payload_attributes
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
// enum nft_bitwise_attributes
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
// enum nft_cmp_attributes / nft_cmp_ops
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
// enum nft_data_attributes
const NFTA_DATA_VALUE: u16 = 1;
/// enum nft_registers: the first 16-byte data register.
const NFT_REG_1: u32 = 1;
/// libnftnl's NFTNL_UDATA_RULE_COMMENT, so `nft list` shows our comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NLA_F_NESTED: u16 = 1 << 15;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

/// What nftables needs of an address family (the one [`Family`] type).
trait Nf {
    fn proto(self) -> u8;
    /// The nft table family's name.
    fn name(self) -> &'static str;
    /// (saddr offset, daddr offset, address length) in the network header.
    fn addr_fields(self) -> (u32, u32, usize);
}

impl Nf for Family {
    fn proto(self) -> u8 {
        match self {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn addr_fields(self) -> (u32, u32, usize) {
        match self {
            Family::V4 => (12, 16, 4),
            Family::V6 => (8, 24, 16),
        }
    }
}

/// The chain name for a CNI network name (`tag`): the name itself.
///
/// A valid CNI network name (`[A-Za-z0-9][A-Za-z0-9_.-]*`) is a valid chain
/// name as it is, so the mapping is the identity and two networks can never
/// meet in one chain (a shortened or hashed name could collide, and each
/// network's ADD would flush the other's rules). A name the kernel cannot hold
/// (over [`MAX_CHAIN_NAME_LEN`] bytes), an empty one or one with other bytes
/// is refused (code 7, field `name`) rather than mapped onto something shared.
pub fn chain_name(tag: &str) -> Result<String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if tag.is_empty() || !tag.chars().all(legal) {
        return Err(Error::config(
            "name",
            format!("{tag:?} is not a network name an nftables chain can carry (ipMasq)"),
        ));
    }
    if tag.len() > MAX_CHAIN_NAME_LEN {
        return Err(Error::config(
            "name",
            format!(
                "a network name of {} bytes is longer than the {MAX_CHAIN_NAME_LEN} an nftables chain name can hold (ipMasq)",
                tag.len()
            ),
        ));
    }
    Ok(tag.to_string())
}

/// Ensure masquerade for traffic from each subnet to destinations outside it
/// (and, for IPv4, not to multicast 224.0.0.0/4): the chain [`chain_name`]`(tag)`
/// in table `ohno` of each family holds exactly one rule per subnet of that
/// family afterwards. Table, chain and rules are replaced in one atomic batch
/// (NEWTABLE, NEWCHAIN, DELRULE flushing the chain, NEWRULE per subnet), so
/// calling this twice leaves the same single rule per subnet. A family with
/// no subnets has its chain removed. Subnets are normalised (host bits
/// cleared); a /0 subnet is refused.
pub fn ensure_masquerade(tag: &str, subnets: &[(IpAddr, u8)]) -> Result<()> {
    let chain = chain_name(tag)?;
    for &(addr, prefix) in subnets {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix == 0 || prefix > max {
            return Err(Error::config(
                "ipMasq",
                format!("cannot masquerade subnet {addr}/{prefix}: prefix must be 1-{max}"),
            ));
        }
    }
    let mut sock = open(&format!("ensure masquerade chain {chain}"))?;
    for family in [Family::V4, Family::V6] {
        let mine: Vec<(IpAddr, u8)> = subnets
            .iter()
            .filter(|(a, _)| Family::of(*a) == family)
            .map(|&(a, p)| (network(a, p), p))
            .collect();
        if mine.is_empty() {
            remove_chain(&mut sock, family, &chain)?;
            continue;
        }
        let mut batch = Batch::new(&mut sock);
        batch.push(NFT_MSG_NEWTABLE, family, NLM_F_CREATE, "add table", |a| {
            a.str(NFTA_TABLE_NAME, TABLE);
        });
        batch.push(NFT_MSG_NEWCHAIN, family, NLM_F_CREATE, "add chain", |a| {
            a.str(NFTA_CHAIN_TABLE, TABLE);
            a.str(NFTA_CHAIN_NAME, &chain);
            a.nested(NFTA_CHAIN_HOOK, |h| {
                h.be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING);
                h.be32(NFTA_HOOK_PRIORITY, NAT_SRC_PRIORITY as u32);
            });
            a.str(NFTA_CHAIN_TYPE, "nat");
        });
        batch.push(NFT_MSG_DELRULE, family, 0, "flush chain", |a| {
            a.str(NFTA_RULE_TABLE, TABLE);
            a.str(NFTA_RULE_CHAIN, &chain);
        });
        for &(net, prefix) in &mine {
            let what = format!("add rule for {net}/{prefix}");
            batch.push(
                NFT_MSG_NEWRULE,
                family,
                NLM_F_CREATE | NLM_F_APPEND,
                &what,
                |a| {
                    a.str(NFTA_RULE_TABLE, TABLE);
                    a.str(NFTA_RULE_CHAIN, &chain);
                    a.nested(NFTA_RULE_EXPRESSIONS, |e| {
                        masquerade_exprs(e, family, (net, prefix), &mine)
                    });
                    a.put(
                        NFTA_RULE_USERDATA,
                        &comment(&format!("ohno {net}/{prefix}")),
                    );
                },
            );
        }
        batch.commit().map_err(|(what, e)| {
            Error::netlink(
                format!(
                    "ensure masquerade in chain {} {TABLE} {chain}: {what}",
                    family.name()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// Remove the chain for `tag` (flush + delete in one batch) from both
/// families. A missing table or chain is success. The `ohno` table itself is
/// left in place (see the module docs).
pub fn remove_masquerade(tag: &str) -> Result<()> {
    let chain = chain_name(tag)?;
    let mut sock = open(&format!("remove masquerade chain {chain}"))?;
    for family in [Family::V4, Family::V6] {
        remove_chain(&mut sock, family, &chain)?;
    }
    Ok(())
}

fn open(context: &str) -> Result<NlSocket> {
    NlSocket::open(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|e| Error::netlink(format!("{context}: open nfnetlink socket"), e))
}

fn remove_chain(sock: &mut NlSocket, family: Family, chain: &str) -> Result<()> {
    let mut batch = Batch::new(sock);
    batch.push(NFT_MSG_DELRULE, family, 0, "flush chain", |a| {
        a.str(NFTA_RULE_TABLE, TABLE);
        a.str(NFTA_RULE_CHAIN, chain);
    });
    batch.push(NFT_MSG_DELCHAIN, family, 0, "delete chain", |a| {
        a.str(NFTA_CHAIN_TABLE, TABLE);
        a.str(NFTA_CHAIN_NAME, chain);
    });
    match batch.commit() {
        Ok(()) => Ok(()),
        // No table or no chain: the batch was aborted as a whole and there
        // was nothing to remove.
        Err((_, e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err((what, e)) => Err(Error::netlink(
            format!(
                "remove masquerade chain {} {TABLE} {chain}: {what}",
                family.name()
            ),
            e,
        )),
    }
}

/// `addr` with the host bits of `prefix` cleared.
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    let mut bytes = octets(&addr);
    for (i, b) in bytes.iter_mut().enumerate() {
        *b &= mask_byte(prefix, i);
    }
    match addr {
        IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&bytes[..]).unwrap_or([0; 4])),
        IpAddr::V6(_) => IpAddr::from(<[u8; 16]>::try_from(&bytes[..]).unwrap_or([0; 16])),
    }
}

fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Byte `i` of the netmask of `prefix`.
fn mask_byte(prefix: u8, i: usize) -> u8 {
    let bits = usize::from(prefix).saturating_sub(i * 8).min(8);
    (0xffu16 << (8 - bits)) as u8
}

/// The expressions of one masquerade rule: from `own`, to none of `all`
/// (the network's subnets of this family; `own` first).
fn masquerade_exprs(e: &mut Attrs, family: Family, own: (IpAddr, u8), all: &[(IpAddr, u8)]) {
    let (saddr, daddr, len) = family.addr_fields();
    let (net, prefix) = own;
    let net = octets(&net);
    match_prefix(e, saddr, &net, prefix, NFT_CMP_EQ);
    match_prefix(e, daddr, &net, prefix, NFT_CMP_NEQ);
    for &(other, p) in all.iter().filter(|&&o| o != own) {
        match_prefix(e, daddr, &octets(&other), p, NFT_CMP_NEQ);
    }
    if family == Family::V4 {
        // ip daddr != 224.0.0.0/4
        match_prefix(e, daddr, &[224, 0, 0, 0], 4, NFT_CMP_NEQ);
    }
    debug_assert_eq!(net.len(), len);
    expr(e, "masq", |_| {});
}

/// `<field at offset> [!=|==] net/prefix`, as nft encodes it: a byte-aligned
/// prefix loads only the prefix bytes; otherwise load the whole address and
/// mask it with `bitwise` (xor 0) before comparing.
fn match_prefix(e: &mut Attrs, offset: u32, net: &[u8], prefix: u8, op: u32) {
    let aligned = prefix & 7 == 0; // byte-aligned (MSRV 1.85: no is_multiple_of)
    let len = if aligned {
        usize::from(prefix / 8)
    } else {
        net.len()
    };
    expr(e, "payload", |d| {
        d.be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        d.be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
        d.be32(NFTA_PAYLOAD_OFFSET, offset);
        d.be32(NFTA_PAYLOAD_LEN, len as u32);
    });
    if !aligned {
        let mask: Vec<u8> = (0..len).map(|i| mask_byte(prefix, i)).collect();
        expr(e, "bitwise", |d| {
            d.be32(NFTA_BITWISE_SREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_DREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_LEN, len as u32);
            d.nested(NFTA_BITWISE_MASK, |v| v.put(NFTA_DATA_VALUE, &mask));
            d.nested(NFTA_BITWISE_XOR, |v| v.put(NFTA_DATA_VALUE, &vec![0; len]));
        });
    }
    expr(e, "cmp", |d| {
        d.be32(NFTA_CMP_SREG, NFT_REG_1);
        d.be32(NFTA_CMP_OP, op);
        d.nested(NFTA_CMP_DATA, |v| v.put(NFTA_DATA_VALUE, &net[..len]));
    });
}

/// One `NFTA_LIST_ELEM` expression named `name` with data built by `data`.
fn expr(e: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    e.nested(NFTA_LIST_ELEM, |x| {
        x.str(NFTA_EXPR_NAME, name);
        let mut inner = Attrs::default();
        data(&mut inner);
        if !inner.0.is_empty() {
            x.put(NFTA_EXPR_DATA | NLA_F_NESTED, &inner.0);
        }
    });
}

/// Rule userdata holding a comment, in libnftnl's TLV layout.
fn comment(text: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = text.bytes().take(126).collect();
    bytes.push(0);
    let mut out = vec![NFTNL_UDATA_RULE_COMMENT, bytes.len() as u8];
    out.extend_from_slice(&bytes);
    out
}

/// Netlink attributes being encoded (type-length-value, 4-byte aligned).
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(nl::align4(self.0.len()), 0);
    }

    /// A NUL-terminated string.
    fn str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v);
    }

    /// nf_tables wants its u32 attributes in network byte order.
    fn be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn nested(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) {
        let mut inner = Attrs::default();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.0);
    }
}

/// One nfnetlink transaction being assembled.
struct Batch<'a> {
    sock: &'a mut NlSocket,
    buf: Vec<u8>,
    begin_seq: u32,
    /// (sequence number, description) of each message that must be acked.
    pending: Vec<(u32, String)>,
}

impl<'a> Batch<'a> {
    fn new(sock: &'a mut NlSocket) -> Batch<'a> {
        let begin_seq = sock.next_seq();
        let mut batch = Batch {
            sock,
            buf: Vec::new(),
            begin_seq,
            pending: Vec::new(),
        };
        batch.header(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        batch
    }

    fn header(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
        let len = nl::NLMSG_HDRLEN + 4 + attrs.len();
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg
        self.buf.push(family);
        self.buf.push(NFNETLINK_V0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(attrs);
        self.buf.resize(nl::align4(self.buf.len()), 0);
    }

    fn push(
        &mut self,
        msg: u16,
        family: Family,
        flags: u16,
        what: &str,
        f: impl FnOnce(&mut Attrs),
    ) {
        let mut attrs = Attrs::default();
        f(&mut attrs);
        let seq = self.sock.next_seq();
        self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family.proto(),
            0,
            &attrs.0,
        );
        self.pending.push((seq, what.to_string()));
    }

    /// Send the batch and check one ack per message. On failure, returns
    /// what the first failing message did and the kernel's errno.
    fn commit(mut self) -> std::result::Result<(), (String, io::Error)> {
        let end_seq = self.sock.next_seq();
        self.header(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let batch = |e: io::Error| ("send batch".to_string(), e);
        self.sock.send(&self.buf).map_err(batch)?;
        let mut first_error: Option<(u32, String, io::Error)> = None;
        while !self.pending.is_empty() {
            for raw in self.sock.recv().map_err(batch)? {
                if raw.ty != NLMSG_ERROR {
                    continue;
                }
                if raw.seq == self.begin_seq || raw.seq == end_seq {
                    // The batch as a whole was refused (EPERM, commit failure).
                    raw.check().map_err(|e| ("commit batch".to_string(), e))?;
                    continue;
                }
                let Some(pos) = self.pending.iter().position(|(s, _)| *s == raw.seq) else {
                    continue;
                };
                let (seq, what) = self.pending.swap_remove(pos);
                if let Err(e) = raw.check() {
                    if first_error.as_ref().is_none_or(|(s, _, _)| seq < *s) {
                        first_error = Some((seq, what, e));
                    }
                }
            }
        }
        match first_error {
            Some((_, what, e)) => Err((what, e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testns::TestNs;

    #[test]
    fn chain_names_are_the_network_names_and_others_are_refused() {
        assert_eq!(chain_name("podnet").unwrap(), "podnet");
        assert_eq!(chain_name("pod-net.v2_x").unwrap(), "pod-net.v2_x");
        // Two long names that shared chain a-very-long-network-na-30098e2f
        // under the old rule (22 bytes and a 32-bit FNV-1a hash) keep their own.
        let (a, b) = (
            "a-very-long-network-name-yunw-net",
            "a-very-long-network-name-1wba-net",
        );
        assert_eq!(chain_name(a).unwrap(), a);
        assert_eq!(chain_name(b).unwrap(), b);
        let longest = "n".repeat(MAX_CHAIN_NAME_LEN);
        assert_eq!(chain_name(&longest).unwrap(), longest);
        let e = chain_name(&format!("{longest}x")).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        assert!(e.to_string().contains("256 bytes"), "{e}");
        assert!(chain_name("pod net").is_err());
        assert!(chain_name("").is_err());
    }

    #[test]
    fn masks_and_networks() {
        assert_eq!(mask_byte(20, 0), 0xff);
        assert_eq!(mask_byte(20, 2), 0xf0);
        assert_eq!(mask_byte(20, 3), 0);
        assert_eq!(
            network("10.1.2.3".parse().unwrap(), 20),
            "10.1.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network("fd00::1:2".parse().unwrap(), 64),
            "fd00::".parse::<IpAddr>().unwrap()
        );
    }

    /// The rules of chain `chain` in `nft -j list ruleset`, as
    /// (family, saddr prefix) pairs.
    fn rules(ns: &TestNs, chain: &str) -> Vec<(String, String)> {
        let out = ns.exec(&["nft", "-j", "list", "ruleset"]);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut found = Vec::new();
        for item in doc["nftables"].as_array().unwrap() {
            let Some(rule) = item.get("rule") else {
                continue;
            };
            if rule["table"] != TABLE || rule["chain"] != chain {
                continue;
            }
            let exprs = rule["expr"].as_array().unwrap();
            assert!(
                exprs.iter().any(|e| e.get("masquerade").is_some()),
                "{rule}"
            );
            let saddr = &exprs[0]["match"];
            assert_eq!(saddr["op"], "==", "{rule}");
            let p = &saddr["right"]["prefix"];
            found.push((
                rule["family"].as_str().unwrap().to_string(),
                format!("{}/{}", p["addr"].as_str().unwrap(), p["len"]),
            ));
            let daddr = &exprs[1]["match"];
            assert_eq!(daddr["op"], "!=", "{rule}");
            assert_eq!(daddr["right"]["prefix"], *p, "{rule}");
        }
        found.sort();
        found
    }

    fn chains(ns: &TestNs) -> Vec<String> {
        let out = ns.exec(&["nft", "-j", "list", "chains"]);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("chain"))
            .map(|c| {
                format!(
                    "{} {} {}",
                    c["family"].as_str().unwrap(),
                    c["table"].as_str().unwrap(),
                    c["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn ensure_masquerade_twice_leaves_one_rule_per_subnet_and_remove_clears() {
        let ns = TestNs::new("nft");
        let subnets: Vec<(IpAddr, u8)> = vec![
            ("10.88.0.0".parse().unwrap(), 16),
            ("10.99.3.7".parse().unwrap(), 20), // host bits, unaligned prefix
            ("fd00:88::".parse().unwrap(), 64),
        ];
        ns.netns()
            .run(|| {
                ensure_masquerade("podnet", &subnets)?;
                ensure_masquerade("podnet", &subnets)?;
                ensure_masquerade("other", &subnets[..1])
            })
            .unwrap();
        let expected = vec![
            ("ip".to_string(), "10.88.0.0/16".to_string()),
            ("ip".to_string(), "10.99.0.0/20".to_string()),
            ("ip6".to_string(), "fd00:88::/64".to_string()),
        ];
        assert_eq!(rules(&ns, "podnet"), expected);
        assert_eq!(rules(&ns, "other"), expected[..1].to_vec());
        let listing = ns.exec(&["nft", "list", "chain", "ip", TABLE, "podnet"]);
        assert!(
            listing.contains("type nat hook postrouting priority srcnat"),
            "{listing}"
        );
        assert!(
            listing.contains(
                "ip saddr 10.99.0.0/20 ip daddr != 10.99.0.0/20 ip daddr != 10.88.0.0/16 ip daddr != 224.0.0.0/4 masquerade comment \"ohno 10.99.0.0/20\""
            ),
            "{listing}"
        );

        // Fewer subnets: the chain is rewritten; no v6 subnet: the ip6 chain goes.
        ns.netns()
            .run(|| ensure_masquerade("podnet", &subnets[1..2]))
            .unwrap();
        assert_eq!(rules(&ns, "podnet"), expected[1..2].to_vec());
        assert!(!chains(&ns).contains(&"ip6 ohno podnet".to_string()));

        ns.netns()
            .run(|| {
                remove_masquerade("podnet")?;
                remove_masquerade("podnet")?; // already gone: success
                remove_masquerade("never-added")
            })
            .unwrap();
        assert!(rules(&ns, "podnet").is_empty());
        let chains = chains(&ns);
        assert!(!chains.iter().any(|c| c.ends_with(" podnet")), "{chains:?}");
        assert!(chains.contains(&"ip ohno other".to_string()), "{chains:?}");
    }

    #[test]
    fn masquerade_refuses_a_zero_prefix() {
        let ns = TestNs::new("nft0");
        let err = ns
            .netns()
            .run(|| ensure_masquerade("podnet", &[("0.0.0.0".parse().unwrap(), 0)]))
            .unwrap_err();
        assert!(err.to_string().contains("0.0.0.0/0"), "{err}");
    }
}
