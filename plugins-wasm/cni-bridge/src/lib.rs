//! `cni-bridge`: the built-in CNI module. Every pod gets a veth pair whose
//! host end is a port of the node's bridge, an address from each of the
//! network's pools (by default the node's pod CIDRs: IPv4, IPv6 or both) and
//! a default route per family through the bridge, which holds each pool's
//! gateway address. Only a pod's first interface takes the default route of
//! a family: a secondary one (Multus's `net1`, often of another network with
//! its own bridge and pools) finds it taken and gets none, so the pod reaches
//! that network's pool through the route its address's prefix makes.
//!
//! The host end is named from the attachment (`syv` and 12 hex digits of a
//! hash of the container id and interface), so DEL and GC find it without
//! state, even when the pod's namespace is gone. The host executes and
//! journals every step and undoes them all if ADD fails; DEL here removes what
//! ADD made and is safe to repeat.

use serde::Deserialize;
use switchyard_sdk::cni::Guest;
use switchyard_sdk::cni_types::{
    CniError, CniInterface, CniIp, CniRequest, CniResult, CniRoute, GcRequest,
};
use switchyard_sdk::host::ipam::{self, IpamError, Pool};
use switchyard_sdk::host::links::{self, LinkError, LinkInfo, RouteSpec, Scope};
use switchyard_sdk::types::{IpAddress, IpCidr, IpFamily, ModuleInfo, Role};

/// Error codes of this module (the CNI spec leaves 100 and up to plugins).
pub mod codes {
    /// The CNI spec's "try again later".
    pub const TRY_AGAIN: u32 = 11;
    /// The CNI spec's "plugin not available" (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// An address could not be allocated.
    pub const IPAM: u32 = 101;
    /// An interface, address or route could not be set up.
    pub const INTERFACE: u32 = 102;
    /// CHECK found the pod's network not as ADD left it.
    pub const CHECK: u32 = 103;
    /// The configuration is wrong (the CNI spec's code 7).
    pub const INVALID_CONFIG: u32 = 7;
    /// A variable of the environment is wrong (the CNI spec's code 4):
    /// `CNI_ARGS`.
    pub const INVALID_ENV: u32 = 4;
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "bridge": {"type": "string", "pattern": "^sy[a-zA-Z0-9_-]{1,13}$",
      "description": "The node's bridge (names starting with sy are granted)."},
    "mtu": {"type": "integer", "minimum": 576, "maximum": 65535},
    "pools": {"type": "array", "items": {"type": "string"}, "uniqueItems": true,
      "description": "Pools to take addresses from; all of the node's by default."}
  }
}"#;

/// Settings, from the module's config and the runtime's network config (the
/// latter wins, so one conflist can differ from the cluster default).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Settings {
    bridge: Option<String>,
    mtu: Option<u32>,
    pools: Option<Vec<String>>,
}

impl Settings {
    fn merge(module: &str, network: &str) -> Result<Settings, CniError> {
        let m: Settings = switchyard_sdk::config::parse(module)
            .map_err(|e| err(codes::INVALID_CONFIG, format!("{e:?}")))?;
        // The network config has many fields of the CNI spec; take ours from it.
        let n: Settings = serde_json::from_str(if network.trim().is_empty() {
            "{}"
        } else {
            network
        })
        .map_err(|e| err(codes::INVALID_CONFIG, format!("network configuration: {e}")))?;
        Ok(Settings {
            bridge: n.bridge.or(m.bridge),
            mtu: n.mtu.or(m.mtu),
            pools: n.pools.or(m.pools),
        })
    }

    fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or("sy0")
    }

    fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(1500)
    }
}

fn err(code: u32, msg: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

fn link_err(what: &str, e: LinkError) -> CniError {
    let (kind, m) = match e {
        LinkError::Exists(m) => ("already exists", m),
        LinkError::NotFound(m) => ("not found", m),
        LinkError::Kernel(m) => ("refused by the kernel", m),
    };
    CniError {
        code: codes::INTERFACE,
        msg: format!("{what}: {kind}"),
        details: m,
    }
}

/// FNV-1a.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The host end of an attachment's veth: `syv` + 12 hex digits, 15 bytes.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    format!(
        "syv{:012x}",
        hash(&format!("{container_id}/{ifname}")) & 0xffff_ffff_ffff
    )
}

