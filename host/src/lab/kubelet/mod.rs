//! The lab's kubelet: the one part of a node the lab still plays, a process
//! of its own beside the node's agent, as a kubelet is beside a CNI daemon
//! (`switchyard lab kubelet`, in the node's network namespace).
//!
//! It authenticates as `system:node:NODE` (the Node authorizer and
//! NodeRestriction limit it to its own Node and the pods bound to it),
//! registers the Node and renews its Lease ([`node`]), watches the pods the
//! scheduler binds to it, runs them ([`pods`]) and writes their status with
//! the kubelet's semantics ([`status`]), posts the kubelet's Events, and
//! serves on the node's loopback (port [`KUBELET_PORT`], like the kubelet's
//! read-only port) the pods it runs and its probes' results, which the
//! node's agent reads for probe latencies.

pub mod dns;
pub mod node;
pub mod pods;
pub mod status;

use super::controlplane::kubelet_kubeconfig;
use super::layout::{KUBELET_PORT, Lab, kube_client, short_hash, watch_store};
use crate::datapath::probes::ProbeTable;
use anyhow::Context;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use parking_lot::Mutex;
use pods::{PodEvent, Pods};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the pod loop runs without a change to wake it.
const TICK: Duration = Duration::from_millis(20);
/// How often the Node's status is written when nothing changed.
const NODE_STATUS_EVERY: Duration = Duration::from_secs(60);
/// How often the Lease is renewed.
const LEASE_EVERY: Duration = Duration::from_secs(10);

/// What the kubelet serves on its port.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct View {
    node: String,
    network_ready: bool,
    network_message: Option<String>,
    pods: Vec<Value>,
}

async fn serve(view: Arc<Mutex<View>>, table: Arc<ProbeTable>) -> anyhow::Result<()> {
    use axum::routing::get;
    let v = view.clone();
    let t = table.clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/pods",
            get(move || {
                let v = v.clone();
                async move { axum::Json(serde_json::to_value(&*v.lock()).unwrap_or(Value::Null)) }
            }),
        )
        .route(
            "/probes",
            get(move || {
                let t = t.clone();
                async move {
                    let entries: Vec<Value> = t
                        .entries()
                        .into_iter()
                        .map(|((address, port), h)| {
                            crate::datapath::probes::entry_json(address, port, &h)
                        })
                        .collect();
                    axum::Json(json!({ "endpoints": entries }))
                }
            }),
        );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], KUBELET_PORT));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn reference(e: &PodEvent) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(e.name.clone()),
        namespace: Some(e.namespace.clone()),
        uid: Some(e.uid.clone()),
        ..Default::default()
    }
}

/// An Event's action: its reason and a digest of its note. kube's Recorder
/// folds every Event of one action and reason on an object into a series of
/// the first, notes and all; the kubelet (client-go's correlator) keeps
/// Events whose messages differ apart, as when a pod's nameservers and its
/// search line are both cut.
fn action(reason: &str, note: &str) -> String {
    format!("{reason}-{}", short_hash(note))
}

