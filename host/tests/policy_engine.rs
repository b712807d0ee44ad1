//! The policy engine against the kernel, in a namespace of its own: the
//! built-in module renders policies, the host merges overlapping boxes and
//! loads the table, deltas apply, and traffic is judged. Pods are
//! addresses on a veth; a connection from one to another takes the output
//! and input hooks, where input judges the sender's egress. Needs root.

mod common;

use common::netns::{Netns, require_root, sh};
use common::{builtin, env};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::datapath::netlink::in_netns;
use switchyard::datapath::nft::Nft;
use switchyard::model::{ObjectKind, ObjectRef, Role};
use switchyard::policy::engine::PolicyEngine;
use switchyard::policy::{PolicyInput, WasmModule};
use switchyard::runtime::{wit_cidr, wit_ip};

fn ip(a: &str) -> IpAddress {
    wit_ip(a.parse().unwrap())
}

fn pod(name: &str, addr: &str) -> Pod {
    Pod {
        namespace: "p".into(),
        name: name.into(),
        uid: name.into(),
        labels: vec![],
        ips: vec![ip(addr)],
        node: "node-1".into(),
        host_network: false,
        ports: vec![],
        phase: PodPhase::Running,
        ready: true,
    }
}

fn cidr(c: &str) -> AddressSet {
    AddressSet {
        cidrs: vec![wit_cidr(c.parse().unwrap())],
        except: vec![],
    }
}

/// An egress policy for `selected` allowing TCP `ports` to `to`.
fn egress(name: &str, selected: &[Pod], to: &str, ports: (u16, u16)) -> Policy {
    Policy {
        namespace: "p".into(),
        name: name.into(),
        annotations: vec![],
        selected: selected.to_vec(),
        directions: vec![PolicyDirection::Egress],
        ingress: vec![],
        egress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                description: format!("ipBlock {to}"),
                addresses: cidr(to),
            }],
            ports: vec![PortRange {
                protocol: Protocol::Tcp,
                first: ports.0,
                last: ports.1,
            }],
            named_ports: vec![],
        }],
    }
}

fn connects(ns: &Netns, from: &str, to: &str, port: u16) -> bool {
    in_netns(&ns.path, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into())?;
        let to: SocketAddr = SocketAddr::new(to.parse().unwrap(), port);
        Ok::<bool, std::io::Error>(
            s.connect_timeout(&to.into(), Duration::from_millis(500))
                .is_ok(),
        )
    })
    .unwrap()
}

