//! The node's DNS server on loopback, asked with `dig` (Debian
//! `bind9-dnsutils`) and with raw packets: cluster names from a model,
//! other names forwarded to a `dnsmasq` of the test's own on loopback
//! (authoritative for `example.test`, forwarding nowhere), the cache,
//! truncation and TCP, malformed queries, a forwarding loop. Every query is
//! bounded by dig's `+time`/`+tries` or a socket timeout.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::dns::zone::Zone;
use switchyard::dns::{Dns, Source, server};
use switchyard::model::snapshot::Manifests;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml::from_str(s).unwrap()
}

/// A Service `web` (dual stack, a named port), a headless `many` with
/// `endpoints` ready endpoints, an ExternalName and a pod.
fn model(endpoints: usize) -> Manifests {
    let addresses: Vec<String> = (0..endpoints)
        .map(|i| format!("  - addresses: [10.244.{}.{}]\n", i / 200, 1 + i % 200))
        .collect();
    Manifests {
        services: vec![
            yaml::<Service>(
                "metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.30, clusterIPs: [10.96.0.30, 'fd00:96::30'], ports: [{name: http, port: 8080}]}",
            ),
            yaml(
                "metadata: {name: many, namespace: shop}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}",
            ),
            yaml(
                "metadata: {name: docs, namespace: shop}
spec: {type: ExternalName, externalName: www.example.test}",
            ),
        ],
        endpoint_slices: vec![yaml::<EndpointSlice>(&format!(
            "metadata: {{name: many-1, namespace: shop, labels: {{kubernetes.io/service-name: many}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints:
{}",
            addresses.concat()
        ))],
        pods: vec![Arc::new(yaml::<Pod>(
            "metadata: {name: client, namespace: shop}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 10.244.7.9}]}",
        ))],
        ..Default::default()
    }
}

