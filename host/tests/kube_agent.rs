//! The agent in cluster mode against a scripted API server on loopback:
//! it loads the NetworkModules the API server holds, writes its node's
//! result into each one's status with server-side apply, takes the status
//! Lease and summarizes; a NetworkModule swap changes the module serving on
//! the node; a bad version is reported (status, conditions, an Event) while
//! the old one keeps serving. The Service and the NetworkPolicy it lists
//! reach the proxy and policy tables, and the Nodes and the ClusterNetwork
//! node networking (VXLAN or routes, masquerade), all in a network
//! namespace of the test's own. Needs root.

mod common;

use common::apiserver::FakeApiServer;
use common::netns::{Netns, require_root, sh};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::agent::cluster::{self, ClusterOptions};
use switchyard::agent::{Agent, AgentOptions};
use switchyard::model::Role;
use switchyard::source::kube;

const V: &str = "switchyard.dev/v1alpha1";

fn fixtures() -> Vec<Value> {
    serde_json::from_str(include_str!("fixtures/kube/objects.json")).unwrap()
}

/// Wait (at most 20 s) until `ok` holds.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not within 20 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn module(name: &str, generation: i64, priority: i32, source: Value) -> Value {
    json!({"apiVersion": V, "kind": "NetworkModule",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": generation,
            "creationTimestamp": "2026-11-24T10:00:00Z"},
        "spec": {"role": "service-proxy", "source": source, "priority": priority}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_swaps_and_failures_reach_status_and_events() {
    require_root();
    let ns = Netns::new("kagent");
    let table = |name: &str| {
        sh(
            "ip",
            &[
                "netns", "exec", &ns.name, "nft", "list", "table", "inet", name,
            ],
        )
    };
    // The node's uplink holds its InternalIP (the fixture Node's), as a
    // cluster node's does: node networking finds it by that address.
    let ip = |args: &[&str]| {
        let mut a = vec!["netns", "exec", &ns.name, "ip"];
        a.extend_from_slice(args);
        sh("ip", &a)
    };
    // (A veth pair within the namespace: this kernel has no dummy links.)
    ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ]);
    ip(&["addr", "add", "192.168.49.2/24", "dev", "eth0"]);
    ip(&["link", "set", "eth0-peer", "up"]);
    ip(&["link", "set", "eth0", "up"]);
    let api = FakeApiServer::start().await;
    for o in fixtures() {
        api.apply_silently(o);
    }
    let client = api.client();
    let mut rx = kube::start(client.clone(), "switchyard-system");
    let first = cluster::first_snapshot(&mut rx).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = AgentOptions {
        data_dir: dir.path().join("data"),
        local: None,
        node: "node-1".into(),
        cni_socket: dir.path().join("cni.sock"),
        pod_cidrs: vec![],
        extra_pools: vec![],
        fuel: false,
        compile_deadline: switchyard::runtime::COMPILE_DEADLINE,
        sticky_ttl: Duration::from_secs(600),
    };
    let agent = Arc::new(Agent::start_with(options, &first).await.unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follow = tokio::spawn(cluster::follow(
        agent.clone(),
        client,
        rx,
        ClusterOptions {
            namespace: "switchyard-system".into(),
            lease_seconds: 15,
            interval: Duration::from_millis(200),
            admin: None,
            netns: Some(ns.name.clone()),
            kubelet: None,
            cluster_name: "kubernetes".into(),
            ..Default::default()
        },
        async {
            let _ = stopped.await;
        },
    ));
    let status = |name: &str| {
        api.object(V, "NetworkModule", "", name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    };

    // The fixture's module serves; this node's entry says so, written with
    // server-side apply under the node's own field manager.
    until("node-1's Ready entry for proxy", || {
        let s = status("proxy");
        s["nodeResults"][0]["node"] == "node-1"
            && s["nodeResults"][0]["state"] == "Ready"
            && s["nodeResults"][0]["observedGeneration"] == 2
    })
    .await;
    let digest = status("proxy")["nodeResults"][0]["digest"].clone();
    assert!(digest.as_str().is_some_and(|d| d.len() == 64), "{digest}");
    let apply = api
        .seen()
        .into_iter()
        .find(|r| {
            r.method == "PATCH"
                && r.path == "/apis/switchyard.dev/v1alpha1/networkmodules/proxy/status"
        })
        .unwrap();
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert!(
        apply
            .query
            .contains("fieldManager=switchyard-agent%2Fnode-1"),
        "{}",
        apply.query
    );
    assert!(apply.query.contains("force=true"), "{}", apply.query);

    // The Service and the NetworkPolicy of the API server are in the
    // node's tables: the ClusterIP to its endpoint, the selected pod
    // isolated.
    until("the Service in the proxy table", || {
        let t = table("switchyard-proxy");
        t.contains("10.96.14.3") && t.contains("10.244.1.7")
    })
    .await;
    // Whether the pod's address is an element of a set of the policy table.
    let isolated = |set: &str| {
        let t = table("switchyard-policy");
        t.split(&format!("set {set} {{"))
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .is_some_and(|body| body.contains("10.244.1.7"))
    };
    until("the NetworkPolicy in the policy table", || {
        isolated("ingress-isolated4")
    })
    .await;

    // The only agent takes the Lease and summarizes.
    until("the leader's summary of proxy", || {
        let s = status("proxy");
        s["conditions"][0]["type"] == "Ready"
            && s["conditions"][0]["status"] == "True"
            && s["nodes"] == json!({"desired": 1, "ready": 1, "degraded": 0})
            && s["observedGeneration"] == 2
            && s["digest"] == digest
    })
    .await;
    let lease = api
        .single("/apis/coordination.k8s.io/v1/namespaces/switchyard-system/leases/switchyard-status-leader")
        .expect("the Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "node-1");
    assert!(
        api.seen().iter().any(|r| r.method == "PATCH"
            && r.path.ends_with("/networkmodules/proxy/status")
            && r.query.contains("fieldManager=switchyard-status-leader")),
        "the summary was not applied under the leader's field manager"
    );

    // A swap: a NetworkModule of the same role with a higher priority now
    // serves Services on the node.
    api.apply(module(
        "proxy-v2",
        1,
        20,
        json!({"builtin": "proxy-nftables"}),
    ));
    until("proxy-v2 serving", || {
        agent
            .registry
            .active_for(Role::ServiceProxy)
            .is_some_and(|a| a.spec.name == "proxy-v2")
    })
    .await;

    // A bad version: reported, and the last good one keeps serving.
    api.apply(module(
        "proxy-v2",
        2,
        20,
        json!({"file": "/nonexistent/proxy.wasm"}),
    ));
    until("node-1's Degraded entry for proxy-v2", || {
        let s = status("proxy-v2");
        s["nodeResults"][0]["state"] == "Degraded"
            && s["nodeResults"][0]["observedGeneration"] == 2
            && s["nodeResults"][0]["reason"] == "FetchFailed"
    })
    .await;
    let serving = agent.registry.active_for(Role::ServiceProxy).unwrap();
    assert_eq!(serving.spec.name, "proxy-v2");
    assert_eq!(
        serving.spec.generation, 1,
        "the old version must keep serving"
    );
    until("the Degraded condition of proxy-v2", || {
        let s = status("proxy-v2");
        let degraded = s["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Degraded")
            .cloned()
            .unwrap_or(Value::Null);
        degraded["status"] == "True"
            && degraded["reason"] == "FetchFailed"
            && s["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("/nonexistent/proxy.wasm"))
    })
    .await;
    let event = api
        .seen()
        .into_iter()
        .find(|r| {
            r.method == "POST" && r.path.ends_with("/events") && r.body.contains("ModuleLoadFailed")
        })
        .expect("an Event for the failure");
    let ev: Value = serde_json::from_str(&event.body).unwrap();
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["name"], "proxy-v2");
    assert!(ev["note"].as_str().unwrap().contains("FetchFailed"), "{ev}");

    // A module kept in a ConfigMap of the agents' namespace: loaded from
    // the bytes the cluster holds, reported with their digest.
    let wasm = std::fs::read(
        switchyard::modules::ALL
            .iter()
            .find(|(n, _)| *n == "example-scheduler")
            .unwrap()
            .1,
    )
    .unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&wasm))
    };
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("modules".into()),
            namespace: Some("switchyard-system".into()),
            ..Default::default()
        },
        binary_data: Some(
            [(
                "least-latency.wasm".to_string(),
                k8s_openapi::ByteString(wasm),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let mut cm = serde_json::to_value(&cm).unwrap();
    cm["apiVersion"] = json!("v1");
    cm["kind"] = json!("ConfigMap");
    api.apply(cm);
    let scheduler = |key: &str| {
        let mut m = module(
            "sched",
            1,
            0,
            json!({"configMap": {"name": "modules", "key": key}}),
        );
        m["spec"]["role"] = json!("scheduler");
        m
    };
    api.apply(scheduler("least-latency.wasm"));
    until("the scheduler from the ConfigMap", || {
        let s = status("sched");
        s["nodeResults"][0]["state"] == "Ready" && s["nodeResults"][0]["digest"] == digest
    })
    .await;
    let mut missing = scheduler("nope.wasm");
    missing["metadata"]["generation"] = json!(2);
    api.apply(missing);
    until("a missing ConfigMap key reported", || {
        let s = status("sched");
        s["nodeResults"][0]["state"] == "Degraded"
            && s["nodeResults"][0]["message"].as_str().is_some_and(|m| {
                m.contains("no ConfigMap \"modules\" with binaryData key \"nope.wasm\"")
            })
    })
    .await;

    // The WasmNetworkPolicy of the fixtures names a module no NetworkModule
    // provides: it is reported, and its pod is isolated for egress (a
    // policy that never rendered is closed).
    until("the unrendered WasmNetworkPolicy closed", || {
        isolated("egress-isolated4")
    })
    .await;
    // Its status says so: node-1's entry and the leader's summary.
    let wnp = || {
        api.object(V, "WasmNetworkPolicy", "shop", "restricted-egress")
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    };
    until("the WasmNetworkPolicy's Degraded summary", || {
        let s = wnp();
        let degraded = s["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Degraded")
            .cloned()
            .unwrap_or(Value::Null);
        s["nodeResults"][0]["node"] == "node-1"
            && s["nodeResults"][0]["state"] == "Degraded"
            && s["nodeResults"][0]["reason"] == "NotEnforced"
            && degraded["status"] == "True"
            && s["nodes"] == json!({"desired": 1, "ready": 0, "degraded": 1})
    })
    .await;
    let message = wnp()["nodeResults"][0]["message"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("egress-allowlist")),
        "the entry names the missing module: {message}"
    );
    // The NetworkPolicy goes: its pod is not isolated for ingress any more.
    api.delete(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "shop",
        "web-from-shop",
        false,
    );
    until("the pod no longer isolated for ingress", || {
        !isolated("ingress-isolated4")
    })
    .await;
    assert!(isolated("egress-isolated4"));

    // Node networking: the fixture ClusterNetwork is the overlay (VNI
    // 4242); node-1 alone has its VXLAN device over eth0 and masquerades
    // pods leaving the cluster.
    let vxlan = || ip(&["-d", "-o", "link", "show", "sy-vxlan"]);
    until("the VXLAN device", || {
        common::netns::run(
            "ip",
            &["netns", "exec", &ns.name, "ip", "link", "show", "sy-vxlan"],
        )
        .status
        .success()
    })
    .await;
    let first = vxlan();
    assert!(first.contains("vxlan id 4242"), "{first}");
    assert!(first.contains("local 192.168.49.2 dev eth0"), "{first}");
    assert!(first.contains("mtu 1450"), "{first}");
    let cnet = || {
        api.object(V, "ClusterNetwork", "", "default")
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    };
    until(
        "the ClusterNetwork Ready on node-1 and in the summary",
        || {
            let s = cnet();
            s["nodeResults"][0]["node"] == "node-1"
                && s["nodeResults"][0]["state"] == "Ready"
                && s["nodeResults"][0]["observedGeneration"] == 1
                && s["conditions"][0]["type"] == "Ready"
                && s["conditions"][0]["status"] == "True"
                && s["nodes"] == json!({"desired": 1, "ready": 1, "degraded": 0})
        },
    )
    .await;
    let node_table = table("switchyard-node");
    assert!(
        node_table.contains("oifname \"eth0\" ip saddr @cluster4 ip daddr != @cluster4 masquerade"),
        "{node_table}"
    );
    // A second Node: a VTEP neighbour, an FDB entry to its InternalIP and
    // an on-link route for its pod CIDR, on the same device.
    api.apply(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-2", "uid": "node-2-uid", "labels": {"kubernetes.io/hostname": "node-2"}},
        "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.49.3"}]}}));
    let route = "10.244.2.0/24 via 10.244.2.0 dev sy-vxlan proto 83 onlink";
    until("the route to node-2's pods over VXLAN", || {
        ip(&["route", "show", "10.244.2.0/24"]).contains(route)
    })
    .await;
    let fdb = sh(
        "ip",
        &[
            "netns", "exec", &ns.name, "bridge", "fdb", "show", "dev", "sy-vxlan",
        ],
    );
    assert!(fdb.contains("dst 192.168.49.3"), "{fdb}");
    let index = |s: &str| s.split(':').next().unwrap().to_string();
    assert_eq!(
        index(&vxlan()),
        index(&first),
        "a new peer must not recreate the device"
    );
    // The flat model: the device goes, node-2's pods are routed via its
    // InternalIP on the uplink.
    let mut network = fixtures()
        .into_iter()
        .find(|o| o["kind"] == "ClusterNetwork")
        .unwrap();
    network["metadata"]["generation"] = json!(2);
    network["spec"]["model"] = json!("flat");
    api.apply(network);
    until("the route to node-2's pods via its InternalIP", || {
        ip(&["route", "show", "10.244.2.0/24"])
            .contains("10.244.2.0/24 via 192.168.49.3 dev eth0 proto 83")
    })
    .await;
    assert!(
        !common::netns::run(
            "ip",
            &["netns", "exec", &ns.name, "ip", "link", "show", "sy-vxlan"],
        )
        .status
        .success(),
        "the VXLAN device outlived the overlay"
    );
    until(
        "node-1's entry at the ClusterNetwork's generation 2",
        || {
            let s = cnet();
            s["nodeResults"][0]["state"] == "Ready"
                && s["nodeResults"][0]["observedGeneration"] == 2
        },
    )
    .await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), follow)
        .await
        .expect("follow stops")
        .unwrap();
}
