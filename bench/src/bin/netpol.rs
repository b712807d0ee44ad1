//! NetworkPolicy datapath and programming cost (issue 7): with 0, 100 and
//! 1000 policies selecting one pod, how fast does traffic to it go, how long
//! does a new connection take, and how long does one policy change take to
//! reach the kernel.
//!
//! Topology (every namespace is created here and deleted at the end; nothing
//! is added to the machine's own namespace and no packet leaves the
//! machine): one *lab* per variant, all up at once, each a *node* namespace
//! with a Linux bridge `br0` (10.244.1.1/24) and br_netfilter's hooks on,
//! and two *pod* namespaces, `client` (10.244.1.2) and `server`
//! (10.244.1.3), plugged into the bridge with a veth pair each, with
//! permanent neighbour entries (no ARP during the run) and no IPv6. Traffic
//! from client to server is bridged in the node namespace, where
//! br_netfilter hands it to the forward hook of the policy table
//! `inet switchyard-policy`, as between two pods of one node.
//!
//! Each node's table is written by the real engine: `PolicyEngine` with the
//! built-in `policy-kubernetes` module, driven by a thread of its own inside
//! the node namespace with `Nft::new(None)`, as the agent runs in its node
//! (libnftables in-process, one cached context). With N policies, policy
//! `peer-I` (I < N) selects the server for ingress and allows TCP port
//! 10000+I from 10.250.(I/256).(I%256)/32, and one more policy,
//! `allow-client`, allows the client on the iperf3 port (5201) and the
//! connect port (8080). So with N > 0 the server is isolated and every new
//! connection from the client is judged by the policy table (N+1 policies,
//! N+2 boxes of the server, all of one peer and one port, so in the allow
//! set's exact twin, a hash set; before that twin, in the interval allow
//! set, merged); N = 0 is the
//! engine's table with no policy at all: the baseline. Two more variants:
//! `no table` (br_netfilter on, no policy table, so no conntrack either)
//! shows what the table itself costs; `other pod` has the same N filler
//! policies selecting another pod of the node, so the allow set is as large
//! while the server has only the client's two boxes.
//!
//! Every round, in orders shuffled afresh so drift on the shared machine
//! hits all variants alike:
//!
//! - a fresh engine per lab loads its policies (the first full load, timed),
//!   then a check that the server is isolated (port 8081, allowed by no
//!   policy, must not connect when N > 0) and that the client gets through;
//! - connection set-up latency, interleaved connection by connection across
//!   the labs: `connect()` on a fresh blocking socket in the client
//!   namespace to server:8080, from the call until it returns with the
//!   connection established; closed with `SO_LINGER` 0 (a RST, no
//!   TIME_WAIT); the next waits until the server has accepted;
//! - TCP throughput, lab after lab: `iperf3 -c 10.244.1.3 -t 3 -J` in the
//!   client namespace against `iperf3 -s` in the server namespace (received
//!   bits per second);
//! - one policy change with N policies installed, interleaved across the
//!   labs: one `peer-I` gets another peer address (one policy re-rendered,
//!   the server's merged boxes recomputed, a delta to the kernel);
//!   `set_policies` (given every policy, as the agent does) and `sync` are
//!   timed apart, and the transaction itself is timed by a wrapper around
//!   the runner.
//!
//! Needs root, br_netfilter and iperf3 (`apt-get install iperf3`).
//!
//! Run: `cargo run --release -p switchyard-bench --bin netpol
//! [-- [--rounds N] SIZES]`

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::datapath::netlink::in_netns;
use switchyard::datapath::nft::{Nft, NftRunner};
use switchyard::model::Role;
use switchyard::policy::engine::{PolicyEngine, SyncReport, enable_bridge_netfilter};
use switchyard::policy::merge::{self, AllowBox};
use switchyard::registry::source::{Fetcher, ModuleSource};
use switchyard::registry::{ModuleSpec, Registry};
use switchyard::runtime::{HostServices, Runtime};
use switchyard_bench::netns::{enter, remove_stale, run};
use switchyard_bench::proxy_input::{node_context, v4};
use switchyard_bench::tcp::{self, Client};
use switchyard_bench::{Summary, header, machine, netns, write_results};

const DEFAULT_SIZES: [u32; 3] = [0, 100, 1000];
const DEFAULT_ROUNDS: usize = 5;
const CONNECTS: usize = 2000;
const WARMUP: usize = 200;
const CHANGES: usize = 50;
const IPERF_SECONDS: u32 = 3;
const NS_PREFIX: &str = "sy-bench-np-";
const TABLE: &str = "switchyard-policy";

const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const CLIENT_MAC: &str = "02:5c:00:00:00:02";
const SERVER_MAC: &str = "02:5c:00:00:00:03";
const IPERF_PORT: u16 = 5201;
/// Allowed for the client: the connection latency test.
const CONNECT_PORT: u16 = 8080;
/// Not allowed by any policy: must not connect while the server is isolated.
const DENIED_PORT: u16 = 8081;
/// Filler policy `i` allows TCP port `PEER_PORT_BASE + i`.
const PEER_PORT_BASE: u32 = 10_000;

