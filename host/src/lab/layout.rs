//! Where a lab's pieces are: its directory, namespaces, addresses and CIDRs,
//! all derived from its name and recorded in `lab.json`.
//!
//! ```text
//! DIR/lab.json          this file's LabConfig
//! DIR/kubeconfig        the lab's admin kubeconfig (kubectl --kubeconfig DIR/kubeconfig)
//! DIR/pki/              certificate authorities, certificates, keys
//! DIR/control/          etcd's data and the control plane's logs and kubeconfigs
//! DIR/nodes/NODE/       the node's agent and kubelet: logs, kubeconfigs, data, pod records
//! DIR/bin/              the switchyard binary and plugin the lab runs
//! DIR/external/         the external host's DNS server: dnsmasq.conf, dnsmasq.log
//! /etc/netns/NETNS/     resolv.conf of a node (the node's own) or of a pod (the
//!                       kubelet's), which `ip netns exec NETNS` puts in place
//! ```

use crate::model::crd::NetworkModel;
use anyhow::Context;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where `lab` commands keep a lab unless told otherwise.
pub const DEFAULT_LAB_DIR: &str = "/var/lib/switchyard-lab";
/// The port of every agent's admin API and console.
pub use crate::api::ADMIN_PORT;
/// The API server's port, on the control-plane namespace's addresses.
pub const APISERVER_PORT: u16 = 6443;
/// The lab kubelet's read-only port (as the kubelet's old `--read-only-port`),
/// on the node's loopback: the pods it runs and its probes' results.
pub const KUBELET_PORT: u16 = 10255;
/// The uplink of every node and of the external host.
pub const UPLINK: &str = "eth0";
/// Where `ip netns exec NAME` finds the files it bind-mounts over `/etc`
/// (`/etc/netns/NAME/resolv.conf` becomes `/etc/resolv.conf`).
pub const ETC_NETNS: &str = "/etc/netns";
/// The zone the external host's DNS server is authoritative for: `.test`
/// (RFC 2606) can never be a real name.
pub const EXTERNAL_ZONE: &str = "example.test";
/// Which address of a Service CIDR the cluster DNS Service gets (kubeadm's
/// convention: 10.96.0.10).
const CLUSTER_DNS_INDEX: u32 = 10;

/// Which families the pods get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Families {
    Ipv4,
    Ipv6,
    Dual,
}

impl Families {
    pub fn v4(self) -> bool {
        self != Families::Ipv6
    }

    pub fn v6(self) -> bool {
        self != Families::Ipv4
    }
}

impl std::str::FromStr for Families {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipv4" => Ok(Families::Ipv4),
            "ipv6" => Ok(Families::Ipv6),
            "dual" => Ok(Families::Dual),
            _ => Err(format!(
                "unknown IP family {s:?}: expected ipv4, ipv6 or dual"
            )),
        }
    }
}

