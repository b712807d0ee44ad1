//! A hostile service-proxy module for the host's test suite. It renders a
//! small valid plan, unless the Service carries the annotation
//! `hostile.switchyard.dev/behaviour`, which picks a way to misbehave:
//!
//! | behaviour | what the module does |
//! |---|---|
//! | `infinite-loop` | spins forever |
//! | `memory-bomb` | allocates 4 MiB at a time forever |
//! | `deep-recursion` | recurses a billion levels deep |
//! | `trap` | executes `unreachable` |
//! | `panic` | panics with a message |
//! | `huge-plan` | returns 2,000,000 plan items |
//! | `wide-plan` | returns 150,000 small items (fits in memory, not in the output cap) |
//! | `huge-string` | returns an error whose message is 32 MiB |
//! | `big-error` | returns an error whose message is 15 MiB (within the output cap) |
//! | `long-name` | returns a chain with a 100 KB name |
//! | `log-flood` | logs forever |
//! | `stdout-flood` | prints to stdout forever |
//! | `host-call-loop` | calls `probes.health` in a tight loop forever |
//! | `grant-violation` | returns a route, which a proxy is not granted |
//! | `concat-overlap` | renders well, plus a set of its own with overlapping concatenated intervals (the kernel refuses them) |
//! | `deep-chains` | renders well, but its chain jumps 20 chains deep (the kernel allows 16; the host does not check) |
//! | `ipvs-plan` | returns an IPVS service (granted, valid, not applied by the agent yet) |
//! | `dangling-reference` | jumps to a chain that does not exist |
//! | `foreign-vip` | dispatches 8.8.8.8:53/udp to the Service's first endpoint |
//! | `foreign-port` | dispatches its own address on 53/udp, which is no port of it |
//! | `foreign-backend` | sends its own address and port to 10.9.9.9, which is no endpoint |
//! | `foreign-backend-map` | the same through the host's backend map |
//! | `foreign-endpoint-port` | sends its own address and port to its first endpoint's port 22, which the endpoint does not serve for it |
//! | `foreign-hairpin` | masquerades 10.9.9.9 talking to itself |
//! | `foreign-ipvs` | an IPVS service on 10.96.0.250, which is not its address |
//! | `other-table` | opens its first endpoint in the policy table's `ingress-allow-all4` |
//! | `busy:N` | spins for N milliseconds, then renders normally |
//! | `sleep` | sleeps 10 s (`std::thread::sleep`: a WASI timer, no guest code runs) |
//! | `sleep-loop` | sleeps 1 ms at a time forever |

use std::hint::black_box;
use switchyard_sdk::host::probes;
use switchyard_sdk::plan::{Plan, Rule};
use switchyard_sdk::service_proxy::Guest;
use switchyard_sdk::types::*;

const BEHAVIOUR: &str = "hostile.switchyard.dev/behaviour";

struct Hostile;

fn recurse(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        black_box(recurse(black_box(n - 1))) + 1
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    std::process::abort()
}

fn element(i: u32) -> PlanItem {
    PlanItem {
        rule_id: String::new(),
        comment: None,
        shared: false,
        body: PlanBody::NftCounter(NftCounter {
            name: if i == 0 { "c".into() } else { String::new() },
        }),
    }
}

fn good(svc: &Service) -> PlanFragment {
    let mut p = Plan::new();
    let chain = format!("svc-{}", svc.name);
    p.chain("svc", &chain, vec![Rule::new().counter().accept()]);
    for ip in &svc.cluster_ips {
        if let (IpAddress::Ipv4(_), Some(port)) = (ip, svc.ports.first()) {
            p.element(
                "vip",
                "service-chains",
                vec![(*ip).into(), port.protocol.into(), port.port.into()],
                Some(NftVerdict::Goto(chain.clone()).into()),
            );
        }
    }
    p.build()
}

