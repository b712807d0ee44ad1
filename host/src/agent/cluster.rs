//! `switchyard agent --kube`, in a cluster: the kube source in, modules and status
//! out.
//!
//! The agent starts from the first complete snapshot of the cluster (see
//! [`crate::source::kube`]), then follows it: every snapshot makes the loaded
//! modules what the NetworkModules ask for (a hot swap; a version that does
//! not load leaves the last good one serving) and writes this node's result
//! into each NetworkModule's status, with an Event on a failure
//! ([`crate::agent::status`]). The agents elect a leader with a Lease; it
//! summarizes every node's results into the conditions. The node's
//! datapath ([`crate::agent::node`]: node networking for the ClusterNetwork's
//! model over the Nodes' InternalIPs and podCIDRs, the Service proxies in
//! the mode the ClusterNetwork names, the (Wasm)NetworkPolicy table) is the
//! one the lab's agents run, fed from the same model. The kubelet probes
//! pods and kube-controller-manager writes EndpointSlices: the agent reads
//! both from the API server.

use crate::agent::node::{DatapathReport, NodeDatapath, Uplink, internal_ips};
use crate::agent::status::lease::LeaderLease;
use crate::agent::status::objects::{
    ObjectResult, ObjectStatusWriter, StatusObject, summarize_objects,
};
use crate::agent::status::{StatusWriter, summarize_all};
use crate::agent::{Agent, AgentOptions};
use crate::model::snapshot::{Manifests, node_labels};
use crate::model::{ObjectKind, ObjectRef};
use crate::source::kube::{self, Snapshot};
use parking_lot::Mutex;
use std::collections::BTreeMap;
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
    /// The network namespace (a name under /var/run/netns) whose links,
    /// routes and tables the datapath programs; the agent's own when `None`
    /// (a host-network DaemonSet pod: the node's). The userspace proxy and
    /// the drop log run only in the agent's own.
    pub netns: Option<String>,
    /// A kubelet that serves its probes' results (the lab's), for probe
    /// latencies ([`crate::source::kubelet`]).
    pub kubelet: Option<String>,
    /// The cluster's name, for the admin API and the console.
    pub cluster_name: String,
    /// Upstream resolvers of the node's DNS (`--dns-upstream`); by default
    /// the ClusterNetwork's `spec.dns.servers`, else `resolv_conf`'s.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// The node's resolv.conf.
    pub resolv_conf: std::path::PathBuf,
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
                crate::api::ADMIN_PORT,
            )),
            netns: None,
            kubelet: None,
            cluster_name: "kubernetes".into(),
            dns_upstreams: vec![],
            resolv_conf: "/etc/resolv.conf".into(),
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

/// Whether `m` gives node `node` its pod CIDRs.
fn has_pod_cidrs(m: &Manifests, node: &str) -> bool {
    m.node(node).and_then(|n| n.spec.as_ref()).is_some_and(|s| {
        s.pod_cidrs.as_ref().is_some_and(|c| !c.is_empty()) || s.pod_cidr.is_some()
    })
}

/// Wait until the Node has its pod CIDRs (kube-controller-manager's node
/// IPAM controller gives them moments after the kubelet registers it),
/// saying so every ten seconds.
async fn wait_for_pod_cidrs(
    rx: &mut watch::Receiver<Snapshot>,
    node: &str,
) -> anyhow::Result<Arc<Manifests>> {
    let mut said = false;
    loop {
        let found = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.generation > 0 && has_pod_cidrs(&s.manifests, node)),
        )
        .await;
        match found {
            Ok(Ok(s)) => return Ok(s.manifests.clone()),
            Ok(Err(_)) => anyhow::bail!("the kube source stopped"),
            Err(_) => {
                if !said {
                    tracing::warn!(
                        node,
                        "waiting for Node {node} to have spec.podCIDRs (kube-controller-manager with --allocate-node-cidrs gives them; or start the agent with --pod-cidr)"
                    );
                    said = true;
                }
            }
        }
    }
}

