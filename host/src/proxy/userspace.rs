//! The userspace proxy mode: the agent carries a Service's connections
//! itself, and a scheduler module (role `scheduler`) picks the backend of
//! each new connection with the host's live view of every backend: its
//! readiness and last probe latency (the `probes` table, from the prober or
//! from Pod status) and the connections this proxy holds open to it.
//!
//! A Service is proxied here when its scheduler (the annotation
//! `switchyard.dev/scheduler`, else ClusterNetwork's default) names a loaded
//! NetworkModule of role `scheduler`; every other Service stays with the
//! nftables proxy, which never sees it. Per TCP Service port the agent
//! listens on an ephemeral port of the node, and a table of its own
//! ([`TABLE`]) redirects the Service's cluster IPs there, from pods
//! (prerouting) and from the node itself (output), ahead of the nftables
//! proxy's hooks. The table is small and replaced whole in one transaction.
//!
//! Each connection asks the module once; a backend that does not accept
//! within [`CONNECT_TIMEOUT`] is left out and the module asked again, up to
//! [`ATTEMPTS`] times. When the module fails (a trap, an error, no backend
//! it likes), the connection goes to the ready backend with the fewest open
//! connections, unless the module's failurePolicy is FailClosed, and the
//! failure is counted in the module's status.
//!
//! Not served in this mode: UDP and SCTP ports (reported in the Service's
//! status), node ports, external and load-balancer IPs.

use crate::contract::bindings::imports::switchyard::plugin::types as wit;
use crate::contract::bindings::scheduler as sched;
use crate::datapath::nft::NftRunner;
use crate::datapath::probes::ProbeView;
use crate::model::{FailurePolicy, ObjectRef, Role};
use crate::registry::Registry;
use crate::runtime::{wit_ip, wit_to_ip as ip};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The table that redirects cluster IPs to the agent's listeners.
pub const TABLE: &str = "switchyard-userspace";
/// How long a backend has to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Backends tried per connection.
pub const ATTEMPTS: usize = 3;
const SCHEDULER_ANNOTATION: &str = "switchyard.dev/scheduler";

/// One Service port served in userspace, shared with its accept loop.
struct Port {
    service: String,
    scheduler: RwLock<String>,
    name: String,
    port: u16,
    cluster_ips: RwLock<Vec<IpAddr>>,
    endpoints: RwLock<Vec<wit::Endpoint>>,
    /// Connections open now, per backend.
    active: Mutex<HashMap<SocketAddr, u32>>,
    connections: AtomicU64,
    failures: AtomicU64,
}

struct Served {
    port: Arc<Port>,
    listen: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        // Open connections finish on their own tasks; no new ones come.
        self.task.abort();
    }
}

/// What the userspace proxy serves, for the node's report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortReport {
    pub service: String,
    pub port: String,
    pub scheduler: String,
    pub listen: u16,
    pub connections: u64,
    pub failures: u64,
}

/// The userspace proxy of one node.
pub struct UserspaceProxy {
    registry: Arc<Registry>,
    probes: Arc<dyn ProbeView>,
    runner: Arc<dyn NftRunner>,
    rt: tokio::runtime::Handle,
    served: BTreeMap<(ObjectRef, String), Served>,
    errors: BTreeMap<ObjectRef, String>,
    /// The redirect table as last loaded.
    applied: Option<String>,
}

impl UserspaceProxy {
    pub fn new(
        registry: Arc<Registry>,
        probes: Arc<dyn ProbeView>,
        runner: Arc<dyn NftRunner>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        UserspaceProxy {
            registry,
            probes,
            runner,
            rt,
            served: BTreeMap::new(),
            errors: BTreeMap::new(),
            applied: None,
        }
    }

    /// The scheduler module that serves `svc`, if one does.
    fn scheduler_of(&self, svc: &wit::Service, default: &str) -> Option<String> {
        let name = svc
            .annotations
            .iter()
            .find(|(k, _)| k == SCHEDULER_ANNOTATION)
            .map(|(_, v)| v.as_str())
            .unwrap_or(default);
        let b = self.registry.binding(name)?;
        let active = b.active()?;
        (active.spec.role == Role::Scheduler).then(|| name.to_string())
    }

