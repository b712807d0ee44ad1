//! The cluster's DNS zone, built from the model: every name the Kubernetes
//! DNS specification (github.com/kubernetes/dns, `docs/specification.md`,
//! schema 1.1.0) gives a Service, an endpoint or a pod, and the reverse
//! names of their addresses. Built whole from a snapshot (a few ms at 10k
//! Services) and swapped in; queries read it without locks. Pure: no
//! sockets, no clock.

use crate::model::snapshot::Manifests;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The cluster domain when the ClusterNetwork names none.
pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// The TTL of every record the zone serves (CoreDNS's default).
pub const TTL: u32 = 5;
/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// What one name holds. Names are lower case, fully qualified, with the
/// trailing dot (`web.default.svc.cluster.local.`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub a: Vec<Ipv4Addr>,
    pub aaaa: Vec<Ipv6Addr>,
    /// SRV records: (weight, port, target name).
    pub srv: Vec<(u16, u16, String)>,
    /// An ExternalName Service's target.
    pub cname: Option<String>,
    pub txt: Vec<String>,
}

/// The zone: names, reverse names and the pods' addresses by namespace.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// The cluster domain, lower case, with the trailing dot.
    pub domain: String,
    /// The SOA's serial: the server counts the zones it builds.
    pub serial: u32,
    pub names: HashMap<String, Node>,
    /// Names with no records of their own but names below them (`svc.`,
    /// `NS.svc.`, `_tcp.SVC.NS.svc.`): they exist, so a query for them is
    /// NODATA, not NXDOMAIN.
    pub interior: HashSet<String>,
    /// The names an address points back to (PTR).
    pub reverse: HashMap<IpAddr, Vec<String>>,
    /// Pod addresses by namespace, for `a-b-c-d.NS.pod.<zone>` (answered
    /// only for a pod that has that address: CoreDNS's `pods verified`).
    pub pods: HashSet<(String, IpAddr)>,
    /// Services that could not be read, with why (`namespace/name`).
    pub problems: BTreeMap<String, String>,
}

