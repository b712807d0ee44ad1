//! The kube source: reflectors over the API server, feeding the same
//! [`Manifests`] the local source reads.
//!
//! One watcher per kind (Pods, Namespaces, Services, EndpointSlices,
//! NetworkPolicies, Nodes, and our NetworkModules, ClusterNetworks and
//! WasmNetworkPolicies) keeps a store; kube's watcher lists, watches, and
//! lists again after a `410 Gone` (an expired resourceVersion), with its
//! default backoff on errors. Every change marks the view dirty; a builder
//! publishes a fresh snapshot at most every [`SETTLE`], and only once every
//! store has listed once: an agent must never act on a partial cluster (a
//! Service without its EndpointSlices would lose its backends, a pod without
//! its NetworkPolicies would be open).
//!
//! Pods are watched cluster-wide: NetworkPolicy peers are pods of every
//! node. A pod is stored trimmed to what the agent reads of it ([`trim_pod`]:
//! name, labels, owners, our annotations, node, host network, container
//! ports, phase, addresses, readiness), this node's as much as any other's:
//! CNI needs nothing more (sticky addresses read owners and annotations).
//! A second watch of this node's pods alone would add a stream to the API
//! server and no data anyone reads. Managed fields are dropped from every
//! kind before it is stored (about half of an object's metadata, and
//! nothing here reads them).

use crate::model::crd;
use crate::model::snapshot::{ClusterNetwork, Manifests, NetworkModule};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How long the builder waits for more changes before it publishes: a
/// burst of events (a relist, a rollout) becomes one snapshot.
pub const SETTLE: Duration = Duration::from_millis(50);

/// The cluster as last seen: the manifests and a counter that grows with
/// every snapshot, and how the watches fare.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub manifests: Arc<Manifests>,
    pub health: Arc<SourceHealth>,
}

/// How one kind's watch fares.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KindHealth {
    /// Complete lists after the first: relists, after a `410 Gone` (the
    /// resourceVersion it resumed from was compacted away) or a lost watch.
    pub relists: u64,
    /// The last error, while it lasts: cleared by the next event received.
    pub error: Option<String>,
}

/// Every kind's watch, by kind.
#[derive(Debug, Default)]
pub struct SourceHealth(parking_lot::Mutex<std::collections::BTreeMap<String, KindHealth>>);

impl SourceHealth {
    fn update(&self, kind: &str, f: impl FnOnce(&mut KindHealth)) {
        f(self.0.lock().entry(kind.to_string()).or_default())
    }

    /// Each kind's health, by kind.
    pub fn kinds(&self) -> std::collections::BTreeMap<String, KindHealth> {
        self.0.lock().clone()
    }

    /// The errors of kinds whose watch fails now, each naming the kind.
    pub fn errors(&self) -> Vec<String> {
        self.0
            .lock()
            .iter()
            .filter_map(|(k, h)| {
                let e = h.error.as_ref()?;
                Some(format!(
                    "watching {k} from the API server: {e} (the agent keeps serving what it last saw)"
                ))
            })
            .collect()
    }

    /// Relists of every kind.
    pub fn relists(&self) -> u64 {
        self.0.lock().values().map(|h| h.relists).sum()
    }
}

/// The stores of every kind the agent reads.
struct Stores {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    policies: Store<NetworkPolicy>,
    nodes: Store<Node>,
    modules: Store<crd::NetworkModule>,
    networks: Store<crd::ClusterNetwork>,
    wasm_policies: Store<crd::WasmNetworkPolicy>,
    config_maps: Store<ConfigMap>,
}

/// Copies of the objects of `s`, ordered by namespace and name.
pub fn owned<K>(s: &Store<K>) -> Vec<K>
where
    K: kube::runtime::reflector::Lookup + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    shared(s).into_iter().map(|o| (*o).clone()).collect()
}

/// The objects of `s`, shared with the store, ordered as [`owned`] orders.
pub fn shared<K>(s: &Store<K>) -> Vec<Arc<K>>
where
    K: kube::runtime::reflector::Lookup + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let mut v: Vec<Arc<K>> = s.state();
    // Stores are hash maps: order by namespace and name, as the local
    // source orders by file, so that snapshots compare and render stably.
    v.sort_by_cached_key(|o| {
        (
            o.namespace().map(|n| n.into_owned()),
            o.name().map(|n| n.into_owned()),
        )
    });
    v
}

