//! Host-to-module call cost for a realistic render call (one Service with 10
//! endpoints, rendered by the real `proxy-nftables` module), the cost of
//! instantiating from the `InstancePre`, and of a hot swap.
//!
//! Run: `cargo run --release -p switchyard-bench --bin runtime-calls`

use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::model::Role;
use switchyard::registry::source::{Fetcher, ModuleSource};
use switchyard::registry::{LoadTimings, ModuleSpec, Registry};
use switchyard::runtime::{HostServices, Runtime, RuntimeConfig};
use switchyard_bench::{Summary, header, machine, sample, write_results};

fn ctx() -> NodeContext {
    NodeContext {
        node: "node-1".into(),
        zone: Some("zone-a".into()),
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

fn service() -> Service {
    Service {
        namespace: "shop".into(),
        name: "checkout".into(),
        uid: "6f1c2a58-2d0e-4d8b-9d59-0a8c5f1b7e21".into(),
        labels: vec![("app".into(), "checkout".into())],
        annotations: vec![("switchyard.dev/scheduler".into(), "rr".into())],
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![IpAddress::Ipv4((10, 96, 12, 34))],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Name("http".into()),
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

fn endpoints() -> Vec<Endpoint> {
    (0..10u8)
        .map(|i| Endpoint {
            address: IpAddress::Ipv4((10, 244, 1 + i % 3, 10 + i)),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            ready: true,
            serving: true,
            terminating: false,
            node: Some(format!("node-{}", 1 + i % 3)),
            zone: Some("zone-a".into()),
            pod: Some(format!("shop/checkout-{i}")),
            weight: 1,
        })
        .collect()
}

/// Engine variants compared side by side.
fn variants() -> Vec<(&'static str, RuntimeConfig)> {
    let base = RuntimeConfig::default();
    vec![
        ("default", base.clone()),
        (
            "fuel",
            RuntimeConfig {
                fuel: true,
                ..base.clone()
            },
        ),
        (
            "pooling",
            RuntimeConfig {
                pooling: true,
                ..base.clone()
            },
        ),
        (
            "fuel+pooling",
            RuntimeConfig {
                fuel: true,
                pooling: true,
                ..base
            },
        ),
    ]
}

const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    let spec = ModuleSpec::new(
        "proxy",
        Role::ServiceProxy,
        ModuleSource::Builtin("proxy-nftables".into()),
    );
    let (ctx, svc, eps) = (ctx(), service(), endpoints());

    // One registry per engine variant, all loaded before measuring.
    let mut engines = vec![];
    for (label, config) in variants() {
        let runtime = Runtime::with_config(config)?;
        let registry = Registry::new(
            runtime.clone(),
            Fetcher::default(),
            HostServices::default(),
            1,
        );
        let t = Instant::now();
        let active = registry.apply(spec.clone())?;
        engines.push((label, runtime, registry, active, t.elapsed()));
    }
    let items = {
        let (_, rt, _, active, _) = &engines[0];
        let mut s = active.session(rt, HostServices::default());
        s.render_service(&ctx, &svc, &eps, &active.config)?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .items
            .len()
    };

    // Interleave the variants in rounds so that noise on this shared machine
    // spreads over all of them alike.
    let mut warm: Vec<Vec<Duration>> = vec![vec![]; engines.len()];
    let mut validated: Vec<Vec<Duration>> = vec![vec![]; engines.len()];
    let mut fresh: Vec<Vec<Duration>> = vec![vec![]; engines.len()];
    let mut inst: Vec<Vec<Duration>> = vec![vec![]; engines.len()];
    for _ in 0..ROUNDS {
        for (i, (_, rt, _, active, _)) in engines.iter().enumerate() {
            let config = active.config.clone();
            let mut s = active.session(rt, HostServices::default());
            warm[i].extend(sample(500, 4_000, || {
                s.render_service(&ctx, &svc, &eps, &config)
                    .unwrap()
                    .unwrap();
            }));
            validated[i].extend(sample(100, 2_000, || {
                let frag = s
                    .render_service(&ctx, &svc, &eps, &config)
                    .unwrap()
                    .unwrap();
                // As the registry validates: bound to the Service rendered.
                switchyard::plan::validate(
                    frag,
                    Role::ServiceProxy,
                    &active.grants,
                    &active.spec.plan_limits,
                    &switchyard::plan::Scope::service(&ctx, &svc, &eps),
                )
                .unwrap();
            }));
            fresh[i].extend(sample(100, 1_000, || {
                let mut s = active.session(rt, HostServices::default());
                s.render_service(&ctx, &svc, &eps, &config)
                    .unwrap()
                    .unwrap();
            }));
            inst[i].extend(sample(100, 1_000, || {
                let mut s = active.session(rt, HostServices::default());
                s.instantiate().unwrap();
            }));
        }
    }
    let mut results = vec![];
    for (i, (label, ..)) in engines.iter().enumerate() {
        results.push(Summary::of(
            &format!("[{label}] render-service, warm instance"),
            std::mem::take(&mut warm[i]),
        ));
        results.push(Summary::of(
            &format!("[{label}] render-service + validation, warm"),
            std::mem::take(&mut validated[i]),
        ));
        results.push(Summary::of(
            &format!("[{label}] render-service, fresh store+instance"),
            std::mem::take(&mut fresh[i]),
        ));
        results.push(Summary::of(
            &format!("[{label}] instantiate from InstancePre"),
            std::mem::take(&mut inst[i]),
        ));
    }

    // The same input to a module that does almost nothing with it (a 2-item
    // plan): what crossing the boundary costs, apart from proxy-nftables' work.
    {
        let (_, rt, registry, ..) = &engines[0];
        let trivial = registry.apply(ModuleSpec::new(
            "trivial",
            Role::ServiceProxy,
            ModuleSource::Builtin("hostile-proxy".into()),
        ))?;
        let mut s = trivial.session(rt, HostServices::default());
        results.push(Summary::of(
            "[default] same input, trivial module (2-item plan), warm",
            sample(2_000, 20_000, || {
                s.render_service(&ctx, &svc, &eps, "{}").unwrap().unwrap();
            }),
        ));
    }

    // The async path on the default engine: permit, spawn_blocking, fresh
    // session, validation, stats.
    let (_, runtime, registry, _, _) = &engines[0];
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    results.push(Summary::of(
        "[default] registry.render_service (async, fresh instance)",
        sample(500, 5_000, || {
            let r = registry.clone();
            let (c, s, e) = (ctx.clone(), svc.clone(), eps.clone());
            tokio.block_on(async move { r.render_service("proxy", c, s, e).await.unwrap() });
        }),
    ));

    // Hot swap: alternate two versions of the binding. Each apply fetches,
    // digests, finds the compiled module in the cache, binds, calls describe()
    // and checks the config, then swaps one pointer.
    let other = ModuleSpec::new(
        "proxy",
        Role::ServiceProxy,
        ModuleSource::Builtin("hostile-proxy".into()),
    );
    registry.apply(other.clone())?;
    let mut flip = false;
    let mut phases: Vec<LoadTimings> = vec![];
    results.push(Summary::of(
        "[default] hot swap: apply an already compiled version",
        sample(10, 300, || {
            flip = !flip;
            let a = registry
                .apply(if flip { spec.clone() } else { other.clone() })
                .unwrap();
            phases.push(a.load_timings.clone());
        }),
    ));
    let median = |f: fn(&LoadTimings) -> u64| {
        let mut v: Vec<u64> = phases.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let swap_phases = serde_json::json!({
        "fetchUs": median(|t| t.fetch_us),
        "compileCacheHitUs": median(|t| t.compile_us),
        "bindUs": median(|t| t.bind_us),
        "describeUs": median(|t| t.describe_us),
        "checkUs": median(|t| t.check_us),
    });

    // Calls made while swaps run continuously on the other core.
    registry.apply(spec.clone())?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (registry, stop, spec, other) =
            (registry.clone(), stop.clone(), spec.clone(), other.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                registry
                    .apply(if n.is_multiple_of(2) {
                        other.clone()
                    } else {
                        spec.clone()
                    })
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let during = sample(100, 5_000, || {
        let a = registry.binding("proxy").unwrap().active().unwrap();
        let mut s = a.session(runtime, HostServices::default());
        s.instantiate().unwrap();
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    results.push(Summary::of(
        &format!("[default] instantiate while {swaps} swaps ran"),
        during,
    ));

    println!("proxy-nftables renders one Service with 10 endpoints into {items} plan items");
    for (label, .., cold) in &engines {
        println!(
            "[{label}] cold load (read, sha256, compile, bind, describe): {:.1} ms",
            cold.as_secs_f64() * 1e3
        );
    }
    println!("hot swap phases (median us): {swap_phases}\n");
    header();
    for r in &results {
        r.print();
    }

    #[derive(serde::Serialize)]
    struct Out<'a> {
        benchmark: &'static str,
        machine: switchyard_bench::Machine,
        module: &'static str,
        plan_items: usize,
        rounds: usize,
        cold_load_ms: Vec<(String, f64)>,
        swap_phases_median_us: serde_json::Value,
        results: &'a [Summary],
    }
    write_results(
        "runtime-calls",
        &Out {
            benchmark: "runtime-calls",
            machine: machine(),
            module: "proxy-nftables",
            plan_items: items,
            rounds: ROUNDS,
            cold_load_ms: engines
                .iter()
                .map(|(l, .., c)| (l.to_string(), c.as_secs_f64() * 1e3))
                .collect(),
            swap_phases_median_us: swap_phases,
            results: &results,
        },
    )?;
    Ok(())
}
