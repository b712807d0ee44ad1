//! The service proxy's input for the proxy benchmarks: a node context, N
//! ClusterIP Services of one TCP port, their endpoints, and a registry with
//! the real `proxy-nftables` module.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::model::{ObjectKind, ObjectRef, Role};
use switchyard::registry::source::{Fetcher, ModuleSource};
use switchyard::registry::{ModuleSpec, Registry};
use switchyard::runtime::{HostServices, Runtime};

/// Every Service's port, and the endpoints' port behind it.
pub const SERVICE_PORT: u16 = 80;
pub const POD_PORT: u16 = 8080;

pub fn v4(a: Ipv4Addr) -> IpAddress {
    let [a, b, c, d] = a.octets();
    IpAddress::Ipv4((a, b, c, d))
}

/// node-1, pods in 10.0.0.0/8, Services in 10.96.0.0/12, random by default.
pub fn node_context() -> NodeContext {
    NodeContext {
        node: "node-1".into(),
        zone: None,
        node_ips: vec![v4(Ipv4Addr::new(192, 168, 0, 2))],
        cluster_cidrs: vec![IpCidr {
            address: v4(Ipv4Addr::new(10, 0, 0, 0)),
            prefix_len: 8,
        }],
        service_cidrs: vec![IpCidr {
            address: v4(Ipv4Addr::new(10, 96, 0, 0)),
            prefix_len: 12,
        }],
        families: vec![IpFamily::Ipv4],
        masquerade: false,
        default_scheduler: "random".into(),
    }
}

/// Service `bench/svc-I` at `vip`, port 80 to 8080.
pub fn service(i: u32, vip: Ipv4Addr) -> Service {
    Service {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        uid: format!("uid-{i}"),
        labels: vec![],
        annotations: vec![],
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![v4(vip)],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: SERVICE_PORT,
            target_port: TargetPort::Number(POD_PORT),
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

/// A ready endpoint on node-1 serving port 8080.
pub fn endpoint(addr: Ipv4Addr) -> Endpoint {
    Endpoint {
        address: v4(addr),
        ports: vec![EndpointPort {
            name: "http".into(),
            port: POD_PORT,
            protocol: Protocol::Tcp,
        }],
        ready: true,
        serving: true,
        terminating: false,
        node: Some("node-1".into()),
        zone: None,
        pod: None,
        weight: 1,
    }
}

/// The object Service `svc-I` is.
pub fn object(i: u32) -> ObjectRef {
    ObjectRef::new(ObjectKind::Service, "bench", format!("svc-{i}"))
}

/// A registry serving the role with the built-in `proxy-nftables`, with a
/// deadline generous enough for full syncs of many Services on a slow
/// machine.
pub async fn registry() -> anyhow::Result<Arc<Registry>> {
    let registry = Registry::new(
        Runtime::new()?,
        Fetcher::default(),
        HostServices::default(),
        2,
    );
    let mut spec = ModuleSpec::new(
        "proxy",
        Role::ServiceProxy,
        ModuleSource::Builtin("proxy-nftables".into()),
    );
    spec.limits.deadline = Duration::from_secs(30);
    registry.apply_async(spec).await?;
    Ok(registry)
}
