//! ADD, read top to bottom as the story: validate, decide (policy), allocate
//! (IPAM, released again if anything later fails), ensure the bridge and its
//! gateways, create the veth pair with the pod end born in the pod netns, configure
//! the pod side, masquerade, and answer with the result.

use std::net::IpAddr;

use serde_json::Value;

use super::session::Session;
use super::{fault_point, Invocation};
use crate::cni::result::{CniResult, Interface, IpConfig, Route as ResultRoute};
use crate::config::{NetConf, PoolConf};
use crate::error::{Error, Result};
use crate::ip::cidr::Cidr;
use crate::ip::mac::format_mac;
use crate::ipam::block::gateway_of;
use crate::ipam::{Allocator, AttachmentRecord, Owner, Want};
use crate::net::link::{Link, Netlink, Route};
use crate::net::netns::NetNs;
use crate::net::{nft, sysctl};
use crate::policy::answer::{check_allocation, check_host_name, Choice};
use crate::policy::{default_host_ifname, Family, Naming, Pod, Policy};

/// How many alternative host names are tried when the default one is taken.
pub(crate) const HOST_NAME_ATTEMPTS: u32 = 8;

pub fn run(inv: &Invocation) -> Result<Value> {
    if inv.conf.ipam_only() {
        return run_ipam(inv);
    }
    let (env, conf) = (&inv.env, &inv.conf);
    let netns = super::pod_netns(env)?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::parse)
        .transpose()?;
    let pod = Pod::new(env, conf);
    let session = Session::open(conf)?;
    let alloc = session.allocator();
    let id = inv.attachment_id();

    let mut made = Made::default();
    let (allocated, plumbed) = Overlap {
        inv,
        session: &session,
        alloc: &alloc,
        pod: &pod,
        netns: &netns,
    }
    .run(&mut made);
    // Only addresses this ADD took are released on failure: not when the
    // allocation failed (nothing taken, and a store error says nothing about an
    // earlier ADD's record) and not on a repeated ADD (the record is older).
    let took_addresses = matches!(allocated, Ok((_, false)));
    let outcome = match (allocated, plumbed) {
        (Ok((record, repeat)), Ok(plumbed)) => {
            log::info!(
                "{} {}: {}",
                if repeat { "found" } else { "allocated" },
                id.container_id,
                record
                    .ips
                    .iter()
                    .map(|i| i.address.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            fault_point("ipam").and_then(|()| configure(inv, &netns, &record, plumbed))
        }
        // The allocation's error is the one to report (an exhausted pool says more
        // than a link that was made in vain).
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    };
    match outcome {
        Ok(mut result) => {
            if let Some(prev) = prev {
                result = prev.merge(result);
            }
            Ok(result.to_json(&conf.cni_version))
        }
        Err(e) => {
            // Undo in reverse: the veth we made, then the addresses we took.
            if let Some(index) = made.veth {
                if let Err(u) = Netlink::open().and_then(|mut nl| nl.delete_link(index)) {
                    log::warn!("undo: delete host veth {index}: {u}");
                }
            }
            if took_addresses {
                if let Err(u) = alloc.release(&id) {
                    log::warn!("undo: release addresses of {}: {u}", id.container_id);
                }
                // The masquerade chain is the network's; drop it if nobody else uses it.
                if conf.ip_masq && node_has_no_attachments(&alloc, conf) {
                    if let Err(u) = nft::remove_masquerade(&conf.name) {
                        log::warn!("undo: remove masquerade of {}: {u}", conf.name);
                    }
                }
            }
            Err(e)
        }
    }
}

/// An ADD's two threads, and what runs where.
///
/// - **This thread** (already running) decides and allocates: it opens the
///   policy, decides the host-side name and passes it on, then allocates. It
///   waits — on the component's start-up, on the store's round trips — so the
///   waiting belongs here.
/// - **A new thread** makes the bridge and the veth pair meanwhile: the
///   kernel's work. A new thread starts on its parent's CPU and, on a small
///   machine, often runs only once the parent waits, so the CPU work belongs
///   there.
///
/// Neither needs the other until the addresses go on: the plumber waits for
/// the host-side name only when a policy decides it, and makes a new bridge
/// only once the allocation succeeded. Either failing is reported with both
/// results, and the caller undoes both.
struct Overlap<'a> {
    inv: &'a Invocation,
    session: &'a Session<'a>,
    alloc: &'a Allocator<'a>,
    pod: &'a Pod,
    netns: &'a NetNs,
}