fn counter(ns: &Netns, name: &str) -> u64 {
    let out = sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "nft",
            "list",
            "counter",
            "inet",
            "switchyard-policy",
            name,
        ],
    );
    common::counter_packets(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_policies_merge_apply_incrementally_and_count_drops() {
    require_root();
    let ns = pods_ns("poleng", &[80, 81, 90]);

    let (_e, mut engine) = kubernetes_engine(&ns).await;
    let a = pod("a", "10.244.1.2");
    let keep = BTreeSet::new();

    // Nothing selects a: everything goes.
    engine.set_policies(vec![], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none(), "{r:?}");
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 90));

    // Two overlapping policies: 10.244.0.0/16 ports 80-81, and
    // 10.244.1.0/24 port 81 and 10.244.1.3/32 ports 81-90. The kernel
    // refuses overlapping elements; the host merges them.
    let p1 = egress("wide", std::slice::from_ref(&a), "10.244.0.0/16", (80, 81));
    let mut p2 = egress(
        "narrow",
        std::slice::from_ref(&a),
        "10.244.1.0/24",
        (81, 81),
    );
    p2.egress
        .push(egress("x", &[], "10.244.1.3/32", (81, 90)).egress.remove(0));
    // SCTP rules load too (this kernel has no SCTP sockets to test with).
    let mut sctp = egress("x", &[], "10.244.1.0/24", (5000, 5010))
        .egress
        .remove(0);
    sctp.ports[0].protocol = Protocol::Sctp;
    p2.egress.push(sctp);
    engine.set_policies(vec![p1.clone().into(), p2.clone().into()], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none(), "{r:?}");
    assert!(engine.errors().is_empty(), "{:?}", engine.errors());
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 80));
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 81));
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 90));
    let table = sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "nft",
            "list",
            "set",
            "inet",
            "switchyard-policy",
            "egress-allow4",
        ],
    );
    assert!(
        table.contains("10.244.1.2 . 10.244.1.0/24 . sctp . 5000-5010"),
        "{table}"
    );
    // Not selected: b is not isolated.
    assert!(connects(&ns, "10.244.1.4", "10.244.1.3", 90));

    // Drop p2 (a delta): port 90 is no longer allowed, 80 still is; the
    // drop counts for the one policy left isolating a.
    engine.set_policies(vec![p1.clone().into()], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none() && !r.full, "{r:?}");
    let before = counter(&ns, "egress.p.wide");
    // Drops are logged to NFLOG with the drop chain's name, which names the
    // policies isolating the pod.
    let mut nflog = in_netns(&ns.path, || {
        switchyard::datapath::nflog::Nflog::bind(switchyard::datapath::nflog::POLICY_DROP_GROUP)
    })
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(batch) = nflog.recv() {
            if tx.send(batch).is_err() {
                break;
            }
        }
    });
    assert!(!connects(&ns, "10.244.1.2", "10.244.1.3", 90));
    let logged = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a logged drop");
    let p = &logged[0];
    assert_eq!(
        (
            p.source.to_string(),
            p.destination.to_string(),
            p.protocol,
            p.destination_port
        ),
        ("10.244.1.2".to_string(), "10.244.1.3".to_string(), 6, 90),
        "{logged:?}"
    );
    let chains = engine.snapshot().read().chains.clone();
    assert_eq!(
        chains
            .get(p.prefix.trim())
            .map(|v| v.iter().map(|o| o.name.clone()).collect::<Vec<_>>()),
        Some(vec!["wide".to_string()]),
        "{p:?} {chains:?}"
    );
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 80));
    assert!(counter(&ns, "egress.p.wide") > before);
    // The same counter, as metrics.
    let counters = in_netns(&ns.path, || Ok(switchyard::policy::engine::read_counters()))
        .unwrap()
        .unwrap();
    let wide = counters
        .iter()
        .find(|c| c.policy == "wide" && c.namespace == "p" && !c.monitor)
        .unwrap_or_else(|| panic!("{counters:?}"));
    assert_eq!(wide.direction, "egress");
    assert!(wide.packets > 0);
    let text = switchyard::policy::engine::metrics_text(&counters);
    assert!(
        text.contains(&format!(
            "switchyard_policy_drops_total{{kind=\"NetworkPolicy\",namespace=\"p\",policy=\"wide\",direction=\"egress\",mode=\"enforce\"}} {}",
            wide.packets
        )),
        "{text}"
    );

    // A policy that could not be resolved this time stays in force.
    let mut keep_wide = BTreeSet::new();
    keep_wide.insert(switchyard::policy::engine::policy_ref(&p1));
    engine.set_policies(vec![], &keep_wide);
    engine.sync().await;
    assert!(!connects(&ns, "10.244.1.2", "10.244.1.3", 90));

    // Monitor mode: the same policy counts what it would drop, drops nothing.
    let mut m = p1.clone();
    m.annotations = vec![("switchyard.dev/policy-mode".into(), "monitor".into())];
    engine.set_policies(vec![m.into()], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none(), "{r:?}");
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 90));
    assert!(counter(&ns, "egress-monitor.p.wide") >= 1);

    // Gone: nothing is isolated, and the table is empty of policy state.
    engine.set_policies(vec![], &keep);
    engine.sync().await;
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 90));
    let table = sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "nft",
            "list",
            "table",
            "inet",
            "switchyard-policy",
        ],
    );
    assert!(!table.contains("10.244.1.2"), "{table}");
}

/// An engine with the built-in policy-kubernetes module, writing the
/// policy table of `ns` (the environment must outlive it).
async fn kubernetes_engine(ns: &Netns) -> (common::Env, PolicyEngine) {
    let e = env();
    e.registry
        .apply_async(builtin(
            "policy-kubernetes",
            "policy-kubernetes",
            Role::NetworkPolicy,
        ))
        .await
        .unwrap();
    let mut engine = PolicyEngine::new(
        e.registry.clone(),
        Arc::new(Nft::new(Some(ns.path.clone()))),
    );
    engine.set_context(common::ctx());
    (e, engine)
}

fn list_set(ns: &Netns, set: &str) -> String {
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "nft",
            "list",
            "set",
            "inet",
            "switchyard-policy",
            set,
        ],
    )
}

/// Boxes of one peer address and one port go to the allow set's hash-set
/// twin, where each policy holds its own elements: two policies allowing
/// the same are one element, which leaves with the last of them, each
/// change a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_boxes_are_shared_between_policies_and_leave_with_the_last() {
    require_root();
    let ns = pods_ns("polexact", &[80, 81]);
    let (_e, mut engine) = kubernetes_engine(&ns).await;
    let a = pod("a", "10.244.1.2");
    let keep = BTreeSet::new();
    let one = egress("one", std::slice::from_ref(&a), "10.244.1.3/32", (80, 80));
    let mut two = egress("two", std::slice::from_ref(&a), "10.244.1.3/32", (80, 80));
    two.egress
        .push(egress("x", &[], "10.244.1.3/32", (81, 81)).egress.remove(0));
    let exact = "10.244.1.2 . 10.244.1.3 . tcp . 80";

    engine.set_policies(vec![one.clone().into(), two.clone().into()], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none(), "{r:?}");
    assert!(engine.errors().is_empty(), "{:?}", engine.errors());
    let set = list_set(&ns, "egress-allow-exact4");
    assert_eq!(set.matches(exact).count(), 1, "{set}");
    assert!(set.contains("10.244.1.2 . 10.244.1.3 . tcp . 81"), "{set}");
    let merged = list_set(&ns, "egress-allow4");
    assert!(!merged.contains("10.244.1.2"), "{merged}");
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 80));
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 81));

    // `two` goes: `one` still holds port 80.
    engine.set_policies(vec![one.clone().into()], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none() && !r.full, "{r:?}");
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 80));
    assert!(!connects(&ns, "10.244.1.2", "10.244.1.3", 81));
    assert_eq!(
        list_set(&ns, "egress-allow-exact4").matches(exact).count(),
        1
    );

    // `two` back and `one` gone, in one sync: port 80 stays allowed.
    engine.set_policies(vec![two.clone().into()], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none() && !r.full, "{r:?}");
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 80));
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 81));

    // The last goes: the pod is no longer isolated and the set is empty.
    engine.set_policies(vec![], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none() && !r.full, "{r:?}");
    let set = list_set(&ns, "egress-allow-exact4");
    assert!(!set.contains("10.244.1.2"), "{set}");
}

