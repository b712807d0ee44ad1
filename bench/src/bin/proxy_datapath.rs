//! Datapath: TCP connection set-up latency to a ClusterIP with 1k and 10k
//! Services (10 endpoints each), side by side in one run with:
//! - a direct connection to a pod address, with no rules at all (so no
//!   conntrack either): the limit;
//! - a linear rule set in the style of kube-proxy's iptables mode, built here
//!   with nftables: one rule per Service in a NAT output chain
//!   (`ip daddr VIP tcp dport 80 jump svc-I`), and per Service a chain that
//!   picks one of its 10 endpoints with iptables' probability cascade
//!   (`-m statistic --mode random --probability 1/10`, then 1/9, ..., the
//!   last endpoint unconditionally);
//! - one DNAT rule that picks one of 10 endpoints (`numgen random` map): what
//!   any NAT-based proxy pays for conntrack and NAT, without a lookup;
//! - a direct connection with connection tracking on (one `ct state` rule,
//!   no NAT): what conntrack alone costs;
//! - a direct connection to a pod address from ours' namespace: what a
//!   connection that bypasses the Service costs on a node running the proxy
//!   (conntrack on, the proxy's hooks run and find no Service).
//!
//! Ours is the real thing: `ServiceProxy` with the builtin `proxy-nftables`
//! module, loaded with a full sync through libnftables.
//!
//! Topology (every namespace created here, deleted at the end; nothing is
//! added to the machine's own namespace and no packet leaves the machine):
//! a server namespace with a bridge holding the 10 pod addresses
//! 10.200.0.1-10 and a listener on 0.0.0.0:8080 that accepts and closes;
//! five client namespaces (`direct`, `ours`, `linear`, `nat1`, `ct`), each
//! plugged into the bridge with a veth, addresses 10.200.0.101-105, a route
//! for the Service range 10.96.0.0/12 through 10.200.0.1 and permanent
//! neighbour entries (no ARP during the run). The process itself lives in `ours`, as
//! the agent lives in its node's namespace; each client namespace has a
//! thread of its own that entered it and makes the connections.
//!
//! A sample is one `connect()` on a fresh blocking socket, from the call to
//! its return with the connection established (the SYN-ACK processed). The
//! socket is closed with `SO_LINGER` 0 (a RST, no TIME_WAIT), and the next
//! connection waits until the server has accepted this one. Variants are
//! interleaved connection by connection, in an order shuffled every round,
//! so drift on the shared machine hits them all alike. The server counts
//! connections by client and pod address, which checks that each NAT
//! variant spreads over all 10 endpoints. Needs root.
//!
//! Run: `cargo run --release -p switchyard-bench --bin proxy_datapath
//! [-- [--rounds N] SIZES]`

use anyhow::{Context, ensure};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::datapath::conntrack::ConntrackTool;
use switchyard::datapath::nft::Nft;
use switchyard::proxy::ServiceProxy;
use switchyard_bench::netns::{enter, remove_stale, run};
use switchyard_bench::proxy_input::{self, POD_PORT, SERVICE_PORT, object, service};
use switchyard_bench::tcp::{self, Client};
use switchyard_bench::{Summary, header, machine, write_results};

const DEFAULT_SIZES: [u32; 2] = [1000, 10_000];
const DEFAULT_ROUNDS: usize = 5000;
const WARMUP: usize = 300;
const ENDPOINTS: u32 = 10;
const NS_PREFIX: &str = "sy-bench-dp-";
/// First Service address: Service `i` is `VIP_BASE + i`, in 10.96.0.0/12.
const VIP_BASE: u32 = 0x0a60_0001;
const BRIDGE_MAC: &str = "02:5b:00:00:00:01";
/// Client namespaces, in order; client `k` is 10.200.0.(101 + k).
const CLIENTS: [&str; 5] = ["direct", "ours", "linear", "nat1", "ct"];
const DIRECT: usize = 0;
const OURS: usize = 1;
const LINEAR: usize = 2;
const NAT1: usize = 3;
const CT: usize = 4;

fn pod(k: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 1 + k as u8)
}

fn client_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 101 + k as u8)
}

fn client_mac(k: usize) -> String {
    format!("02:5b:00:00:01:{:02x}", k + 1)
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(VIP_BASE + i)
}

// ---- the real proxy's input ----

/// Every Service has the same 10 endpoints: the 10 pod addresses.
fn endpoints() -> Vec<Endpoint> {
    (0..ENDPOINTS)
        .map(|k| proxy_input::endpoint(pod(k)))
        .collect()
}

// ---- the comparison rule sets ----