// ---- the policies ----

fn server_pod() -> Pod {
    pod("server", SERVER_IP)
}

/// A pod of this node that the filler policies select in the `other-pod`
/// variant; it exists only in the policies.
fn other_pod() -> Pod {
    pod("other", OTHER_IP)
}

fn pod(name: &str, ip: Ipv4Addr) -> Pod {
    Pod {
        namespace: "bench".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        labels: vec![("app".into(), name.into())],
        ips: vec![v4(ip)],
        node: "node-1".into(),
        host_network: false,
        ports: vec![],
        phase: PodPhase::Running,
        ready: true,
    }
}

fn tcp(first: u16, last: u16) -> PortRange {
    PortRange {
        protocol: Protocol::Tcp,
        first,
        last,
    }
}

/// An ingress policy selecting `selected` that allows `ports` from
/// `peer`/32.
fn ingress(name: &str, selected: Pod, peer: Ipv4Addr, ports: Vec<PortRange>) -> Policy {
    Policy {
        namespace: "bench".into(),
        name: name.into(),
        annotations: vec![],
        selected: vec![selected],
        directions: vec![PolicyDirection::Ingress],
        ingress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                description: format!("ipBlock {peer}/32"),
                addresses: AddressSet {
                    cidrs: vec![IpCidr {
                        address: v4(peer),
                        prefix_len: 32,
                    }],
                    except: vec![],
                },
            }],
            ports,
            named_ports: vec![],
        }],
        egress: vec![],
    }
}

/// Filler policy `i`'s peer: 10.250.x.y, or 10.251.x.y once changed.
fn peer(i: u32, changed: bool) -> Ipv4Addr {
    let second = if changed { 251 } else { 250 };
    Ipv4Addr::new(10, second, (i >> 8) as u8, (i & 0xff) as u8)
}

fn filler(i: u32, changed: bool, selected: Pod) -> Policy {
    let port = (PEER_PORT_BASE + i) as u16;
    ingress(
        &format!("peer-{i}"),
        selected,
        peer(i, changed),
        vec![tcp(port, port)],
    )
}

/// The variant's policies: `n` filler policies and, if `n > 0`, the one
/// that lets the client in (first).
fn policies(v: Variant) -> Vec<Policy> {
    let (n, selected) = match v {
        Variant::Policies(n) => (n, server_pod()),
        Variant::OtherPod(n) => (n, other_pod()),
        Variant::NoTable => (0, server_pod()),
    };
    if n == 0 {
        return vec![];
    }
    let mut p = vec![ingress(
        "allow-client",
        server_pod(),
        CLIENT_IP,
        vec![tcp(IPERF_PORT, IPERF_PORT), tcp(CONNECT_PORT, CONNECT_PORT)],
    )];
    p.extend((0..n).map(|i| filler(i, false, selected.clone())));
    p
}

async fn registry() -> anyhow::Result<Arc<Registry>> {
    let registry = Registry::new(
        Runtime::new()?,
        Fetcher::default(),
        HostServices::default(),
        2,
    );
    // The agent's binding, with the default limits.
    registry
        .apply_async(ModuleSpec::new(
            "policy-kubernetes",
            Role::NetworkPolicy,
            ModuleSource::Builtin("policy-kubernetes".into()),
        ))
        .await?;
    Ok(registry)
}

/// The real runner, timing each transaction it hands to the kernel
/// (libnftables' parsing and the kernel's commit, or the netlink batch of
/// an element-only delta), apart from the engine's own work.
struct TimedNft {
    inner: Nft,
    runs: Mutex<Vec<Duration>>,
}

impl NftRunner for TimedNft {
    fn run(&self, script: &str) -> Result<(), String> {
        let t = Instant::now();
        let r = self.inner.run(script);
        self.runs.lock().unwrap().push(t.elapsed());
        r
    }

    /// Element-only deltas, sent over netlink (`datapath::nft_elements`),
    /// timed the same way; `SY_BENCH_SCRIPTS_ONLY=1` sends them as scripts
    /// through libnftables instead, to compare the two in one build.
    fn elements(
        &self,
        table: &str,
        ops: &[switchyard::datapath::nft_elements::ElementOp],
    ) -> Option<Result<usize, String>> {
        if std::env::var_os("SY_BENCH_SCRIPTS_ONLY").is_some() {
            return None;
        }
        let t = Instant::now();
        let r = self.inner.elements(table, ops);
        self.runs.lock().unwrap().push(t.elapsed());
        r
    }
}

impl TimedNft {
    /// Time spent in transactions since the last call.
    fn take(&self) -> Duration {
        std::mem::take(&mut *self.runs.lock().unwrap())
            .into_iter()
            .sum()
    }
}

