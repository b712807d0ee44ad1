//! The node agent's DNS server against dnsmasq and unbound (the nearest
//! peers Debian ships), serving the same records, measured with dnsperf in
//! one run on the same machine:
//! - cluster names: `svc-I.ns-J.svc.cluster.local A` for 10k Services
//!   (each server holds the same 10k names: our zone built from 10k Service
//!   objects; dnsmasq a hosts file; unbound `local-data`);
//! - cached external names: 1000 names of `example.test`, forwarded to one
//!   upstream (a dnsmasq authoritative for them, TTL one hour), each server
//!   warmed first, so every measured query is a cache hit.
//!
//! Every server runs pinned to CPU 1 (`taskset -c 1`: one core each, the
//! same core count; dnsmasq and unbound with one thread), dnsperf on CPU 0.
//! Per server and query set: the throughput (dnsperf at 100 outstanding
//! queries for `SECONDS`), and the latency at a fixed 5000 queries per
//! second (dnsperf `-v`, each response's latency: p50 and p99). Rounds
//! alternate the servers; medians over rounds are reported. Then each
//! server's resident memory holding the 10k names.
//!
//! Everything is on loopback (127.0.0.0/8); nothing forwards anywhere else.
//! Needs dnsperf, dnsmasq and unbound (scripts/setup.sh installs them).
//!
//! Run: `cargo run --release -p switchyard-bench --bin dns_perf [-- ROUNDS SECONDS]`

use serde::Serialize;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::dns::zone::Zone;
use switchyard::dns::{Dns, server};
use switchyard::model::snapshot::Manifests;
use switchyard_bench::{machine, write_results};

const SERVICES: u32 = 10_000;
const NAMESPACES: u32 = 100;
const EXTERNAL: u32 = 1000;
const LATENCY_QPS: u32 = 5000;

fn service_ip(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0x0a60_0000 + i + 1)
}

fn service_name(i: u32) -> String {
    format!("svc-{i}.ns-{}.svc.cluster.local", i % NAMESPACES)
}

fn external_ip(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0xc633_6400 + (i % 250) + 1)
}

/// 10k ClusterIP Services with a named port, as the API server gives them.
fn model() -> Manifests {
    let services = (0..SERVICES)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % NAMESPACES)},
                "spec": {"clusterIP": service_ip(i).to_string(), "clusterIPs": [service_ip(i).to_string()],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
            }))
            .unwrap()
        })
        .collect();
    Manifests {
        services,
        ..Default::default()
    }
}

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