impl Stores {
    fn manifests(&self) -> Manifests {
        let modules = owned(&self.modules)
            .into_iter()
            .map(|m| NetworkModule {
                name: m.name_any(),
                generation: m.metadata.generation.unwrap_or(1),
                spec: m.spec,
            })
            .collect();
        let cluster_networks = owned(&self.networks)
            .into_iter()
            .map(|c| ClusterNetwork {
                name: c.name_any(),
                generation: c.metadata.generation.unwrap_or(1),
                spec: c.spec,
            })
            .collect();
        Manifests {
            nodes: owned(&self.nodes),
            // Shared with the store, not copied: pods are the most
            // numerous objects, and every snapshot holds all of them.
            pods: shared(&self.pods),
            namespaces: owned(&self.namespaces),
            services: owned(&self.services),
            endpoint_slices: owned(&self.slices),
            network_policies: owned(&self.policies),
            wasm_network_policies: owned(&self.wasm_policies),
            config_maps: owned(&self.config_maps),
            modules,
            cluster_networks,
            ignored: vec![],
        }
    }
}

/// Keep of a pod only what the agent reads of it: what
/// [`crate::policy::resolve::pod`] makes a peer of, and what
/// [`crate::model::snapshot::sticky_owner`] decides by. Images, probes,
/// volumes, env, resources and container statuses go: on a real pod they
/// are most of the object.
pub fn trim_pod(p: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    let m = &mut p.metadata;
    m.managed_fields = None;
    if let Some(a) = &mut m.annotations {
        a.retain(|k, _| k.starts_with("switchyard.dev/"));
    }
    m.annotations = m.annotations.take().filter(|a| !a.is_empty());
    let keep_ports = |c: &Container| Container {
        name: c.name.clone(),
        ports: c.ports.clone(),
        restart_policy: c.restart_policy.clone(),
        ..Default::default()
    };
    p.spec = p.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        containers: s.containers.iter().map(keep_ports).collect(),
        // Only sidecars (restartable init containers) serve ports.
        init_containers: s.init_containers.map(|v| {
            v.iter()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .map(keep_ports)
                .collect()
        }),
        ..Default::default()
    });
    p.status = p.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        conditions: s.conditions.map(|c| {
            c.into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// Whether a store has listed once (false if its reflector stopped first).
type Ready = futures::future::BoxFuture<'static, bool>;

/// What every reflector shares: the dirty flag, the first lists, health.
struct Reflecting {
    dirty: Arc<Notify>,
    ready: Vec<Ready>,
    health: Arc<SourceHealth>,
}

/// Watch one kind cluster-wide into a store; every change pokes `dirty`.
fn reflect<K>(client: &Client, r: &mut Reflecting) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    reflect_api(Api::all(client.clone()), r, |o: &mut K| {
        o.managed_fields_mut().clear()
    })
}

/// Watch what `api` lists into a store, each object passed through `trim`
/// first; every change pokes `dirty`. Its first complete list is pushed to
/// `ready`.
fn reflect_api<K>(
    api: Api<K>,
    r: &mut Reflecting,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let listed = reader.clone();
    r.ready.push(Box::pin(
        async move { listed.wait_until_ready().await.is_ok() },
    ));
    let dirty = r.dirty.clone();
    let health = r.health.clone();
    let kind = K::kind(&()).to_string();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut lists = 0u64;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(e) => {
                    if matches!(e, watcher::Event::Init) {
                        lists += 1;
                        if lists > 1 {
                            tracing::info!(%kind, "relisting (the watch could not resume)");
                        }
                    }
                    health.update(&kind, |h| {
                        h.relists = lists.saturating_sub(1);
                        h.error = None;
                    });
                    dirty.notify_one();
                }
                // The watcher retries (with backoff) and relists after a
                // 410 Gone; the store keeps its last state meanwhile.
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "watching the API server");
                    let text = match &e {
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.message.clone(),
                        other => other.to_string(),
                    };
                    health.update(&kind, |h| h.error = Some(text));
                }
            }
        }
    });
    reader
}

