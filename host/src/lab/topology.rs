//! The lab's wires: namespaces, the underlay bridge, the host link, the
//! external host (and its DNS server's configuration), the nodes' own
//! resolv.conf, and taking all of it down again.
//!
//! Everything is made with `ip` and `nft` (the lab is also a demonstration a
//! newcomer can repeat by hand) and named from the lab's name, so `down` finds
//! it all even when `lab.json` is gone.

use super::layout::{ADMIN_PORT, APISERVER_PORT, ETC_NETNS, EXTERNAL_ZONE, Lab, UPLINK};
use crate::datapath::netlink::{in_netns, write_sysctl};
use anyhow::{Context, bail};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The underlay bridge, in the underlay namespace.
const UNDERLAY_BRIDGE: &str = "ul0";
/// The underlay end of the host link.
const HOST_PEER: &str = "host0";
/// The nftables table of the underlay router.
const ROUTER_TABLE: &str = "switchyard-lab";
/// Ports the external host serves.
pub const EXTERNAL_LISTEN: [&str; 2] = ["tcp:80", "udp:80"];

/// Run a command; its stderr is the error.
pub fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    run(&v)
}

fn sysctls(ns: &str, values: &[(&str, &str)]) -> anyhow::Result<()> {
    let path = Lab::netns_path(ns);
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    in_netns(&path, move || {
        for (k, v) in &values {
            write_sysctl(k, v)?;
        }
        Ok(())
    })
    .with_context(|| format!("setting sysctls in {ns}"))
}

fn add_netns(ns: &str) -> anyhow::Result<()> {
    run(&["ip", "netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    // The lab's machines are "just booted": without this, every link-local
    // address stays tentative for a second or two, and a node forwarding a
    // pod's first IPv6 packet cannot even send its neighbour solicitation
    // (the kernel sends those from the link-local). Duplicates cannot happen
    // on links the lab wires itself.
    sysctls(
        ns,
        &[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ],
    )?;
    Ok(())
}

fn prefix_len(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "24" } else { "64" }
}

/// Plug a namespace into the underlay: its `eth0`, with `addresses`.
fn plug(lab: &Lab, ns: &str, port: &str, addresses: &[IpAddr]) -> anyhow::Result<()> {
    let ul = lab.underlay_netns();
    ip_in(
        &ul,
        &[
            "link", "add", port, "type", "veth", "peer", "name", UPLINK, "netns", ns,
        ],
    )?;
    ip_in(&ul, &["link", "set", port, "master", UNDERLAY_BRIDGE, "up"])?;
    for a in addresses {
        let cidr = format!("{a}/{}", prefix_len(a));
        if a.is_ipv4() {
            ip_in(ns, &["addr", "add", &cidr, "dev", UPLINK])?;
        } else {
            ip_in(ns, &["addr", "add", &cidr, "dev", UPLINK, "nodad"])?;
        }
    }
    ip_in(ns, &["link", "set", UPLINK, "up"])?;
    Ok(())
}

/// The underlay router's guard: from the machine, only new connections to
/// the agents' admin port and the API server (and their replies) pass;
/// nothing from the lab may open a connection towards the machine.
fn router_table() -> String {
    format!(
        "table inet {ROUTER_TABLE} {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"{HOST_PEER}\" tcp dport {ADMIN_PORT} accept comment \"the machine reaches the admin API and console\"
    iifname \"{HOST_PEER}\" tcp dport {APISERVER_PORT} accept comment \"kubectl on the machine reaches the API server\"
    iifname \"{HOST_PEER}\" ct state established,related accept
    iifname \"{HOST_PEER}\" drop
    oifname \"{HOST_PEER}\" ct state established,related accept
    oifname \"{HOST_PEER}\" drop comment \"nothing in the lab opens a connection to the machine\"
  }}
}}
"
    )
}

fn nft_in(ns: &str, script: &str) -> anyhow::Result<()> {
    use crate::datapath::nft::NftRunner;
    crate::datapath::nft::Nft::new(Some(Lab::netns_path(ns)))
        .run(script)
        .map_err(|e| anyhow::anyhow!("nft in {ns}: {e}"))
}

