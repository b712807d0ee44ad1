//! The status of ClusterNetworks and WasmNetworkPolicies against a scripted
//! API server on loopback (real HTTP, kube's own client): two nodes' agents
//! apply their own `nodeResults` entries (server-side apply, each under its
//! own field manager) and the entries merge; a new failure is a Warning
//! Event, once; the leader summarizes the entries into conditions and
//! counts, and writes only what changed; a refused write is reported and
//! retried, a deleted object is dropped.

mod common;

use common::apiserver::{FakeApiServer, Seen};
use serde_json::{Value, json};
use std::time::Duration;
use switchyard::agent::status::objects::{
    ObjectResult, ObjectStatusWriter, StatusObject, summarize_objects,
};

const V: &str = "switchyard.dev/v1alpha1";
const CN_STATUS: &str = "/apis/switchyard.dev/v1alpha1/clusternetworks/default/status";
const WNP_STATUS: &str =
    "/apis/switchyard.dev/v1alpha1/namespaces/shop/wasmnetworkpolicies/restricted-egress/status";

type Results = Vec<ObjectResult>;

fn fixtures() -> Vec<Value> {
    serde_json::from_str(include_str!("fixtures/kube/objects.json")).unwrap()
}

/// One exchange with the API server, within 10 s.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("the API server answered within 10 s")
}

fn cn() -> StatusObject {
    StatusObject::ClusterNetwork {
        name: "default".into(),
    }
}

fn wnp() -> StatusObject {
    StatusObject::WasmNetworkPolicy {
        namespace: "shop".into(),
        name: "restricted-egress".into(),
    }
}

fn all_ready() -> Results {
    vec![(cn(), 1, Ok(())), (wnp(), 1, Ok(()))]
}

const VXLAN_ERROR: &str = "adding vxlan.switchyard: operation not permitted";
const MODULE_ERROR: &str = "NetworkModule \"egress-allowlist\" is not loaded on the node";

fn failing() -> Results {
    vec![
        (
            cn(),
            1,
            Err(("NodeNetworkingFailed".into(), VXLAN_ERROR.into())),
        ),
        (
            wnp(),
            1,
            Err(("ModuleNotLoaded".into(), MODULE_ERROR.into())),
        ),
    ]
}

fn requests(api: &FakeApiServer, method: &str, path: &str) -> Vec<Seen> {
    api.seen()
        .into_iter()
        .filter(|r| r.method == method && r.path == path)
        .collect()
}

