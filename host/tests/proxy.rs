//! The nftables service proxy with real traffic, in a namespace of its own:
//! endpoints are addresses on a dummy interface with listeners on them, the
//! client is a socket in the same namespace (its packets take the output
//! hook, where the proxy DNATs them). Needs root.

mod common;

use common::netns::{Netns, require_root};
use common::{builtin, env};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::datapath::conntrack::ConntrackTool;
use switchyard::datapath::netlink::in_netns;
use switchyard::datapath::nft::Nft;
use switchyard::model::{FailurePolicy, ObjectKind, ObjectRef, Role};
use switchyard::proxy::ServiceProxy;
use switchyard::runtime::{wit_cidr, wit_ip};

fn ip(a: &str) -> IpAddress {
    wit_ip(a.parse().unwrap())
}

fn v6_cluster() -> IpCidr {
    wit_cidr("fd00:10:244::/48".parse().unwrap())
}

fn fam(a: &IpAddress) -> IpFamily {
    match a {
        IpAddress::Ipv4(_) => IpFamily::Ipv4,
        IpAddress::Ipv6(_) => IpFamily::Ipv6,
    }
}

const ANNOTATION: &str = "switchyard.dev/scheduler";

struct Lab {
    ns: Netns,
    proxy: ServiceProxy,
    _env: common::Env,
}