/// Start the reflectors and the snapshot builder. ConfigMaps (module
/// sources) are watched in `namespace` only, the agents' own. The receiver
/// sees the first snapshot once every kind has been listed, then one per
/// settled burst of changes.
pub fn start(client: Client, namespace: &str) -> watch::Receiver<Snapshot> {
    let mut reflecting = Reflecting {
        dirty: Arc::new(Notify::new()),
        ready: vec![],
        health: Arc::new(SourceHealth::default()),
    };
    let r = &mut reflecting;
    let stores = Stores {
        pods: reflect_api(Api::all(client.clone()), r, trim_pod),
        namespaces: reflect(&client, r),
        services: reflect(&client, r),
        slices: reflect(&client, r),
        policies: reflect(&client, r),
        nodes: reflect(&client, r),
        modules: reflect(&client, r),
        networks: reflect(&client, r),
        wasm_policies: reflect(&client, r),
        config_maps: reflect_api(
            Api::namespaced(client.clone(), namespace),
            r,
            |o: &mut ConfigMap| o.managed_fields_mut().clear(),
        ),
    };
    let Reflecting {
        dirty,
        ready,
        health,
    } = reflecting;
    let (tx, rx) = watch::channel(Snapshot::default());
    tokio::spawn(async move {
        // Every store has listed once (the watchers retry until they do).
        if !futures::future::join_all(ready)
            .await
            .into_iter()
            .all(|ok| ok)
        {
            tracing::error!("a reflector stopped before its first list");
            return;
        }
        let mut generation = 0;
        loop {
            generation += 1;
            let manifests = Arc::new(stores.manifests());
            tracing::debug!(generation, "cluster snapshot");
            if tx
                .send(Snapshot {
                    generation,
                    manifests,
                    health: health.clone(),
                })
                .is_err()
            {
                return;
            }
            dirty.notified().await;
            tokio::time::sleep(SETTLE).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::sticky_owner;
    use crate::policy::resolve;

    /// A pod as the API server sends it, with what a real one carries
    /// beyond what the agent reads.
    const POD: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "db-0", "namespace": "shop", "uid": "0c1d", "resourceVersion": "77",
        "labels": {"app": "db", "statefulset.kubernetes.io/pod-name": "db-0"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-24T09:00:00Z",
                        "switchyard.dev/sticky-ip": "true"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "5a"}],
        "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {}}]},
      "spec": {"nodeName": "node-2", "hostNetwork": false, "serviceAccountName": "db",
        "initContainers": [
          {"name": "migrate", "image": "db:1", "command": ["migrate"], "ports": [{"containerPort": 9000}]},
          {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always",
           "ports": [{"name": "admin", "containerPort": 9901, "protocol": "TCP"}]}],
        "containers": [{"name": "db", "image": "postgres:17",
          "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data"}],
          "ports": [{"name": "pg", "containerPort": 5432, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9187, "protocol": "UDP"}],
          "readinessProbe": {"exec": {"command": ["pg_isready"]}, "periodSeconds": 5},
          "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
          "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]},
      "status": {"phase": "Running", "hostIP": "192.168.49.3", "podIP": "10.244.2.9",
        "podIPs": [{"ip": "10.244.2.9"}, {"ip": "fd00:10:244:2::9"}],
        "conditions": [{"type": "Initialized", "status": "True"},
                       {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-24T09:01:00Z"}],
        "containerStatuses": [{"name": "db", "ready": true, "restartCount": 0, "image": "postgres:17",
          "imageID": "docker.io/library/postgres@sha256:00", "containerID": "containerd://ab",
          "state": {"running": {"startedAt": "2026-11-24T09:00:30Z"}}}]}
    }"#;

    fn pods() -> Vec<Pod> {
        let fixtures: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../tests/fixtures/kube/objects.json")).unwrap();
        let mut v: Vec<Pod> = fixtures
            .into_iter()
            .filter(|o| o["kind"] == "Pod")
            .map(|o| serde_json::from_value(o).unwrap())
            .collect();
        v.push(serde_json::from_str(POD).unwrap());
        v
    }

    #[test]
    fn a_trimmed_pod_is_the_same_peer_and_the_same_sticky_pod() {
        for full in pods() {
            let mut trimmed = full.clone();
            trim_pod(&mut trimmed);
            assert_eq!(
                format!("{:?}", resolve::pod(&trimmed)),
                format!("{:?}", resolve::pod(&full)),
                "pod {:?}",
                full.metadata.name
            );
            assert_eq!(sticky_owner(&trimmed), sticky_owner(&full));
            let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
            assert!(
                size(&trimmed) * 2 < size(&full),
                "{} of {} bytes kept",
                size(&trimmed),
                size(&full)
            );
        }
        // What the rich pod keeps, concretely: its ports (the sidecar's,
        // not the plain init container's), both addresses, readiness.
        let mut p: Pod = serde_json::from_str(POD).unwrap();
        trim_pod(&mut p);
        let peer = resolve::pod(&p);
        assert_eq!(peer.ports.len(), 3, "{:?}", peer.ports);
        assert_eq!(peer.ips.len(), 2);
        assert!(peer.ready);
        assert_eq!(sticky_owner(&p).as_deref(), Some("shop/db-0"));
        assert_eq!(
            p.metadata.annotations.unwrap().keys().collect::<Vec<_>>(),
            ["switchyard.dev/sticky-ip"]
        );
        assert!(p.metadata.managed_fields.is_none());
    }
}