/// Start the agent from the API server and follow it until `shutdown`.
pub async fn run(
    options: AgentOptions,
    client: ::kube::Client,
    cluster: ClusterOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut rx = kube::start(client.clone(), &cluster.namespace);
    let mut first = first_snapshot(&mut rx).await?;
    if options.pod_cidrs.is_empty() && !has_pod_cidrs(&first, &options.node) {
        first = wait_for_pod_cidrs(&mut rx, &options.node).await?;
    }
    let agent = Arc::new(Agent::start_with(options, &first).await?);
    let pod_probes = cluster
        .kubelet
        .clone()
        .map(|url| crate::source::kubelet::spawn(url, agent.probes.clone()));
    let (dp, report) = datapath(&agent, &cluster);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let node_dns = crate::agent::dns::spawn(
        rx.clone(),
        cluster
            .netns
            .as_ref()
            .map(|n| std::path::Path::new("/var/run/netns").join(n)),
        cluster.dns_upstreams.clone(),
        cluster.resolv_conf.clone(),
        stop_rx.clone(),
    );
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
            policy: Some(dp.policy_snapshot()),
            drops: match &cluster.netns {
                None => crate::policy::droplog::spawn(dp.policy_snapshot())
                    .inspect_err(|e| tracing::warn!("policy drops will not be logged: {e}"))
                    .ok(),
                Some(_) => None,
            },
            dns: Some(node_dns.dns.clone()),
            source: Arc::new(ClusterSource {
                node: agent.options.node.clone(),
                rx: rx.clone(),
                report: report.clone(),
                pod_probes: pod_probes.clone(),
                cluster_name: cluster.cluster_name.clone(),
                dns_problems: node_dns.problems.clone(),
            }),
        };
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::api::serve(addr, state, stop).await {
                tracing::error!(%addr, error = %e, "the admin API");
            }
        });
    }
    let follow = tokio::spawn(follow_with(
        agent,
        client,
        rx,
        cluster,
        dp,
        report,
        stopped(stop_rx),
    ));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = follow.await;
    cni.await??;
    Ok(())
}

/// What the follower last knew of the node, for the admin API.
#[derive(Debug, Clone, Default)]
struct NodeView {
    datapath: DatapathReport,
    problems: Vec<String>,
}

/// The admin API's view of a cluster agent.
struct ClusterSource {
    node: String,
    rx: watch::Receiver<Snapshot>,
    report: Arc<Mutex<NodeView>>,
    /// The probes of this node's pods, from its kubelet, when it serves them.
    pod_probes: Option<crate::source::kubelet::PodProbes>,
    cluster_name: String,
    /// What the node's DNS could not do.
    dns_problems: Arc<Mutex<Vec<String>>>,
}

impl crate::api::NodeSource for ClusterSource {
    fn node(&self) -> serde_json::Value {
        let (generation, health) = {
            let s = self.rx.borrow();
            (s.generation, s.health.clone())
        };
        let view = self.report.lock().clone();
        let mut problems = health.errors();
        problems.extend(view.problems);
        problems.extend(self.dns_problems.lock().iter().cloned());
        let mut v = serde_json::json!({
            "name": self.node,
            "pid": std::process::id(),
            "source": "kube",
            "snapshot": generation,
            "watches": health.kinds(),
            "relists": health.relists(),
            "ready": generation > 0 && problems.is_empty(),
            "problems": problems,
        });
        if let (Some(o), Ok(serde_json::Value::Object(d))) =
            (v.as_object_mut(), serde_json::to_value(&view.datapath))
        {
            o.extend(d);
        }
        v
    }

    fn cluster(&self) -> Option<serde_json::Value> {
        let m = self.rx.borrow().manifests.clone();
        let mut facts = crate::api::view::NodeFacts {
            cluster_name: self.cluster_name.clone(),
            ..Default::default()
        };
        if let Some(p) = &self.pod_probes {
            facts.probes = p.lock().clone();
        }
        for (service, e) in &self.report.lock().datapath.service_errors {
            facts
                .service_errors
                .entry(service.clone())
                .or_default()
                .push(format!("{}: {e}", self.node));
        }
        serde_json::to_value(crate::api::view::cluster_view(&m, &facts)).ok()
    }
}

/// How many nodes of `m` a NetworkModule selects.
fn selected_nodes(m: &Manifests, module: &crate::model::crd::NetworkModule) -> u32 {
    m.nodes
        .iter()
        .filter(|n| module.spec.selects(&node_labels(Some(n))))
        .count() as u32
}

/// The node's datapath (its uplink: the link holding the Node's
/// InternalIP) and the view of it the admin API serves.
fn datapath(agent: &Agent, cluster: &ClusterOptions) -> (NodeDatapath, Arc<Mutex<NodeView>>) {
    let dp = NodeDatapath::new(
        agent,
        cluster.netns.as_deref(),
        Uplink::Discover,
        tokio::runtime::Handle::current(),
    );
    (dp, Arc::new(Mutex::new(NodeView::default())))
}