impl Overlap<'_> {
    /// Both threads' results: the allocation (and whether it was already
    /// recorded) and the links; `made` says what the plumber created.
    fn run(self, made: &mut Made) -> (Result<(AttachmentRecord, bool)>, Result<Plumbed>) {
        let Overlap {
            inv,
            session,
            alloc,
            pod,
            netns,
        } = self;
        let alias = host_veth_alias(&inv.env.container_id, &inv.env.ifname);
        let (named_tx, named_rx) = std::sync::mpsc::channel::<Option<String>>();
        let (allocated_tx, allocated_rx) = std::sync::mpsc::channel::<bool>();
        std::thread::scope(|s| {
            let plumber = s.spawn(move || {
                let naming = if inv.conf.policy.is_some() {
                    HostNaming::Pending(&named_rx)
                } else {
                    HostNaming::Default
                };
                let allocated_ok = || allocated_rx.recv().unwrap_or(false);
                plumb(inv, netns, naming, &allocated_ok, made)
            });
            // Both senders move in: a closed channel (any early return) tells
            // the plumber to stop waiting.
            let alias = &alias;
            let allocated = (move || {
                let mut policy = session.policy()?;
                let name = decide_host_name(&mut *policy, pod, alias)?;
                let _ = named_tx.send(name);
                drop(named_tx);
                let allocated = allocate(alloc, inv, pod, &mut *policy);
                let _ = allocated_tx.send(allocated.is_ok());
                allocated
            })();
            let plumbed = plumber.join().unwrap_or_else(|_| {
                Err(Error::netlink(
                    "make the links",
                    std::io::Error::other("the plumbing thread panicked"),
                ))
            });
            (allocated, plumbed)
        })
    }
}

/// IPAM-plugin mode: allocate and return addresses and routes; the calling plugin
/// (the reference bridge, macvlan, ipvlan) configures the interface.
fn run_ipam(inv: &Invocation) -> Result<Value> {
    let conf = &inv.conf;
    let pod = Pod::new(&inv.env, conf);
    let session = Session::open(conf)?;
    let alloc = session.allocator();
    let mut policy = session.policy()?;
    let (record, _) = allocate(&alloc, inv, &pod, &mut *policy)?;
    let addrs = addresses(&record)?;
    let routes: Vec<(Cidr, IpAddr)> = addrs
        .iter()
        .flat_map(|(addr, block)| {
            let gw = gateway_of(block);
            conf.ipam
                .routes
                .iter()
                .filter(move |r| r.dst.is_ipv4() == addr.is_ipv4())
                .map(move |r| (r.dst.canonical(), r.gw.unwrap_or(gw)))
        })
        .collect();
    let result = CniResult {
        interfaces: Vec::new(),
        ips: ip_configs(&addrs, None),
        routes: result_routes(&routes),
        dns: dns(conf),
    };
    Ok(result.to_json(&conf.cni_version))
}

/// The result's `ips`: each address with its block's prefix and gateway.
fn ip_configs(addrs: &[(IpAddr, Cidr)], interface: Option<usize>) -> Vec<IpConfig> {
    addrs
        .iter()
        .map(|(a, b)| IpConfig {
            address: format!("{a}/{}", b.prefix()),
            gateway: Some(gateway_of(b).to_string()),
            interface,
        })
        .collect()
}

fn result_routes(routes: &[(Cidr, IpAddr)]) -> Vec<ResultRoute> {
    routes
        .iter()
        .map(|(d, g)| ResultRoute {
            dst: d.to_string(),
            gw: Some(g.to_string()),
        })
        .collect()
}

fn dns(conf: &NetConf) -> crate::cni::result::Dns {
    conf.dns
        .as_ref()
        .and_then(|d| serde_json::from_value(d.clone()).ok())
        .unwrap_or_default()
}