/// kube-proxy iptables mode's shape in nftables: a linear walk over one rule
/// per Service, then a probability cascade over the endpoints.
fn linear_script(n: u32) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(n as usize * 700);
    s.push_str("table ip bench-linear {}\ndelete table ip bench-linear\ntable ip bench-linear {\n");
    for i in 0..n {
        let _ = writeln!(s, "  chain svc-{i} {{");
        for k in 0..ENDPOINTS - 1 {
            // iptables: -m statistic --mode random --probability 1/(10-k)
            let _ = writeln!(
                s,
                "    numgen random mod {} == 0 meta l4proto tcp dnat to {}:{POD_PORT}",
                ENDPOINTS - k,
                pod(k)
            );
        }
        let _ = writeln!(
            s,
            "    meta l4proto tcp dnat to {}:{POD_PORT}\n  }}",
            pod(ENDPOINTS - 1)
        );
    }
    s.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "    ip daddr {} tcp dport {SERVICE_PORT} jump svc-{i}",
            vip(i)
        );
    }
    s.push_str("  }\n}\n");
    s
}

/// One rule: conntrack and NAT, no lookup.
fn nat1_script() -> String {
    let map: Vec<String> = (0..ENDPOINTS)
        .map(|k| format!("{k} : {}", pod(k)))
        .collect();
    format!(
        "table ip bench-nat1 {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    \
         ip daddr {} tcp dport {SERVICE_PORT} dnat to numgen random mod {ENDPOINTS} map {{ {} }} : {POD_PORT}\n  }}\n}}\n",
        vip(0),
        map.join(", ")
    )
}

/// Connection tracking on, no NAT: what conntrack alone costs.
fn ct_script() -> String {
    "table ip bench-ct {\n  chain output {\n    type filter hook output priority 0; policy accept;\n    \
     ct state new counter\n  }\n}\n"
        .into()
}

// ---- namespaces ----

fn nft_file(ns: &str, script: &str) -> anyhow::Result<()> {
    let mut f = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(&mut f, script.as_bytes())?;
    let path = f.path().to_string_lossy().into_owned();
    run(&["ip", "netns", "exec", ns, "nft", "-f", &path])?;
    Ok(())
}

/// The namespaces of this run; deleted on drop (an error or a panic
/// included).
struct Lab {
    server: String,
    clients: Vec<String>,
}