    /// Take the Services that a scheduler module serves; return the others
    /// (for the nftables proxy). Listeners are opened, updated and closed
    /// to match; call [`sync`](Self::sync) to load the redirects.
    pub fn take(
        &mut self,
        inputs: Vec<(wit::Service, Vec<wit::Endpoint>)>,
        default_scheduler: &str,
    ) -> Vec<(wit::Service, Vec<wit::Endpoint>)> {
        let mut rest = vec![];
        let mut keep = BTreeMap::new();
        self.errors.clear();
        for (svc, eps) in inputs {
            let Some(scheduler) = self.scheduler_of(&svc, default_scheduler) else {
                rest.push((svc, eps));
                continue;
            };
            let object = super::service_ref(&svc);
            let service = format!("{}/{}", svc.namespace, svc.name);
            let cluster_ips: Vec<IpAddr> = svc.cluster_ips.iter().map(ip).collect();
            let mut problems = vec![];
            if cluster_ips.is_empty() {
                problems.push("a headless Service has nothing to proxy".to_string());
            }
            for p in &svc.ports {
                if !matches!(p.protocol, wit::Protocol::Tcp) {
                    let proto = match p.protocol {
                        wit::Protocol::Udp => "UDP",
                        _ => "SCTP",
                    };
                    problems.push(format!(
                        "port {}/{proto}: the userspace proxy serves TCP only",
                        p.port
                    ));
                    continue;
                }
                if cluster_ips.is_empty() {
                    continue;
                }
                let key = (object.clone(), p.name.clone());
                if let Some(s) = self.served.remove(&key)
                    && s.port.port == p.port
                {
                    *s.port.scheduler.write() = scheduler.clone();
                    *s.port.cluster_ips.write() = cluster_ips.clone();
                    *s.port.endpoints.write() = eps.clone();
                    keep.insert(key, s);
                    continue;
                }
                let port = Arc::new(Port {
                    service: service.clone(),
                    scheduler: RwLock::new(scheduler.clone()),
                    name: p.name.clone(),
                    port: p.port,
                    cluster_ips: RwLock::new(cluster_ips.clone()),
                    endpoints: RwLock::new(eps.clone()),
                    active: Mutex::new(HashMap::new()),
                    connections: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                });
                match self.listen(port.clone(), cluster_ips.iter().any(|a| a.is_ipv6())) {
                    Ok(s) => {
                        keep.insert(key, s);
                    }
                    Err(e) => problems.push(format!("port {}: listening: {e}", p.port)),
                }
            }
            if !problems.is_empty() {
                self.errors.insert(object, problems.join("; "));
            }
        }
        // Services gone, or now with the nftables proxy: their listeners close.
        self.served = keep;
        rest
    }

