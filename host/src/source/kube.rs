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
//! node. Managed fields are dropped before they are stored (about half of a
//! pod's metadata, and nothing here reads them).

use super::local::{ClusterNetwork, Manifests, NetworkModule};
use crate::model::crd;
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
/// every snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub manifests: Arc<Manifests>,
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

fn owned<K>(s: &Store<K>) -> Vec<K>
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
    v.into_iter().map(|o| (*o).clone()).collect()
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
                spec: c.spec,
            })
            .collect();
        Manifests {
            nodes: owned(&self.nodes),
            pods: owned(&self.pods),
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

/// Whether a store has listed once (false if its reflector stopped first).
type Ready = futures::future::BoxFuture<'static, bool>;

/// Watch one kind cluster-wide into a store; every change pokes `dirty`.
fn reflect<K>(client: &Client, dirty: &Arc<Notify>, ready: &mut Vec<Ready>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    reflect_api(Api::all(client.clone()), dirty, ready)
}

/// Watch what `api` lists into a store; every change pokes `dirty`. Its
/// first complete list is pushed to `ready`.
fn reflect_api<K>(api: Api<K>, dirty: &Arc<Notify>, ready: &mut Vec<Ready>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let listed = reader.clone();
    ready.push(Box::pin(
        async move { listed.wait_until_ready().await.is_ok() },
    ));
    let dirty = dirty.clone();
    let kind = K::kind(&());
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => dirty.notify_one(),
                // The watcher retries (with backoff) and relists after a
                // 410 Gone; the store keeps its last state meanwhile.
                Err(e) => tracing::warn!(%kind, error = %e, "watching the API server"),
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
    let dirty = Arc::new(Notify::new());
    let mut ready = vec![];
    let r = &mut ready;
    let stores = Stores {
        pods: reflect(&client, &dirty, r),
        namespaces: reflect(&client, &dirty, r),
        services: reflect(&client, &dirty, r),
        slices: reflect(&client, &dirty, r),
        policies: reflect(&client, &dirty, r),
        nodes: reflect(&client, &dirty, r),
        modules: reflect(&client, &dirty, r),
        networks: reflect(&client, &dirty, r),
        wasm_policies: reflect(&client, &dirty, r),
        config_maps: reflect_api(Api::namespaced(client.clone(), namespace), &dirty, r),
    };
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
