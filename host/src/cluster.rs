//! `switchyard agent --kube`, in a cluster: the kube source in, modules and status
//! out.
//!
//! The agent starts from the first complete snapshot of the cluster (see
//! [`crate::source::kube`]), then follows it: every snapshot makes the loaded
//! modules what the NetworkModules ask for (a hot swap; a version that does
//! not load leaves the last good one serving) and writes this node's result
//! into each NetworkModule's status, with an Event on a failure
//! ([`crate::status`]). The agents elect a leader with a Lease; it
//! summarizes every node's results into the conditions. Services and
//! NetworkPolicies (and WasmNetworkPolicies) go to the same proxy and
//! policy engines the lab's agents run, from the same model.

use crate::agent::{Agent, AgentOptions, sticky_pods};
use crate::source::kube::{self, Snapshot};
use crate::source::local::{Manifests, node_labels};
use crate::status::lease::LeaderLease;
use crate::status::{StatusWriter, summarize_all};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How the agent takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Where the leader Lease lives (the agent's own namespace).
    pub namespace: String,
    /// How long a leader holds the Lease without renewing it.
    pub lease_seconds: i32,
    /// How often status is retried and the leader summarizes.
    pub interval: Duration,
    /// Where the admin API listens (the DaemonSet's probes ask it), if at all.
    pub admin: Option<std::net::SocketAddr>,
    /// The network namespace (a name under /var/run/netns) whose tables the
    /// proxy and policy engines program; the agent's own when `None` (a
    /// host-network DaemonSet pod: the node's).
    pub netns: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            namespace: std::env::var("POD_NAMESPACE")
                .unwrap_or_else(|_| "switchyard-system".into()),
            lease_seconds: 15,
            interval: Duration::from_secs(5),
            admin: Some(std::net::SocketAddr::new(
                std::net::Ipv6Addr::UNSPECIFIED.into(),
                crate::lab::layout::ADMIN_PORT,
            )),
            netns: None,
        }
    }
}

/// Wait for the first complete snapshot of the cluster.
pub async fn first_snapshot(rx: &mut watch::Receiver<Snapshot>) -> anyhow::Result<Arc<Manifests>> {
    tracing::info!("waiting for the first complete list of every kind from the API server");
    let s = rx
        .wait_for(|s| s.generation > 0)
        .await
        .map_err(|_| anyhow::anyhow!("the kube source stopped before its first snapshot"))?;
    Ok(s.manifests.clone())
}

/// Start the agent from the API server and follow it until `shutdown`.
pub async fn run(
    options: AgentOptions,
    client: ::kube::Client,
    cluster: ClusterOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut rx = kube::start(client.clone(), &cluster.namespace);
    let first = first_snapshot(&mut rx).await?;
    let agent = Arc::new(Agent::start_with(options, &first).await?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let cni_agent = agent.clone();
    let cni = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move { cni_agent.serve(stop).await }
    });
    if let Some(addr) = cluster.admin {
        let state = crate::api::ApiState {
            registry: agent.registry.clone(),
            ledger: agent.ledger.clone(),
            probes: agent.probes.clone(),
            policy: None,
            drops: None,
            source: Arc::new(ClusterSource {
                node: agent.options.node.clone(),
                rx: rx.clone(),
            }),
        };
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::api::serve(addr, state, stop).await {
                tracing::error!(%addr, error = %e, "the admin API");
            }
        });
    }
    let follow = tokio::spawn(follow(agent, client, rx, cluster, stopped(stop_rx)));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = follow.await;
    cni.await??;
    Ok(())
}

/// The admin API's view of a cluster agent.
struct ClusterSource {
    node: String,
    rx: watch::Receiver<Snapshot>,
}

impl crate::api::NodeSource for ClusterSource {
    fn node(&self) -> serde_json::Value {
        let s = self.rx.borrow();
        serde_json::json!({
            "name": self.node,
            "source": "kube",
            "snapshot": s.generation,
            "ready": s.generation > 0,
        })
    }

    fn cluster(&self) -> Option<serde_json::Value> {
        let s = self.rx.borrow();
        let m = &s.manifests;
        Some(serde_json::json!({
            "nodes": m.nodes.len(),
            "pods": m.pods.len(),
            "services": m.services.len(),
            "networkPolicies": m.network_policies.len(),
            "wasmNetworkPolicies": m.wasm_network_policies.len(),
            "networkModules": m.modules.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
        }))
    }
}

/// The node's Service proxy and policy engine, fed from the snapshots.
struct Datapath {
    node: String,
    /// The proxy mode last seen, to say once that it is not served here.
    mode: String,
    proxy: crate::proxy::ServiceProxy,
    policy: crate::policy::engine::PolicyEngine,
}