struct Proc {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

fn wait_answers(p: &Proc, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = Command::new("dig")
            .args([
                &format!("@{}", p.addr.ip()),
                "-p",
                &p.addr.port().to_string(),
                "+short",
                "+time=1",
                "+tries=1",
                name,
            ])
            .output();
        if out.is_ok_and(|o| !o.stdout.is_empty()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{} did not answer {name} on {}", p.name, p.addr);
}

fn pinned(cmd: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "1", cmd]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn upstream(dir: &Path) -> Proc {
    let hosts = dir.join("external.hosts");
    let mut f = std::fs::File::create(&hosts).unwrap();
    for i in 0..EXTERNAL {
        writeln!(f, "{} host-{i}.example.test", external_ip(i)).unwrap();
    }
    let ip = "127.0.0.81";
    let port = free_port(ip);
    let child = Command::new("taskset")
        .args(["-c", "0", "dnsmasq"])
        .args(dnsmasq_base(ip, port))
        .args([
            &format!("--addn-hosts={}", hosts.display()),
            "--local=/example.test/",
            "--local-ttl=3600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    let p = Proc {
        name: "upstream",
        child,
        addr: format!("{ip}:{port}").parse().unwrap(),
    };
    wait_answers(&p, "host-1.example.test");
    p
}

fn dnsmasq_base(ip: &str, port: u16) -> Vec<String> {
    [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--except-interface=*",
        "--pid-file=",
        "--user=root",
        "--log-facility=/dev/null",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--listen-address={ip}"), format!("--port={port}")])
    .collect()
}

fn dnsmasq(dir: &Path, up: SocketAddr) -> Proc {
    let hosts = dir.join("cluster.hosts");
    let mut f = std::fs::File::create(&hosts).unwrap();
    for i in 0..SERVICES {
        writeln!(f, "{} {}", service_ip(i), service_name(i)).unwrap();
    }
    let ip = "127.0.0.82";
    let port = free_port(ip);
    let child = pinned("dnsmasq")
        .args(dnsmasq_base(ip, port))
        .args([
            format!("--addn-hosts={}", hosts.display()),
            "--local=/cluster.local/".into(),
            "--local-ttl=5".into(),
            "--cache-size=10000".into(),
            format!("--server=/example.test/{}#{}", up.ip(), up.port()),
        ])
        .spawn()
        .expect("dnsmasq");
    let p = Proc {
        name: "dnsmasq",
        child,
        addr: format!("{ip}:{port}").parse().unwrap(),
    };
    wait_answers(&p, &service_name(1));
    p
}

fn unbound(dir: &Path, up: SocketAddr) -> Proc {
    let ip = "127.0.0.83";
    let port = free_port(ip);
    let conf = dir.join("unbound.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    writeln!(
        f,
        "server:
  interface: {ip}
  port: {port}
  num-threads: 1
  do-daemonize: no
  chroot: \"\"
  username: \"\"
  directory: \"{}\"
  pidfile: \"\"
  use-syslog: no
  logfile: \"\"
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: \"iterator\"
  msg-cache-size: 64m
  rrset-cache-size: 128m
  local-zone: \"cluster.local.\" static
  domain-insecure: \"example.test\"",
        dir.display()
    )
    .unwrap();
    for i in 0..SERVICES {
        writeln!(
            f,
            "  local-data: \"{}. 5 IN A {}\"",
            service_name(i),
            service_ip(i)
        )
        .unwrap();
    }
    writeln!(
        f,
        "forward-zone:\n  name: \"example.test\"\n  forward-addr: {}@{}",
        up.ip(),
        up.port()
    )
    .unwrap();
    drop(f);
    let child = pinned("unbound")
        .args(["-d", "-c"])
        .arg(&conf)
        .spawn()
        .expect("unbound");
    let p = Proc {
        name: "unbound",
        child,
        addr: format!("{ip}:{port}").parse().unwrap(),
    };
    wait_answers(&p, &service_name(1));
    p
}

/// Our server, in a process of its own (`dns_perf serve PORT UPSTREAM`).
fn switchyard(up: SocketAddr) -> Proc {
    let ip = "127.0.0.84";
    let port = free_port(ip);
    let child = pinned(std::env::current_exe().unwrap().to_str().unwrap())
        .args(["serve", &format!("{ip}:{port}"), &up.to_string()])
        .spawn()
        .expect("dns_perf serve");
    let p = Proc {
        name: "switchyard",
        child,
        addr: format!("{ip}:{port}").parse().unwrap(),
    };
    wait_answers(&p, &service_name(1));
    p
}

fn serve(addr: SocketAddr, up: SocketAddr) {
    // One core: one worker thread, as the peers have one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dns = Arc::new(Dns::new(
            Zone::build(&model(), "cluster.local"),
            vec![up],
            10_000,
        ));
        let b = server::bind(addr).unwrap();
        server::serve(dns, vec![b], std::future::pending()).await;
    });
}

#[derive(Debug, Clone, Default, Serialize)]
struct Measure {
    qps: f64,
    p50_us: f64,
    p99_us: f64,
    lost: u64,
}