fn default_route(family: IpFamily, gateway: IpAddress, device: &str) -> RouteSpec {
    let any = match family {
        IpFamily::Ipv4 => "0.0.0.0/0",
        IpFamily::Ipv6 => "::/0",
    };
    RouteSpec {
        destination: any.parse().expect("literal"),
        gateway: Some(gateway),
        device: device.to_string(),
        source: None,
        mtu: None,
    }
}

fn pools(settings: &Settings) -> Result<Vec<Pool>, CniError> {
    let all = ipam::pools();
    let chosen: Vec<Pool> = match &settings.pools {
        // The node's pod CIDRs: the host lists them first, one per family;
        // further pools serve the networks that name them.
        None => {
            let mut families = vec![];
            all.into_iter()
                .filter(|p| {
                    let first = !families.contains(&p.family);
                    families.push(p.family);
                    first
                })
                .collect()
        }
        Some(names) => {
            let mut v = vec![];
            for n in names {
                match all.iter().find(|p| &p.name == n) {
                    Some(p) => v.push(p.clone()),
                    None => {
                        let have: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
                        return Err(err(
                            codes::INVALID_CONFIG,
                            format!(
                                "pool {n:?} is not a pool of this node (it has: {})",
                                have.join(", ")
                            ),
                        ));
                    }
                }
            }
            v
        }
    };
    if chosen.is_empty() {
        return Err(err(
            codes::TRY_AGAIN,
            "this node has no pod CIDR yet, so there is no address to give; try again once the node has one",
        ));
    }
    Ok(chosen)
}

fn gateway_cidr(p: &Pool) -> IpCidr {
    p.gateway.with_prefix(p.subnet.prefix_len)
}

/// An address the runtime asked for, and where it asked.
#[derive(Debug, Clone)]
struct Wanted {
    address: IpAddress,
    /// The prefix length it came with, if any.
    prefix: Option<u8>,
    /// `CNI_ARGS IP`, `runtimeConfig.ips` or `args.cni.ips`.
    source: &'static str,
}

impl Wanted {
    /// The code of a request that is wrong in itself (not just unavailable).
    fn invalid(&self) -> u32 {
        if self.source == "CNI_ARGS IP" {
            codes::INVALID_ENV
        } else {
            codes::INVALID_CONFIG
        }
    }
}

/// The static addresses a runtime asks for: `IP=a[,b]` in `CNI_ARGS` (as
/// host-local reads it), the `ips` capability (`runtimeConfig.ips`) and
/// `args.cni.ips`, each an address with or without its prefix length.
fn wanted(req: &CniRequest) -> Result<Vec<Wanted>, CniError> {
    let mut out: Vec<Wanted> = vec![];
    let mut push = |text: &str, source: &'static str| -> Result<(), CniError> {
        let text = text.trim();
        let parsed = text.parse::<IpCidr>().ok().filter(|_| !text.is_empty());
        let Some(c) = parsed else {
            let code = if source == "CNI_ARGS IP" {
                codes::INVALID_ENV
            } else {
                codes::INVALID_CONFIG
            };
            return Err(err(
                code,
                format!(
                    "{source}: {text:?} is not an IP address (10.0.0.5, or 10.0.0.5/24 with the pool's prefix length)"
                ),
            ));
        };
        let prefix = text.contains('/').then_some(c.prefix_len);
        if !out.iter().any(|w| w.address == c.address) {
            out.push(Wanted {
                address: c.address,
                prefix,
                source,
            });
        }
        Ok(())
    };
    for (k, v) in &req.args {
        if k == "IP" {
            for a in v.split(',') {
                push(a, "CNI_ARGS IP")?;
            }
        }
    }
    let conf: serde_json::Value = serde_json::from_str(&req.network_config).unwrap_or_default();
    for (path, source) in [
        (&conf["runtimeConfig"]["ips"], "runtimeConfig.ips"),
        (&conf["args"]["cni"]["ips"], "args.cni.ips"),
    ] {
        match path {
            serde_json::Value::Null => {}
            serde_json::Value::Array(a) => {
                for v in a {
                    match v.as_str() {
                        Some(t) => push(t, source)?,
                        None => {
                            return Err(err(
                                codes::INVALID_CONFIG,
                                format!("{source}: {v} is not an IP address string"),
                            ));
                        }
                    }
                }
            }
            other => {
                return Err(err(
                    codes::INVALID_CONFIG,
                    format!("{source} must be a list of addresses, not {other}"),
                ));
            }
        }
    }
    Ok(out)
}