impl Datapath {
    fn new(agent: &Agent, netns: Option<&str>) -> Datapath {
        use crate::datapath::nft::Nft;
        let nft = || {
            Arc::new(Nft::new(
                netns.map(|n| std::path::Path::new("/var/run/netns").join(n)),
            ))
        };
        if netns.is_none()
            && let Err(e) = crate::policy::engine::enable_bridge_netfilter()
        {
            tracing::warn!("{e}");
        }
        Datapath {
            node: agent.options.node.clone(),
            mode: "nftables".into(),
            proxy: crate::proxy::ServiceProxy::new(
                agent.registry.clone(),
                nft(),
                Arc::new(crate::proxy::conntrack::ConntrackTool {
                    netns: netns.map(str::to_string),
                }),
            ),
            policy: crate::policy::engine::PolicyEngine::new(agent.registry.clone(), nft()),
        }
    }

    /// Mark what `m` changed for both engines.
    fn update(&mut self, m: &Manifests) {
        let net = m.cluster_network().cloned().unwrap_or_default();
        if net.proxy.mode != self.mode && net.proxy.mode != "nftables" {
            tracing::warn!(
                mode = %net.proxy.mode,
                "the cluster agent proxies with nftables; the ipvs and userspace modes run in the lab only"
            );
        }
        self.mode.clone_from(&net.proxy.mode);
        let node = m.node(&self.node);
        let zone = node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(crate::lab::endpoints::ZONE_LABEL).cloned());
        let ips: Vec<std::net::IpAddr> = node
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let ctx = crate::proxy::convert::node_context(&self.node, zone, &ips, &net);
        self.proxy.set_context(ctx.clone());
        self.policy.set_context(ctx);
        let (services, unreadable) = crate::proxy::convert::inputs(m);
        for (s, e) in unreadable {
            tracing::warn!(service = %s, "cannot be proxied: {e}");
        }
        self.proxy.set_services(services);
        // Pods carry their own status here (no lab status directory).
        let (policies, unresolved) = crate::policy::inputs(m, &Default::default());
        for (p, e) in &unresolved {
            tracing::warn!(policy = %p, "cannot be resolved: {e}");
        }
        let keep = unresolved.into_keys().collect();
        self.policy.set_policies(policies, &keep);
    }

    async fn sync(&mut self) {
        if self.proxy.pending() {
            let r = self.proxy.sync().await;
            if let Some(e) = r.error {
                tracing::error!(error = %e, "the proxy's table could not be loaded");
            }
        }
        if self.policy.pending() {
            let r = self.policy.sync().await;
            if let Some(e) = r.error {
                tracing::error!(error = %e, "the policy table could not be loaded");
            }
        }
    }
}

/// How many nodes of `m` a NetworkModule selects.
fn selected_nodes(m: &Manifests, module: &crate::model::crd::NetworkModule) -> u32 {
    m.nodes
        .iter()
        .filter(|n| module.spec.selects(&node_labels(Some(n))))
        .count() as u32
}

/// Follow the cluster: modules from every snapshot, this node's status,
/// and, while this agent holds the Lease, the summaries.
pub async fn follow(
    agent: Arc<Agent>,
    client: ::kube::Client,
    mut rx: watch::Receiver<Snapshot>,
    cluster: ClusterOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let node = agent.options.node.clone();
    let mut writer = StatusWriter::new(client.clone(), &node);
    let lease = LeaderLease::new(
        client.clone(),
        &cluster.namespace,
        &node,
        cluster.lease_seconds,
    );
    let mut tick = tokio::time::interval(cluster.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut current: Arc<Manifests> = rx.borrow_and_update().manifests.clone();
    let mut leading = false;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut datapath = Datapath::new(&agent, cluster.netns.as_deref());
    // The snapshot the agent started from still has to reach the datapath
    // (its modules are loaded already: the sync finds nothing to do).
    let mut dirty = true;
    loop {
        if dirty {
            dirty = false;
            let a = agent.clone();
            let m = current.clone();
            let problems = tokio::task::spawn_blocking(move || {
                a.sticky.replace(sticky_pods(&m));
                a.sync_modules(&m)
            })
            .await
            .unwrap_or_else(|e| vec![format!("syncing modules: {e}")]);
            for p in problems {
                tracing::warn!("{p}");
            }
            datapath.update(&current);
        }
        datapath.sync().await;
        for p in writer.publish(&current, &agent.registry.status()).await {
            tracing::warn!("{p}");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
                current = rx.borrow_and_update().manifests.clone();
                dirty = true;
            }
            _ = tick.tick() => {
                match lease.try_lead().await {
                    Ok(now) => {
                        if now != leading {
                            tracing::info!(leading = now, "status leader Lease");
                        }
                        leading = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the status leader Lease");
                        leading = false;
                    }
                }
                if leading {
                    let m = current.clone();
                    if let Err(e) = summarize_all(client.clone(), |x| selected_nodes(&m, x)).await {
                        tracing::warn!(error = %e, "summarizing NetworkModule status");
                    }
                }
            }
        }
    }
}