    fn listen(&self, port: Arc<Port>, v6: bool) -> std::io::Result<Served> {
        // A dual-stack socket when the Service has IPv6 (IPv4 clients
        // arrive mapped); the namespace's default is not v6-only.
        let bind: SocketAddr = if v6 {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let std = std::net::TcpListener::bind(bind)?;
        std.set_nonblocking(true)?;
        let listen = std.local_addr()?.port();
        let _guard = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(std)?;
        let registry = self.registry.clone();
        let probes = self.probes.clone();
        let p = port.clone();
        let task = self.rt.spawn(async move {
            loop {
                let (sock, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(service = %p.service, "accepting: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (p, registry, probes) = (p.clone(), registry.clone(), probes.clone());
                tokio::spawn(async move { serve(sock, peer, p, registry, probes).await });
            }
        });
        Ok(Served { port, listen, task })
    }

    /// The redirect table for what is served now.
    pub fn script(&self) -> String {
        let mut s = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
        if self.served.is_empty() {
            return s;
        }
        let mut v4 = vec![];
        let mut v6 = vec![];
        for served in self.served.values() {
            for a in served.port.cluster_ips.read().iter() {
                let e = format!("{a} . {} : {}", served.port.port, served.listen);
                if a.is_ipv4() { &mut v4 } else { &mut v6 }.push(e);
            }
        }
        let elements = |v: &[String]| {
            if v.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", v.join(", "))
            }
        };
        let _ = write!(
            s,
            "table inet {TABLE} {{\n\
             \tmap ports4 {{ type ipv4_addr . inet_service : inet_service;{} }}\n\
             \tmap ports6 {{ type ipv6_addr . inet_service : inet_service;{} }}\n",
            elements(&v4),
            elements(&v6)
        );
        // Ahead of the nftables proxy (dstnat): a redirected connection's
        // destination is the node's own address, which it leaves alone.
        // (-105: `dstnat - 5`, which nft spells only for prerouting.)
        for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
            let _ = write!(
                s,
                "\tchain {chain} {{ type nat hook {hook} priority -105; policy accept;\n\
                 \t\tmeta l4proto tcp redirect to ip daddr . tcp dport map @ports4\n\
                 \t\tmeta l4proto tcp redirect to ip6 daddr . tcp dport map @ports6\n\
                 \t}}\n"
            );
        }
        s.push_str("}\n");
        s
    }

    /// Load the redirect table if it changed. Returns why it could not be.
    pub fn sync(&mut self) -> Result<(), String> {
        let script = self.script();
        if self.applied.as_deref() == Some(script.as_str()) {
            return Ok(());
        }
        self.runner
            .run(&script)
            .map_err(|e| format!("loading table {TABLE}: {e}"))?;
        self.applied = Some(script);
        Ok(())
    }

    /// Why a Service is not (fully) served, by Service.
    pub fn errors(&self) -> &BTreeMap<ObjectRef, String> {
        &self.errors
    }

    /// How many Services are served here.
    pub fn services(&self) -> usize {
        let mut s: Vec<&ObjectRef> = self.served.keys().map(|(o, _)| o).collect();
        s.dedup();
        s.len()
    }

    /// What is served, with counters.
    pub fn report(&self) -> Vec<PortReport> {
        self.served
            .values()
            .map(|s| PortReport {
                service: s.port.service.clone(),
                port: if s.port.name.is_empty() {
                    s.port.port.to_string()
                } else {
                    format!("{}/{}", s.port.name, s.port.port)
                },
                scheduler: s.port.scheduler.read().clone(),
                listen: s.listen,
                connections: s.port.connections.load(Ordering::Relaxed),
                failures: s.port.failures.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The backends a connection of `family` may go to, with the host's view of
/// each, leaving out `excluded`. Ready endpoints; when none is, serving
/// and terminating ones (KEP-1669).
fn candidates(
    p: &Port,
    v4: bool,
    probes: &dyn ProbeView,
    excluded: &[SocketAddr],
) -> Vec<(SocketAddr, sched::Backend)> {
    let eps = p.endpoints.read();
    let active = p.active.lock();
    let port_of = |e: &wit::Endpoint| {
        e.ports
            .iter()
            .find(|ep| ep.name == p.name && matches!(ep.protocol, wit::Protocol::Tcp))
            .map(|ep| ep.port)
    };
    let usable: Vec<&wit::Endpoint> = {
        let family: Vec<&wit::Endpoint> = eps
            .iter()
            .filter(|e| ip(&e.address).is_ipv4() == v4 && port_of(e).is_some())
            .collect();
        if family.iter().any(|e| e.ready) {
            family.into_iter().filter(|e| e.ready).collect()
        } else {
            family
                .into_iter()
                .filter(|e| e.serving && e.terminating)
                .collect()
        }
    };
    usable
        .into_iter()
        .filter_map(|e| {
            let addr = SocketAddr::new(ip(&e.address), port_of(e)?);
            if excluded.contains(&addr) {
                return None;
            }
            let health = probes.health(addr.ip(), addr.port());
            Some((
                addr,
                sched::Backend {
                    address: e.address,
                    port: addr.port(),
                    weight: e.weight.max(1),
                    active_connections: active.get(&addr).copied().unwrap_or(0),
                    // The slice says ready; a fresher probe result may not.
                    ready: health.as_ref().is_none_or(|h| h.ready),
                    latency_us: health
                        .and_then(|h| h.last_latency)
                        .map(|d| d.as_micros().min(u32::MAX as u128) as u32),
                    node: e.node.clone(),
                    zone: e.zone.clone(),
                },
            ))
        })
        .collect()
}

/// The fallback when the module cannot choose: the ready backend with the
/// fewest open connections.
fn fewest_connections(c: &[(SocketAddr, sched::Backend)]) -> Option<usize> {
    c.iter()
        .enumerate()
        .min_by_key(|(_, (_, b))| (!b.ready, b.active_connections))
        .map(|(i, _)| i)
}

/// Counts a connection open to a backend while it lives.
struct Open<'a> {
    port: &'a Port,
    to: SocketAddr,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut a = self.port.active.lock();
        if let Some(n) = a.get_mut(&self.to) {
            *n -= 1;
            if *n == 0 {
                a.remove(&self.to);
            }
        }
    }
}

async fn serve(
    mut client: tokio::net::TcpStream,
    peer: SocketAddr,
    p: Arc<Port>,
    registry: Arc<Registry>,
    probes: Arc<dyn ProbeView>,
) {
    p.connections.fetch_add(1, Ordering::Relaxed);
    let client_ip = peer.ip().to_canonical();
    let v4 = client_ip.is_ipv4();
    let Some(vip) = p
        .cluster_ips
        .read()
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .copied()
    else {
        p.failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let scheduler = p.scheduler.read().clone();
    let connection = sched::Connection {
        client: wit_ip(client_ip),
        client_port: peer.port(),
        service_address: wit_ip(vip),
        service_port: p.port,
        protocol: wit::Protocol::Tcp,
        service: p.service.clone(),
    };
    let mut excluded = vec![];
    for _ in 0..ATTEMPTS {
        let c = candidates(&p, v4, probes.as_ref(), &excluded);
        if c.is_empty() {
            break;
        }
        let backends = c.iter().map(|(_, b)| b.clone()).collect();
        let chosen = match registry
            .pick(&scheduler, connection.clone(), backends)
            .await
        {
            Ok(i) => Some(i as usize),
            Err(e) => {
                let closed = registry
                    .binding(&scheduler)
                    .and_then(|b| b.active())
                    .is_some_and(|a| a.spec.failure_policy == FailurePolicy::FailClosed);
                tracing::warn!(service = %p.service, scheduler, closed, "the scheduler failed: {e}");
                if closed {
                    break;
                }
                fewest_connections(&c)
            }
        };
        let Some((to, _)) = chosen.and_then(|i| c.get(i)) else {
            break;
        };
        let to = *to;
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(to)).await {
            Ok(Ok(mut upstream)) => {
                *p.active.lock().entry(to).or_default() += 1;
                let _open = Open { port: &p, to };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Ok(Err(e)) => tracing::debug!(service = %p.service, %to, "connecting: {e}"),
            Err(_) => tracing::debug!(service = %p.service, %to, "connecting: timed out"),
        }
        excluded.push(to);
    }
    p.failures.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::probes::{EndpointHealth, ProbeResult, ProbeTable};

    fn port(eps: Vec<wit::Endpoint>) -> Port {
        Port {
            service: "default/web".into(),
            scheduler: RwLock::new("ll".into()),
            name: "http".into(),
            port: 80,
            cluster_ips: RwLock::new(vec!["10.96.0.10".parse().unwrap()]),
            endpoints: RwLock::new(eps),
            active: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn ep(addr: &str, ready: bool, terminating: bool) -> wit::Endpoint {
        wit::Endpoint {
            address: wit_ip(addr.parse().unwrap()),
            ports: vec![wit::EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: wit::Protocol::Tcp,
            }],
            ready,
            serving: ready || terminating,
            terminating,
            node: Some("node-1".into()),
            zone: None,
            pod: None,
            weight: 1,
        }
    }

    #[test]
    fn candidates_carry_probe_health_and_open_connections() {
        let p = port(vec![
            ep("10.244.1.2", true, false),
            ep("10.244.1.3", true, false),
            ep("10.244.1.4", false, true),
            ep("fd00::2", true, false),
        ]);
        let table = ProbeTable::default();
        table.set(
            "10.244.1.3".parse().unwrap(),
            8080,
            EndpointHealth {
                ready: false,
                last_result: ProbeResult::Failure,
                last_latency: Some(Duration::from_micros(700)),
                consecutive_failures: 2,
                consecutive_successes: 0,
            },
        );
        p.active
            .lock()
            .insert("10.244.1.2:8080".parse().unwrap(), 4);
        let c = candidates(&p, true, &table, &[]);
        // IPv4 only, ready only (the terminating one waits for none ready).
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].1.active_connections, 4);
        assert!(c[0].1.ready);
        assert_eq!(c[0].1.latency_us, None);
        assert!(!c[1].1.ready, "the probe's verdict is fresher");
        assert_eq!(c[1].1.latency_us, Some(700));
        // Excluded after a failed connect.
        let c = candidates(&p, true, &table, &["10.244.1.2:8080".parse().unwrap()]);
        assert_eq!(c.len(), 1);
        // Fallback: the ready one, even with more connections.
        let c = candidates(&p, true, &table, &[]);
        assert_eq!(fewest_connections(&c), Some(0));
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let p = port(vec![
            ep("10.244.1.4", false, true),
            ep("10.244.1.5", false, false),
        ]);
        let c = candidates(&p, true, &ProbeTable::default(), &[]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, "10.244.1.4:8080".parse().unwrap());
    }
}