impl std::fmt::Display for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Families::Ipv4 => "ipv4",
            Families::Ipv6 => "ipv6",
            Families::Dual => "dual",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabNode {
    pub name: String,
    /// Underlay addresses (always both families: the underlay is infrastructure).
    pub addresses: Vec<IpAddr>,
    /// The node's `topology.kubernetes.io/zone`.
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabConfig {
    pub name: String,
    pub model: NetworkModel,
    pub families: Families,
    /// Picks the lab's underlay (`198.18.<index>.0/24`, `fd18:0:<index>::/64`)
    /// and host link (`198.19.<index>.0/30`).
    pub index: u8,
    pub nodes: Vec<LabNode>,
    /// The external host's underlay addresses.
    pub external: Vec<IpAddr>,
    /// The underlay router's addresses (on the underlay bridge).
    pub router: Vec<IpAddr>,
    /// The control plane's underlay addresses (etcd, the API server, the
    /// controller manager, the scheduler run in a namespace of their own).
    pub control: Vec<IpAddr>,
    /// Where the control plane's programs are (scripts/controlplane.sh
    /// builds them).
    pub kubernetes_bin: PathBuf,
    pub cluster_pod_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    /// Whether the machine has a link into the lab (for the console).
    pub host_link: bool,
    /// The cluster domain (the kubelets' `--cluster-domain`): the
    /// ClusterNetwork's `spec.dns.clusterDomain` when `lab up` was given
    /// one, else `cluster.local`.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// The resolvers outside the cluster (the external host's DNS server),
    /// the lab's first family first: what the nodes' resolv.conf names and
    /// where cluster DNS forwards the names it does not serve.
    #[serde(default)]
    pub dns_upstreams: Vec<IpAddr>,
}

fn default_cluster_domain() -> String {
    super::kubelet::dns::DEFAULT_CLUSTER_DOMAIN.to_string()
}

/// The `n`th address of `net` (its network address is the 0th).
fn nth_address(net: &IpNet, n: u32) -> Option<IpAddr> {
    let a = match net {
        IpNet::V4(v) => IpAddr::from(std::net::Ipv4Addr::from(
            u32::from(v.network()).checked_add(n)?,
        )),
        IpNet::V6(v) => IpAddr::from(std::net::Ipv6Addr::from(
            u128::from(v.network()).checked_add(n.into())?,
        )),
    };
    net.contains(&a).then_some(a)
}

fn index_of(name: &str) -> u8 {
    let h = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    20 + (h % 200) as u8
}

impl LabConfig {
    /// A lab named `name` with `nodes` nodes.
    pub fn new(
        name: &str,
        nodes: usize,
        model: NetworkModel,
        families: Families,
        host_link: bool,
        kubernetes_bin: PathBuf,
    ) -> LabConfig {
        let x = index_of(name);
        let ul4 = |host: u8| -> IpAddr { format!("198.18.{x}.{host}").parse().expect("literal") };
        let ul6 =
            |host: u16| -> IpAddr { format!("fd18:0:{x}::{host:x}").parse().expect("literal") };
        let mut cluster = vec![];
        let mut services = vec![];
        if families.v4() {
            cluster.push("10.244.0.0/16".parse().expect("literal"));
            services.push("10.96.0.0/16".parse().expect("literal"));
        }
        if families.v6() {
            cluster.push("fd00:10:244::/56".parse().expect("literal"));
            services.push("fd00:10:96::/112".parse().expect("literal"));
        }
        let nodes = (1..=nodes)
            .map(|i| LabNode {
                name: format!("node-{i}"),
                addresses: vec![ul4(10 + i as u8), ul6(0x10 + i as u16)],
                zone: ["zone-a", "zone-b", "zone-c"][(i - 1) % 3].to_string(),
            })
            .collect();
        let external = vec![ul4(100), ul6(0x100)];
        let mut dns_upstreams = external.clone();
        dns_upstreams.sort_by_key(|a| a.is_ipv4() != families.v4());
        LabConfig {
            name: name.to_string(),
            model,
            families,
            index: x,
            nodes,
            external,
            router: vec![ul4(1), ul6(1)],
            control: vec![ul4(2), ul6(2)],
            kubernetes_bin,
            cluster_pod_cidrs: cluster,
            service_cidrs: services,
            host_link,
            cluster_domain: default_cluster_domain(),
            dns_upstreams,
        }
    }

    /// The cluster DNS Service's ClusterIPs (`kube-system/kube-dns`, the
    /// kubelets' `--cluster-dns`): the 10th address of each Service CIDR, in
    /// the CIDRs' order (IPv4 first in a dual-stack lab).
    pub fn cluster_dns(&self) -> Vec<IpAddr> {
        self.service_cidrs
            .iter()
            .filter_map(|c| nth_address(c, CLUSTER_DNS_INDEX))
            .collect()
    }

    /// The resolvers outside the cluster that cluster DNS forwards to: the
    /// external host's DNS server, on each of its addresses.
    pub fn dns_upstreams(&self) -> Vec<IpAddr> {
        self.dns_upstreams.clone()
    }

    pub fn underlay(&self) -> Vec<IpNet> {
        vec![
            format!("198.18.{}.0/24", self.index)
                .parse()
                .expect("literal"),
            format!("fd18:0:{}::/64", self.index)
                .parse()
                .expect("literal"),
        ]
    }

    /// Where LoadBalancer Services' ingress IPs come from, per family. The
    /// external host routes them to the first node, as a router would after
    /// a BGP announcement (nothing outside the lab routes them).
    pub fn load_balancer_pools(&self) -> Vec<IpNet> {
        vec![
            format!("198.19.{}.64/26", self.index)
                .parse()
                .expect("literal"),
            format!("fd19:0:{}::/112", self.index)
                .parse()
                .expect("literal"),
        ]
    }

    /// The machine's end and the lab's end of the host link.
    pub fn host_link_addresses(&self) -> (IpNet, IpNet) {
        (
            format!("198.19.{}.1/30", self.index)
                .parse()
                .expect("literal"),
            format!("198.19.{}.2/30", self.index)
                .parse()
                .expect("literal"),
        )
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The API server's address: the control plane's address of the
    /// cluster's first family (the `kubernetes` Service's endpoint).
    pub fn apiserver_address(&self) -> IpAddr {
        let v4 = self.families.v4();
        self.control
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == v4)
            .expect("the control plane has an address of each family")
    }

    /// The API server's URL, as the machine, the nodes and kubectl reach it:
    /// by its IPv4 address whatever the pods' families (the underlay is
    /// dual-stack; the machine's host link is IPv4).
    pub fn apiserver_url(&self) -> String {
        let v4 = self
            .control
            .iter()
            .copied()
            .find(|a| a.is_ipv4())
            .expect("the control plane has an IPv4 address");
        format!("https://{}", std::net::SocketAddr::new(v4, APISERVER_PORT))
    }
}

/// A lab on disk.
#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: PathBuf,
    pub config: LabConfig,
}

