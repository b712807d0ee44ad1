//! Programming time of the nftables service proxy: a full sync of 1k, 10k
//! and 30k Services with 10 endpoints each, then, with them installed, the
//! time to apply one change (render with the real `proxy-nftables` module,
//! delta into the kernel through libnftables):
//! - an endpoint replaced (a pod re-created elsewhere): backend elements only;
//! - an endpoint added (10 -> 11): the dispatch element moves to another
//!   shared pick chain, which makes the kernel validate the table;
//! - a Service added and deleted.
//!
//! Everything runs in a network namespace of its own, entered before the
//! runtime starts so every thread is in it. Needs root.
//!
//! Run: `cargo run --release -p switchyard-bench --bin proxy_sync [-- SIZES]`

use serde::Serialize;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::datapath::conntrack::ConntrackTool;
use switchyard::datapath::nft::Nft;
use switchyard::proxy::ServiceProxy;
use switchyard_bench::proxy_input::{self, object};
use switchyard_bench::{Summary, header, machine, write_results};

const ENDPOINTS: u32 = 10;
/// Rounds of changes per size (`PROXY_SYNC_CHANGES` overrides it, to
/// profile the change path rather than the full sync).
fn changes() -> usize {
    std::env::var("PROXY_SYNC_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

/// Service `svc-I` at 10.96.0.0 + I.
fn service(i: u32) -> Service {
    proxy_input::service(i, Ipv4Addr::from(0x0a60_0000 + i))
}

fn endpoint(addr: u32) -> Endpoint {
    proxy_input::endpoint(Ipv4Addr::from(addr))
}

fn endpoints(i: u32, n: u32, generation: u32) -> Vec<Endpoint> {
    (0..n)
        .map(|k| endpoint(0x0b00_0000 + (i * 16 + k) + generation * 0x0080_0000))
        .collect()
}

#[derive(Serialize)]
struct SizeResult {
    services: u32,
    endpoints_per_service: u32,
    full_sync_ms: f64,
    full_render_ms: f64,
    full_apply_ms: f64,
    full_script_mib: f64,
    endpoint_replaced: Summary,
    endpoint_added: Summary,
    service_added: Summary,
    service_deleted: Summary,
}

#[derive(Serialize)]
struct Results {
    machine: switchyard_bench::Machine,
    libnftables: bool,
    sizes: Vec<SizeResult>,
}

/// Render and apply times of every timed change, for the split printed
/// at the end.
static PHASES: std::sync::Mutex<Vec<(Duration, Duration)>> = std::sync::Mutex::new(vec![]);

async fn timed(proxy: &mut ServiceProxy) -> Duration {
    let t = Instant::now();
    let r = proxy.sync().await;
    PHASES.lock().unwrap().push((r.render, r.apply));
    assert!(
        r.error.is_none() && proxy.errors().is_empty(),
        "{r:?} {:?}",
        proxy.errors()
    );
    assert!(!r.full, "a change must be a delta");
    t.elapsed()
}

async fn run(sizes: &[u32]) -> anyhow::Result<Results> {
    let registry = proxy_input::registry().await?;
    let nft = Arc::new(Nft::new(None));
    let in_process = nft.in_process();
    let mut out = vec![];
    for &n in sizes {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", "switchyard-proxy"])
            .stderr(std::process::Stdio::null())
            .status();
        let mut proxy = ServiceProxy::new(
            registry.clone(),
            nft.clone(),
            Arc::new(ConntrackTool::default()),
        );
        proxy.set_context(proxy_input::node_context());
        for i in 0..n {
            proxy.update(object(i), Some((service(i), endpoints(i, ENDPOINTS, 0))));
        }
        let t = Instant::now();
        let full = proxy.sync().await;
        let full_ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(full.full && full.error.is_none(), "{full:?}");
        let mut replaced = vec![];
        let mut added = vec![];
        let mut svc_add = vec![];
        let mut svc_del = vec![];
        for k in 0..changes() as u32 {
            let i = (k * 7919) % n;
            // An endpoint replaced by one with a new address.
            let mut eps = endpoints(i, ENDPOINTS, 0);
            eps[3] = endpoint(0x0c00_0000 + k);
            proxy.update(object(i), Some((service(i), eps)));
            replaced.push(timed(&mut proxy).await);
            // One more endpoint.
            proxy.update(
                object(i),
                Some((service(i), endpoints(i, ENDPOINTS + 1, 0))),
            );
            added.push(timed(&mut proxy).await);
            proxy.update(object(i), Some((service(i), endpoints(i, ENDPOINTS, 0))));
            timed(&mut proxy).await;
            // A new Service, then gone again.
            let j = n + k;
            proxy.update(object(j), Some((service(j), endpoints(j, ENDPOINTS, 0))));
            svc_add.push(timed(&mut proxy).await);
            proxy.update(object(j), None);
            svc_del.push(timed(&mut proxy).await);
        }
        let r = SizeResult {
            services: n,
            endpoints_per_service: ENDPOINTS,
            full_sync_ms: full_ms,
            full_render_ms: full.render.as_secs_f64() * 1e3,
            full_apply_ms: full.apply.as_secs_f64() * 1e3,
            full_script_mib: full.script_bytes as f64 / (1 << 20) as f64,
            endpoint_replaced: Summary::of(
                &format!("{n} Services: one endpoint replaced"),
                replaced,
            ),
            endpoint_added: Summary::of(&format!("{n} Services: one endpoint added"), added),
            service_added: Summary::of(&format!("{n} Services: one Service added"), svc_add),
            service_deleted: Summary::of(&format!("{n} Services: one Service deleted"), svc_del),
        };
        println!(
            "\nfull sync of {n} Services x {ENDPOINTS} endpoints: {:.0} ms (render {:.0} ms, apply {:.0} ms, {:.1} MiB of nft text)",
            r.full_sync_ms, r.full_render_ms, r.full_apply_ms, r.full_script_mib
        );
        header();
        r.endpoint_replaced.print();
        r.endpoint_added.print();
        r.service_added.print();
        r.service_deleted.print();
        let mut phases = std::mem::take(&mut *PHASES.lock().unwrap());
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v.get(v.len() / 2)
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e6
        };
        let mut render: Vec<Duration> = phases.iter().map(|p| p.0).collect();
        let mut apply: Vec<Duration> = phases.drain(..).map(|p| p.1).collect();
        println!(
            "of every change (p50): render {:.0} us, apply (the delta into the kernel) {:.0} us",
            median(&mut render),
            median(&mut apply)
        );
        out.push(r);
    }
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "inet", "switchyard-proxy"])
        .status();
    Ok(Results {
        machine: machine(),
        libnftables: in_process,
        sizes: out,
    })
}

fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "proxy-sync needs root (it creates a network namespace)"
    );
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1000, 10_000, 30_000]
    } else {
        sizes
    };
    let name = format!("sy-bench-proxy-{}", std::process::id());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()?;
    anyhow::ensure!(ok.success(), "ip netns add {name} failed");
    let ns = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    let r = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(&sizes));
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &name])
        .status();
    let r = r?;
    if sizes == [1000, 10_000, 30_000] {
        write_results("proxy-sync", &r)?;
    }
    Ok(())
}
