//! The kube source against a scripted API server on loopback (real HTTP,
//! kube's own client and watchers): the first snapshot waits for every
//! kind's LIST, watch events flow into later snapshots, and after a
//! `410 Gone` the watcher lists again and sees what it missed. The objects
//! are in the shape the API server returns them (uids, resourceVersions,
//! managedFields, statuses): `tests/fixtures/kube/objects.json`.

mod common;

use common::apiserver::FakeApiServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use switchyard::source::kube::{self, Snapshot};
use tokio::sync::watch;

fn fixtures() -> Vec<Value> {
    let text = include_str!("fixtures/kube/objects.json");
    serde_json::from_str(text).unwrap()
}

/// Wait (at most 10 s) for a snapshot for which `ok` holds.
async fn until(
    rx: &mut watch::Receiver<Snapshot>,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let t0 = Instant::now();
    loop {
        {
            let s = rx.borrow_and_update();
            if s.generation > 0 && ok(&s) {
                return s.clone();
            }
        }
        let left = Duration::from_secs(10).saturating_sub(t0.elapsed());
        assert!(!left.is_zero(), "no snapshot with {what} after 10 s");
        let _ = tokio::time::timeout(left, rx.changed()).await;
    }
}

fn pod_names(s: &Snapshot) -> Vec<String> {
    s.manifests
        .pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn pod(name: &str, ip: &str) -> Value {
    let mut p = fixtures().into_iter().find(|o| o["kind"] == "Pod").unwrap();
    p["metadata"]["name"] = json!(name);
    p["metadata"]["uid"] = json!(format!("uid-{name}"));
    p["status"]["podIP"] = json!(ip);
    p["status"]["podIPs"] = json!([{"ip": ip}]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_follow_lists_watches_and_relists() {
    let api = FakeApiServer::start().await;
    for o in fixtures() {
        api.apply_silently(o);
    }
    // One kind cannot be listed yet: no snapshot, however long it takes.
    api.refuse("switchyard.dev/v1alpha1", "WasmNetworkPolicy");
    let mut rx = kube::start(api.client(), "switchyard-system");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rx.borrow().generation,
        0,
        "a snapshot was published before every kind was listed"
    );
    api.accept("switchyard.dev/v1alpha1", "WasmNetworkPolicy");

    // Every kind, as the API server holds it.
    let s = until(&mut rx, "every fixture", |s| {
        !s.manifests.wasm_network_policies.is_empty()
    })
    .await;
    let m = &s.manifests;
    assert_eq!(pod_names(&s), ["web-7d9c8b6f5-x2k4p"]);
    assert_eq!(m.nodes.len(), 1);
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.services.len(), 1);
    assert_eq!(m.endpoint_slices.len(), 1);
    assert_eq!(m.network_policies.len(), 1);
    assert_eq!(m.modules.len(), 1);
    assert_eq!(m.modules[0].name, "proxy");
    assert_eq!(m.modules[0].generation, 2);
    assert_eq!(m.cluster_network().unwrap().pod_cidrs.len(), 2);
    assert_eq!(m.wasm_network_policies[0].spec.module, "egress-allowlist");
    // Managed fields are not kept.
    assert!(
        m.pods[0].metadata.managed_fields.is_none()
            || m.pods[0]
                .metadata
                .managed_fields
                .as_ref()
                .unwrap()
                .is_empty()
    );
    // The policy inputs resolve from it as from the lab's manifests.
    let (inputs, errors) = switchyard::policy::inputs(m, &Default::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(inputs.len(), 2);

    // Watch events: a pod added, a module changed, a pod deleted.
    api.apply(pod("web-2", "10.244.1.8"));
    until(&mut rx, "web-2", |s| {
        pod_names(s).contains(&"web-2".to_string())
    })
    .await;
    let mut module = fixtures()
        .into_iter()
        .find(|o| o["kind"] == "NetworkModule")
        .unwrap();
    module["metadata"]["generation"] = json!(3);
    module["spec"]["priority"] = json!(20);
    api.apply(module);
    until(&mut rx, "the module's new generation", |s| {
        s.manifests.modules[0].generation == 3 && s.manifests.modules[0].spec.priority == 20
    })
    .await;
    api.delete("v1", "Pod", "shop", "web-2", false);
    until(&mut rx, "web-2 gone", |s| {
        !pod_names(s).contains(&"web-2".to_string())
    })
    .await;

    // Events the watch never delivered, then 410 Gone: the watcher lists
    // again and the snapshot shows what was missed.
    let lists_before = api
        .seen()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.query.contains("watch=true"))
        .count();
    api.delete("v1", "Pod", "shop", "web-7d9c8b6f5-x2k4p", true);
    api.apply_silently(pod("web-3", "10.244.1.9"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        pod_names(&rx.borrow()).contains(&"web-7d9c8b6f5-x2k4p".to_string()),
        "a missed event was seen without a relist"
    );
    api.expire("v1", "Pod");
    until(&mut rx, "the relisted pods", |s| pod_names(s) == ["web-3"]).await;
    let lists_after = api
        .seen()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.query.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "no LIST after 410 Gone");
}