/// For each pool, the address asked of it, if any: every wanted address
/// must be a usable address of one of the network's pools, one per pool.
fn preferred(
    network: &str,
    pools: &[Pool],
    wanted: &[Wanted],
) -> Result<Vec<Option<Wanted>>, CniError> {
    let mut out: Vec<Option<Wanted>> = vec![None; pools.len()];
    let unusable = |w: &Wanted, what: String| {
        err(
            codes::IPAM,
            format!(
                "address {} ({}) cannot be given to a pod: {what}",
                w.address, w.source
            ),
        )
    };
    for w in wanted {
        let Some(i) = pools.iter().position(|p| p.subnet.contains(&w.address)) else {
            let list: Vec<String> = pools
                .iter()
                .map(|p| format!("{} ({})", p.name, p.subnet.network()))
                .collect();
            return Err(err(
                codes::IPAM,
                format!(
                    "address {} ({}) is in none of the pools of network {network:?}: {}",
                    w.address,
                    w.source,
                    list.join(", ")
                ),
            ));
        };
        let p = &pools[i];
        let subnet = p.subnet.network();
        if let Some(len) = w.prefix
            && len != subnet.prefix_len
        {
            return Err(err(
                w.invalid(),
                format!(
                    "{}/{len} ({}): pool {} is {subnet}; give the address alone or with /{}",
                    w.address, w.source, p.name, subnet.prefix_len
                ),
            ));
        }
        if let Some(other) = &out[i] {
            return Err(err(
                w.invalid(),
                format!(
                    "{} ({}) and {} ({}) are both in pool {} ({subnet}): an interface takes one address per pool",
                    other.address, other.source, w.address, w.source, p.name
                ),
            ));
        }
        if w.address == p.gateway {
            return Err(unusable(
                w,
                format!(
                    "it is the gateway of pool {} ({subnet}), which the node's bridge holds",
                    p.name
                ),
            ));
        }
        if w.address == subnet.address {
            return Err(unusable(
                w,
                format!("it is the network address of pool {} ({subnet})", p.name),
            ));
        }
        if p.family == IpFamily::Ipv4 && w.address == subnet.last() {
            return Err(unusable(
                w,
                format!("it is the broadcast address of pool {} ({subnet})", p.name),
            ));
        }
        out[i] = Some(w.clone());
    }
    Ok(out)
}

struct Bridge;