fn ep(addr: &str, port: u16, proto: Protocol) -> Endpoint {
    Endpoint {
        address: ip(addr),
        ports: vec![EndpointPort {
            name: "p".into(),
            port,
            protocol: proto,
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

fn svc(name: &str, vips: &[&str], port: u16, proto: Protocol, sched: &str) -> Service {
    let mut s = common::service(name, 1, &[(ANNOTATION, sched)]);
    s.cluster_ips = vips.iter().map(|v| ip(v)).collect();
    s.ip_families = s.cluster_ips.iter().map(fam).collect();
    s.ports = vec![ServicePort {
        name: "p".into(),
        protocol: proto,
        port,
        target_port: TargetPort::Name("p".into()),
        node_port: None,
    }];
    s
}

async fn lab(tag: &str) -> Lab {
    require_root();
    let ns = Netns::new(tag);
    // (This kernel has no dummy interfaces; one end of a veth pair will do.)
    ns.ip(&[
        "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1",
    ]);
    ns.ip(&["link", "set", "dummy0", "up"]);
    ns.ip(&["link", "set", "dummy1", "up"]);
    for a in [
        "10.244.1.2/32",
        "10.244.1.3/32",
        "10.244.1.4/32",
        "10.244.9.9/32",
    ] {
        ns.ip(&["addr", "add", a, "dev", "dummy0"]);
    }
    for a in [
        "fd00:10:244:1::2/128",
        "fd00:10:244:1::3/128",
        "fd00:10:244:1::4/128",
        "fd00:10:244:9::9/128",
    ] {
        ns.ip(&["addr", "add", a, "dev", "dummy0", "nodad"]);
    }
    // The client's packets to Service addresses leave from the client address.
    ns.ip(&[
        "route",
        "add",
        "10.96.0.0/16",
        "dev",
        "dummy0",
        "src",
        "10.244.9.9",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:96::/112",
        "dev",
        "dummy0",
        "src",
        "fd00:10:244:9::9",
    ]);
    let e = env();
    e.registry
        .apply_async(builtin("proxy", "proxy-nftables", Role::ServiceProxy))
        .await
        .unwrap();
    let mut ctx = common::ctx();
    ctx.cluster_cidrs.push(v6_cluster());
    ctx.families.push(IpFamily::Ipv6);
    let mut proxy = ServiceProxy::new(
        e.registry.clone(),
        Arc::new(Nft::new(Some(ns.path.clone()))),
        Arc::new(ConntrackTool {
            netns: Some(ns.name.clone()),
        }),
    );
    proxy.set_context(ctx);
    Lab { ns, proxy, _env: e }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns.name])
            .status();
    }
}

impl Lab {
    async fn sync(&mut self, services: Vec<(Service, Vec<Endpoint>)>) {
        self.proxy.set_services(services);
        let r = self.proxy.sync().await;
        assert!(self.proxy.errors().is_empty(), "{:?}", self.proxy.errors());
        assert_eq!(r.error, None);
        assert!(r.script_bytes > 0 || r.rendered == 0, "{r:?}");
    }

    /// TCP listeners on `addrs` that count the connections they accept.
    fn listen(&self, addrs: &[&str], port: u16) -> Vec<(String, TcpListener)> {
        addrs
            .iter()
            .map(|a| {
                let sa: SocketAddr = SocketAddr::new(a.parse().unwrap(), port);
                let l = in_netns(&self.ns.path, || TcpListener::bind(sa)).unwrap();
                l.set_nonblocking(true).unwrap();
                (a.to_string(), l)
            })
            .collect()
    }

    /// Connect `n` times to `to`; which listener took each connection.
    fn spread(
        &self,
        to: &str,
        n: usize,
        listeners: &[(String, TcpListener)],
    ) -> BTreeMap<String, usize> {
        let to: SocketAddr = to.parse().unwrap();
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let c = in_netns(&self.ns.path, || {
                TcpStream::connect_timeout(&to, Duration::from_secs(2))
            })
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
            let mut got = None;
            for _ in 0..200 {
                for (a, l) in listeners {
                    if let Ok((_s, _)) = l.accept() {
                        got = Some(a.clone());
                    }
                }
                if got.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(c);
            *counts.entry(got.expect("a listener accepted")).or_insert(0) += 1;
        }
        counts
    }

    fn connect_err(&self, to: &str) -> std::io::ErrorKind {
        let to: SocketAddr = to.parse().unwrap();
        in_netns(&self.ns.path, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(1))
        })
        .err()
        .map(|e| e.kind())
        .expect("the connection must fail")
    }

    fn table(&self) -> String {
        let o = self
            .ns
            .exec(&["nft", "list", "table", "inet", "switchyard-proxy"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_source_hash_sticks_in_both_families() {
    let mut lab = lab("pxrr").await;
    let v4 = ["10.244.1.2", "10.244.1.3", "10.244.1.4"];
    let v6 = ["fd00:10:244:1::2", "fd00:10:244:1::3", "fd00:10:244:1::4"];
    let eps: Vec<Endpoint> = v4
        .iter()
        .chain(&v6)
        .map(|a| ep(a, 8080, Protocol::Tcp))
        .collect();
    let s = svc(
        "web",
        &["10.96.0.10", "fd00:96::10"],
        80,
        Protocol::Tcp,
        "rr",
    );
    lab.sync(vec![(s.clone(), eps.clone())]).await;
    let l4 = lab.listen(&v4, 8080);
    let l6 = lab.listen(&v6, 8080);
    let c = lab.spread("10.96.0.10:80", 30, &l4);
    assert_eq!(
        c.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{c:?}"
    );
    let c = lab.spread("[fd00:96::10]:80", 30, &l6);
    assert_eq!(
        c.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{c:?}"
    );

    // sh: one client, one backend, every time.
    let s = svc(
        "web",
        &["10.96.0.10", "fd00:96::10"],
        80,
        Protocol::Tcp,
        "sh",
    );
    lab.sync(vec![(s, eps.clone())]).await;
    assert_eq!(lab.spread("10.96.0.10:80", 20, &l4).len(), 1);
    assert_eq!(lab.spread("[fd00:96::10]:80", 20, &l6).len(), 1);

    // random: every backend gets some of 60 connections (the chance that
    // one gets none is 3 * (2/3)^60, about 1e-10).
    let s = svc(
        "web",
        &["10.96.0.10", "fd00:96::10"],
        80,
        Protocol::Tcp,
        "random",
    );
    lab.sync(vec![(s, eps.clone())]).await;
    assert_eq!(lab.spread("10.96.0.10:80", 60, &l4).len(), 3);

    // rr is per Service: two rr Services whose connections alternate each
    // still rotate over all their endpoints (a shared counter would give
    // each of them every third endpoint only).
    let a = svc("a", &["10.96.0.20"], 80, Protocol::Tcp, "rr");
    let b = svc("b", &["10.96.0.21"], 80, Protocol::Tcp, "rr");
    let v4_eps: Vec<Endpoint> = eps[..3].to_vec();
    lab.sync(vec![(a, v4_eps.clone()), (b, v4_eps)]).await;
    let mut per: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for _ in 0..9 {
        for vip in ["10.96.0.20:80", "10.96.0.21:80"] {
            for (k, n) in lab.spread(vip, 1, &l4) {
                *per.entry(vip).or_default().entry(k).or_default() += n;
            }
        }
    }
    for (vip, c) in &per {
        assert_eq!(
            c.values().copied().collect::<Vec<_>>(),
            vec![3, 3, 3],
            "{vip}: {c:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_are_deltas_and_no_endpoints_rejects() {
    let mut lab = lab("pxdelta").await;
    let v4 = ["10.244.1.2", "10.244.1.3", "10.244.1.4"];
    let l = lab.listen(&v4, 8080);
    let s = svc("web", &["10.96.0.10"], 80, Protocol::Tcp, "rr");
    let other = svc("other", &["10.96.0.11"], 80, Protocol::Tcp, "rr");
    let all: Vec<Endpoint> = v4.iter().map(|a| ep(a, 8080, Protocol::Tcp)).collect();
    lab.sync(vec![(s.clone(), all.clone()), (other.clone(), all.clone())])
        .await;
    // Drop one endpoint of web: a delta, and web's traffic avoids it.
    let two = all[..2].to_vec();
    lab.proxy
        .set_services(vec![(s.clone(), two), (other.clone(), all.clone())]);
    let r = lab.proxy.sync().await;
    assert!(!r.full && r.rendered == 1, "{r:?}");
    let c = lab.spread("10.96.0.10:80", 20, &l);
    assert_eq!(
        c.keys().cloned().collect::<Vec<_>>(),
        vec!["10.244.1.2", "10.244.1.3"]
    );
    assert_eq!(lab.spread("10.96.0.11:80", 30, &l).len(), 3);
    // No endpoints: connections are refused, not left to time out.
    lab.sync(vec![(s.clone(), vec![]), (other.clone(), all.clone())])
        .await;
    assert_eq!(
        lab.connect_err("10.96.0.10:80"),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(
        lab.table()
            .contains("10.96.0.10 . tcp . 80 : goto reject-traffic"),
        "{}",
        lab.table()
    );
    // The Service goes: nothing of it is left.
    lab.sync(vec![(other, all)]).await;
    assert!(!lab.table().contains("10.96.0.10 "), "{}", lab.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replaces_the_table_and_keeps_connections() {
    let mut lab = lab("pxrestart").await;
    let v4 = ["10.244.1.2"];
    let l = lab.listen(&v4, 8080);
    let s = svc("web", &["10.96.0.10"], 80, Protocol::Tcp, "rr");
    let eps = vec![ep("10.244.1.2", 8080, Protocol::Tcp)];
    lab.sync(vec![(s.clone(), eps.clone())]).await;
    let to: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let mut c = in_netns(&lab.ns.path, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2))
    })
    .unwrap();
    let mut server = None;
    for _ in 0..200 {
        if let Ok((s, _)) = l[0].1.accept() {
            server = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut server = server.expect("accepted");
    server.set_nonblocking(false).unwrap();
    // A new proxy (an agent restart) loads the whole table again.
    let e = env();
    e.registry
        .apply_async(builtin("proxy", "proxy-nftables", Role::ServiceProxy))
        .await
        .unwrap();
    let mut fresh = ServiceProxy::new(
        e.registry.clone(),
        Arc::new(Nft::new(Some(lab.ns.path.clone()))),
        Arc::new(ConntrackTool::default()),
    );
    let mut ctx = common::ctx();
    ctx.cluster_cidrs.push(v6_cluster());
    fresh.set_context(ctx);
    fresh.set_services(vec![(s, eps)]);
    let r = fresh.sync().await;
    assert!(r.full, "{r:?}");
    // The established connection still works both ways.
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    server.read_exact(&mut buf).unwrap();
    server.write_all(b"pong").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_endpoint_that_goes_away_takes_its_conntrack_entries_along() {
    let mut lab = lab("pxudp").await;
    let bind = |a: &str| {
        let sa: SocketAddr = SocketAddr::new(a.parse().unwrap(), 5353);
        let u = in_netns(&lab.ns.path, || UdpSocket::bind(sa)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        u
    };
    let a = bind("10.244.1.2");
    let b = bind("10.244.1.3");
    let client = in_netns(&lab.ns.path, || UdpSocket::bind("10.244.9.9:40000")).unwrap();
    let mut buf = [0u8; 16];
    // Both shapes: backend map elements (random) and endpoint chains (rr).
    let mut installed = vec![];
    for (sched, vip) in [("random", "10.96.0.53"), ("rr", "10.96.0.54")] {
        let s = svc(sched, &[vip], 53, Protocol::Udp, sched);
        let mut all = installed.clone();
        all.push((s.clone(), vec![ep("10.244.1.2", 5353, Protocol::Udp)]));
        lab.sync(all).await;
        let to = format!("{vip}:53");
        client.send_to(b"one", &to).unwrap();
        assert_eq!(a.recv(&mut buf).unwrap(), 3, "{sched}");
        // The endpoint is replaced; the client keeps its source port, so
        // without the cleanup its datagrams would follow the old entry.
        let moved = (s, vec![ep("10.244.1.3", 5353, Protocol::Udp)]);
        let mut all = installed.clone();
        all.push(moved.clone());
        lab.proxy.set_services(all);
        let r = lab.proxy.sync().await;
        assert!(r.conntrack_deleted >= 1, "{sched}: {r:?}");
        client.send_to(b"two", &to).unwrap();
        assert_eq!(
            b.recv(&mut buf).unwrap(),
            3,
            "{sched}: the new endpoint gets the datagram"
        );
        installed.push(moved);
    }
}

/// An operator changes the proxy module's config (rr by default): every
/// Service is rendered again and the table replaced in one transaction,
/// without waiting for each Service to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_change_renders_every_service_again_in_one_table_swap() {
    let mut lab = lab("pxswap").await;
    let v4 = ["10.244.1.2", "10.244.1.3", "10.244.1.4"];
    let eps: Vec<Endpoint> = v4.iter().map(|a| ep(a, 8080, Protocol::Tcp)).collect();
    let mut all = vec![];
    for (name, vip) in [("web", "10.96.0.10"), ("api", "10.96.0.11")] {
        let mut s = svc(name, &[vip], 80, Protocol::Tcp, "");
        s.annotations.clear();
        all.push((s, eps.clone()));
    }
    lab.sync(all.clone()).await;
    assert!(
        lab.table().contains("numgen random mod 3"),
        "{}",
        lab.table()
    );
    let l4 = lab.listen(&v4, 8080);

    let mut spec = builtin("proxy", "proxy-nftables", Role::ServiceProxy);
    spec.config = serde_json::json!({"defaultScheduler": "rr"});
    lab._env.registry.apply_async(spec).await.unwrap();
    lab.proxy.set_services(all.clone());
    let r = lab.proxy.sync().await;
    assert!(r.full && r.rendered == 2 && r.error.is_none(), "{r:?}");
    assert!(lab.proxy.errors().is_empty(), "{:?}", lab.proxy.errors());
    let table = lab.table();
    assert!(
        table.contains("numgen inc mod 3") && !table.contains("numgen random mod 3"),
        "{table}"
    );
    for vip in ["10.96.0.10:80", "10.96.0.11:80"] {
        let c = lab.spread(vip, 9, &l4);
        assert_eq!(
            c.values().copied().collect::<Vec<_>>(),
            vec![3, 3, 3],
            "{vip}: {c:?}"
        );
    }
    // Nothing changed since: nothing to render.
    lab.proxy.set_services(all);
    assert!(!lab.proxy.pending());
}

/// A plan that passes every check of the host but that the kernel refuses
/// does not keep the others out: when the whole table is loaded (here,
/// after a swap to a module that renders one Service so), the refused
/// Service is found and said, the others load and serve, and the refusal
/// counts against the module. Under KeepLastGood (the default) the refused
/// Service keeps the plan the old version made for it, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_the_kernel_refuses_is_isolated_in_a_whole_table_load() {
    let mut lab = lab("pxiso").await;
    let v4 = ["10.244.1.2", "10.244.1.3", "10.244.1.4"];
    let eps: Vec<Endpoint> = v4.iter().map(|a| ep(a, 8080, Protocol::Tcp)).collect();
    let mut web = svc("web", &["10.96.0.10"], 80, Protocol::Tcp, "");
    web.annotations.clear();
    let mut bad = svc("bad", &["10.96.0.11"], 80, Protocol::Tcp, "rr");
    bad.annotations.push((
        "hostile.switchyard.dev/behaviour".into(),
        "deep-chains".into(),
    ));
    let all = vec![(web, eps.clone()), (bad, eps.clone())];
    lab.sync(all.clone()).await;
    let l4 = lab.listen(&v4, 8080);

    lab._env
        .registry
        .apply_async(builtin("proxy", "hostile-proxy", Role::ServiceProxy))
        .await
        .unwrap();
    lab.proxy.set_services(all);
    let r = lab.proxy.sync().await;
    assert!(r.full && r.error.is_none(), "{r:?}");
    let errors = lab.proxy.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (object, e) = errors.iter().next().unwrap();
    assert_eq!(object.name, "bad");
    assert!(
        e.contains("nftables refused its plan") && e.contains("Too many links"),
        "{e}"
    );
    let table = lab.table();
    assert!(
        table.contains("svc-web") && !table.contains("svc-bad") && !table.contains("chain d0"),
        "{table}"
    );
    // The old version's plan for "bad" (rr over its three endpoints).
    let c = lab.spread("10.96.0.11:80", 9, &l4);
    assert_eq!(
        c.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3],
        "{c:?}"
    );
    let status = lab._env.registry.status();
    let s = status.iter().find(|s| s.name == "proxy").unwrap();
    assert!(s.stats.errors >= 1, "{s:?}");
    assert!(
        s.stats
            .last_error
            .as_ref()
            .unwrap()
            .message
            .contains("nftables refused"),
        "{s:?}"
    );
}

/// A change the kernel refuses in a delta, under each failure policy:
/// KeepLastGood keeps the Service's plan before it, FailClosed makes its
/// ports reject, FailOpen withdraws it. Another Service is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delta_gets_what_the_failure_policy_says() {
    let mut lab = lab("pxdelta").await;
    let v4 = ["10.244.1.2", "10.244.1.3", "10.244.1.4"];
    let eps: Vec<Endpoint> = v4.iter().map(|a| ep(a, 8080, Protocol::Tcp)).collect();
    let plain = |name: &str, vip: &str| {
        let mut s = svc(name, &[vip], 80, Protocol::Tcp, "");
        s.annotations.clear();
        s
    };
    for (policy, want) in [
        (FailurePolicy::KeepLastGood, "chain svc-web"),
        (
            FailurePolicy::FailClosed,
            "10.96.0.10 . tcp . 80 : goto reject-traffic",
        ),
        (FailurePolicy::FailOpen, ""),
    ] {
        let mut spec = builtin("proxy", "hostile-proxy", Role::ServiceProxy);
        spec.failure_policy = policy;
        lab._env.registry.apply_async(spec).await.unwrap();
        let good = vec![
            (plain("web", "10.96.0.10"), eps.clone()),
            (plain("api", "10.96.0.12"), eps.clone()),
        ];
        lab.sync(good.clone()).await;
        assert!(!lab.proxy.pending());
        let table = lab.table();
        assert!(table.contains("chain svc-web"), "{policy:?}: {table}");

        // "web" changes into a plan the kernel refuses: a delta.
        let mut deep = good.clone();
        deep[0].0.annotations.push((
            "hostile.switchyard.dev/behaviour".into(),
            "deep-chains".into(),
        ));
        lab.proxy.set_services(deep);
        let r = lab.proxy.sync().await;
        assert!(r.error.is_none(), "{policy:?}: {r:?}");
        let e = &lab.proxy.errors()[&ObjectRef::new(ObjectKind::Service, "default", "web")];
        assert!(
            e.contains("nftables refused the Service's rules") && e.contains("Too many links"),
            "{policy:?}: {e}"
        );
        let table = lab.table();
        assert!(!table.contains("chain d0"), "{policy:?}: {table}");
        assert!(table.contains("chain svc-api"), "{policy:?}: {table}");
        match policy {
            FailurePolicy::FailOpen => assert!(
                !table.contains("chain svc-web") && !table.contains("10.96.0.10 . tcp . 80"),
                "{policy:?}: {table}"
            ),
            _ => assert!(table.contains(want), "{policy:?}: {table}"),
        }
        if policy == FailurePolicy::FailClosed {
            assert!(!table.contains("chain svc-web"), "{policy:?}: {table}");
        }
        // Back to the good plan (under KeepLastGood, already in force).
        lab.proxy.set_services(good);
        let r = lab.proxy.sync().await;
        assert!(r.error.is_none(), "{policy:?}: {r:?}");
        assert!(
            lab.proxy.errors().is_empty(),
            "{policy:?}: {:?}",
            lab.proxy.errors()
        );
        assert!(lab.table().contains("chain svc-web"), "{policy:?}");
    }
}

/// Dispatch borrows the packet mark for a Service's class and gives it
/// back: a connection whose packets carry a mark (set before the proxy's
/// NAT hook, as `SO_MARK` or another table would) reaches its Service and
/// keeps its mark for routing and later hooks; one whose conntrack mark is
/// set keeps that; unmarked traffic stays unmarked. Both families.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_connections_reach_services_and_keep_their_marks() {
    let mut lab = lab("pxmark").await;
    let v4 = ["10.244.1.2", "10.244.1.3", "10.244.1.4"];
    let v6 = ["fd00:10:244:1::2", "fd00:10:244:1::3", "fd00:10:244:1::4"];
    let eps = |port| -> Vec<Endpoint> {
        v4.iter()
            .chain(&v6)
            .map(|a| ep(a, port, Protocol::Tcp))
            .collect()
    };
    let dual = ["10.96.0.10", "fd00:96::10"];
    // Random (a shared class) on 80, 81 and 82.
    lab.sync(vec![
        (svc("plain", &dual, 80, Protocol::Tcp, "random"), eps(8080)),
        (
            svc(
                "marked",
                &["10.96.0.11", "fd00:96::11"],
                81,
                Protocol::Tcp,
                "random",
            ),
            eps(8081),
        ),
        (
            svc(
                "ctmarked",
                &["10.96.0.12", "fd00:96::12"],
                82,
                Protocol::Tcp,
                "random",
            ),
            eps(8082),
        ),
    ])
    .await;
    // Another table marks before the proxy (route type: a changed mark
    // re-routes) and counts what reaches the endpoints after all NAT.
    let rules = r#"
table inet observe {
  counter plain-unmarked { }
  counter marked-kept { }
  counter ctmarked-kept { }
  counter leaked { }
  chain set-marks {
    type route hook output priority -150; policy accept;
    tcp dport 81 meta mark set 0x1234
    tcp dport 82 ct mark set 0x77
  }
  chain seen {
    type filter hook postrouting priority 200; policy accept;
    tcp dport 8080 meta mark 0 ct mark 0 counter name plain-unmarked
    tcp dport 8081 meta mark 0x1234 ct mark 0 counter name marked-kept
    tcp dport 8082 meta mark 0 ct mark 0x77 counter name ctmarked-kept
    tcp dport { 8080, 8081, 8082 } meta mark & 0xffff0000 != 0 counter name leaked
  }
}
"#;
    let path = std::env::temp_dir().join(format!("observe-{}.nft", std::process::id()));
    std::fs::write(&path, rules).unwrap();
    let o = lab.ns.exec(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (port, vips) in [
        (8080, ["10.96.0.10:80", "[fd00:96::10]:80"]),
        (8081, ["10.96.0.11:81", "[fd00:96::11]:81"]),
        (8082, ["10.96.0.12:82", "[fd00:96::12]:82"]),
    ] {
        let l4 = lab.listen(&v4, port);
        let l6 = lab.listen(&v6, port);
        assert_eq!(lab.spread(vips[0], 30, &l4).values().sum::<usize>(), 30);
        assert_eq!(lab.spread(vips[1], 30, &l6).values().sum::<usize>(), 30);
    }
    let packets = |name: &str| -> u64 {
        let o = lab
            .ns
            .exec(&["nft", "list", "counter", "inet", "observe", name]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("counter {name}: {text}"))
    };
    // Each connection sends at least its SYN and its final ACK/FIN.
    for name in ["plain-unmarked", "marked-kept", "ctmarked-kept"] {
        assert!(packets(name) >= 60 * 2, "{name}: {}", packets(name));
    }
    assert_eq!(packets("leaked"), 0, "a class was left in a packet's mark");
}