/// True when this node has no attachment left on the network (read errors count
/// as "has some": never remove shared state on a guess).
pub(crate) fn node_has_no_attachments(alloc: &Allocator<'_>, conf: &NetConf) -> bool {
    alloc
        .attachments(Some(&conf.name))
        .map(|atts| !atts.iter().any(|a| a.owner.node == conf.node))
        .unwrap_or(false)
}

/// The alias (`IFLA_IFALIAS`) ADD sets on the host end of an attachment's veth:
/// how a repeated ADD adopts its pair and DEL knows the pod's interface is this
/// attachment's. A container id and ifname name one attachment on the node.
pub(crate) fn host_veth_alias(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// What this ADD created, so a failure can remove exactly that.
#[derive(Default)]
struct Made {
    veth: Option<u32>,
}

fn owner(inv: &Invocation) -> Owner {
    Owner {
        network: inv.conf.name.clone(),
        container_id: inv.env.container_id.clone(),
        ifname: inv.env.ifname.clone(),
        node: inv.conf.node.clone(),
        pod_namespace: inv.env.args.pod_namespace.clone(),
        pod_name: inv.env.args.pod_name.clone(),
        pod_uid: inv.env.args.pod_uid.clone(),
        created: 0,
    }
}

/// How many times the policy is asked again when the address it chose was taken
/// by the time the transaction ran.
const POLICY_ATTEMPTS: usize = 3;

/// The host-side name: the policy's (validated: a legal name, not used by another
/// interface on the node) or the built-in rule's (`None`).
fn decide_host_name(policy: &mut dyn Policy, pod: &Pod, alias: &str) -> Result<Option<String>> {
    let name = match policy.name_interface(pod)? {
        Naming::Default => return Ok(None),
        Naming::Deny(reason) => {
            return Err(Error::PolicyDenied {
                policy: policy.name().into(),
                reason,
            })
        }
        // The built-in name, spelled out: the default (whose pair the other
        // thread may be making right now).
        Naming::Name(n) if n == default_host_ifname(&pod.container_id, &pod.ifname, 0) => {
            return Ok(None)
        }
        Naming::Name(n) => n,
    };
    let problem = match check_host_name(&name) {
        Err(m) => Some(m),
        Ok(()) => match Netlink::open()?.link_by_name(&name)? {
            Some(l) if l.alias.as_deref() != Some(alias) => {
                Some(format!("answered host interface name {name:?}, which another interface on this node already uses"))
            }
            _ => None,
        },
    };
    match problem {
        None => Ok(Some(name)),
        Some(reason) => {
            policy.reject(Error::PolicyFault {
                policy: policy.name().into(),
                reason,
            })?;
            Ok(None)
        }
    }
}

/// Allocate as the policy decides; if an address it chose was taken meanwhile
/// (the transaction is the final word), ask it again, a bounded number of times.
/// The flag says the attachment was already recorded (a repeated ADD).
fn allocate(
    alloc: &Allocator<'_>,
    inv: &Invocation,
    pod: &Pod,
    policy: &mut dyn Policy,
) -> Result<(AttachmentRecord, bool)> {
    let owner = owner(inv);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (wants, chosen) = plan(&inv.conf, pod, policy)?;
        match alloc.allocate_or_find(&owner, &wants) {
            Err(Error::AddressUnavailable { address, msg })
                if chosen && attempt < POLICY_ATTEMPTS =>
            {
                log::info!(
                    "address {address} chosen by policy {} is unavailable ({msg}); asking again",
                    policy.name()
                );
            }
            other => return other,
        }
    }
}