/// `NAME.` lower case, as the zone keys its names.
pub fn key(name: &str) -> String {
    let mut s = name.to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

/// An address as a DNS label: `10-1-2-3`, `fd00-10--3` (CoreDNS's form).
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address a dashed label names, if it is one.
pub fn undashed(label: &str) -> Option<IpAddr> {
    if label.contains(':') || label.contains('.') {
        return None;
    }
    let v4 = label.replace('-', ".");
    if let Ok(ip) = v4.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

impl Zone {
    /// The zone of `m` under `domain` (`cluster.local`).
    pub fn build(m: &Manifests, domain: &str) -> Zone {
        let mut z = Zone {
            domain: key(domain),
            ..Default::default()
        };
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in &m.endpoint_slices {
            let labels = s.metadata.labels.as_ref();
            let Some(svc) = labels.and_then(|l| l.get("kubernetes.io/service-name")) else {
                continue;
            };
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            slices.entry((ns, svc.as_str())).or_default().push(s);
        }
        for svc in &m.services {
            let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            let of = slices.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
            if let Err(e) = z.add_service(ns, name, svc, of) {
                z.problems.insert(format!("{ns}/{name}"), e);
            }
        }
        for p in &m.pods {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            let Some(status) = &p.status else { continue };
            if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
                continue;
            }
            for ip in status.pod_ips.iter().flatten() {
                if let Ok(ip) = ip.ip.parse::<IpAddr>() {
                    z.pods.insert((ns.to_string(), ip));
                    // A pod's own reverse name, unless a Service endpoint
                    // already gave it a better one.
                    z.reverse
                        .entry(ip)
                        .or_insert_with(|| vec![format!("{}.{ns}.pod.{}", dashed(ip), z.domain)]);
                }
            }
        }
        let version = format!("dns-version.{}", z.domain);
        z.names.entry(version).or_default().txt = vec![SCHEMA_VERSION.into()];
        for name in z.names.keys().cloned().collect::<Vec<_>>() {
            z.add_interior(&name);
        }
        // Namespaces' pod subtrees (`NS.pod.<zone>`) exist as soon as a pod
        // runs there.
        let pod_ns: Vec<String> = z.pods.iter().map(|(ns, _)| ns.clone()).collect();
        for ns in pod_ns {
            let name = format!("{ns}.pod.{}", z.domain);
            z.add_interior(&name);
            z.interior.insert(name);
        }
        z.interior.insert(z.domain.clone());
        z
    }

    /// Mark every ancestor of `name` down to the zone's apex as existing.
    fn add_interior(&mut self, name: &str) {
        let mut rest = name;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            if rest.len() < self.domain.len() {
                break;
            }
            if !self.interior.insert(rest.to_string()) {
                break;
            }
        }
    }

    fn add_service(
        &mut self,
        ns: &str,
        name: &str,
        svc: &Service,
        slices: &[&EndpointSlice],
    ) -> Result<(), String> {
        let spec = svc.spec.clone().unwrap_or_default();
        let base = format!("{name}.{ns}.svc.{}", self.domain);
        if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec
                .external_name
                .filter(|t| !t.is_empty())
                .ok_or("an ExternalName Service without spec.externalName")?;
            self.names.entry(base).or_default().cname = Some(key(&target));
            return Ok(());
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let mut ips: Vec<IpAddr> = vec![];
        if !headless {
            let given = spec
                .cluster_ips
                .clone()
                .filter(|v| !v.is_empty())
                .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
                .unwrap_or_default();
            for c in given {
                ips.push(
                    c.parse()
                        .map_err(|_| format!("clusterIP {c:?} is not an address"))?,
                );
            }
            if ips.is_empty() {
                // Not allocated yet: no records, as CoreDNS.
                return Ok(());
            }
        }
        // Ports with a name make SRV records.
        let named: Vec<(String, String, u16)> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let n = p.name.as_deref().filter(|n| !n.is_empty())?;
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                Some((n.to_ascii_lowercase(), proto, u16::try_from(p.port).ok()?))
            })
            .collect();
        if !headless {
            let node = self.names.entry(base.clone()).or_default();
            for ip in &ips {
                push_addr(node, *ip);
                self.reverse.insert(*ip, vec![base.clone()]);
            }
            for (n, proto, port) in &named {
                self.names
                    .entry(format!("_{n}._{proto}.{base}"))
                    .or_default()
                    .srv
                    .push((100, *port, base.clone()));
            }
            return Ok(());
        }
        // Headless: the ready endpoints, each under its hostname (or its
        // dashed address), and SRV records per named port and endpoint.
        // A headless Service with no ready endpoint still exists: NODATA.
        self.names.entry(base.clone()).or_default();
        let mut targets: Vec<(String, IpAddr, BTreeMap<String, u16>)> = vec![];
        for s in slices {
            let ports: BTreeMap<String, u16> = s
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        format!(
                            "{}/{}",
                            p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                            p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase()
                        ),
                        u16::try_from(p.port?).ok()?,
                    ))
                })
                .collect();
            for e in &s.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for a in &e.addresses {
                    let Ok(ip) = a.parse::<IpAddr>() else {
                        continue;
                    };
                    let label = e
                        .hostname
                        .as_deref()
                        .filter(|h| !h.is_empty())
                        .map(str::to_ascii_lowercase)
                        .unwrap_or_else(|| dashed(ip));
                    let host = format!("{label}.{base}");
                    push_addr(self.names.entry(base.clone()).or_default(), ip);
                    push_addr(self.names.entry(host.clone()).or_default(), ip);
                    if e.hostname.as_deref().is_some_and(|h| !h.is_empty()) {
                        self.reverse.insert(ip, vec![host.clone()]);
                    }
                    targets.push((host, ip, ports.clone()));
                }
            }
        }
        for (n, proto, _) in &named {
            let want = format!("{n}/{proto}");
            let hits: Vec<(String, u16)> = targets
                .iter()
                .filter_map(|(host, _, ports)| Some((host.clone(), *ports.get(&want)?)))
                .collect();
            let owner = format!("_{n}._{proto}.{base}");
            let node = self.names.entry(owner).or_default();
            let weight = if hits.is_empty() {
                0
            } else {
                (100 / hits.len()).max(1) as u16
            };
            for (host, port) in hits {
                if !node.srv.iter().any(|(_, p, t)| *p == port && *t == host) {
                    node.srv.push((weight, port, host));
                }
            }
        }
        Ok(())
    }

    /// Whether `name` (a key) is at or below the zone's apex.
    pub fn holds(&self, name: &str) -> bool {
        name == self.domain
            || (name.len() > self.domain.len()
                && name.ends_with(&self.domain)
                && name.as_bytes()[name.len() - self.domain.len() - 1] == b'.')
    }

    /// The pod a `a-b-c-d.NS.pod.<zone>` name points to, if it is one and
    /// such a pod runs.
    pub fn pod(&self, name: &str) -> Option<IpAddr> {
        let rest = name.strip_suffix(&self.domain)?;
        let rest = rest.strip_suffix("pod.")?;
        let mut labels = rest.trim_end_matches('.').split('.');
        let (ip, ns) = (labels.next()?, labels.next()?);
        if labels.next().is_some() {
            return None;
        }
        let ip = undashed(ip)?;
        self.pods.contains(&(ns.to_string(), ip)).then_some(ip)
    }
}