/// The host's merge of the server's boxes with `n` filler policies (what
/// every change of one of them recomputes), timed alone: the median of 21.
fn time_merge(n: u32) -> f64 {
    let one = |a: Ipv4Addr| a.to_bits() as u128;
    let mut boxes: Vec<AllowBox> = [IPERF_PORT, CONNECT_PORT]
        .iter()
        .map(|&p| AllowBox {
            peer: (one(CLIENT_IP), one(CLIENT_IP)),
            ports: Some((Protocol::Tcp, p, p)),
        })
        .collect();
    for i in 0..n {
        let port = (PEER_PORT_BASE + i) as u16;
        let a = one(peer(i, false));
        boxes.push(AllowBox {
            peer: (a, a),
            ports: Some((Protocol::Tcp, port, port)),
        });
    }
    let mut t: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            let out = merge::disjoint(std::hint::black_box(&boxes));
            assert_eq!(out.len(), boxes.len());
            us(t.elapsed())
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[10]
}

// ---- namespaces ----

/// One lab's namespaces and its iperf3 server; removed on drop (an error
/// or a panic included).
struct Lab {
    node: String,
    client: String,
    server: String,
    iperf: Option<Child>,
}

impl Lab {
    fn create(tag: &str) -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let mut lab = Lab {
            node: String::new(),
            client: String::new(),
            server: String::new(),
            iperf: None,
        };
        // Named one by one, so a failure part-way deletes what exists.
        for (field, role) in [
            (&mut lab.node, "node"),
            (&mut lab.client, "client"),
            (&mut lab.server, "server"),
        ] {
            let name = format!("{NS_PREFIX}{pid}-{tag}-{role}");
            run(&["ip", "netns", "add", &name])?;
            *field = name;
        }
        lab.wire()?;
        // br_netfilter's sysctls belong to the namespace of the thread that
        // opens them.
        let on = in_netns(&netns::path(&lab.node), || {
            Ok(enable_bridge_netfilter().and_then(|()| {
                std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
                    .map_err(|e| e.to_string())
            }))
        })?
        .map_err(anyhow::Error::msg)?;
        ensure!(
            on.trim() == "1",
            "bridge-nf-call-iptables is {on} in {}",
            lab.node
        );
        lab.start_iperf()?;
        Ok(lab)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let node = self.node.as_str();
        for ns in [node, &self.client, &self.server] {
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
        run(&["ip", "-n", node, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            &format!("{BRIDGE_IP}/24"),
            "dev",
            "br0",
        ])?;
        run(&["ip", "-n", node, "link", "set", "br0", "up"])?;
        for (ns, port, ip, mac, other_ip, other_mac) in [
            (
                &self.client,
                "vclient",
                CLIENT_IP,
                CLIENT_MAC,
                SERVER_IP,
                SERVER_MAC,
            ),
            (
                &self.server,
                "vserver",
                SERVER_IP,
                SERVER_MAC,
                CLIENT_IP,
                CLIENT_MAC,
            ),
        ] {
            run(&[
                "ip", "-n", node, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "address", mac, "netns", ns,
            ])?;
            run(&["ip", "-n", node, "link", "set", port, "master", "br0", "up"])?;
            run(&[
                "ip", "netns", "exec", node, "bridge", "fdb", "replace", mac, "dev", port,
                "master", "static",
            ])?;
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                &other_ip.to_string(),
                "lladdr",
                other_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        Ok(())
    }

    fn start_iperf(&mut self) -> anyhow::Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server, "iperf3", "-s"])
            .args(["-B", &SERVER_IP.to_string(), "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        self.iperf = Some(child);
        let t = Instant::now();
        loop {
            let out = run(&[
                "ip",
                "netns",
                "exec",
                &self.server,
                "ss",
                "-Hltn",
                &format!("sport = :{IPERF_PORT}"),
            ])?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            if let Some(c) = self.iperf.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("iperf3 -s exited at once: {status}");
            }
            ensure!(
                t.elapsed() < Duration::from_secs(5),
                "iperf3 -s is not listening after 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.iperf.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client, &self.server, &self.node] {
            if !ns.is_empty() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

// ---- server and client ----

/// Listeners in the server namespace: the connect port (counted) and the
/// denied port.
struct Server {
    accepted: Arc<AtomicU64>,
}

impl Server {
    fn start(ns: &str) -> anyhow::Result<Server> {
        let accepted = Arc::new(AtomicU64::new(0));
        for port in [CONNECT_PORT, DENIED_PORT] {
            let count = (port == CONNECT_PORT).then(|| accepted.clone());
            tcp::serve_in(ns, SocketAddrV4::new(SERVER_IP, port), move |conn, _| {
                drop(conn);
                if let Some(c) = &count {
                    c.fetch_add(1, Ordering::Release);
                }
            })?;
        }
        Ok(Server { accepted })
    }

    /// Wait until the server has accepted `n` connections on the connect
    /// port in all.
    fn wait_for(&self, n: u64) -> anyhow::Result<()> {
        tcp::wait_for(&self.accepted, n)
    }
}

// ---- measurement ----

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// No policy table at all.
    NoTable,
    /// The engine's table with this many filler policies selecting the
    /// server (plus the one for the client when > 0).
    Policies(u32),
    /// The same filler policies selecting another pod of the node: the
    /// server has only the client's policy, the allow set is as large.
    OtherPod(u32),
}

impl Variant {
    fn key(self) -> String {
        match self {
            Variant::NoTable => "no-table".into(),
            Variant::Policies(n) => n.to_string(),
            Variant::OtherPod(n) => format!("other-pod-{n}"),
        }
    }

    fn label(self) -> String {
        match self {
            Variant::NoTable => "no policy table (br_netfilter on)".into(),
            Variant::Policies(0) => "0 policies (engine's table, empty)".into(),
            Variant::Policies(n) => format!("{n} policies + allow-client"),
            Variant::OtherPod(n) => format!("allow-client + {n} on another pod"),
        }
    }

    /// Policies installed.
    fn installed(self) -> u32 {
        match self {
            Variant::Policies(n) | Variant::OtherPod(n) if n > 0 => n + 1,
            _ => 0,
        }
    }
}

/// One full load, as the engine reported it.
#[derive(Serialize, Clone)]
struct Load {
    total_ms: f64,
    render_ms: f64,
    /// The engine's `apply`: the script built and run.
    apply_ms: f64,
    /// Of which the transaction (libnftables and the kernel).
    nft_ms: f64,
    script_bytes: usize,
}

/// One policy change.
#[derive(Serialize, Clone)]
struct Change {
    set_policies_us: f64,
    sync_us: f64,
    render_us: f64,
    apply_us: f64,
    /// The transaction alone (libnftables and the kernel).
    nft_us: f64,
    /// `sync` less render and transaction: the engine's own work (merge,
    /// drop chains, plan store, delta script, explain snapshot).
    host_us: f64,
    script_bytes: usize,
}

#[derive(Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn spread(v: &[f64]) -> Spread {
    Spread {
        median: median(v),
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[derive(Serialize)]
struct VariantResult {
    key: String,
    label: String,
    /// Policies installed (filler + allow-client).
    policies_installed: u32,
    /// Elements in `ingress-allow4` and `ingress-allow-exact4` (every
    /// pod's) after the load, per round.
    allow_elements: Vec<usize>,
    connect: Summary,
    connect_p50_us_per_round: Vec<f64>,
    throughput_gbps_per_round: Vec<f64>,
    throughput_gbps: Spread,
    retransmits_per_round: Vec<u64>,
    /// First full load of the policies by a fresh engine, per round.
    full_loads: Vec<Load>,
    full_load_ms: Option<Spread>,
    /// One policy changed with the others installed: `set_policies` with
    /// every policy, then `sync`.
    change_set_policies: Option<Summary>,
    change_sync: Option<Summary>,
    change_render: Option<Summary>,
    change_apply: Option<Summary>,
    change_nft: Option<Summary>,
    change_host: Option<Summary>,
    change_script_bytes: Option<f64>,
    /// `merge::disjoint` of the changed pod's boxes alone, median µs.
    merge_disjoint_us: Option<f64>,
    /// `conntrack -C` in the node namespace after the run (0: conntrack
    /// never ran there).
    conntrack_entries: Option<u64>,
}

#[derive(Serialize)]
struct VsBaseline {
    key: String,
    /// Median throughput over the baseline's median.
    throughput_of_medians: f64,
    /// The median of the per-round ratios (each round's run against the
    /// baseline's run of the same round).
    throughput_paired_median: f64,
    connect_p50: f64,
    connect_p90: f64,
    connect_p99: f64,
}

#[derive(Serialize)]
struct Results {
    machine: switchyard_bench::Machine,
    libnftables: bool,
    rounds: usize,
    connects_per_round: usize,
    warmup_connects: usize,
    iperf_seconds: u32,
    changes_per_round: usize,
    loadavg_before: String,
    loadavg_after: String,
    variants: Vec<VariantResult>,
    /// Each variant against 0 policies.
    vs_baseline: Vec<VsBaseline>,
}

#[derive(Default)]
struct Samples {
    connect: Vec<Duration>,
    connect_p50_per_round: Vec<f64>,
    gbps: Vec<f64>,
    retransmits: Vec<u64>,
    loads: Vec<Load>,
    changes: Vec<Change>,
    allow_elements: Vec<usize>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// xorshift64 with a fixed seed, so runs shuffle alike.
struct Shuffle(u64);

impl Shuffle {
    fn order(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for j in (1..n).rev() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            order.swap(j, (self.0 % (j as u64 + 1)) as usize);
        }
        order
    }
}

/// What one sync did, timed on the agent thread.
struct Synced {
    set_policies: Duration,
    sync: Duration,
    /// The transactions (libnftables and the kernel).
    nft: Duration,
    report: SyncReport,
    errors: Vec<String>,
}

/// A thread inside a lab's node namespace driving that node's engine, as
/// the agent does in its node: `Nft::new(None)`, so libnftables runs
/// in-process on one cached context opened in the node namespace.
struct Agent {
    jobs: mpsc::Sender<(Vec<Policy>, bool)>,
    replies: mpsc::Receiver<Result<Synced, String>>,
    in_process: bool,
}

impl Agent {
    fn start(ns: &str, registry: Arc<Registry>) -> anyhow::Result<Agent> {
        let (jobs, job_rx) = mpsc::channel::<(Vec<Policy>, bool)>();
        let (reply_tx, replies) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns = ns.to_string();
        std::thread::Builder::new()
            .name("agent".into())
            .spawn(move || {
                let rt = enter(&ns).and_then(|()| {
                    Ok(tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?)
                });
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let nft = Arc::new(TimedNft {
                    inner: Nft::new(None),
                    runs: Mutex::default(),
                });
                let _ = ready_tx.send(Ok(nft.inner.in_process()));
                let mut engine: Option<PolicyEngine> = None;
                for (policies, fresh) in job_rx {
                    if fresh || engine.is_none() {
                        let mut e = PolicyEngine::new(registry.clone(), nft.clone());
                        e.set_context(node_context());
                        engine = Some(e);
                    }
                    let e = engine.as_mut().expect("made above");
                    nft.take();
                    let t = Instant::now();
                    e.set_policies(
                        policies.into_iter().map(Into::into).collect(),
                        &BTreeSet::new(),
                    );
                    let set_policies = t.elapsed();
                    let t = Instant::now();
                    let report = rt.block_on(e.sync());
                    let sync = t.elapsed();
                    let synced = Synced {
                        set_policies,
                        sync,
                        nft: nft.take(),
                        report,
                        errors: e
                            .errors()
                            .iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect(),
                    };
                    if reply_tx.send(Ok(synced)).is_err() {
                        break;
                    }
                }
            })?;
        let in_process = ready_rx.recv()??;
        Ok(Agent {
            jobs,
            replies,
            in_process,
        })
    }

    /// Give the engine every policy and sync; `fresh`: a new engine, whose
    /// first sync loads the whole table.
    fn sync(&self, policies: Vec<Policy>, fresh: bool) -> anyhow::Result<Synced> {
        self.jobs.send((policies, fresh))?;
        self.replies.recv()?.map_err(anyhow::Error::msg)
    }
}

/// One variant's lab, seen from the benchmark: its client and server
/// threads, its engine and runner, and what was measured.
struct Node {
    v: Variant,
    node: String,
    client_ns: String,
    client: Client,
    server: Server,
    made: u64,
    /// `None` for the lab without a policy table.
    agent: Option<Agent>,
    /// The policies as last given, and which fillers have their other peer.
    current: Vec<Policy>,
    changed: Vec<bool>,
    s: Samples,
}

impl Node {
    fn start(v: Variant, lab: &Lab, registry: &Arc<Registry>) -> anyhow::Result<Node> {
        Ok(Node {
            v,
            node: lab.node.clone(),
            client_ns: lab.client.clone(),
            client: Client::start(&lab.client)?,
            server: Server::start(&lab.server)?,
            made: 0,
            agent: match v {
                Variant::NoTable => None,
                _ => Some(Agent::start(&lab.node, registry.clone())?),
            },
            current: vec![],
            changed: vec![],
            s: Samples::default(),
        })
    }

    /// One timed connection to the connect port.
    fn connect(&mut self) -> anyhow::Result<Duration> {
        let d = self
            .client
            .connect(
                SocketAddrV4::new(SERVER_IP, CONNECT_PORT),
                Duration::from_secs(1),
            )?
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.v.label()))?;
        self.made += 1;
        // The server's accept runs on another thread: let it finish, so it
        // does not compete with the next connection.
        self.server.wait_for(self.made)?;
        Ok(d)
    }

    /// Whether the client gets through to `port` within 300 ms.
    fn reaches(&mut self, port: u16) -> anyhow::Result<bool> {
        let ok = self
            .client
            .connect(
                SocketAddrV4::new(SERVER_IP, port),
                Duration::from_millis(300),
            )?
            .is_ok();
        if ok && port == CONNECT_PORT {
            self.made += 1;
            self.server.wait_for(self.made)?;
        }
        Ok(ok)
    }

    /// The server is isolated exactly when policies select it, and the
    /// client always gets through on its ports.
    fn check(&mut self, when: &str) -> anyhow::Result<()> {
        let v = self.v;
        ensure!(
            self.reaches(CONNECT_PORT)?,
            "{}, {when}: the client cannot connect to the server on port {CONNECT_PORT}",
            v.label()
        );
        let denied = !self.reaches(DENIED_PORT)?;
        ensure!(
            denied == (v.installed() > 0),
            "{}, {when}: port {DENIED_PORT} {} (is br_netfilter on in the node namespace?)",
            v.label(),
            if denied { "is blocked" } else { "is reachable" }
        );
        Ok(())
    }

    fn iperf(&self) -> anyhow::Result<(f64, u64)> {
        let mut last = String::new();
        // iperf3's server may still be closing the previous test.
        for _ in 0..3 {
            // A hung test is cut off (coreutils' timeout).
            let o = Command::new("timeout")
                .args(["30", "ip", "netns", "exec", &self.client_ns, "iperf3"])
                .args(["-c", &SERVER_IP.to_string(), "-p", &IPERF_PORT.to_string()])
                .args(["--connect-timeout", "2000"])
                .args(["-t", &IPERF_SECONDS.to_string(), "-J"])
                .output()
                .context("running iperf3 -c")?;
            let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let end = &json["end"];
            if o.status.success()
                && let Some(bps) = end["sum_received"]["bits_per_second"].as_f64()
            {
                let retr = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
                return Ok((bps / 1e9, retr));
            }
            last = format!(
                "{} {}",
                json["error"].as_str().unwrap_or(""),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("{}: iperf3 -c failed three times: {last}", self.v.label())
    }

    /// The server's boxes in `ingress-allow4` and its exact twin
    /// `ingress-allow-exact4` (where boxes of one peer and one port go),
    /// and all their elements.
    fn allow_elements(&self) -> anyhow::Result<(usize, usize)> {
        let (mut server, mut all) = (0, 0);
        for set in ["ingress-allow4", "ingress-allow-exact4"] {
            let out = run(&[
                "ip", "netns", "exec", &self.node, "nft", "list", "set", "inet", TABLE, set,
            ])?;
            server += out.matches(&format!("{SERVER_IP} . ")).count();
            all += out.matches(" . tcp . ").count();
        }
        Ok((server, all))
    }

    /// A fresh engine loads the variant's policies: its first full load,
    /// which replaces the table. Then the table and the traffic are checked.
    fn load(&mut self) -> anyhow::Result<()> {
        let Some(agent) = &self.agent else {
            return self.check("in the lab");
        };
        self.current = policies(self.v);
        self.changed = vec![false; self.current.len().saturating_sub(1)];
        let x = agent.sync(self.current.clone(), true)?;
        let r = &x.report;
        ensure!(
            r.full && r.error.is_none() && x.errors.is_empty(),
            "{}: the first load: {r:?}; policy errors: {:?}",
            self.v.label(),
            x.errors
        );
        self.s.loads.push(Load {
            total_ms: x.sync.as_secs_f64() * 1e3,
            render_ms: r.render.as_secs_f64() * 1e3,
            apply_ms: r.apply.as_secs_f64() * 1e3,
            nft_ms: x.nft.as_secs_f64() * 1e3,
            script_bytes: r.script_bytes,
        });
        // allow-client has two boxes (its two ports).
        let want = match self.v {
            Variant::Policies(n) if n > 0 => n as usize + 2,
            Variant::OtherPod(n) if n > 0 => 2,
            _ => 0,
        };
        let (got, all) = self.allow_elements()?;
        ensure!(
            got == want,
            "{}: ingress-allow4 and ingress-allow-exact4 hold {got} boxes of the server, not {want}",
            self.v.label()
        );
        self.s.allow_elements.push(all);
        self.check("after the load")
    }

    /// Change the `k`-th filler policy of this round: its peer flips
    /// between 10.250.x.y and 10.251.x.y. Timed.
    fn change(&mut self, round: usize, k: usize) -> anyhow::Result<()> {
        let n = self.changed.len();
        let i = (round * CHANGES + k) % n;
        self.changed[i] = !self.changed[i];
        // current[0] is allow-client.
        self.current[i + 1] = filler(i as u32, self.changed[i], server_pod());
        let agent = self.agent.as_ref().expect("a policy lab");
        let x = agent.sync(self.current.clone(), false)?;
        let r = &x.report;
        ensure!(
            !r.full && r.error.is_none() && r.rendered == 1 && x.errors.is_empty(),
            "{}: changing policy peer-{i}: {r:?}; policy errors: {:?}",
            self.v.label(),
            x.errors
        );
        self.s.changes.push(Change {
            set_policies_us: us(x.set_policies),
            sync_us: us(x.sync),
            render_us: us(r.render),
            apply_us: us(r.apply),
            nft_us: us(x.nft),
            host_us: us(x.sync.saturating_sub(r.render + x.nft)),
            script_bytes: r.script_bytes,
        });
        Ok(())
    }
}

fn summary_of(name: &str, v: impl Iterator<Item = f64>) -> Option<Summary> {
    let d: Vec<Duration> = v.map(|x| Duration::from_secs_f64(x / 1e6)).collect();
    (!d.is_empty()).then(|| Summary::of(name, d))
}

fn round(nodes: &mut [Node], shuffle: &mut Shuffle, round: usize) -> anyhow::Result<()> {
    for i in shuffle.order(nodes.len()) {
        nodes[i].load()?;
    }
    // Connection set-up latency, interleaved connection by connection.
    let mut this: Vec<Vec<Duration>> = vec![Vec::with_capacity(CONNECTS); nodes.len()];
    for r in 0..WARMUP + CONNECTS {
        for i in shuffle.order(nodes.len()) {
            let d = nodes[i].connect()?;
            if r >= WARMUP {
                this[i].push(d);
            }
        }
    }
    for (n, c) in nodes.iter_mut().zip(this) {
        n.s.connect_p50_per_round
            .push(Summary::of("", c.clone()).p50_us);
        n.s.connect.extend(c);
    }
    // Throughput, lab after lab.
    for i in shuffle.order(nodes.len()) {
        let (gbps, retr) = nodes[i].iperf()?;
        nodes[i].s.gbps.push(gbps);
        nodes[i].s.retransmits.push(retr);
    }
    // Policy changes, interleaved change by change.
    let changing: Vec<usize> = (0..nodes.len())
        .filter(|&i| matches!(nodes[i].v, Variant::Policies(n) if n > 0))
        .collect();
    for k in 0..CHANGES {
        for j in shuffle.order(changing.len()) {
            nodes[changing[j]].change(round, k)?;
        }
    }
    for &i in &changing {
        nodes[i].check(&format!("after {CHANGES} changes"))?;
    }
    for n in nodes.iter() {
        println!(
            "round {round} {:<40} connect p50 {:>6.1} us  iperf3 {:>6.2} Gbit/s{}",
            n.v.label(),
            n.s.connect_p50_per_round.last().unwrap_or(&0.0),
            n.s.gbps.last().unwrap_or(&0.0),
            match n.s.loads.last() {
                Some(l) => format!("  full load {:.1} ms", l.total_ms),
                None => String::new(),
            }
        );
    }
    Ok(())
}

fn bench(labs: &[(Variant, Lab)], rounds: usize) -> anyhow::Result<Results> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let registry = rt.block_on(registry())?;
    let mut nodes = labs
        .iter()
        .map(|(v, lab)| Node::start(*v, lab, &registry))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut shuffle = Shuffle(0x9e37_79b9_7f4a_7c15);

    // Warm-up, not counted: the module's first calls, each lab's first
    // load, connections and iperf3 run.
    for n in nodes.iter_mut() {
        n.load()?;
        for _ in 0..WARMUP {
            n.connect()?;
        }
        n.iperf()?;
        n.s = Samples::default();
    }

    let loadavg_before = loadavg();
    for r in 0..rounds {
        round(&mut nodes, &mut shuffle, r)?;
    }
    let loadavg_after = loadavg();

    let mut out = vec![];
    for n in nodes.iter_mut() {
        let v = n.v;
        let conntrack_entries = run(&["ip", "netns", "exec", &n.node, "conntrack", "-C"])
            .ok()
            .and_then(|o| o.trim().parse().ok());
        let s = std::mem::take(&mut n.s);
        let changes = &s.changes;
        out.push(VariantResult {
            key: v.key(),
            label: v.label(),
            policies_installed: v.installed(),
            allow_elements: s.allow_elements,
            connect: Summary::of(&v.label(), s.connect),
            connect_p50_us_per_round: s.connect_p50_per_round,
            throughput_gbps: spread(&s.gbps),
            throughput_gbps_per_round: s.gbps,
            retransmits_per_round: s.retransmits,
            full_load_ms: (!s.loads.is_empty())
                .then(|| spread(&s.loads.iter().map(|l| l.total_ms).collect::<Vec<_>>())),
            full_loads: s.loads,
            change_set_policies: summary_of(
                "set_policies",
                changes.iter().map(|c| c.set_policies_us),
            ),
            change_sync: summary_of("sync", changes.iter().map(|c| c.sync_us)),
            change_render: summary_of("render", changes.iter().map(|c| c.render_us)),
            change_apply: summary_of("apply", changes.iter().map(|c| c.apply_us)),
            change_nft: summary_of("nft", changes.iter().map(|c| c.nft_us)),
            change_host: summary_of("host", changes.iter().map(|c| c.host_us)),
            change_script_bytes: (!changes.is_empty()).then(|| {
                median(
                    &changes
                        .iter()
                        .map(|c| c.script_bytes as f64)
                        .collect::<Vec<_>>(),
                )
            }),
            merge_disjoint_us: match v {
                Variant::Policies(n) if n > 0 => Some(time_merge(n)),
                _ => None,
            },
            conntrack_entries,
        });
    }
    let base = out
        .iter()
        .position(|r| r.key == "0")
        .context("the baseline (size 0) is needed")?;
    let vs_baseline = out
        .iter()
        .map(|r| {
            let b = &out[base];
            let paired: Vec<f64> = r
                .throughput_gbps_per_round
                .iter()
                .zip(&b.throughput_gbps_per_round)
                .map(|(x, y)| x / y)
                .collect();
            VsBaseline {
                key: r.key.clone(),
                throughput_of_medians: r.throughput_gbps.median / b.throughput_gbps.median,
                throughput_paired_median: median(&paired),
                connect_p50: r.connect.p50_us / b.connect.p50_us,
                connect_p90: r.connect.p90_us / b.connect.p90_us,
                connect_p99: r.connect.p99_us / b.connect.p99_us,
            }
        })
        .collect();
    Ok(Results {
        machine: machine(),
        libnftables: nodes
            .iter()
            .filter_map(|n| n.agent.as_ref())
            .all(|a| a.in_process),
        rounds,
        connects_per_round: CONNECTS,
        warmup_connects: WARMUP,
        iperf_seconds: IPERF_SECONDS,
        changes_per_round: CHANGES,
        loadavg_before,
        loadavg_after,
        variants: out,
        vs_baseline,
    })
}

fn print(r: &Results) {
    println!("\nconnection set-up latency, client -> server:{CONNECT_PORT}");
    header();
    for v in &r.variants {
        v.connect.print();
    }
    println!(
        "\n{:<42} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "variant", "Gbit/s", "min", "max", "x base", "paired", "conn x"
    );
    for (v, b) in r.variants.iter().zip(&r.vs_baseline) {
        println!(
            "{:<42} {:>9.2} {:>9.2} {:>9.2} {:>9.3} {:>9.3} {:>9.3}",
            v.label,
            v.throughput_gbps.median,
            v.throughput_gbps.min,
            v.throughput_gbps.max,
            b.throughput_of_medians,
            b.throughput_paired_median,
            b.connect_p50
        );
    }
    println!(
        "\n{:<38} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "programming (ms)",
        "load",
        "set p50",
        "set p99",
        "sync p50",
        "sync p99",
        "render",
        "nft",
        "host",
        "merge"
    );
    for v in &r.variants {
        let Some(load) = &v.full_load_ms else {
            continue;
        };
        let ms = |s: &Option<Summary>, f: fn(&Summary) -> f64| {
            s.as_ref()
                .map(|s| format!("{:.2}", f(s) / 1e3))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<38} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            v.label,
            load.median,
            ms(&v.change_set_policies, |s| s.p50_us),
            ms(&v.change_set_policies, |s| s.p99_us),
            ms(&v.change_sync, |s| s.p50_us),
            ms(&v.change_sync, |s| s.p99_us),
            ms(&v.change_render, |s| s.p50_us),
            ms(&v.change_nft, |s| s.p50_us),
            ms(&v.change_host, |s| s.p50_us),
            v.merge_disjoint_us
                .map(|m| format!("{:.2}", m / 1e3))
                .unwrap_or_else(|| "-".into()),
        );
    }
    println!(
        "(load: first full load; set: set_policies; sync: one change; render, nft (the \
         transaction), host (the rest of sync): p50; merge: merge::disjoint alone)"
    );
    print!("\nconntrack entries per node after the run:");
    for v in &r.variants {
        print!("  {} {:?}", v.key, v.conntrack_entries);
    }
    println!();
}

fn main() -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "netpol needs root (it creates network namespaces)"
    );
    match Command::new("iperf3").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => bail!("iperf3 is not installed: apt-get install iperf3"),
    }
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
    sizes.sort();
    sizes.dedup();
    let default = sizes == DEFAULT_SIZES && rounds == DEFAULT_ROUNDS;
    ensure!(rounds > 0, "--rounds must be at least 1");
    ensure!(
        sizes.contains(&0),
        "size 0 (the baseline) must be among the sizes"
    );
    ensure!(
        sizes.iter().all(|&n| n <= 65_535 - PEER_PORT_BASE),
        "sizes must be at most {}",
        65_535 - PEER_PORT_BASE
    );
    ensure!(
        std::path::Path::new("/proc/sys/net/bridge").exists(),
        "br_netfilter is not loaded (modprobe br_netfilter): NetworkPolicy between pods of one node needs it"
    );
    let mut variants = vec![Variant::NoTable];
    variants.extend(sizes.iter().map(|&n| Variant::Policies(n)));
    let max = *sizes.iter().max().expect("a size");
    if max > 0 {
        variants.push(Variant::OtherPod(max));
    }
    remove_stale(NS_PREFIX);
    // Each lab is deleted when dropped, also when a later one fails.
    let mut labs = vec![];
    let r = (|| {
        for &v in &variants {
            labs.push((v, Lab::create(&v.key())?));
        }
        bench(&labs, rounds)
    })();
    drop(labs);
    let r = r?;
    print(&r);
    if default {
        write_results("netpol", &r)?;
    }
    Ok(())
}