/// One address per family that has pools: a requested address wins, else the
/// policy decides (its answer checked here; the transaction checks freedom),
/// else the family's first pool. The flag says whether the policy chose an address.
fn plan<'c>(
    conf: &'c NetConf,
    pod: &Pod,
    policy: &mut dyn Policy,
) -> Result<(Vec<Want<'c>>, bool)> {
    let pools = &conf.ipam.pools;
    let mut families: Vec<Family> = Vec::new();
    for p in pools {
        let f = p.family();
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let mut wants = Vec::with_capacity(families.len());
    for ip in &conf.requests.ips {
        let pool = pools
            .iter()
            .find(|p| p.subnet.contains(*ip))
            .ok_or_else(|| Error::AddressUnavailable {
                address: ip.to_string(),
                msg: "requested address is in none of the configured pools".into(),
            })?;
        if wants
            .iter()
            .any(|w: &Want<'_>| w.pool.family() == Family::of(*ip))
        {
            return Err(Error::AddressUnavailable {
                address: ip.to_string(),
                msg: "more than one address requested for the same family".into(),
            });
        }
        wants.push(Want {
            pool,
            address: Some(*ip),
        });
    }
    let mut chosen = false;
    for fam in families {
        if wants.iter().any(|w| w.pool.family() == fam) {
            continue;
        }
        let of_family: Vec<&PoolConf> = pools.iter().filter(|p| p.family() == fam).collect();
        let first = Want {
            pool: of_family[0],
            address: None,
        };
        let decision = policy.allocate(pod, fam, &of_family)?;
        let checked = match check_allocation(&decision, &of_family) {
            Ok(Choice::Default) => Ok(first),
            Ok(Choice::Pool(p)) => Ok(Want {
                pool: p,
                address: None,
            }),
            Ok(Choice::Address(p, address)) => {
                chosen = true;
                Ok(Want {
                    pool: p,
                    address: Some(address),
                })
            }
            Ok(Choice::Deny(reason)) => {
                return Err(Error::PolicyDenied {
                    policy: policy.name().to_string(),
                    reason,
                });
            }
            Err(reason) => Err(reason),
        };
        let want = match checked {
            Ok(w) => w,
            Err(reason) => {
                policy.reject(Error::PolicyFault {
                    policy: policy.name().to_string(),
                    reason,
                })?;
                first
            }
        };
        wants.push(want);
    }
    Ok((wants, chosen))
}

/// A parsed address of the record: (address, block).
fn addresses(record: &AttachmentRecord) -> Result<Vec<(IpAddr, Cidr)>> {
    record
        .ips
        .iter()
        .map(|ip| {
            let addr = Cidr::parse(&ip.address).map_err(Error::Store)?;
            let block = Cidr::parse(&ip.block).map_err(Error::Store)?;
            Ok((addr.addr(), block))
        })
        .collect()
}

/// The links of bridge mode, made before the addresses are known: the bridge,
/// the veth pair with the pod end born in the pod netns.
struct Plumbed {
    bridge: Link,
    host_veth: Link,
    pod_link: Link,
    /// The sockets plumb used, kept for configure: opening one in the pod's
    /// netns costs a thread.
    host: Netlink,
    pod: Netlink,
}

/// How the host-side name is known to [`plumb`].
enum HostNaming<'r> {
    /// No policy: the built-in name.
    Default,
    /// A policy decides on the other thread; `None` from it means the built-in
    /// name, a closed channel that the decision failed.
    Pending(&'r std::sync::mpsc::Receiver<Option<String>>),
}

/// `allocated_ok` blocks until the allocation is done and says whether it
/// succeeded: a bridge this ADD would create is only created then, so a failed
/// ADD never leaves a new bridge behind (an existing one is used at once).
fn plumb(
    inv: &Invocation,
    netns: &NetNs,
    naming: HostNaming<'_>,
    allocated_ok: &dyn Fn() -> bool,
    made: &mut Made,
) -> Result<Plumbed> {
    let (env, conf) = (&inv.env, &inv.conf);
    let mut host = Netlink::open()?;
    // On a node whose agent routes through vxlan, the agent says how large
    // a pod's packets may be (the vxlan device's MTU).
    let limit = crate::agent::routes::pod_mtu_limit(&conf.ipam.lock_dir);
    let mtu = match (conf.mtu, limit) {
        (Some(m), Some(l)) if m > l => {
            return Err(Error::config(
                "mtu",
                format!(
                    "{m} is above {l}, the largest MTU for pods on this node \
                     (its vxlan device's, {}/{})",
                    conf.ipam.lock_dir.display(),
                    crate::agent::routes::POD_MTU_FILE
                ),
            ))
        }
        (Some(m), _) => m,
        (None, l) => {
            let found = host.default_route_mtu()?.unwrap_or(1500);
            l.map_or(found, |l| found.min(l))
        }
    };
    let found = host.link_by_name(&conf.bridge)?;
    if found.is_none() && !allocated_ok() {
        return Err(Error::Store(
            "the allocation failed; the bridge is not created".into(),
        ));
    }
    let bridge = host.ensure_bridge_found(&conf.bridge, found, Some(mtu), conf.promisc_mode)?;
    fault_point("bridge")?;

    let alias = host_veth_alias(&env.container_id, &env.ifname);
    let host_veth = match naming {
        HostNaming::Default => {
            create_veth(&mut host, None, &alias, inv, netns, mtu, bridge.index, made)?
        }
        HostNaming::Pending(decided) => {
            // Make the pair under the built-in name, down, while the policy
            // decides; then rename it if the policy chose a name, and set it up.
            let wait = || {
                decided
                    .recv()
                    .map_err(|_| Error::Store("the policy's naming decision did not arrive".into()))
            };
            let first = host.create_veth(
                &default_host_ifname(&env.container_id, &env.ifname, 0),
                &alias,
                &env.ifname,
                netns,
                mtu,
                inv.conf.requests.mac,
                bridge.index,
                false,
            );
            match first {
                Ok(link) => {
                    made.veth = Some(link.index);
                    match wait()? {
                        Some(name) if name != link.name => host.rename_and_up(link.index, &name)?,
                        _ => host.set_up(link.index)?,
                    }
                    host.link_by_index(link.index)?.ok_or_else(|| {
                        Error::netlink(
                            format!("find host veth {}", link.index),
                            std::io::Error::from_raw_os_error(libc::ENODEV),
                        )
                    })?
                }
                // Taken (a repeated ADD, a name collision): the careful path,
                // which adopts this attachment's pair or tries other names.
                Err(e) if e.is_exists() => {
                    let name = wait()?;
                    create_veth(
                        &mut host,
                        name.as_deref(),
                        &alias,
                        inv,
                        netns,
                        mtu,
                        bridge.index,
                        made,
                    )?
                }
                Err(e) => return Err(e),
            }
        }
    };
    if conf.hairpin_mode {
        host.set_hairpin(host_veth.index, true)?;
    }
    fault_point("veth")?;

    let mut pod = Netlink::open_in(netns)?;
    let pod_link = pod.link_by_name(&env.ifname)?.ok_or_else(|| {
        Error::netlink(
            format!("find {} in {}", env.ifname, netns.path().display()),
            std::io::Error::from_raw_os_error(libc::ENODEV),
        )
    })?;
    Ok(Plumbed {
        bridge,
        host_veth,
        pod_link,
        host,
        pod,
    })
}

/// Addresses on: the block gateways on the bridge (and forwarding), the pod's
/// addresses and routes, masquerade; returns this plugin's part of the result.
fn configure(
    inv: &Invocation,
    netns: &NetNs,
    record: &AttachmentRecord,
    plumbed: Plumbed,
) -> Result<CniResult> {
    let conf = &inv.conf;
    let addrs = addresses(record)?;
    let Plumbed {
        bridge,
        host_veth,
        pod_link,
        mut host,
        mut pod,
    } = plumbed;
    for (_, block) in &addrs {
        host.ensure_addr(bridge.index, gateway_of(block), block.prefix())?;
    }
    if addrs.iter().any(|(a, _)| a.is_ipv4()) {
        sysctl::set("net/ipv4/ip_forward", "1")?;
    }
    if addrs.iter().any(|(a, _)| a.is_ipv6()) {
        sysctl::set("net/ipv6/conf/all/forwarding", "1")?;
    }

    // The pod side: addresses, up, routes.
    let pod_index = pod_link.index;
    for (addr, block) in &addrs {
        pod.ensure_addr(pod_index, *addr, block.prefix())?;
    }
    pod.set_up(pod_index)?;
    fault_point("address")?;
    let routes = pod_routes(conf, &addrs);
    for r in &routes {
        pod.ensure_route(&Route {
            dst: r.0.addr(),
            prefix: r.0.prefix(),
            gateway: Some(r.1),
            oif: Some(pod_index),
        })?;
    }
    fault_point("routes")?;

    if conf.ip_masq {
        // The chain is the network's, rewritten whole by each ADD: it lists every
        // pool of the config, not only those this pod's addresses came from, or
        // an ADD in one pool would drop the SNAT of the pods in the others.
        let subnets: Vec<(IpAddr, u8)> = conf
            .ipam
            .pools
            .iter()
            .map(|p| (p.subnet.addr(), p.subnet.prefix()))
            .collect();
        nft::ensure_masquerade(&conf.name, &subnets)?;
    }
    fault_point("masquerade")?;

    Ok(result(
        conf, netns, &bridge, &host_veth, &pod_link, &addrs, &routes,
    ))
}

/// Create the pair under the chosen (or default) host name. A name held by another
/// attachment (a hash collision) moves on to the next candidate; one held by this
/// attachment (a repeated ADD) is adopted.
#[allow(clippy::too_many_arguments)]
fn create_veth(
    host: &mut Netlink,
    chosen: Option<&str>,
    alias: &str,
    inv: &Invocation,
    netns: &NetNs,
    mtu: u32,
    bridge: u32,
    made: &mut Made,
) -> Result<Link> {
    let env = &inv.env;
    for salt in 0..HOST_NAME_ATTEMPTS {
        let name = match chosen {
            Some(n) => n.to_string(),
            None => default_host_ifname(&env.container_id, &env.ifname, salt),
        };
        match host.create_veth(
            &name,
            alias,
            &env.ifname,
            netns,
            mtu,
            inv.conf.requests.mac,
            bridge,
            true,
        ) {
            Ok(link) => {
                made.veth = Some(link.index);
                return Ok(link);
            }
            Err(e) if e.is_exists() => {
                if let Some(existing) = host.link_by_name(&name)? {
                    if existing.alias.as_deref() == Some(alias) {
                        log::info!("adopting existing host veth {name} of this attachment");
                        return Ok(existing);
                    }
                }
                if chosen.is_some() {
                    return Err(e);
                }
                // Either our host name is taken by someone else, or the pod already
                // has an interface called CNI_IFNAME.
                let mut pod = Netlink::open_in(netns)?;
                if pod.link_by_name(&env.ifname)?.is_some() {
                    return Err(Error::netlink(
                        format!("create {} in {}", env.ifname, netns.path().display()),
                        std::io::Error::from_raw_os_error(libc::EEXIST),
                    ));
                }
                log::warn!(
                    "host interface name {name} is taken by another attachment; trying another"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::netlink(
        format!("find a free host interface name for {alias}"),
        std::io::Error::from_raw_os_error(libc::EEXIST),
    ))
}

/// Routes for the pod: a default route per family via the block gateway when
/// `isDefaultGateway`, plus `ipam.routes` (gw defaults to the block gateway).
fn pod_routes(conf: &NetConf, addrs: &[(IpAddr, Cidr)]) -> Vec<(Cidr, IpAddr)> {
    let mut out: Vec<(Cidr, IpAddr)> = Vec::new();
    let mut push = |dst: Cidr, gw: IpAddr| {
        if !out.iter().any(|(d, _)| *d == dst) {
            out.push((dst, gw));
        }
    };
    for (addr, block) in addrs {
        let gw = gateway_of(block);
        if conf.is_default_gateway {
            let any = if addr.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            if let Ok(dst) = Cidr::parse(any) {
                push(dst, gw);
            }
        }
        for r in conf
            .ipam
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4() == addr.is_ipv4())
        {
            push(r.dst.canonical(), r.gw.unwrap_or(gw));
        }
    }
    out
}

fn result(
    conf: &NetConf,
    netns: &NetNs,
    bridge: &Link,
    host_veth: &Link,
    pod: &Link,
    addrs: &[(IpAddr, Cidr)],
    routes: &[(Cidr, IpAddr)],
) -> CniResult {
    let iface = |l: &Link, sandbox: Option<String>| Interface {
        name: l.name.clone(),
        mac: l.mac.as_ref().map(format_mac),
        mtu: None,
        sandbox,
    };
    CniResult {
        interfaces: vec![
            iface(bridge, None),
            iface(host_veth, None),
            iface(pod, Some(netns.path().display().to_string())),
        ],
        ips: ip_configs(addrs, Some(2)),
        routes: result_routes(routes),
        dns: dns(conf),
    }
}