/// This node's result for the ClusterNetwork (node networking in place at
/// its generation) and for each WasmNetworkPolicy (in force in the policy
/// table), for their status. Policies wait while the table has work to do.
fn object_results(m: &Manifests, dp: &NodeDatapath) -> Vec<ObjectResult> {
    let mut out = vec![];
    if let Some(net) = m.cluster_networks.iter().find(|c| c.name == "default") {
        let r = match dp.network_error() {
            Some(e) => Err(("NodeNetworkingFailed".to_string(), e.to_string())),
            None if dp.networked() => Ok(()),
            None => Err((
                "Pending".to_string(),
                "node networking not applied yet".into(),
            )),
        };
        out.push((
            StatusObject::ClusterNetwork {
                name: net.name.clone(),
            },
            net.generation,
            r,
        ));
    }
    if dp.pending() {
        return out;
    }
    let errors = dp.policy_errors();
    for w in &m.wasm_network_policies {
        let (namespace, name) = (
            w.metadata.namespace.clone().unwrap_or_default(),
            w.metadata.name.clone().unwrap_or_default(),
        );
        let key = ObjectRef::new(ObjectKind::WasmNetworkPolicy, &namespace, &name);
        let r = match errors.get(&key) {
            Some(e) => Err(("NotEnforced".to_string(), e.clone())),
            None => Ok(()),
        };
        out.push((
            StatusObject::WasmNetworkPolicy { namespace, name },
            w.metadata.generation.unwrap_or(1),
            r,
        ));
    }
    out
}

/// Follow the cluster: modules and the node's datapath from every
/// snapshot, this node's status, and, while this agent holds the Lease,
/// the summaries.
pub async fn follow(
    agent: Arc<Agent>,
    client: ::kube::Client,
    rx: watch::Receiver<Snapshot>,
    cluster: ClusterOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let (dp, report) = datapath(&agent, &cluster);
    follow_with(agent, client, rx, cluster, dp, report, shutdown).await
}

async fn follow_with(
    agent: Arc<Agent>,
    client: ::kube::Client,
    mut rx: watch::Receiver<Snapshot>,
    cluster: ClusterOptions,
    mut dp: NodeDatapath,
    report: Arc<Mutex<NodeView>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let node = agent.options.node.clone();
    let mut writer = StatusWriter::new(client.clone(), &node);
    let mut objects = ObjectStatusWriter::new(client.clone(), &node);
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
    // The snapshot the agent started from still has to reach the datapath
    // (its modules are loaded already: the sync finds nothing to do).
    let mut dirty = true;
    let mut network_error: Option<String> = None;
    let no_statuses = BTreeMap::new();
    // Readiness from Pod status, for modules (the `probes` host interface).
    let mut readiness = crate::probe::status::StatusReader::default();
    // Modules load off this loop: it keeps serving with what is loaded
    // while a new module compiles, and renders again once it is in.
    let (to_loader, from_loop) = watch::channel(current.clone());
    let mut loaded = crate::agent::spawn_module_loader(agent.clone(), from_loop);
    loop {
        if dirty {
            dirty = false;
            let _ = to_loader.send(current.clone());
            readiness.sync(
                &agent.probes,
                current.pods.iter().filter_map(|p| p.status.as_ref()),
            );
            let _ = dp.network(&current);
            // Pods carry their own status.
            dp.services(&current, &internal_ips(current.node(&node)));
            dp.policies(&current, &no_statuses);
        }
        if dp.network_error() != network_error.as_deref() {
            network_error = dp.network_error().map(str::to_string);
            match &network_error {
                Some(e) => tracing::error!(error = %e, "node networking"),
                None => tracing::info!("node networking in place"),
            }
        }
        dp.sync().await;
        {
            let mut r = report.lock();
            r.datapath = dp.report();
            r.problems = dp.problems();
        }
        // Status that cannot be written (refused by RBAC, say) is reported
        // until a write succeeds; the datapath is not held up by it.
        let mut status_problems = writer.publish(&current, &agent.registry.status()).await;
        status_problems.extend(objects.publish(&object_results(&current, &dp)).await);
        for p in &status_problems {
            tracing::warn!("{p}");
        }
        report.lock().problems.extend(status_problems);
        let pending = dp.pending();
        tokio::select! {
            _ = &mut shutdown => return,
            // The proxy and policy tables sync at most every
            // MIN_SYNC_INTERVAL: come back for what waits.
            _ = tokio::time::sleep(crate::proxy::MIN_SYNC_INTERVAL), if pending => {}
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
                current = rx.borrow_and_update().manifests.clone();
                dirty = true;
            }
            r = loaded.changed() => {
                if r.is_err() {
                    return;
                }
                // A module came, went or was swapped: render with it.
                dirty = true;
            }
            _ = tick.tick() => {
                // Node networking that failed (a link not there yet, say)
                // is tried again.
                if dp.network_error().is_some() {
                    let _ = dp.network(&current);
                }
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
                    // Every node's agent networks its node and enforces
                    // every policy.
                    let nodes = m.nodes.len() as u32;
                    if let Err(e) = summarize_objects(client.clone(), nodes).await {
                        tracing::warn!(error = %e, "summarizing ClusterNetwork and WasmNetworkPolicy status");
                    }
                }
            }
        }
    }
}