fn dnsperf(addr: SocketAddr, data: &Path, extra: &[&str]) -> String {
    let out = Command::new("taskset")
        .args(["-c", "0", "dnsperf"])
        .args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(data)
        .args(extra)
        .output()
        .expect("dnsperf");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(out: &str, label: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn measure(addr: SocketAddr, data: &Path, seconds: u32) -> Measure {
    let t = dnsperf(
        addr,
        data,
        &["-l", &seconds.to_string(), "-c", "4", "-q", "100"],
    );
    let lost = field(&t, "Queries lost:") as u64;
    // Latency at a fixed rate, every response's time.
    let v = dnsperf(
        addr,
        data,
        &["-l", "3", "-Q", &LATENCY_QPS.to_string(), "-c", "4", "-v"],
    );
    let mut lat: Vec<f64> = v
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
            * 1e6
    };
    Measure {
        qps: field(&t, "Queries per second:"),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        lost,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

#[derive(Serialize)]
struct Row {
    server: String,
    queries: String,
    rounds: Vec<Measure>,
    median_qps: f64,
    median_p50_us: f64,
    median_p99_us: f64,
}

#[derive(Serialize)]
struct Report {
    machine: switchyard_bench::Machine,
    services: u32,
    external_names: u32,
    seconds: u32,
    latency_qps: u32,
    rows: Vec<Row>,
    rss_kib: Vec<(String, u64)>,
    zone_build_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(args[2].parse()?, args[3].parse()?);
        return Ok(());
    }
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let seconds: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir()?;
    let cluster: PathBuf = dir.path().join("cluster.queries");
    let mut f = std::fs::File::create(&cluster)?;
    // A fixed shuffle of every name, so no server sees one name in a row.
    for k in 0..SERVICES {
        let i = (k as u64 * 7919 % SERVICES as u64) as u32;
        writeln!(f, "{} A", service_name(i))?;
    }
    let external = dir.path().join("external.queries");
    let mut f = std::fs::File::create(&external)?;
    for k in 0..EXTERNAL {
        writeln!(f, "host-{}.example.test A", k * 37 % EXTERNAL)?;
    }
    let t = Instant::now();
    let zone = Zone::build(&model(), "cluster.local");
    let zone_build_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(zone.names.len() as u32, 2 * SERVICES + 1);
    drop(zone);

    let up = upstream(dir.path());
    let servers = vec![
        switchyard(up.addr),
        dnsmasq(dir.path(), up.addr),
        unbound(dir.path(), up.addr),
    ];
    // Warm every cache with the external names (one pass), and check that
    // every server answers every name.
    for s in &servers {
        let out = dnsperf(s.addr, &external, &["-n", "1"]);
        assert_eq!(
            field(&out, "Queries completed:") as u32,
            EXTERNAL,
            "{}: {out}",
            s.name
        );
        let out = dnsperf(s.addr, &cluster, &["-n", "1"]);
        assert_eq!(
            field(&out, "Queries completed:") as u32,
            SERVICES,
            "{}: {out}",
            s.name
        );
        assert!(out.contains("NOERROR 10000"), "{}: {out}", s.name);
    }
    let mut results: Vec<(String, String, Vec<Measure>)> = vec![];
    for s in &servers {
        for q in ["cluster", "external"] {
            results.push((s.name.to_string(), q.to_string(), vec![]));
        }
    }
    for round in 0..rounds {
        for (i, s) in servers.iter().enumerate() {
            for (j, data) in [&cluster, &external].iter().enumerate() {
                let m = measure(s.addr, data, seconds);
                eprintln!("round {round}: {} {}: {m:?}", s.name, results[i * 2 + j].1);
                results[i * 2 + j].2.push(m);
            }
        }
    }
    let rss_kib: Vec<(String, u64)> = servers
        .iter()
        .map(|s| (s.name.to_string(), s.rss_kib()))
        .collect();
    println!(
        "\nDNS: {SERVICES} Services (cluster names) and {EXTERNAL} cached external names, {rounds} rounds of {seconds} s, one core per server"
    );
    println!(
        "{:<12} {:<9} {:>12} {:>10} {:>10}",
        "server", "queries", "qps (med)", "p50 us", "p99 us"
    );
    let mut rows = vec![];
    for (server, queries, ms) in results {
        let row = Row {
            median_qps: median(ms.iter().map(|m| m.qps).collect()),
            median_p50_us: median(ms.iter().map(|m| m.p50_us).collect()),
            median_p99_us: median(ms.iter().map(|m| m.p99_us).collect()),
            server,
            queries,
            rounds: ms,
        };
        println!(
            "{:<12} {:<9} {:>12.0} {:>10.1} {:>10.1}",
            row.server, row.queries, row.median_qps, row.median_p50_us, row.median_p99_us
        );
        rows.push(row);
    }
    println!("resident memory holding {SERVICES} names:");
    for (n, k) in &rss_kib {
        println!("  {n:<12} {:.1} MiB", *k as f64 / 1024.0);
    }
    println!("zone built from {SERVICES} Services in {zone_build_ms:.1} ms");
    write_results(
        "dns-perf",
        &Report {
            machine: machine(),
            services: SERVICES,
            external_names: EXTERNAL,
            seconds,
            latency_qps: LATENCY_QPS,
            rows,
            rss_kib,
            zone_build_ms,
        },
    )
}