impl Guest for Bridge {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "cni-bridge",
            env!("CARGO_PKG_VERSION"),
            Role::Cni,
            "A per-node bridge and a veth per pod, with addresses from the node's pools in each family.",
            SCHEMA,
        )
    }

    fn add(req: CniRequest, config: String) -> Result<CniResult, CniError> {
        let s = Settings::merge(&config, &req.network_config)?;
        let pools = pools(&s)?;
        let (bridge, mtu) = (s.bridge(), s.mtu());
        let asked = preferred(&req.network, &pools, &wanted(&req)?)?;
        // Addresses first: an exhausted pool, or an address asked for that
        // another pod holds, fails before anything is made.
        let mut allocations = vec![];
        for (p, w) in pools.iter().zip(&asked) {
            let a = ipam::allocate(&p.name, w.as_ref().map(|w| w.address)).map_err(|e| {
                let m = match e {
                    IpamError::Exhausted(m) | IpamError::InUse(m) => m,
                    IpamError::Storage(m) => format!("the address ledger failed: {m}"),
                };
                match w {
                    Some(w) => err(
                        codes::IPAM,
                        format!("address {} ({}) is not available: {m}", w.address, w.source),
                    ),
                    None => err(codes::IPAM, m),
                }
            })?;
            allocations.push((p.family, a));
        }
        // A family whose default route another interface of the pod holds
        // (the pod's first, or another plugin's) gets none through this one.
        let taken: Vec<IpFamily> = links::pod_default_routes()
            .map_err(|e| link_err("reading the pod's default routes", e))?
            .iter()
            .filter(|r| r.device != req.ifname)
            .map(|r| r.destination.family())
            .collect();
        let gateways: Vec<IpCidr> = pools.iter().map(gateway_cidr).collect();
        links::ensure_bridge(bridge, mtu, &gateways)
            .map_err(|e| link_err(&format!("bridge {bridge}"), e))?;
        for p in &pools {
            let key = match p.family {
                IpFamily::Ipv4 => "net.ipv4.ip_forward",
                IpFamily::Ipv6 => "net.ipv6.conf.all.forwarding",
            };
            links::set_sysctl(Scope::Node, key, "1").map_err(|e| link_err(key, e))?;
        }
        let host_name = host_veth(&req.container_id, &req.ifname);
        let (host, pod) = links::create_veth(&host_name, bridge, mtu)
            .map_err(|e| link_err(&format!("interface {} in the pod", req.ifname), e))?;
        links::set_link_up(Scope::Pod, "lo").map_err(|e| link_err("lo in the pod", e))?;
        // A reused address must be relearnt by neighbours at once; and pod
        // addresses are assigned, so a stray router advertisement must not add
        // addresses or routes.
        let ifname = &req.ifname;
        let mut sysctls = vec![(format!("net.ipv4.conf.{ifname}.arp_notify"), "1")];
        if pools.iter().any(|p| p.family == IpFamily::Ipv6) {
            sysctls.push((format!("net.ipv6.conf.{ifname}.accept_ra"), "0"));
        }
        for (key, value) in &sysctls {
            links::set_sysctl(Scope::Pod, key, value).map_err(|e| link_err(key, e))?;
        }
        let mut ips = vec![];
        let mut routes = vec![];
        for (family, a) in allocations {
            links::add_address(Scope::Pod, &req.ifname, a.address)
                .map_err(|e| link_err(&format!("address {}", a.address), e))?;
            ips.push(CniIp {
                address: a.address,
                gateway: Some(a.gateway),
                interface: Some(1),
            });
            if taken.contains(&family) {
                continue;
            }
            let r = default_route(family, a.gateway, &req.ifname);
            links::add_route(Scope::Pod, &r)
                .map_err(|e| link_err(&format!("default route via {}", a.gateway), e))?;
            routes.push(CniRoute {
                dst: r.destination,
                gw: r.gateway,
                mtu: None,
            });
        }
        Ok(CniResult {
            interfaces: vec![
                CniInterface {
                    name: host.name,
                    mac: host.mac,
                    mtu: Some(host.mtu),
                    sandbox: None,
                },
                CniInterface {
                    name: pod.name,
                    mac: pod.mac,
                    mtu: Some(pod.mtu),
                    sandbox: Some(req.netns.clone()),
                },
            ],
            ips,
            routes,
            dns: None,
        })
    }

    fn del(req: CniRequest, _config: String) -> Result<(), CniError> {
        // Remove as much as exists; none of it missing is an error.
        if !req.netns.is_empty() {
            match links::delete_link(Scope::Pod, &req.ifname) {
                Ok(_) | Err(LinkError::NotFound(_)) => {}
                Err(e) => return Err(link_err(&format!("interface {} in the pod", req.ifname), e)),
            }
        }
        match links::delete_link(Scope::Node, &host_veth(&req.container_id, &req.ifname)) {
            Ok(_) | Err(LinkError::NotFound(_)) => {}
            Err(e) => return Err(link_err("the host end of the veth", e)),
        }
        ipam::release()
            .map(|_| ())
            .map_err(|e| err(codes::IPAM, format!("{e:?}")))
    }

    fn check(req: CniRequest, config: String) -> Result<(), CniError> {
        let s = Settings::merge(&config, &req.network_config)?;
        let bad = |m: String| err(codes::CHECK, m);
        let pod = links::get_link(Scope::Pod, &req.ifname)
            .map_err(|e| link_err(&req.ifname, e))?
            .ok_or_else(|| bad(format!("interface {} is missing from the pod", req.ifname)))?;
        check_link(&pod, s.mtu()).map_err(bad)?;
        let host_name = host_veth(&req.container_id, &req.ifname);
        let host = links::get_link(Scope::Node, &host_name)
            .map_err(|e| link_err(&host_name, e))?
            .ok_or_else(|| {
                bad(format!(
                    "the host end {host_name} of the pod's veth is missing"
                ))
            })?;
        check_link(&host, s.mtu()).map_err(bad)?;
        if host.master.as_deref() != Some(s.bridge()) {
            return Err(bad(format!(
                "{host_name} is not a port of bridge {}",
                s.bridge()
            )));
        }
        let held = ipam::held();
        if held.is_empty() {
            return Err(bad("the pod holds no address in the node's ledger".into()));
        }
        // Addresses the previous result promised must be there too.
        let promised = prev_result_ips(req.prev_result.as_deref());
        // The default routes ADD made: those the result lists through our
        // gateways; without a result, one per family unless another
        // interface holds it (then this one is secondary).
        let promised_gateways = prev_result_default_gateways(req.prev_result.as_deref());
        let defaults = links::pod_default_routes()
            .map_err(|e| link_err("reading the pod's default routes", e))?;
        let routes =
            links::list_routes(Scope::Pod, &req.ifname).map_err(|e| link_err("routes", e))?;
        for a in &held {
            if !pod.addresses.contains(&a.address) {
                return Err(bad(format!(
                    "address {} is missing from {}",
                    a.address, req.ifname
                )));
            }
            let fam = a.address.family();
            let expected = match &promised_gateways {
                Some(gws) => gws.contains(&a.gateway),
                None => !defaults
                    .iter()
                    .any(|r| r.destination.family() == fam && r.device != req.ifname),
            };
            if expected
                && !routes.iter().any(|r| {
                    r.destination.prefix_len == 0
                        && r.destination.family() == fam
                        && r.gateway == Some(a.gateway)
                })
            {
                return Err(bad(format!(
                    "the default route via {} is missing",
                    a.gateway
                )));
            }
        }
        for p in promised {
            if !held.iter().any(|a| a.address == p) {
                return Err(bad(format!(
                    "the previous result lists {p}, which the pod no longer holds"
                )));
            }
        }
        Ok(())
    }

    fn gc(req: GcRequest, config: String) -> Result<(), CniError> {
        // Host ends of veths whose attachment is gone (the host releases
        // addresses and records itself). A host end whose pod namespace is
        // gone disappears with it; this catches the rest.
        let _ = Settings::merge(&config, &req.network_config)?;
        let valid: Vec<String> = req
            .valid_attachments
            .iter()
            .map(|(c, i)| host_veth(c, i))
            .collect();
        let links = links::list_links(Scope::Node).map_err(|e| link_err("listing links", e))?;
        let mut failed = vec![];
        for l in links {
            if l.kind == "veth" && l.name.starts_with("syv") && !valid.contains(&l.name) {
                match links::delete_link(Scope::Node, &l.name) {
                    Ok(_) | Err(LinkError::NotFound(_)) => {
                        switchyard_sdk::info!("gc: removed stale {}", l.name)
                    }
                    Err(e) => failed.push(format!("{}: {e:?}", l.name)),
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(err(
                codes::INTERFACE,
                format!("gc could not remove {}", failed.join(", ")),
            ))
        }
    }

    fn status(network_config: String, config: String) -> Result<(), CniError> {
        let s = Settings::merge(&config, &network_config)?;
        pools(&s)
            .map(|_| ())
            .map_err(|e| err(codes::NOT_AVAILABLE, e.msg))
    }
}

fn check_link(l: &LinkInfo, mtu: u32) -> Result<(), String> {
    if !l.up {
        return Err(format!("{} is down", l.name));
    }
    if l.mtu != mtu {
        return Err(format!("{} has MTU {}, not {mtu}", l.name, l.mtu));
    }
    Ok(())
}

/// Gateways of the default routes a previous result lists, if it parses.
fn prev_result_default_gateways(prev: Option<&str>) -> Option<Vec<IpAddress>> {
    let v = serde_json::from_str::<serde_json::Value>(prev?).ok()?;
    Some(
        v["routes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| {
                        r["dst"]
                            .as_str()
                            .and_then(|d| d.parse::<IpCidr>().ok())
                            .is_some_and(|d| d.prefix_len == 0)
                    })
                    .filter_map(|r| r["gw"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Addresses in a previous result (CNI result JSON), if it parses.
fn prev_result_ips(prev: Option<&str>) -> Vec<IpCidr> {
    let Some(v) = prev.and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok()) else {
        return vec![];
    };
    v["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip["address"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

switchyard_sdk::export_cni!(Bridge);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::testing::{Harness, cni_request};

    fn harness() -> Harness {
        let h = Harness::new();
        h.add_pool("v4", "10.244.1.0/24");
        h.add_pool("v6", "fd00:10:244:1::/64");
        h.set_attachment("c1", "eth0");
        h
    }

    #[test]
    fn add_sets_up_both_families_and_del_removes_everything() {
        let h = harness();
        let r = Bridge::add(cni_request("c1", "eth0", "{}"), String::new()).unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.interfaces[0].name, host_veth("c1", "eth0"));
        assert_eq!(
            r.interfaces[1].sandbox.as_deref(),
            Some("/var/run/netns/c1")
        );
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.2/24");
        assert_eq!(r.ips[1].gateway.unwrap().to_string(), "fd00:10:244:1::1");
        assert_eq!(h.routes(Scope::Pod).len(), 2);
        let node = h.links(Scope::Node);
        assert!(node.iter().any(|l| l.name == "sy0" && l.kind == "bridge"));
        assert_eq!(
            h.sysctls(Scope::Node)
                .get("net.ipv4.ip_forward")
                .map(String::as_str),
            Some("1")
        );
        let pod = h.sysctls(Scope::Pod);
        assert_eq!(
            pod.get("net.ipv6.conf.eth0.accept_ra").map(String::as_str),
            Some("0")
        );
        assert_eq!(
            pod.get("net.ipv4.conf.eth0.arp_notify").map(String::as_str),
            Some("1")
        );

        Bridge::check(cni_request("c1", "eth0", "{}"), String::new()).unwrap();
        Bridge::del(cni_request("c1", "eth0", "{}"), String::new()).unwrap();
        assert!(h.held_addresses().is_empty());
        assert!(h.links(Scope::Pod).is_empty());
        assert_eq!(h.links(Scope::Node).len(), 1, "only the bridge stays");
        // DEL again, and DEL without a namespace, are fine.
        Bridge::del(cni_request("c1", "eth0", "{}"), String::new()).unwrap();
        let mut gone = cni_request("c1", "eth0", "{}");
        gone.netns.clear();
        Bridge::del(gone, String::new()).unwrap();
    }

    #[test]
    fn network_config_overrides_module_config() {
        let h = harness();
        let r = Bridge::add(
            cni_request("c1", "eth0", r#"{"name":"n","mtu":1400,"pools":["v6"]}"#),
            r#"{"mtu": 9000, "bridge": "sy1"}"#.into(),
        )
        .unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.interfaces[1].mtu, Some(1400));
        assert!(h.links(Scope::Node).iter().any(|l| l.name == "sy1"));
    }

    #[test]
    fn check_reports_what_is_missing() {
        let h = harness();
        let r = Bridge::add(cni_request("c1", "eth0", "{}"), String::new()).unwrap();
        let _ = r;
        links::delete_link(Scope::Node, &host_veth("c1", "eth0")).unwrap();
        let e = Bridge::check(cni_request("c1", "eth0", "{}"), String::new()).unwrap_err();
        assert_eq!(e.code, codes::CHECK);
        assert!(e.msg.contains("interface eth0 is missing"), "{}", e.msg);
        drop(h);
    }

    #[test]
    fn exhausted_pool_and_missing_pool_are_reported() {
        let h = Harness::new();
        h.add_pool("v4", "10.0.0.0/30");
        h.set_attachment("c1", "eth0");
        Bridge::add(cni_request("c1", "eth0", "{}"), String::new()).unwrap();
        h.set_attachment("c2", "eth0");
        let e = Bridge::add(cni_request("c2", "eth0", "{}"), String::new()).unwrap_err();
        assert_eq!(e.code, codes::IPAM);
        let e = Bridge::add(
            cni_request("c2", "eth0", r#"{"pools":["v9"]}"#),
            String::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, codes::INVALID_CONFIG);
        let none = Harness::new();
        let e = Bridge::status(String::new(), String::new()).unwrap_err();
        assert_eq!(e.code, codes::NOT_AVAILABLE);
        drop(none);
    }

    #[test]
    fn a_secondary_interface_leaves_the_default_route_to_the_first() {
        let h = harness();
        h.add_pool("side", "10.77.0.0/24");
        // The pod's network takes the node's pod CIDRs, not the extra pool.
        let first = Bridge::add(cni_request("c1", "eth0", "{}"), String::new()).unwrap();
        assert_eq!(first.ips.len(), 2);
        assert_eq!(first.routes.len(), 2);
        h.set_attachment("c1", "net1");
        let side = r#"{"name":"side","pools":["side"],"bridge":"sy1"}"#;
        let second = Bridge::add(cni_request("c1", "net1", side), String::new()).unwrap();
        assert_eq!(second.ips.len(), 1);
        assert_eq!(second.ips[0].address.to_string(), "10.77.0.2/24");
        assert!(second.routes.is_empty(), "{:?}", second.routes);
        let defaults: Vec<_> = h
            .routes(Scope::Pod)
            .into_iter()
            .filter(|r| r.destination.prefix_len == 0)
            .collect();
        assert_eq!(defaults.len(), 2);
        assert!(defaults.iter().all(|r| r.device == "eth0"), "{defaults:?}");
        // CHECK of each, with and without the previous result.
        let mut with_prev = cni_request("c1", "net1", side);
        with_prev.prev_result = Some(r#"{"ips":[{"address":"10.77.0.2/24"}],"routes":[]}"#.into());
        Bridge::check(with_prev, String::new()).unwrap();
        Bridge::check(cni_request("c1", "net1", side), String::new()).unwrap();
        h.set_attachment("c1", "eth0");
        Bridge::check(cni_request("c1", "eth0", "{}"), String::new()).unwrap();
    }

    #[test]
    fn static_addresses_come_from_the_pool_or_fail_naming_address_and_pool() {
        let h = harness();
        let with_ip = |id: &str, ip: &str, conf: &str| {
            let mut r = cni_request(id, "eth0", conf);
            r.args = vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("IP".into(), ip.into()),
            ];
            r
        };
        let r = Bridge::add(with_ip("c1", "10.244.1.50", "{}"), String::new()).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.50/24");
        assert_eq!(r.ips.len(), 2, "the other family is allocated as usual");
        // The ips capability, both families, with their prefix lengths.
        h.set_attachment("c2", "eth0");
        let conf = r#"{"runtimeConfig":{"ips":["10.244.1.60/24","fd00:10:244:1::60/64"]}}"#;
        let r = Bridge::add(cni_request("c2", "eth0", conf), String::new()).unwrap();
        let got: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(got, ["10.244.1.60/24", "fd00:10:244:1::60/64"]);
        h.set_attachment("c3", "eth0");
        let refused = |req: CniRequest| Bridge::add(req, String::new()).unwrap_err();
        let e = refused(with_ip("c3", "10.244.1.50", "{}"));
        assert_eq!(e.code, codes::IPAM);
        assert!(
            e.msg
                .contains("address 10.244.1.50 (CNI_ARGS IP) is not available")
                && e.msg.contains("held by another attachment"),
            "{}",
            e.msg
        );
        let e = refused(with_ip("c3", "10.99.0.5", "{}"));
        assert_eq!(e.code, codes::IPAM);
        assert_eq!(
            e.msg,
            "address 10.99.0.5 (CNI_ARGS IP) is in none of the pools of network \"switchyard\": v4 (10.244.1.0/24), v6 (fd00:10:244:1::/64)"
        );
        let e = refused(with_ip("c3", "10.244.1.1", "{}"));
        assert!(e.msg.contains("gateway of pool v4"), "{}", e.msg);
        let e = refused(with_ip("c3", "10.244.1.255", "{}"));
        assert!(e.msg.contains("broadcast address of pool v4"), "{}", e.msg);
        let e = refused(with_ip("c3", "banana", "{}"));
        assert_eq!(e.code, codes::INVALID_ENV);
        assert!(
            e.msg.contains("\"banana\" is not an IP address"),
            "{}",
            e.msg
        );
        let e = refused(with_ip("c3", "10.244.1.7,10.244.1.8", "{}"));
        assert_eq!(e.code, codes::INVALID_ENV);
        assert!(e.msg.contains("one address per pool"), "{}", e.msg);
        let e = refused(cni_request(
            "c3",
            "eth0",
            r#"{"runtimeConfig":{"ips":["10.244.1.70/16"]}}"#,
        ));
        assert_eq!(e.code, codes::INVALID_CONFIG);
        assert!(
            e.msg
                .contains("pool v4 is 10.244.1.0/24; give the address alone or with /24"),
            "{}",
            e.msg
        );
        // Nothing was allocated by the refused ADDs.
        assert_eq!(
            h.held_addresses()
                .iter()
                .filter(|(c, _, _)| c == "c3")
                .count(),
            0
        );
    }

    #[test]
    fn host_veth_names_are_stable_and_valid() {
        let n = host_veth("3f6940ab5ab43bc522569d15b23f8c1b", "eth0");
        assert_eq!(n.len(), 15);
        assert_eq!(n, host_veth("3f6940ab5ab43bc522569d15b23f8c1b", "eth0"));
        assert_ne!(n, host_veth("3f6940ab5ab43bc522569d15b23f8c1b", "net1"));
    }
}