/// Check that nothing on the machine uses the lab's addresses or names.
pub fn preflight(lab: &Lab) -> anyhow::Result<()> {
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!(
                "`{tool}` is not installed: the lab needs iproute2 and nftables (scripts/setup.sh installs them)"
            );
        }
    }
    if Command::new(DNSMASQ).arg("--version").output().is_err() {
        bail!(
            "`{DNSMASQ}` is not installed: the lab's external host serves DNS with it \
             (Debian's dnsmasq-base; scripts/setup.sh installs it)"
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab makes network namespaces and links: run it as root");
    }
    let underlay4 = lab.config.underlay()[0].to_string();
    let routes = run(&["ip", "-4", "route", "show", "to", "match", &underlay4])?;
    if routes.lines().any(|l| !l.starts_with("default")) {
        bail!(
            "the machine already routes {underlay4} ({}); pick another lab name with --name",
            routes.trim()
        );
    }
    let leftovers = lab_namespaces(&lab.netns_prefix());
    if !leftovers.is_empty() {
        bail!(
            "network namespaces of an earlier lab named {:?} still exist ({}); run `switchyard lab down --name {}` first",
            lab.config.name,
            leftovers.join(", "),
            lab.config.name
        );
    }
    Ok(())
}

/// Build the underlay, the host link and the external host.
pub fn build_underlay(lab: &Lab) -> anyhow::Result<()> {
    let c = &lab.config;
    let ul = lab.underlay_netns();
    add_netns(&ul)?;
    // A plain switch: no MLD snooping, which would hold back neighbour
    // solicitations until nodes have reported their groups.
    ip_in(
        &ul,
        &[
            "link",
            "add",
            UNDERLAY_BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;
    ip_in(&ul, &["link", "set", UNDERLAY_BRIDGE, "up"])?;
    for a in &c.router {
        let cidr = format!("{a}/{}", prefix_len(a));
        if a.is_ipv4() {
            ip_in(&ul, &["addr", "add", &cidr, "dev", UNDERLAY_BRIDGE])?;
        } else {
            ip_in(
                &ul,
                &["addr", "add", &cidr, "dev", UNDERLAY_BRIDGE, "nodad"],
            )?;
        }
    }
    sysctls(
        &ul,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ],
    )?;
    nft_in(&ul, &router_table())?;
    if c.host_link {
        let (host, peer) = c.host_link_addresses();
        let link = lab.host_link_name();
        run(&[
            "ip", "link", "add", &link, "type", "veth", "peer", "name", HOST_PEER, "netns", &ul,
        ])?;
        run(&["ip", "addr", "add", &host.to_string(), "dev", &link])?;
        run(&["ip", "link", "set", &link, "up"])?;
        ip_in(&ul, &["addr", "add", &peer.to_string(), "dev", HOST_PEER])?;
        ip_in(&ul, &["link", "set", HOST_PEER, "up"])?;
        run(&[
            "ip",
            "route",
            "add",
            &c.underlay()[0].to_string(),
            "via",
            &peer.addr().to_string(),
            "dev",
            &link,
        ])?;
    }
    // The external host: the broader network, with servers of its own.
    let ext = lab.external_netns();
    add_netns(&ext)?;
    plug(lab, &ext, "u-external", &c.external)?;
    // LoadBalancer IPs: the broader network routes the lab's pools to the
    // first node (as after a BGP announcement; MetalLB's job in a cluster).
    if let Some(first) = c.nodes.first() {
        for pool in c.load_balancer_pools() {
            let via = first
                .addresses
                .iter()
                .find(|a| a.is_ipv4() == pool.addr().is_ipv4())
                .context("node without an underlay address of the pool's family")?;
            ip_in(
                &ext,
                &["route", "add", &pool.to_string(), "via", &via.to_string()],
            )?;
        }
    }
    // The control plane's node: kubectl on the machine reaches its API
    // server through the host link.
    let cp = lab.control_netns();
    add_netns(&cp)?;
    plug(lab, &cp, "u-control", &c.control)?;
    route_to_host(lab, &cp)?;
    // Pods reach the API server (the `kubernetes` Service): in the flat
    // model by their own address, so its answers go back through the
    // router, which routes the pod CIDRs there ([`route_pod_cidrs`]); the
    // other models masquerade pods as their node.
    for cidr in &c.cluster_pod_cidrs {
        let via = c
            .router
            .iter()
            .find(|a| a.is_ipv4() == cidr.addr().is_ipv4())
            .context("the router has no address of the pod CIDR's family")?;
        ip_in(
            &cp,
            &["route", "add", &cidr.to_string(), "via", &via.to_string()],
        )?;
    }
    Ok(())
}

/// The way back to the machine's end of the host link, through the router.
fn route_to_host(lab: &Lab, ns: &str) -> anyhow::Result<()> {
    if !lab.config.host_link {
        return Ok(());
    }
    let (host, _) = lab.config.host_link_addresses();
    let router = lab
        .config
        .router
        .iter()
        .find(|a| a.is_ipv4())
        .expect("the router has an IPv4 address");
    ip_in(
        ns,
        &[
            "route",
            "add",
            &host.trunc().to_string(),
            "via",
            &router.to_string(),
        ],
    )?;
    Ok(())
}

/// Flat: the broader network (the external host, and the underlay's router
/// for the control plane) routes each node's pod CIDRs (which
/// kube-controller-manager gave it) to the node, as static routes or BGP on
/// a top-of-rack router would. `nodes` holds each node's name and CIDRs.
pub fn route_pod_cidrs(lab: &Lab, nodes: &[(String, Vec<ipnet::IpNet>)]) -> anyhow::Result<()> {
    for ns in [lab.external_netns(), lab.underlay_netns()] {
        route_pod_cidrs_in(lab, &ns, nodes)?;
    }
    Ok(())
}

fn route_pod_cidrs_in(
    lab: &Lab,
    ext: &str,
    nodes: &[(String, Vec<ipnet::IpNet>)],
) -> anyhow::Result<()> {
    for (name, cidrs) in nodes {
        let n = lab
            .config
            .node(name)
            .with_context(|| format!("the lab has no node {name:?}"))?;
        for cidr in cidrs {
            let via = n
                .addresses
                .iter()
                .find(|a| a.is_ipv4() == cidr.addr().is_ipv4())
                .context("node without an underlay address of the pod CIDR's family")?;
            ip_in(
                ext,
                &[
                    "route",
                    "replace",
                    &cidr.to_string(),
                    "via",
                    &via.to_string(),
                ],
            )?;
        }
    }
    Ok(())
}

/// The DNS server of the external host.
pub const DNSMASQ: &str = "dnsmasq";

/// The external host's DNS server's configuration: dnsmasq, authoritative for
/// [`EXTERNAL_ZONE`] on the external host's addresses, forwarding nothing
/// (no upstream servers, no /etc/resolv.conf, no /etc/hosts): a name outside
/// the zone is REFUSED, so no query leaves the lab. It logs every query to
/// stderr (the log file), which is how a test sees what was forwarded.
///
/// The zone: `www` (A and AAAA: the external host, whose servers answer on
/// port 80), `ipv4` (A only), `ipv6` (AAAA only), `alias` (a CNAME to
/// `www`), `info` (TXT), `_http._tcp` (SRV to `www`, port 80), `ns`; any
/// other name in it is NXDOMAIN with the zone's SOA (negative TTL 60 s).
pub fn dnsmasq_conf(lab: &Lab) -> String {
    let addrs = &lab.config.dns_upstreams;
    let list = |v: &[IpAddr]| -> String {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let all = list(addrs);
    let v4 = list(
        &addrs
            .iter()
            .copied()
            .filter(|a| a.is_ipv4())
            .collect::<Vec<_>>(),
    );
    let v6 = list(
        &addrs
            .iter()
            .copied()
            .filter(|a| a.is_ipv6())
            .collect::<Vec<_>>(),
    );
    let z = EXTERNAL_ZONE;
    format!(
        "# The lab's outside world's DNS server (written by `switchyard lab up`).
# Authoritative for {z}; forwards nothing, so no query leaves the lab.
no-resolv
no-hosts
no-poll
keep-in-foreground
log-facility=-
log-queries
pid-file=
bind-interfaces
listen-address={all}
auth-server=ns.{z},{all}
auth-zone={z}
auth-soa=1,hostmaster.{z},1200,120,604800
auth-ttl=60
host-record=ns.{z},{all}
host-record=www.{z},{all}
host-record=ipv4.{z},{v4}
host-record=ipv6.{z},{v6}
cname=alias.{z},www.{z}
txt-record=info.{z},\"switchyard lab upstream\"
srv-host=_http._tcp.{z},www.{z},80,0,0
"
    )
}

/// A node's own resolver configuration (the kubelet's `--resolv-conf`, and
/// what programs in the node's namespace use under `ip netns exec`): the
/// external host's DNS server, as a DHCP server would have set it.
pub fn node_resolv_conf(lab: &Lab) -> String {
    let mut out = String::from("# The lab node's resolver: the external host's DNS server.\n");
    for a in &lab.config.dns_upstreams {
        out.push_str(&format!("nameserver {a}\n"));
    }
    out
}

/// Make one node's namespace and plug it in.
pub fn build_node(lab: &Lab, node: &super::layout::LabNode) -> anyhow::Result<()> {
    let ns = lab.node_netns(&node.name);
    add_netns(&ns)?;
    let resolv = Lab::netns_resolv_conf(&ns);
    crate::util::write_atomic(&resolv, node_resolv_conf(lab).as_bytes())
        .with_context(|| format!("writing {}", resolv.display()))?;
    plug(lab, &ns, &format!("u-{}", node.name), &node.addresses)?;
    sysctls(
        &ns,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ],
    )?;
    // Service CIDRs: a node sends to a cluster IP by its default route, and
    // the proxy's DNAT in the output hook turns it into a pod's address
    // before it leaves; the lab's nodes have no default route, so they get
    // one for these ranges (a cluster IP no Service has dies at the router).
    for cidr in &lab.config.service_cidrs {
        let via = lab
            .config
            .router
            .iter()
            .find(|a| a.is_ipv4() == cidr.addr().is_ipv4())
            .context("the router has no address of the Service CIDR's family")?;
        ip_in(
            &ns,
            &["route", "add", &cidr.to_string(), "via", &via.to_string()],
        )?;
    }
    route_to_host(lab, &ns)?;
    Ok(())
}

/// Every network namespace whose name starts with `prefix`.
pub fn lab_namespaces(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Processes that belong to a lab: inside one of its namespaces, or running
/// a binary from its directory.
fn lab_processes(prefix: &str, dir: &Path) -> Vec<i32> {
    let mut inodes = std::collections::HashSet::new();
    for ns in lab_namespaces(prefix) {
        if let Ok(m) = std::fs::metadata(Lab::netns_path(&ns)) {
            inodes.insert(std::os::unix::fs::MetadataExt::ino(&m));
        }
    }
    let bin = dir.join("bin");
    let me = std::process::id() as i32;
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let in_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| inodes.contains(&std::os::unix::fs::MetadataExt::ino(&m)))
            .unwrap_or(false);
        let ours = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.starts_with(&bin))
            .unwrap_or(false);
        if in_ns || ours {
            pids.push(pid);
        }
    }
    pids
}