/// Run the kubelet of lab node `node` until SIGTERM, with its DNS flags.
pub async fn run(dir: &Path, node: &str, dns: dns::DnsFlags) -> anyhow::Result<()> {
    tracing::info!(node, lab = %dir.display(), pid = std::process::id(), ?dns, "lab kubelet starting");
    let lab = Lab::load(dir)?.with_context(|| {
        format!(
            "no lab in {} (run `switchyard lab up` first)",
            dir.display()
        )
    })?;
    lab.config
        .node(node)
        .with_context(|| format!("the lab has no node {node:?}"))?;
    let client = kube_client(&kubelet_kubeconfig(&lab, node)).await?;
    node::register(&client, &lab, node).await?;
    let node_uid = node::read(&client, node).await?.metadata.uid;
    node::renew_lease(&client, node, node_uid.as_deref()).await?;

    let table = Arc::new(ProbeTable::default());
    let view = Arc::new(Mutex::new(View {
        node: node.to_string(),
        ..Default::default()
    }));
    let server = tokio::spawn(serve(view.clone(), table.clone()));

    // The pods bound to this node, as the kubelet watches them.
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (reader, wake) = watch_store(api, config, "this node's pods");
    reader
        .wait_until_ready()
        .await
        .context("listing this node's pods")?;

    // Events go out on their own task: the API's latency never holds pods.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<PodEvent>();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kubelet".into(),
            instance: Some(node.to_string()),
        },
    );
    tokio::spawn(async move {
        while let Some(e) = events_rx.recv().await {
            let ev = Event {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: e.reason.clone(),
                note: Some(e.note.chars().take(1024).collect()),
                action: action(&e.reason, &e.note),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&ev, &reference(&e)).await {
                tracing::debug!(error = %err, "posting an Event");
            }
        }
    });

    let plugin = lab.dir.join("bin").join("switchyard-cni");
    let socket = lab.node_dir(node).join("cni.sock");
    let rt = tokio::runtime::Handle::current();
    let mut pods = Pods::new(lab.clone(), node, plugin, &socket, rt.clone(), table, dns)?;
    let stop = Arc::new(AtomicBool::new(false));
    let node_name = node.to_string();
    let loop_stop = stop.clone();
    let looper = std::thread::Builder::new()
        .name("kubelet-pods".into())
        .spawn(move || {
            let mut network: Option<Result<(), String>> = None;
            let mut ready_since = status::now();
            let mut last_network_check = Instant::now() - Duration::from_secs(60);
            let mut last_node_status = Instant::now() - NODE_STATUS_EVERY;
            let mut status_due = true;
            let mut last_lease = Instant::now();
            while !loop_stop.load(Ordering::Relaxed) {
                // The runtime's network: polled often until it is ready.
                let every = if matches!(network, Some(Ok(()))) {
                    Duration::from_secs(5)
                } else {
                    Duration::from_millis(200)
                };
                if last_network_check.elapsed() >= every {
                    last_network_check = Instant::now();
                    let now = pods.network_status();
                    let changed = network.as_ref().map(|n| n.is_ok()) != Some(now.is_ok());
                    if changed {
                        ready_since = status::now();
                        match &now {
                            Ok(()) => tracing::info!("the node's network is ready: Ready"),
                            Err(e) => tracing::info!(error = %e, "the node's network is not ready"),
                        }
                    }
                    status_due |= changed || last_node_status.elapsed() >= NODE_STATUS_EVERY;
                    if status_due {
                        let body = node::status(&lab, &node_name, &now, &ready_since.0.to_string());
                        match rt.block_on(node::write_status(&client, &node_name, &body)) {
                            Ok(()) => {
                                last_node_status = Instant::now();
                                status_due = false;
                            }
                            Err(e) => tracing::warn!("{e:#}"),
                        }
                    }
                    let mut v = view.lock();
                    v.network_ready = now.is_ok();
                    v.network_message = now.as_ref().err().cloned();
                    drop(v);
                    network = Some(now);
                }
                if last_lease.elapsed() >= LEASE_EVERY {
                    last_lease = Instant::now();
                    if let Err(e) = rt.block_on(node::renew_lease(&client, &node_name, node_uid.as_deref())) {
                        tracing::warn!("{e:#}");
                    }
                }
                // Pods start only once the network can give them addresses.
                if matches!(network, Some(Ok(()))) {
                    for p in pods.reconcile(&reader.state()) {
                        tracing::warn!("{p}");
                    }
                }
                pods.probe_tick();
                let writes = pods.statuses();
                if !writes.is_empty() {
                    let results = rt.block_on(futures::future::join_all(writes.into_iter().map(
                        |(key, uid, st)| {
                            let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
                            async move {
                                let body = json!({"metadata": {"uid": uid}, "status": st});
                                let r = api
                                    .patch_status(&key.1, &PatchParams::default(), &Patch::Strategic(body))
                                    .await;
                                (key, st, r)
                            }
                        },
                    )));
                    for (key, st, r) in results {
                        match r {
                            Ok(_) => pods.written(&key, st),
                            // Gone, or re-created meanwhile: the watch says so next.
                            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                            Err(e) => tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "writing pod status"),
                        }
                    }
                }
                for f in pods.take_finished() {
                    let api: Api<Pod> = Api::namespaced(client.clone(), &f.key.0);
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: Some(f.uid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    match rt.block_on(api.delete(&f.key.1, &dp)) {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                        Err(e) => tracing::warn!(pod = %format!("{}/{}", f.key.0, f.key.1), error = %e, "removing a stopped pod"),
                    }
                }
                for e in pods.take_events() {
                    let _ = events_tx.send(e);
                }
                {
                    let records: Vec<Value> = pods
                        .records()
                        .map(|r| {
                            let key = (r.namespace.clone(), r.name.clone());
                            json!({
                                "namespace": r.namespace,
                                "name": r.name,
                                "uid": r.uid,
                                "netns": r.netns,
                                "ips": r.ips,
                                "serverPid": r.server_pid,
                                "restarts": r.restarts,
                                "probes": pods.probes(&key),
                            })
                        })
                        .collect();
                    view.lock().pods = records;
                }
                rt.block_on(async {
                    let _ = tokio::time::timeout(TICK, wake.notified()).await;
                });
            }
        })?;
    let mut looper = tokio::task::spawn_blocking(move || looper.join());
    tokio::select! {
        _ = crate::agent::shutdown_signal() => {}
        r = server => {
            stop.store(true, Ordering::Relaxed);
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.context(format!("the kubelet's port {KUBELET_PORT}"))),
                Err(e) => Err(e.into()),
            };
        }
        _ = &mut looper => {
            anyhow::bail!("the kubelet's pod loop stopped (see the panic above)");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = looper.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::action;

    #[test]
    fn events_with_other_notes_are_other_events() {
        let a = action("DNSConfigForming", "Nameserver limits were exceeded, ...");
        let b = action("DNSConfigForming", "Search Line limits were exceeded, ...");
        assert_ne!(a, b);
        assert_eq!(
            a,
            action("DNSConfigForming", "Nameserver limits were exceeded, ...")
        );
        assert!(a.starts_with("DNSConfigForming-") && a.len() <= 128);
    }
}