/// The Events posted, as their bodies.
fn events(api: &FakeApiServer) -> Vec<(String, Value)> {
    api.seen()
        .into_iter()
        .filter(|r| r.path.ends_with("/events") || r.path.contains("/events/"))
        .map(|r| {
            (
                format!("{} {}", r.method, r.path),
                serde_json::from_str(&r.body).unwrap(),
            )
        })
        .collect()
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_entries_merge_and_the_leader_summarizes_them() {
    let api = FakeApiServer::start().await;
    for o in fixtures() {
        api.apply_silently(o);
    }
    let status = |kind: &str, ns: &str, name: &str| {
        api.object(V, kind, ns, name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    };
    let cn_status = || status("ClusterNetwork", "", "default");
    let wnp_status = || status("WasmNetworkPolicy", "shop", "restricted-egress");
    let mut node1 = ObjectStatusWriter::new(api.client(), "node-1");
    let mut node2 = ObjectStatusWriter::new(api.client(), "node-2");

    // node-1 has both in force, node-2 neither.
    assert_eq!(
        within(node1.publish(&all_ready())).await,
        Vec::<String>::new()
    );
    assert_eq!(
        within(node2.publish(&failing())).await,
        Vec::<String>::new()
    );

    // Each node applied its own entry of each object, under its own field
    // manager.
    let entry = |node: &str, state: &str, reason: &str, message: Option<&str>| {
        let mut e =
            json!({"node": node, "state": state, "observedGeneration": 1, "reason": reason});
        if let Some(m) = message {
            e["message"] = json!(m);
        }
        e
    };
    let cn_entries = [
        entry("node-1", "Ready", "Applied", None),
        entry(
            "node-2",
            "Degraded",
            "NodeNetworkingFailed",
            Some(VXLAN_ERROR),
        ),
    ];
    let wnp_entries = [
        entry("node-1", "Ready", "Enforced", None),
        entry("node-2", "Degraded", "ModuleNotLoaded", Some(MODULE_ERROR)),
    ];
    let checks = [
        (
            CN_STATUS,
            "ClusterNetwork",
            json!({"name": "default"}),
            &cn_entries,
        ),
        (
            WNP_STATUS,
            "WasmNetworkPolicy",
            json!({"name": "restricted-egress", "namespace": "shop"}),
            &wnp_entries,
        ),
    ];
    for (path, kind, metadata, entries) in &checks {
        let patches = requests(&api, "PATCH", path);
        assert_eq!(patches.len(), 2, "{path}: {patches:?}");
        for (r, e) in patches.iter().zip(entries.iter()) {
            let node = e["node"].as_str().unwrap();
            assert_eq!(r.content_type, "application/apply-patch+yaml");
            assert!(
                r.query
                    .contains(&format!("fieldManager=switchyard-agent%2F{node}")),
                "{}",
                r.query
            );
            assert!(r.query.contains("force=true"), "{}", r.query);
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(
                body,
                json!({"apiVersion": V, "kind": kind, "metadata": metadata,
                    "status": {"nodeResults": [e]}})
            );
        }
    }
    // The entries merged: neither node's apply replaced the other's.
    assert_eq!(cn_status()["nodeResults"], json!(cn_entries));
    assert_eq!(wnp_status()["nodeResults"], json!(wnp_entries));

    // One Warning Event per failure, about the object, in its namespace
    // (`default` for the cluster-scoped ClusterNetwork).
    let evs = events(&api);
    assert_eq!(evs.len(), 2, "{evs:?}");
    let (at, ev) = evs
        .iter()
        .find(|(_, e)| e["reason"] == "NetworkNotApplied")
        .expect("an Event for the ClusterNetwork");
    assert_eq!(at, "POST /apis/events.k8s.io/v1/namespaces/default/events");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["kind"], "ClusterNetwork");
    assert_eq!(ev["regarding"]["name"], "default");
    assert_eq!(
        ev["note"],
        format!("node node-2: NodeNetworkingFailed: {VXLAN_ERROR}")
    );
    let (at, ev) = evs
        .iter()
        .find(|(_, e)| e["reason"] == "PolicyNotEnforced")
        .expect("an Event for the WasmNetworkPolicy");
    assert_eq!(at, "POST /apis/events.k8s.io/v1/namespaces/shop/events");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["kind"], "WasmNetworkPolicy");
    assert_eq!(ev["regarding"]["namespace"], "shop");
    assert_eq!(ev["regarding"]["name"], "restricted-egress");
    assert_eq!(
        ev["note"],
        format!("node node-2: ModuleNotLoaded: {MODULE_ERROR}")
    );

    // The same results again: nothing to write, no second Event.
    let before = api.seen().len();
    assert_eq!(
        within(node1.publish(&all_ready())).await,
        Vec::<String>::new()
    );
    assert_eq!(
        within(node2.publish(&failing())).await,
        Vec::<String>::new()
    );
    assert_eq!(api.seen().len(), before, "{:?}", &api.seen()[before..]);

    // The leader's summary: not Ready, Degraded with node-2's reason.
    let client = api.client();
    assert_eq!(
        within(summarize_objects(client.clone(), 2)).await.unwrap(),
        2
    );
    for (s, reason, message) in [
        (cn_status(), "NodeNetworkingFailed", VXLAN_ERROR),
        (wnp_status(), "ModuleNotLoaded", MODULE_ERROR),
    ] {
        assert_eq!(s["observedGeneration"], 1, "{s}");
        let ready = condition(&s, "Ready");
        assert_eq!(ready["status"], "False", "{s}");
        assert_eq!(ready["reason"], "NodesDegraded", "{s}");
        assert_eq!(ready["message"], "1 of 2 nodes are ready at generation 1");
        let degraded = condition(&s, "Degraded");
        assert_eq!(degraded["status"], "True", "{s}");
        assert_eq!(degraded["reason"], reason, "{s}");
        assert_eq!(degraded["message"], format!("node node-2: {message}"));
        assert_eq!(s["nodes"], json!({"desired": 2, "ready": 1, "degraded": 1}));
        assert_eq!(s["lastError"], format!("node node-2: {reason}: {message}"));
        // The nodes' entries stay theirs.
        assert_eq!(s["nodeResults"].as_array().unwrap().len(), 2, "{s}");
    }
    for path in [CN_STATUS, WNP_STATUS] {
        let leader: Vec<Seen> = requests(&api, "PATCH", path)
            .into_iter()
            .filter(|r| r.query.contains("fieldManager=switchyard-status-leader"))
            .collect();
        assert_eq!(leader.len(), 1, "{path}");
        assert!(leader[0].query.contains("force=true"));
        let body: Value = serde_json::from_str(&leader[0].body).unwrap();
        assert!(body["status"]["conditions"].is_array(), "{body}");
        assert!(
            body["status"].get("nodeResults").is_none(),
            "the leader must not apply node entries: {body}"
        );
    }
    // Nothing changed: nothing written.
    assert_eq!(
        within(summarize_objects(client.clone(), 2)).await.unwrap(),
        0
    );

    // node-2 recovers, but the ClusterNetwork's write is refused: reported,
    // naming the object and the node; the policy's goes through.
    api.refuse(V, "ClusterNetwork");
    let problems = within(node2.publish(&all_ready())).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("ClusterNetwork default") && problems[0].contains("node-2"),
        "{problems:?}"
    );
    assert_eq!(cn_status()["nodeResults"][1]["state"], "Degraded");
    assert_eq!(wnp_status()["nodeResults"][1]["state"], "Ready");
    // The failed write is tried again.
    api.accept(V, "ClusterNetwork");
    let cn_writes = requests(&api, "PATCH", CN_STATUS).len();
    assert_eq!(
        within(node2.publish(&all_ready())).await,
        Vec::<String>::new()
    );
    assert_eq!(requests(&api, "PATCH", CN_STATUS).len(), cn_writes + 1);
    assert_eq!(
        cn_status()["nodeResults"][1],
        entry("node-2", "Ready", "Applied", None)
    );
    assert_eq!(events(&api).len(), 2, "a recovery is no Event");

    // The summary turns Ready, and the last error goes.
    assert_eq!(
        within(summarize_objects(client.clone(), 2)).await.unwrap(),
        2
    );
    for s in [cn_status(), wnp_status()] {
        let ready = condition(&s, "Ready");
        assert_eq!(ready["status"], "True", "{s}");
        assert_eq!(ready["reason"], "AllNodesReady", "{s}");
        assert_eq!(ready["message"], "2 of 2 nodes are ready at generation 1");
        let degraded = condition(&s, "Degraded");
        assert_eq!(degraded["status"], "False", "{s}");
        assert_eq!(degraded["reason"], "AsExpected", "{s}");
        assert_eq!(s["nodes"], json!({"desired": 2, "ready": 2, "degraded": 0}));
        assert!(s.get("lastError").is_none(), "{s}");
    }
    assert_eq!(within(summarize_objects(client, 2)).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_objects_are_dropped_and_unlisted_ones_forgotten() {
    let api = FakeApiServer::start().await;
    for o in fixtures() {
        api.apply_silently(o);
    }
    let gone = StatusObject::WasmNetworkPolicy {
        namespace: "shop".into(),
        name: "deleted".into(),
    };
    let gone_status =
        "/apis/switchyard.dev/v1alpha1/namespaces/shop/wasmnetworkpolicies/deleted/status";
    let mut node1 = ObjectStatusWriter::new(api.client(), "node-1");
    let mut results = all_ready();
    results.push((
        gone.clone(),
        3,
        Err(("InvalidConfig".into(), "cidrs: expected a list".into())),
    ));

    // The API server has no such policy (404): no problem, and no Event
    // about an object that is not there.
    assert_eq!(within(node1.publish(&results)).await, Vec::<String>::new());
    assert_eq!(requests(&api, "PATCH", gone_status).len(), 1);
    assert!(events(&api).is_empty(), "{:?}", events(&api));
    // Not tried again while its entry stays the same...
    assert_eq!(within(node1.publish(&results)).await, Vec::<String>::new());
    assert_eq!(requests(&api, "PATCH", gone_status).len(), 1);
    assert_eq!(requests(&api, "PATCH", WNP_STATUS).len(), 1);

    // ... nor the others. An object no longer listed is forgotten: listed
    // again, its entry is written again.
    assert_eq!(
        within(node1.publish(&[(cn(), 1, Ok(()))])).await,
        Vec::<String>::new()
    );
    assert_eq!(requests(&api, "PATCH", CN_STATUS).len(), 1);
    assert_eq!(within(node1.publish(&results)).await, Vec::<String>::new());
    assert_eq!(requests(&api, "PATCH", CN_STATUS).len(), 1);
    assert_eq!(requests(&api, "PATCH", WNP_STATUS).len(), 2);
    assert_eq!(requests(&api, "PATCH", gone_status).len(), 2);
}