impl Lab {
    fn create() -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let mut lab = Lab {
            server: format!("{NS_PREFIX}{pid}-server"),
            clients: vec![],
        };
        run(&["ip", "netns", "add", &lab.server])?;
        for c in CLIENTS {
            let name = format!("{NS_PREFIX}{pid}-{c}");
            run(&["ip", "netns", "add", &name])?;
            lab.clients.push(name);
        }
        lab.wire()?;
        Ok(lab)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let srv = self.server.as_str();
        for ns in std::iter::once(srv).chain(self.clients.iter().map(String::as_str)) {
            // No IPv6 chatter (router solicitations, DAD) during the run.
            run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.ip_local_port_range=1024 65535",
            ])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        run(&[
            "ip", "-n", srv, "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge",
        ])?;
        run(&["ip", "-n", srv, "link", "set", "br0", "up"])?;
        for k in 0..ENDPOINTS {
            run(&[
                "ip",
                "-n",
                srv,
                "addr",
                "add",
                &format!("{}/24", pod(k)),
                "dev",
                "br0",
            ])?;
        }
        for (k, c) in self.clients.iter().enumerate() {
            let port = format!("port{k}");
            let mac = client_mac(k);
            run(&[
                "ip", "-n", srv, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "address", &mac, "netns", c,
            ])?;
            run(&["ip", "-n", srv, "link", "set", &port, "master", "br0", "up"])?;
            run(&[
                "ip", "netns", "exec", srv, "bridge", "fdb", "replace", &mac, "dev", &port,
                "master", "static",
            ])?;
            run(&[
                "ip",
                "-n",
                srv,
                "neigh",
                "replace",
                &client_ip(k).to_string(),
                "lladdr",
                &mac,
                "dev",
                "br0",
                "nud",
                "permanent",
            ])?;
            run(&[
                "ip",
                "-n",
                c,
                "addr",
                "add",
                &format!("{}/24", client_ip(k)),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", c, "link", "set", "eth0", "up"])?;
            run(&[
                "ip",
                "-n",
                c,
                "route",
                "add",
                "10.96.0.0/12",
                "via",
                &pod(0).to_string(),
            ])?;
            for p in 0..ENDPOINTS {
                run(&[
                    "ip",
                    "-n",
                    c,
                    "neigh",
                    "replace",
                    &pod(p).to_string(),
                    "lladdr",
                    BRIDGE_MAC,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.clients.iter().chain(std::iter::once(&self.server)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

// ---- server and clients ----

/// Accepted connections by (client address, pod address).
type Seen = Arc<Mutex<HashMap<(Ipv4Addr, Ipv4Addr), u64>>>;

struct Server {
    seen: Seen,
    total: Arc<AtomicU64>,
}

impl Server {
    fn start(ns: &str) -> anyhow::Result<Server> {
        let seen: Seen = Arc::default();
        let total = Arc::new(AtomicU64::new(0));
        let (s, t) = (seen.clone(), total.clone());
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, POD_PORT);
        tcp::serve_in(ns, any, move |conn, peer| {
            if let (Ok(local), IpAddr::V4(p)) = (conn.local_addr(), peer.ip())
                && let IpAddr::V4(l) = local.ip()
            {
                *s.lock().unwrap().entry((p, l)).or_default() += 1;
            }
            t.fetch_add(1, Ordering::Release);
        })?;
        Ok(Server { seen, total })
    }

    /// Wait until the server has accepted `n` connections in all.
    fn wait_for(&self, n: u64) -> anyhow::Result<()> {
        tcp::wait_for(&self.total, n)
    }

    fn snapshot(&self) -> HashMap<(Ipv4Addr, Ipv4Addr), u64> {
        self.seen.lock().unwrap().clone()
    }
}

// ---- measurement ----

struct Variant {
    key: &'static str,
    label: &'static str,
    client: usize,
    /// `None`: the pods in turn.
    service: Option<u32>,
}

fn variants(n: u32) -> Vec<Variant> {
    let (last, mid) = (Some(n - 1), Some(n / 2));
    vec![
        Variant {
            key: "direct",
            label: "direct to a pod address (no rules)",
            client: DIRECT,
            service: None,
        },
        Variant {
            key: "direct_on_proxy_node",
            label: "direct to a pod address from ours' namespace",
            client: OURS,
            service: None,
        },
        Variant {
            key: "ours_last",
            label: "ours, ClusterIP of the last Service",
            client: OURS,
            service: last,
        },
        Variant {
            key: "ours_middle",
            label: "ours, ClusterIP of the middle Service",
            client: OURS,
            service: mid,
        },
        Variant {
            key: "linear_last",
            label: "linear, ClusterIP of the last Service",
            client: LINEAR,
            service: last,
        },
        Variant {
            key: "linear_middle",
            label: "linear, ClusterIP of the middle Service",
            client: LINEAR,
            service: mid,
        },
        Variant {
            key: "nat1",
            label: "one DNAT rule (conntrack + NAT floor)",
            client: NAT1,
            service: Some(0),
        },
        Variant {
            key: "conntrack_only",
            label: "direct to a pod address, conntrack on",
            client: CT,
            service: None,
        },
    ]
}

#[derive(Serialize)]
struct Ratio {
    p50: f64,
    p90: f64,
    p99: f64,
}

#[derive(Serialize)]
struct SizeResult {
    services: u32,
    endpoints_per_service: u32,
    ours_full_sync_ms: f64,
    ours_render_ms: f64,
    ours_apply_ms: f64,
    ours_script_mib: f64,
    linear_rules: u32,
    linear_load_ms: f64,
    /// Direct, ours (last, middle Service), linear (last, middle), one DNAT
    /// rule, conntrack only.
    connect: Vec<Summary>,
    /// Each variant's percentile over direct's.
    vs_direct: BTreeMap<String, Ratio>,
    /// Ours (last Service) over a direct connection from the same namespace.
    ours_vs_direct_on_proxy_node: Ratio,
    /// Connections the server saw per pod address (10.200.0.1-10), by
    /// client namespace: the spread of the load balancing.
    per_pod: BTreeMap<String, Vec<u64>>,
    /// `conntrack -C` in each client namespace after the run (0: conntrack
    /// never ran there).
    conntrack_entries: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Results {
    machine: switchyard_bench::Machine,
    libnftables: bool,
    rounds: usize,
    warmup: usize,
    sizes: Vec<SizeResult>,
}

struct Bench<'a> {
    lab: &'a Lab,
    clients: Vec<Client>,
    server: Server,
    made: u64,
}

impl Bench<'_> {
    fn target(&self, v: &Variant, round: usize) -> SocketAddrV4 {
        match v.service {
            Some(i) => SocketAddrV4::new(vip(i), SERVICE_PORT),
            None => SocketAddrV4::new(pod(round as u32 % ENDPOINTS), POD_PORT),
        }
    }

    fn connect(&mut self, v: &Variant, round: usize) -> anyhow::Result<Duration> {
        let to = self.target(v, round);
        let d = self.clients[v.client]
            .connect(to, Duration::from_secs(1))?
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} ({})", v.label, self.lab.clients[v.client]))?;
        self.made += 1;
        // The server's accept runs on another thread: let it finish, so it
        // does not compete with the next connection (whichever variant).
        self.server.wait_for(self.made)?;
        Ok(d)
    }

    /// Interleaved: every round makes one connection of each variant, in
    /// an order shuffled afresh each round (a fixed order gives each variant
    /// a fixed predecessor, and whether the previous connection came from
    /// the same thread shows in the time).
    fn measure(
        &mut self,
        vs: &[Variant],
        rounds: usize,
        warmup: usize,
    ) -> anyhow::Result<Vec<Vec<Duration>>> {
        let mut out = vec![Vec::with_capacity(rounds); vs.len()];
        let mut order: Vec<usize> = (0..vs.len()).collect();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for r in 0..warmup + rounds {
            for j in (1..order.len()).rev() {
                // xorshift64: a fixed seed, so runs shuffle alike.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                order.swap(j, (rng % (j as u64 + 1)) as usize);
            }
            for &v in &order {
                let d = self.connect(&vs[v], r)?;
                if r >= warmup {
                    out[v].push(d);
                }
            }
        }
        Ok(out)
    }
}

fn spread(
    before: &HashMap<(Ipv4Addr, Ipv4Addr), u64>,
    after: &HashMap<(Ipv4Addr, Ipv4Addr), u64>,
) -> BTreeMap<String, Vec<u64>> {
    CLIENTS
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let counts = (0..ENDPOINTS)
                .map(|p| {
                    let key = (client_ip(c), pod(p));
                    after.get(&key).unwrap_or(&0) - before.get(&key).unwrap_or(&0)
                })
                .collect();
            (name.to_string(), counts)
        })
        .collect()
}

fn bench(lab: &Lab, sizes: &[u32], rounds: usize) -> anyhow::Result<Results> {
    let server = Server::start(&lab.server)?;
    let clients = lab
        .clients
        .iter()
        .map(|c| Client::start(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut b = Bench {
        lab,
        clients,
        server,
        made: 0,
    };
    nft_file(&lab.clients[NAT1], &nat1_script())?;
    nft_file(&lab.clients[CT], &ct_script())?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let registry = rt.block_on(proxy_input::registry())?;
    // The process is in the `ours` namespace: libnftables programs it.
    let nft = Arc::new(Nft::new(None));
    let in_process = nft.in_process();

    let mut out = vec![];
    for &n in sizes {
        // Ours: a full sync of N Services, as the agent does at start.
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "switchyard-proxy"])
            .stderr(std::process::Stdio::null())
            .status();
        let mut proxy = ServiceProxy::new(
            registry.clone(),
            nft.clone(),
            Arc::new(ConntrackTool::default()),
        );
        proxy.set_context(proxy_input::node_context());
        let eps = endpoints();
        for i in 0..n {
            proxy.update(object(i), Some((service(i, vip(i)), eps.clone())));
        }
        let t = Instant::now();
        let full = rt.block_on(proxy.sync());
        let sync_ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            full.full && full.error.is_none() && proxy.errors().is_empty(),
            "full sync: {full:?} {:?}",
            proxy.errors()
        );
        // Linear: the same Services as an iptables-style rule set.
        let script = linear_script(n);
        let t = Instant::now();
        nft_file(&lab.clients[LINEAR], &script)?;
        let linear_ms = t.elapsed().as_secs_f64() * 1e3;
        let linear_rules = n * (1 + ENDPOINTS);
        println!(
            "\n{n} Services x {ENDPOINTS} endpoints: ours loaded by a full sync in {sync_ms:.0} ms \
             (render {:.0} ms, apply {:.0} ms, {:.1} MiB of nft text); linear: {linear_rules} rules \
             ({:.1} MiB) loaded by nft -f in {linear_ms:.0} ms",
            full.render.as_secs_f64() * 1e3,
            full.apply.as_secs_f64() * 1e3,
            full.script_bytes as f64 / (1 << 20) as f64,
            script.len() as f64 / (1 << 20) as f64
        );

        let vs = variants(n);
        // Each path works before anything is timed.
        for v in &vs {
            b.connect(v, 0)?;
        }
        b.server.wait_for(b.made)?;
        let before = b.server.snapshot();
        let samples = b.measure(&vs, rounds, WARMUP)?;
        b.server.wait_for(b.made)?;
        let per_pod = spread(&before, &b.server.snapshot());

        let connect: Vec<Summary> = vs
            .iter()
            .zip(samples)
            .map(|(v, s)| Summary::of(&format!("{n} Services: {}", v.label), s))
            .collect();
        let direct = &connect[0];
        let vs_direct: BTreeMap<String, Ratio> = vs
            .iter()
            .zip(&connect)
            .skip(1)
            .map(|(v, s)| {
                (
                    v.key.to_string(),
                    Ratio {
                        p50: s.p50_us / direct.p50_us,
                        p90: s.p90_us / direct.p90_us,
                        p99: s.p99_us / direct.p99_us,
                    },
                )
            })
            .collect();
        let on_node = |key: &str| &connect[vs.iter().position(|v| v.key == key).expect("variant")];
        let (ours, node) = (on_node("ours_last"), on_node("direct_on_proxy_node"));
        let ours_vs_direct_on_proxy_node = Ratio {
            p50: ours.p50_us / node.p50_us,
            p90: ours.p90_us / node.p90_us,
            p99: ours.p99_us / node.p99_us,
        };
        header();
        for s in &connect {
            s.print();
        }
        println!("\nratio to direct       p50     p90     p99");
        for v in vs.iter().skip(1) {
            let r = &vs_direct[v.key];
            println!("{:<18} {:>7.3} {:>7.3} {:>7.3}", v.key, r.p50, r.p90, r.p99);
        }
        let r = &ours_vs_direct_on_proxy_node;
        println!(
            "ours_last / direct_on_proxy_node {:>7.3} {:>7.3} {:>7.3}",
            r.p50, r.p90, r.p99
        );
        print!("connections per pod:");
        for (c, counts) in &per_pod {
            let (lo, hi) = (
                counts.iter().min().unwrap_or(&0),
                counts.iter().max().unwrap_or(&0),
            );
            print!("  {c} {lo}..{hi}");
        }
        println!();
        for c in ["ours", "linear", "nat1"] {
            ensure!(
                per_pod[c].iter().all(|&k| k > 0),
                "{c}: some pod got no connection: {:?}",
                per_pod[c]
            );
        }
        let conntrack_entries: BTreeMap<String, u64> = CLIENTS
            .iter()
            .zip(&lab.clients)
            .map(|(c, ns)| {
                let n = run(&["ip", "netns", "exec", ns, "conntrack", "-C"])
                    .ok()
                    .and_then(|o| o.trim().parse().ok())
                    .unwrap_or(0);
                (c.to_string(), n)
            })
            .collect();
        println!("conntrack entries: {conntrack_entries:?}");
        ensure!(
            conntrack_entries["direct"] == 0,
            "conntrack ran in the direct namespace"
        );
        out.push(SizeResult {
            services: n,
            endpoints_per_service: ENDPOINTS,
            ours_full_sync_ms: sync_ms,
            ours_render_ms: full.render.as_secs_f64() * 1e3,
            ours_apply_ms: full.apply.as_secs_f64() * 1e3,
            ours_script_mib: full.script_bytes as f64 / (1 << 20) as f64,
            linear_rules,
            linear_load_ms: linear_ms,
            connect,
            vs_direct,
            ours_vs_direct_on_proxy_node,
            per_pod,
            conntrack_entries,
        });
        drop(proxy);
    }
    Ok(Results {
        machine: machine(),
        libnftables: in_process,
        rounds,
        warmup: WARMUP,
        sizes: out,
    })
}

fn main() -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "proxy-datapath needs root (it creates network namespaces)"
    );
    let mut sizes: Vec<u32> = vec![];
    let mut rounds = DEFAULT_ROUNDS;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rounds" {
            rounds = args.next().context("--rounds N")?.parse()?;
        } else {
            sizes.push(a.parse().with_context(|| format!("a size: {a}"))?);
        }
    }
    if sizes.is_empty() {
        sizes = DEFAULT_SIZES.to_vec();
    }
    let default = sizes == DEFAULT_SIZES && rounds == DEFAULT_ROUNDS;
    ensure!(rounds > 0, "--rounds must be at least 1");
    ensure!(sizes.iter().all(|&n| n >= 2), "sizes must be at least 2");
    remove_stale(NS_PREFIX);
    let lab = Lab::create()?;
    // Before any thread starts: every thread made from here on (the
    // runtime's included) is in `ours`, as an agent is in its node's.
    enter(&lab.clients[OURS])?;
    let r = bench(&lab, &sizes, rounds);
    drop(lab);
    let r = r?;
    if default {
        write_results("proxy-datapath", &r)?;
    }
    Ok(())
}