fn push_addr(node: &mut Node, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) if !node.a.contains(&v4) => node.a.push(v4),
        IpAddr::V6(v6) if !node.aaaa.contains(&v6) => node.aaaa.push(v6),
        _ => {}
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::Arc;

    /// A Service from YAML, as a test writes it.
    pub fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml::from_str(s).unwrap()
    }

    /// A small cluster: a ClusterIP Service (dual stack, named ports), a
    /// headless one with two ready endpoints (one with a hostname) and one
    /// not ready, an ExternalName, and a pod.
    pub fn cluster() -> Manifests {
        let services: Vec<Service> = vec![
            yaml(
                "metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, 'fd00:96::20']
  ports: [{name: http, port: 80, protocol: TCP}, {port: 81}, {name: DNS, port: 53, protocol: UDP}]",
            ),
            yaml(
                "metadata: {name: db, namespace: data}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]",
            ),
            yaml(
                "metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: Example.TEST}",
            ),
            yaml(
                "metadata: {name: broken, namespace: default}
spec: {clusterIP: not-an-ip}",
            ),
        ];
        let slices: Vec<EndpointSlice> = vec![yaml(
            "metadata:
  name: db-abc
  namespace: data
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
  - addresses: [10.244.1.5]
    hostname: db-0
    conditions: {ready: true}
  - addresses: [10.244.2.6]
  - addresses: [10.244.2.7]
    conditions: {ready: false}",
        )];
        let pod: k8s_openapi::api::core::v1::Pod = yaml(
            "metadata: {name: client, namespace: default}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 10.244.1.9}, {ip: 'fd00:244:1::9'}]}",
        );
        Manifests {
            services,
            endpoint_slices: slices,
            pods: vec![Arc::new(pod)],
            ..Default::default()
        }
    }

    #[test]
    fn services_endpoints_and_pods_have_the_names_the_specification_gives() {
        let z = Zone::build(&cluster(), "Cluster.Local");
        assert_eq!(z.domain, "cluster.local.");
        let web = &z.names["web.default.svc.cluster.local."];
        assert_eq!(web.a, vec![Ipv4Addr::new(10, 96, 0, 20)]);
        assert_eq!(web.aaaa, vec!["fd00:96::20".parse::<Ipv6Addr>().unwrap()]);
        // Named ports only, protocol and name lower case.
        assert_eq!(
            z.names["_http._tcp.web.default.svc.cluster.local."].srv,
            vec![(100, 80, "web.default.svc.cluster.local.".into())]
        );
        assert!(
            z.names
                .contains_key("_dns._udp.web.default.svc.cluster.local.")
        );
        assert_eq!(z.names.keys().filter(|k| k.starts_with('_')).count(), 3);
        // Headless: the two ready endpoints, by hostname or dashed address.
        let db = &z.names["db.data.svc.cluster.local."];
        assert_eq!(db.a.len(), 2);
        assert!(!db.a.contains(&Ipv4Addr::new(10, 244, 2, 7)));
        assert_eq!(
            z.names["db-0.db.data.svc.cluster.local."].a,
            vec![Ipv4Addr::new(10, 244, 1, 5)]
        );
        assert!(
            z.names
                .contains_key("10-244-2-6.db.data.svc.cluster.local.")
        );
        let srv = &z.names["_pg._tcp.db.data.svc.cluster.local."].srv;
        assert_eq!(srv.len(), 2);
        assert!(srv.iter().all(|(w, p, _)| *w == 50 && *p == 5432));
        assert_eq!(
            z.names["ext.default.svc.cluster.local."].cname.as_deref(),
            Some("example.test.")
        );
        // Reverse names: the ClusterIPs, the endpoint with a hostname, the pod.
        assert_eq!(
            z.reverse[&"fd00:96::20".parse::<IpAddr>().unwrap()],
            vec!["web.default.svc.cluster.local.".to_string()]
        );
        assert_eq!(
            z.reverse[&"10.244.1.5".parse::<IpAddr>().unwrap()],
            vec!["db-0.db.data.svc.cluster.local.".to_string()]
        );
        assert_eq!(
            z.reverse[&"10.244.1.9".parse::<IpAddr>().unwrap()],
            vec!["10-244-1-9.default.pod.cluster.local.".to_string()]
        );
        // Interior names exist; a broken Service is said, not served.
        for n in [
            "cluster.local.",
            "svc.cluster.local.",
            "data.svc.cluster.local.",
            "_tcp.web.default.svc.cluster.local.",
            "default.pod.cluster.local.",
        ] {
            assert!(z.interior.contains(n), "{n}");
        }
        assert!(!z.interior.contains("local."));
        assert!(z.problems["default/broken"].contains("not-an-ip"));
        assert_eq!(
            z.pod("10-244-1-9.default.pod.cluster.local."),
            Some("10.244.1.9".parse().unwrap())
        );
        assert_eq!(
            z.pod("fd00-244-1--9.default.pod.cluster.local."),
            Some("fd00:244:1::9".parse().unwrap())
        );
        assert_eq!(z.pod("10-244-1-9.other.pod.cluster.local."), None);
        assert_eq!(z.pod("10-244-1-8.default.pod.cluster.local."), None);
        assert!(z.holds("a.cluster.local.") && z.holds("cluster.local."));
        assert!(!z.holds("acluster.local.") && !z.holds("local."));
    }
}