/// A fragment that reaches outside the Service it was called for, each
/// way a different one; the rest of it is an honest render.
fn escape(behaviour: &str, svc: &Service, eps: &[Endpoint]) -> PlanFragment {
    let mut p = Plan::new();
    let vip = svc.cluster_ips[0];
    let port = &svc.ports[0];
    let own = |v: IpAddress, proto: Protocol, port: u16| -> Vec<NftValue> {
        vec![v.into(), proto.into(), port.into()]
    };
    let first = eps[0].address;
    let foreign: IpAddress = "10.9.9.9".parse().unwrap();
    // DNAT to `target` (keeping the destination port), from the
    // Service-chains element `key`.
    let to = |p: &mut Plan, chain: &str, target: IpAddress, key: Vec<NftValue>| {
        p.chain("svc", chain, vec![Rule::new().dnat(target, None)]);
        p.element(
            "dispatch",
            "service-chains",
            key,
            Some(NftVerdict::Goto(chain.into()).into()),
        );
    };
    match behaviour {
        "foreign-vip" => to(
            &mut p,
            "svc-dns",
            first,
            own("8.8.8.8".parse().unwrap(), Protocol::Udp, 53),
        ),
        "foreign-port" => to(&mut p, "svc-53", first, own(vip, Protocol::Udp, 53)),
        "foreign-backend" => to(
            &mut p,
            "svc-away",
            foreign,
            own(vip, port.protocol, port.port),
        ),
        "foreign-endpoint-port" => {
            let rule = Rule::new().eq(NftField::MetaL4proto, port.protocol);
            p.chain("svc", "svc-ssh", vec![rule.dnat(first, Some(22))]);
            p.element(
                "dispatch",
                "service-chains",
                own(vip, port.protocol, port.port),
                Some(NftVerdict::Goto("svc-ssh".into()).into()),
            );
        }
        "foreign-backend-map" => {
            let mut key = own(vip, port.protocol, port.port);
            key.push(NftValue::Number(0));
            p.element(
                "backend",
                "backends4-tcp",
                key,
                Some(NftMapValue::Data(vec![foreign.into(), 8080u16.into()])),
            );
        }
        "foreign-hairpin" => {
            p.shared(
                "hairpin",
                PlanBody::NftElement(NftElement {
                    set: "hairpin4".into(),
                    key: vec![foreign.into(), foreign.into()],
                    value: None,
                }),
            );
        }
        "foreign-ipvs" => {
            p.ipvs_service(
                "ipvs",
                IpvsService {
                    address: "10.96.0.250".parse().unwrap(),
                    port: port.port,
                    protocol: port.protocol,
                    scheduler: "rr".into(),
                    persistence_timeout: None,
                    destinations: vec![IpvsDestination {
                        address: first,
                        port: 8080,
                        weight: 1,
                        forwarding: IpvsForwarding::Masquerade,
                    }],
                },
            );
        }
        _ => {
            p.element(
                "open",
                "ingress-allow-all4",
                vec![first.into(), "0.0.0.0/0".parse::<IpCidr>().unwrap().into()],
                None,
            );
        }
    }
    p.build()
}