/// A namespace with a veth holding pod addresses 10.244.1.2-4, and TCP
/// listeners on 10.244.1.3 at `ports`.
fn pods_ns(name: &str, ports: &[u16]) -> Netns {
    let ns = Netns::new(name);
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.ip(&["link", "set", "d0", "up"]);
    ns.ip(&["link", "set", "d1", "up"]);
    for a in ["10.244.1.2/32", "10.244.1.3/32", "10.244.1.4/32"] {
        ns.ip(&["addr", "add", a, "dev", "d0"]);
    }
    let listeners: Vec<TcpListener> = in_netns(&ns.path, || {
        ports
            .iter()
            .map(|p| TcpListener::bind(("10.244.1.3", *p)))
            .collect::<std::io::Result<Vec<_>>>()
    })
    .unwrap();
    for l in listeners {
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
    }
    ns
}

/// A WasmNetworkPolicy is rendered by the module it names with its own
/// config: before the module is loaded its pods are isolated (nothing was
/// installed to keep); a referenced-only module never becomes the
/// NetworkPolicy module; a config the module's schema refuses keeps what is
/// in force; its drops count into its own counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_policies_render_with_the_module_they_name() {
    require_root();
    let ns = pods_ns("polwasm", &[80, 90]);
    let e = env();
    let mut engine = PolicyEngine::new(
        e.registry.clone(),
        Arc::new(Nft::new(Some(ns.path.clone()))),
    );
    engine.set_context(common::ctx());
    let keep = BTreeSet::new();
    let object = ObjectRef::new(ObjectKind::WasmNetworkPolicy, "p", "allow-list");
    let input = |config: serde_json::Value| PolicyInput {
        object: object.clone(),
        policy: Policy {
            directions: vec![PolicyDirection::Egress],
            egress: vec![],
            ..egress("allow-list", &[pod("a", "10.244.1.2")], "0.0.0.0/0", (1, 1))
        },
        module: Some(WasmModule {
            name: "allow".into(),
            config: Some(config),
        }),
    };
    let good =
        serde_json::json!({"cidrs": ["10.244.1.3/32"], "ports": [{"port": 80}], "allowDns": false});

    // The module is not loaded: a is isolated, nothing allowed.
    engine.set_policies(vec![input(good.clone())], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none(), "{r:?}");
    let err = engine.errors().get(&object).cloned().unwrap_or_default();
    assert!(
        err.contains("spec.module: NetworkModule \"allow\" is not loaded"),
        "{err}"
    );
    assert!(!connects(&ns, "10.244.1.2", "10.244.1.3", 80));
    assert!(connects(&ns, "10.244.1.4", "10.244.1.3", 90));

    // Loaded (referenced-only): the policy renders with its config.
    let mut spec = builtin("allow", "example-egress-allowlist", Role::NetworkPolicy);
    spec.referenced_only = true;
    e.registry.apply_async(spec).await.unwrap();
    assert!(e.registry.active_for(Role::NetworkPolicy).is_none());
    engine.set_policies(vec![input(good.clone())], &keep);
    let r = engine.sync().await;
    assert!(r.error.is_none() && r.rendered == 1, "{r:?}");
    assert!(engine.errors().is_empty(), "{:?}", engine.errors());
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 80));
    assert!(!connects(&ns, "10.244.1.2", "10.244.1.3", 90));
    assert!(counter(&ns, "egress-wasm.p.allow-list") >= 1);

    // A config the schema refuses: reported, and the policy stays.
    engine.set_policies(vec![input(serde_json::json!({"cidrs": 5}))], &keep);
    engine.sync().await;
    let err = engine.errors().get(&object).cloned().unwrap_or_default();
    assert!(
        err.starts_with("WasmNetworkPolicy p/allow-list: spec.config:")
            && err.contains("config.cidrs"),
        "{err}"
    );
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 80));
    assert!(!connects(&ns, "10.244.1.2", "10.244.1.3", 90));

    // Gone: a connects everywhere again.
    engine.set_policies(vec![], &keep);
    engine.sync().await;
    assert!(connects(&ns, "10.244.1.2", "10.244.1.3", 90));
}