/// Whether a process still runs: a zombie (dead, not yet reaped by whoever
/// inherited it) has already left its namespaces.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The state follows the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1;
            rest.split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub processes: usize,
    pub namespaces: usize,
    pub links: usize,
    pub files: bool,
}

/// Remove everything a lab named `name` made, whatever state it is in:
/// processes, namespaces (with their links, routes and nftables tables), the
/// host link and the lab's files. Idempotent.
pub fn down(dir: &Path, name: &str) -> anyhow::Result<Removed> {
    let prefix = format!("sy{name}-");
    let mut removed = Removed::default();
    // Agents first, gently, so none restarts a pod while the rest goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pids = lab_processes(&prefix, dir);
    for &pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    removed.processes = pids.len();
    while !pids.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        pids.retain(|p| alive(*p));
    }
    // Pods before nodes (and the control plane) before the underlay: every
    // veth dies with one end.
    let mut namespaces = lab_namespaces(&prefix);
    namespaces.sort_by_key(|n| {
        let rest = &n[prefix.len()..];
        if rest.starts_with("p-") {
            0
        } else if rest == "underlay" {
            2
        } else {
            1
        }
    });
    let mut problems = vec![];
    for ns in &namespaces {
        match run(&["ip", "netns", "del", ns]) {
            Ok(_) => removed.namespaces += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }
    // What `ip netns del` leaves: the namespaces' resolv.conf (the nodes'
    // and the pods'). /etc/netns itself stays: another lab may be writing
    // into it.
    for dir in std::fs::read_dir(ETC_NETNS).into_iter().flatten().flatten() {
        if dir
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
            && let Err(e) = std::fs::remove_dir_all(dir.path())
        {
            problems.push(format!("removing {}: {e}", dir.path().display()));
        }
    }
    let link = format!("syh-{name}");
    if run(&["ip", "link", "show", &link]).is_ok() {
        run(&["ip", "link", "del", &link])?;
        removed.links += 1;
    }
    if ["lab.json", "nodes", "control", "pki", "kubeconfig"]
        .iter()
        .any(|f| dir.join(f).exists())
    {
        for sub in [
            "control",
            "pki",
            "nodes",
            "bin",
            "lab.json",
            "kubeconfig",
            "external.log",
            "external",
        ] {
            let p = dir.join(sub);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            } else if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        removed.files = true;
        // The directory itself, if nothing else lives there.
        let _ = std::fs::remove_dir(dir);
    }
    if !problems.is_empty() {
        bail!("could not remove everything: {}", problems.join("; "));
    }
    Ok(removed)
}