impl Guest for Hostile {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "hostile-proxy",
            env!("CARGO_PKG_VERSION"),
            Role::ServiceProxy,
            "Misbehaves on request; for testing the host.",
            r#"{"type": "object"}"#,
        )
    }

    fn render_service(
        _ctx: NodeContext,
        svc: Service,
        eps: Vec<Endpoint>,
        _config: String,
    ) -> Result<PlanFragment, ModuleError> {
        let behaviour = switchyard_sdk::labels::get(&svc.annotations, BEHAVIOUR)
            .unwrap_or("none")
            .to_string();
        match behaviour.as_str() {
            "none" => Ok(good(&svc)),
            "infinite-loop" => {
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                // Grows linear memory 4 MiB at a time (the cap is enforced at
                // memory.grow; touching the pages would only add page faults).
                let mut hoard: Vec<Vec<u8>> = vec![];
                loop {
                    hoard.push(black_box(Vec::with_capacity(4 << 20)));
                }
            }
            "deep-recursion" => Ok(PlanFragment {
                items: vec![element(recurse(1_000_000_000) as u32)],
            }),
            "trap" => trap(),
            "panic" => panic!("hostile-proxy panics on purpose for Service {}", svc.name),
            "huge-plan" => {
                let mut items = Vec::with_capacity(2_000_000);
                for i in 0..2_000_000 {
                    items.push(element(i));
                }
                Ok(PlanFragment { items })
            }
            "wide-plan" => {
                let mut items = Vec::with_capacity(150_000);
                for i in 0..150_000 {
                    items.push(element(i));
                }
                Ok(PlanFragment { items })
            }
            "huge-string" => Err(ModuleError::Internal("x".repeat(32 << 20))),
            "big-error" => Err(ModuleError::Internal("x".repeat(15 << 20))),
            "long-name" => {
                let mut p = Plan::new();
                p.chain("svc", "c".repeat(100_000), vec![]);
                Ok(p.build())
            }
            "log-flood" => loop {
                switchyard_sdk::info!("flooding the log from Service {}", svc.name);
            },
            "stdout-flood" => loop {
                println!("flooding stdout from Service {}", svc.name);
            },
            "host-call-loop" => {
                let ip = IpAddress::Ipv4((10, 0, 0, 1));
                loop {
                    black_box(probes::health(ip, 80));
                }
            }
            "grant-violation" => {
                let mut p = Plan::new();
                p.route(
                    "steal",
                    Route {
                        destination: "0.0.0.0/0".parse().unwrap(),
                        gateway: Some("192.0.2.1".parse().unwrap()),
                        device: None,
                        source: None,
                        table: None,
                        mtu: None,
                    },
                );
                Ok(p.build())
            }
            "deep-chains" => {
                // The Service's chain jumps d0 -> d1 -> ... -> d19.
                let mut p = Plan::new();
                let chain = format!("svc-{}", svc.name);
                p.chain("svc", &chain, vec![Rule::new().jump("d0")]);
                for i in 0..20 {
                    let rule = if i < 19 {
                        Rule::new().jump(format!("d{}", i + 1))
                    } else {
                        Rule::new().counter().accept()
                    };
                    p.chain("deep", format!("d{i}"), vec![rule]);
                }
                let mut f = good(&svc);
                f.items
                    .retain(|i| !matches!(&i.body, PlanBody::NftChain(c) if c.name == chain));
                f.items.extend(p.build().items);
                Ok(f)
            }
            "concat-overlap" => {
                // Valid by every check the host makes, refused by the
                // kernel: overlapping intervals in a concatenated set.
                let mut f = good(&svc);
                let mut p = Plan::new();
                p.set(
                    "overlap",
                    "ov",
                    vec![NftType::Ipv4Addr, NftType::InetService],
                    NftSetFlags::INTERVAL,
                    None,
                );
                for (net, len, lo, hi) in [((10, 0, 0, 0), 8, 80, 90), ((10, 1, 0, 0), 16, 85, 95)]
                {
                    p.element(
                        "overlap",
                        "ov",
                        vec![
                            NftValue::Prefix(IpCidr {
                                address: IpAddress::Ipv4(net),
                                prefix_len: len,
                            }),
                            NftValue::PortRange((lo, hi)),
                        ],
                        None,
                    );
                }
                f.items.extend(p.build().items);
                Ok(f)
            }
            "ipvs-plan" => {
                let mut p = Plan::new();
                p.ipvs_service(
                    "vs",
                    IpvsService {
                        address: svc.cluster_ips[0],
                        port: svc.ports[0].port,
                        protocol: svc.ports[0].protocol,
                        scheduler: "rr".into(),
                        persistence_timeout: None,
                        destinations: vec![],
                    },
                );
                Ok(p.build())
            }
            "dangling-reference" => {
                let mut p = Plan::new();
                p.chain("svc", "svc-x", vec![Rule::new().jump("nowhere")]);
                Ok(p.build())
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(10));
                Ok(good(&svc))
            }
            "sleep-loop" => loop {
                std::thread::sleep(std::time::Duration::from_millis(1));
            },
            b if b.starts_with("foreign-") || b == "other-table" => Ok(escape(b, &svc, &eps)),
            b if b.starts_with("busy:") => {
                let ms: u64 = b[5..]
                    .parse()
                    .map_err(|_| ModuleError::InvalidInput(format!("bad {b}")))?;
                let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
                while std::time::Instant::now() < until {
                    black_box(0);
                }
                Ok(good(&svc))
            }
            other => Err(ModuleError::InvalidInput(format!(
                "unknown behaviour {other:?}"
            ))),
        }
    }
}

switchyard_sdk::export_service_proxy!(Hostile);