/// A free loopback port for UDP and TCP alike.
fn free_port(ip: &str) -> u16 {
    for _ in 0..50 {
        let u = UdpSocket::bind(format!("{ip}:0")).unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(format!("{ip}:{port}")).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// dnsmasq on loopback: authoritative-only for example.test.
struct Upstream {
    child: Child,
    addr: SocketAddr,
}

impl Upstream {
    fn start() -> Upstream {
        let ip = "127.0.0.77";
        let port = free_port(ip);
        let mut child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--except-interface=*",
                &format!("--listen-address={ip}"),
                &format!("--port={port}"),
                "--local=/example.test/",
                "--local-ttl=60",
                "--host-record=www.example.test,198.51.100.7",
                "--txt-record=example.test,hello",
                "--log-facility=-",
                "--pid-file=",
                "--user=root",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian dnsmasq-base) must be installed");
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if dig(addr, &["+short", "www.example.test"]).contains("198.51.100.7") {
                return Upstream { child, addr };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("dnsmasq did not answer on {addr}");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our server on loopback, on a runtime of its own.
struct Server {
    dns: Arc<Dns>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn start(ip: &str, zone: Zone, upstreams: Vec<SocketAddr>) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dns = Arc::new(Dns::new(zone, upstreams, 1000));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let addr = {
            let _guard = rt.enter();
            let b = server::bind(format!("{ip}:0").parse().unwrap()).unwrap();
            let addr = b.addr;
            rt.spawn(server::serve(dns.clone(), vec![b], async move {
                let _ = rx.await;
            }));
            addr
        };
        Server {
            dns,
            addr,
            stop: Some(tx),
            rt: Some(rt),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// `dig @addr ARGS`, one try of two seconds.
fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (Debian bind9-dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no answer)")
}

fn short(addr: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = dig(addr, &[&["+short"], args].concat())
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn cluster_names_are_answered_from_the_model_over_udp_and_tcp() {
    let s = Server::start("127.0.0.1", Zone::build(&model(3), "cluster.local"), vec![]);
    let a = s.addr;
    assert_eq!(short(a, &["web.shop.svc.cluster.local"]), ["10.96.0.30"]);
    assert_eq!(
        short(a, &["web.shop.svc.cluster.local", "AAAA"]),
        ["fd00:96::30"]
    );
    assert_eq!(
        short(a, &["+tcp", "web.shop.svc.cluster.local", "AAAA"]),
        ["fd00:96::30"]
    );
    assert_eq!(
        short(a, &["_http._tcp.web.shop.svc.cluster.local", "SRV"]),
        ["0 100 8080 web.shop.svc.cluster.local."]
    );
    assert_eq!(
        short(a, &["many.shop.svc.cluster.local"]),
        ["10.244.0.1", "10.244.0.2", "10.244.0.3"]
    );
    assert_eq!(
        short(a, &["-x", "10.96.0.30"]),
        ["web.shop.svc.cluster.local."]
    );
    assert_eq!(
        short(a, &["-x", "fd00:96::30"]),
        ["web.shop.svc.cluster.local."]
    );
    assert_eq!(
        short(a, &["-x", "10.244.7.9"]),
        ["10-244-7-9.shop.pod.cluster.local."]
    );
    assert_eq!(
        short(a, &["10-244-7-9.shop.pod.cluster.local"]),
        ["10.244.7.9"]
    );
    assert_eq!(
        short(a, &["docs.shop.svc.cluster.local"]),
        ["www.example.test."]
    );
    // NXDOMAIN and NODATA, both with the zone's SOA, authoritative.
    let nx = dig(a, &["nope.shop.svc.cluster.local"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(nx.contains(" aa "), "{nx}");
    assert!(
        nx.contains("IN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local."),
        "{nx}"
    );
    let nodata = dig(a, &["web.shop.svc.cluster.local", "MX"]);
    assert_eq!(status(&nodata), "NOERROR", "{nodata}");
    assert!(
        nodata.contains("ANSWER: 0") && nodata.contains("SOA"),
        "{nodata}"
    );
    // A Service change is served as soon as the zone is swapped.
    let mut m = model(3);
    m.services.push(yaml(
        "metadata: {name: late, namespace: shop}
spec: {clusterIP: 10.96.0.31}",
    ));
    s.dns.set_zone(Zone::build(&m, "cluster.local"));
    assert_eq!(short(a, &["late.shop.svc.cluster.local"]), ["10.96.0.31"]);
    let recent = s.dns.recent();
    assert!(
        recent.iter().all(|q| q.source == Source::Zone),
        "{recent:?}"
    );
}

#[test]
fn other_names_are_forwarded_and_cached() {
    let up = Upstream::start();
    let s = Server::start(
        "127.0.0.1",
        Zone::build(&model(1), "cluster.local"),
        vec![up.addr],
    );
    assert_eq!(short(s.addr, &["www.example.test"]), ["198.51.100.7"]);
    assert_eq!(short(s.addr, &["WWW.Example.test"]), ["198.51.100.7"]);
    assert_eq!(short(s.addr, &["example.test", "TXT"]), ["\"hello\""]);
    let sources: Vec<Source> = s.dns.recent().iter().map(|q| q.source).collect();
    assert_eq!(sources, [Source::Upstream, Source::Cache, Source::Upstream]);
    assert_eq!(s.dns.recent()[0].upstream, Some(up.addr));
    // The upstream's NXDOMAIN is passed on.
    let nx = dig(s.addr, &["nothing.example.test"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    let mut metrics = String::new();
    s.dns.metrics.render(&mut metrics);
    assert!(
        metrics.contains("switchyard_dns_cache_hits_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_dns_upstream_seconds_count 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_dns_responses_total{rcode=\"NXDOMAIN\"} 1"),
        "{metrics}"
    );
    // No upstream answering: SERVFAIL, within the deadline.
    drop(up);
    let t = Instant::now();
    let fail = dig(s.addr, &["+time=5", "other.example.test"]);
    assert_eq!(status(&fail), "SERVFAIL", "{fail}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[test]
fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let s = Server::start(
        "127.0.0.1",
        Zone::build(&model(120), "cluster.local"),
        vec![],
    );
    let udp = dig(
        s.addr,
        &["+noedns", "+ignore", "many.shop.svc.cluster.local"],
    );
    assert!(udp.contains("flags: qr aa tc rd ra"), "{udp}");
    assert_eq!(
        short(s.addr, &["+tcp", "many.shop.svc.cluster.local"]).len(),
        120
    );
    // dig falls back to TCP by itself after a truncated answer.
    assert_eq!(
        short(s.addr, &["+noedns", "many.shop.svc.cluster.local"]).len(),
        120
    );
}

/// Send `packet` and wait up to a second for an answer.
fn raw(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    u.send_to(packet, addr).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = u.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// A query header (ID 0xbeef, RD, one question) and a question whose name
/// is `labels` raw.
fn query_with(labels: &[u8]) -> Vec<u8> {
    let mut p = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(labels);
    p.extend_from_slice(&[0, 1, 0, 1]);
    p
}

fn rcode(answer: &[u8]) -> u8 {
    answer[3] & 0x0f
}

#[test]
fn malformed_queries_get_formerr_and_the_server_keeps_serving() {
    let s = Server::start("127.0.0.1", Zone::build(&model(1), "cluster.local"), vec![]);
    // A question count with no question.
    let a = raw(s.addr, &[0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]).expect("an answer");
    assert_eq!((a[0], a[1], a[2] & 0x80, rcode(&a)), (0xbe, 0xef, 0x80, 1));
    // A label of 64 bytes (its length byte is not a length).
    let mut long_label = vec![64u8];
    long_label.extend([b'a'; 64]);
    long_label.push(0);
    assert_eq!(rcode(&raw(s.addr, &query_with(&long_label)).unwrap()), 1);
    // A name of more than 255 bytes: five labels of 60.
    let mut long_name = vec![];
    for _ in 0..5 {
        long_name.push(60u8);
        long_name.extend([b'b'; 60]);
    }
    long_name.push(0);
    assert_eq!(rcode(&raw(s.addr, &query_with(&long_name)).unwrap()), 1);
    // A compression pointer to itself.
    assert_eq!(rcode(&raw(s.addr, &query_with(&[0xc0, 12])).unwrap()), 1);
    // A response is never answered; nor are a few stray bytes.
    let mut response = query_with(&[0]);
    response[2] |= 0x80;
    assert!(raw(s.addr, &response).is_none());
    assert!(raw(s.addr, &[1, 2, 3]).is_none());
    // An unknown opcode: NOTIMP. Class CHAOS: REFUSED.
    let mut notify = query_with(&[0]);
    notify[2] = 4 << 3;
    assert_eq!(rcode(&raw(s.addr, &notify).unwrap()), 4);
    let chaos = dig(s.addr, &["version.bind", "TXT", "CH"]);
    assert_eq!(status(&chaos), "REFUSED", "{chaos}");
    // Still serving.
    assert_eq!(
        short(s.addr, &["web.shop.svc.cluster.local"]),
        ["10.96.0.30"]
    );
    let mut metrics = String::new();
    s.dns.metrics.render(&mut metrics);
    assert!(
        metrics.contains("switchyard_dns_malformed_total 6"),
        "{metrics}"
    );
}

#[test]
fn a_forwarding_loop_is_found_and_stops_forwarding() {
    // Two servers, each the other's upstream.
    let a = Server::start("127.0.0.1", Zone::build(&model(1), "cluster.local"), vec![]);
    let b = Server::start(
        "127.0.0.1",
        Zone::build(&model(1), "cluster.local"),
        vec![a.addr],
    );
    a.dns.set_upstreams(vec![b.addr]);
    let found = a.rt.as_ref().unwrap().block_on(a.dns.check_loop());
    assert!(found, "the probe came back");
    assert!(a.dns.looping());
    let t = Instant::now();
    let out = dig(a.addr, &["www.example.test"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answered at once: {:?}",
        t.elapsed()
    );
    // Cluster names are still answered.
    assert_eq!(
        short(a.addr, &["web.shop.svc.cluster.local"]),
        ["10.96.0.30"]
    );
    // An upstream that is the server itself is refused outright.
    let problems = a.dns.set_upstreams(vec![a.addr]);
    assert!(problems[0].contains("a forwarding loop"), "{problems:?}");
    assert!(a.dns.upstreams().is_empty());
}