/// A short stable hash, for names.
pub fn short_hash(s: &str) -> String {
    let h = s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    format!("{:010x}", h & 0xff_ffff_ffff)
}

impl Lab {
    /// The lab in `dir`, if one is up.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Lab>> {
        let p = dir.join("lab.json");
        match std::fs::read(&p) {
            Ok(b) => {
                let config = serde_json::from_slice(&b)
                    .with_context(|| format!("reading {}", p.display()))?;
                Ok(Some(Lab {
                    dir: dir.to_path_buf(),
                    config,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn save(&self) -> anyhow::Result<()> {
        crate::util::write_atomic(
            &self.dir.join("lab.json"),
            &serde_json::to_vec_pretty(&self.config)?,
        )?;
        Ok(())
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// Certificates and keys.
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// etcd's data, the control plane's logs and kubeconfigs.
    pub fn control_dir(&self) -> PathBuf {
        self.dir.join("control")
    }

    /// The admin kubeconfig (`system:masters`), for kubectl and `lab` commands.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A client of the lab's API server as its admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        kube_client(&self.kubeconfig()).await
    }

    /// Namespace names start with `sy<name>-` (the lab's name is at most 8
    /// characters, so interface names derived from it fit in 15).
    fn prefix(&self) -> String {
        format!("sy{}-", self.config.name)
    }

    pub fn underlay_netns(&self) -> String {
        format!("{}underlay", self.prefix())
    }

    pub fn external_netns(&self) -> String {
        format!("{}external", self.prefix())
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix())
    }

    /// The control plane's namespace.
    pub fn control_netns(&self) -> String {
        format!("{}control", self.prefix())
    }

    /// The namespace of a pod (unique per pod instance).
    pub fn pod_netns(&self, namespace: &str, name: &str, uid: &str) -> String {
        format!(
            "{}p-{}",
            self.prefix(),
            short_hash(&format!("{namespace}/{name}/{uid}"))
        )
    }

    /// Every namespace of this lab is named with this prefix.
    pub fn netns_prefix(&self) -> String {
        self.prefix()
    }

    /// The machine's end of the host link.
    pub fn host_link_name(&self) -> String {
        format!("syh-{}", self.config.name)
    }

    pub fn admin_url(&self, node: &str) -> Option<String> {
        let n = self.config.node(node)?;
        let v4 = n.addresses.iter().find(|a| a.is_ipv4())?;
        Some(format!("http://{v4}:{ADMIN_PORT}/"))
    }

    pub fn netns_path(name: &str) -> PathBuf {
        PathBuf::from("/var/run/netns").join(name)
    }

    /// The files `ip netns exec NAME` puts over `/etc` (only resolv.conf here).
    pub fn netns_etc_dir(name: &str) -> PathBuf {
        PathBuf::from(ETC_NETNS).join(name)
    }

    /// The resolv.conf programs see under `ip netns exec NAME`.
    pub fn netns_resolv_conf(name: &str) -> PathBuf {
        Self::netns_etc_dir(name).join("resolv.conf")
    }

    /// The external host's DNS server: its configuration and log.
    pub fn external_dir(&self) -> PathBuf {
        self.dir.join("external")
    }
}

/// Watch what `api` lists (with `config`) into a store, on a task of its
/// own that pokes the returned `Notify` at every change; `what` names it in
/// the log.
pub fn watch_store<K>(
    api: kube::Api<K>,
    config: kube::runtime::watcher::Config,
    what: &'static str,
) -> (
    kube::runtime::reflector::Store<K>,
    std::sync::Arc<tokio::sync::Notify>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let (reader, writer) = kube::runtime::reflector::store::<K>();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    tokio::spawn(async move {
        let stream = kube::runtime::watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        futures::pin_mut!(stream);
        while let Some(e) = stream.next().await {
            if let Err(e) = e {
                tracing::warn!(error = %e, "watching {what}");
            }
            w.notify_one();
        }
    });
    (reader, wake)
}

/// A client from a kubeconfig file.
pub async fn kube_client(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("the kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("a Kubernetes client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_name_and_families() {
        let c = LabConfig::new(
            "lab",
            3,
            NetworkModel::Overlay,
            Families::Dual,
            true,
            "/k8s".into(),
        );
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.nodes[2].zone, "zone-c");
        assert_eq!(
            c.apiserver_url(),
            format!("https://198.18.{}.2:6443", c.index)
        );
        assert!(
            c.nodes[0].addresses[0]
                .to_string()
                .starts_with(&format!("198.18.{}.", c.index))
        );
        let v6 = LabConfig::new(
            "lab",
            1,
            NetworkModel::Flat,
            Families::Ipv6,
            false,
            "/k8s".into(),
        );
        assert_eq!(v6.cluster_pod_cidrs.len(), 1);
        assert!(v6.cluster_pod_cidrs[0].addr().is_ipv6());
        assert_eq!(
            v6.apiserver_address().to_string(),
            format!("fd18:0:{}::2", v6.index),
            "the kubernetes Service's endpoint is of the cluster's family"
        );
        assert_eq!(
            v6.apiserver_url(),
            format!("https://198.18.{}.2:6443", v6.index),
            "the machine reaches it over IPv4"
        );
        assert_eq!(
            v6.nodes[0].addresses.len(),
            2,
            "the underlay is dual-stack whatever the pods are"
        );
        let lab = Lab {
            dir: "/x".into(),
            config: c,
        };
        assert!(
            lab.pod_netns("default", "web", "u1")
                .starts_with("sylab-p-")
        );
        assert_ne!(
            lab.pod_netns("default", "web", "u1"),
            lab.pod_netns("default", "web", "u2")
        );
        assert!(lab.host_link_name().len() <= 15);
    }

    #[test]
    fn cluster_dns_is_the_tenth_service_address_of_each_family() {
        let c = |f| LabConfig::new("lab", 1, NetworkModel::Flat, f, false, "/k8s".into());
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(c(Families::Ipv4).cluster_dns(), [ip("10.96.0.10")]);
        assert_eq!(c(Families::Ipv6).cluster_dns(), [ip("fd00:10:96::a")]);
        assert_eq!(
            c(Families::Dual).cluster_dns(),
            [ip("10.96.0.10"), ip("fd00:10:96::a")]
        );
        assert_eq!(c(Families::Dual).cluster_domain, "cluster.local");
        let tiny: IpNet = "10.0.0.0/29".parse().unwrap();
        assert_eq!(nth_address(&tiny, 10), None, "not inside a /29");
    }

    #[test]
    fn the_upstreams_are_the_external_host_first_family_first() {
        let c = |f| LabConfig::new("lab", 1, NetworkModel::Flat, f, false, "/k8s".into());
        let v4 = c(Families::Ipv4);
        assert_eq!(v4.dns_upstreams(), v4.external);
        assert!(v4.dns_upstreams()[0].is_ipv4());
        let v6 = c(Families::Ipv6);
        assert!(v6.dns_upstreams()[0].is_ipv6() && v6.dns_upstreams()[1].is_ipv4());
        assert!(c(Families::Dual).dns_upstreams()[0].is_ipv4());
        // A lab.json written before these fields still loads.
        let mut old = serde_json::to_value(&v4).unwrap();
        old.as_object_mut().unwrap().remove("clusterDomain");
        old.as_object_mut().unwrap().remove("dnsUpstreams");
        let back: LabConfig = serde_json::from_value(old).unwrap();
        assert_eq!(back.cluster_domain, "cluster.local");
        assert_eq!(
            Lab::netns_resolv_conf("sylab-node-1"),
            Path::new("/etc/netns/sylab-node-1/resolv.conf")
        );
    }
}
