//! Helpers shared by the host's integration tests.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::datapath::ipam::{Ledger, PoolConfig};
use switchyard::datapath::links::RecordingLinks;
use switchyard::datapath::probes::ProbeTable;
use switchyard::model::Role;
use switchyard::registry::source::{Fetcher, ModuleSource};
use switchyard::registry::{ModuleSpec, Registry};
use switchyard::runtime::{HostServices, Runtime};

/// One runtime per test binary: modules compile once per digest.
pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Runtime::new().expect("runtime")).clone()
}

pub struct Env {
    pub registry: Arc<Registry>,
    pub links: Arc<RecordingLinks>,
    pub ledger: Arc<Ledger>,
    pub probes: Arc<ProbeTable>,
    pub dir: tempfile::TempDir,
}

/// The packets of `nft list counter` output.
pub fn counter_packets(out: &str) -> u64 {
    out.split("packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

pub mod agent;
pub mod apiserver;
pub mod lab;
pub mod netns;
pub mod registry;

pub fn env() -> Env {
    env_on(runtime())
}

/// The tests of one binary that assert on timing take this lock, so they do
/// not compete for the two CPUs with each other.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn env_on(runtime: Arc<Runtime>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let links = Arc::new(RecordingLinks::new());
    let probes = Arc::new(ProbeTable::default());
    let ledger = Arc::new(
        Ledger::open(
            &dir.path().join("ipam.redb"),
            vec![
                PoolConfig {
                    name: "v4".into(),
                    subnet: "10.244.1.0/24".parse().unwrap(),
                },
                PoolConfig {
                    name: "v6".into(),
                    subnet: "fd00:10:244:1::/64".parse().unwrap(),
                },
            ],
        )
        .unwrap(),
    );
    let services = HostServices {
        probes: Some(probes.clone()),
        ipam: Some(ledger.clone()),
        links: Some(links.clone()),
    };
    let fetcher = Fetcher {
        cache_dir: Some(dir.path().join("modules")),
        ..Fetcher::default()
    };
    Env {
        registry: Registry::new(runtime, fetcher, services, 2),
        links,
        ledger,
        probes,
        dir,
    }
}

pub fn builtin(name: &str, module: &str, role: Role) -> ModuleSpec {
    ModuleSpec::new(name, role, ModuleSource::Builtin(module.into()))
}

pub fn ctx() -> NodeContext {
    NodeContext {
        node: "node-1".into(),
        zone: None,
        node_ips: vec![IpAddress::Ipv4((192, 168, 0, 2))],
        cluster_cidrs: vec![IpCidr {
            address: IpAddress::Ipv4((10, 244, 0, 0)),
            prefix_len: 16,
        }],
        service_cidrs: vec![IpCidr {
            address: IpAddress::Ipv4((10, 96, 0, 0)),
            prefix_len: 16,
        }],
        families: vec![IpFamily::Ipv4],
        masquerade: false,
        default_scheduler: "random".into(),
    }
}

/// A ClusterIP Service `default/<name>` on 10.96.0.<vip>:80 with annotations.
pub fn service(name: &str, vip: u8, annotations: &[(&str, &str)]) -> Service {
    Service {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        labels: vec![],
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![IpAddress::Ipv4((10, 96, 0, vip))],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: None,
        }],
        session_affinity_timeout: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        traffic_distribution: None,
        ip_families: vec![IpFamily::Ipv4],
        ip_family_policy: IpFamilyPolicy::SingleStack,
        health_check_node_port: None,
    }
}

/// `n` ready endpoints 10.244.1.2.. serving port `http` on 8080.
pub fn endpoints(n: u8) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            address: IpAddress::Ipv4((10, 244, 1, 2 + i)),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            ready: true,
            serving: true,
            terminating: false,
            node: Some("node-1".into()),
            zone: None,
            pod: Some(format!("default/web-{i}")),
            weight: 1,
        })
        .collect()
}

/// Resident memory of this process, in bytes.
pub fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}
