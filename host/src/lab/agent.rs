//! A lab node's agent: the ordinary agent (CNI server, modules, IPAM) fed by
//! the lab's cluster directory, plus what a node needs around it in the lab:
//! node networking for the cluster's model, the kubelet's part for the pods
//! bound to the node, the Node's status, and the admin API with the console.
//!
//! It runs inside the node's network namespace, as a DaemonSet pod with
//! host networking would (`switchyard agent --lab DIR --node NAME`).

use super::endpoints;
use super::kubelet::{Kubelet, LabPodStatus};
use super::layout::{ADMIN_PORT, Lab, UPLINK};
use super::view::{ClusterView, HEARTBEAT_TIMEOUT_SECS, LabNodeStatus, unix_now};
use crate::agent::{Agent, AgentOptions, sticky_pods};
use crate::api::{ApiState, NodeSource};
use crate::model::Role;
use crate::node::{DatapathReport, NodeDatapath, Uplink};
use crate::probe::status::StatusReader;
use crate::source::cluster_dir::ClusterDir;
use anyhow::Context;
use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the loop looks at the cluster directory's change marker.
const POLL: Duration = Duration::from_millis(20);
/// How often the kubelet checks its pods, and the whole directory is
/// fingerprinted, even when the marker says nothing changed.
const RESYNC: Duration = Duration::from_secs(1);
/// How often the node's status is written even when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// What this node's agent reports (the admin API's `/api/v1/node`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub name: String,
    pub lab: String,
    pub addresses: Vec<String>,
    pub pod_cidrs: Vec<String>,
    pub ready: bool,
    pub problems: Vec<String>,
    /// Node networking, the proxies and the policy table.
    #[serde(flatten)]
    pub datapath: DatapathReport,
    /// Pods this node runs: `namespace/name ips`.
    pub pods: Vec<String>,
    /// Whether this agent runs the lab's EndpointSlice controller.
    pub endpoint_controller: bool,
}

struct LabSource {
    lab: Lab,
    report: Arc<Mutex<NodeReport>>,
}

impl NodeSource for LabSource {
    fn node(&self) -> Value {
        serde_json::to_value(&*self.report.lock()).unwrap_or(Value::Null)
    }

    fn cluster(&self) -> Option<Value> {
        serde_json::to_value(ClusterView::read(&self.lab)).ok()
    }
}

/// The node loop: node networking, pods, status. Runs on its own thread
/// (it waits on processes) until `stop` is set.
struct NodeLoop {
    lab: Lab,
    node: String,
    cluster: ClusterDir,
    kubelet: Kubelet,
    agent: Arc<Agent>,
    report: Arc<Mutex<NodeReport>>,
    stop: Arc<AtomicBool>,
    /// Node networking, the proxies and the policy table.
    dp: NodeDatapath,
    /// Where the datapath's async calls run.
    rt: tokio::runtime::Handle,
    /// Pods' readiness from their status, for modules (pods of other
    /// nodes; this node's prober writes its own pods' ports).
    status_reader: StatusReader,
    /// Pods' statuses as last read (when the status marker moved), by
    /// namespace and name.
    pod_statuses: BTreeMap<(String, String), k8s_openapi::api::core::v1::PodStatus>,
}

impl NodeLoop {
    /// Whether this agent runs the EndpointSlice controller: the first node
    /// in the lab's order whose agent reports does. Two agents may both
    /// believe so for a moment at start-up; they compute the same slices.
    fn leads(&self) -> bool {
        let now = unix_now();
        let statuses = self.cluster.statuses::<LabNodeStatus>("Node");
        for n in &self.lab.config.nodes {
            if n.name == self.node {
                return true;
            }
            let alive = statuses.iter().any(|(_, name, s)| {
                *name == n.name && now.saturating_sub(s.heartbeat) <= HEARTBEAT_TIMEOUT_SECS
            });
            if alive {
                return false;
            }
        }
        false
    }

    /// The node's addresses, as the lab made them.
    fn addresses(&self) -> Vec<std::net::IpAddr> {
        self.lab
            .config
            .node(&self.node)
            .map(|n| n.addresses.clone())
            .unwrap_or_default()
    }

    fn publish_datapath(&self) {
        self.report.lock().datapath = self.dp.report();
    }

    fn run(mut self) {
        let mut last_fingerprint = None;
        let mut last_marker = None;
        let mut last_sync = Instant::now() - RESYNC;
        let mut last_beat = Instant::now() - HEARTBEAT;
        let mut problems: Vec<String> = vec![];
        let mut last_pods_marker = None;
        let mut leader = false;
        while !self.stop.load(Ordering::Relaxed) {
            let marker = self.cluster.change_marker();
            let mut changed = marker != last_marker;
            last_marker = marker;
            // The controller follows pods' readiness, which is status; only
            // the controller runs for it (the kubelet may write a pod's
            // status on every pass, which must not start another pass).
            let pods_marker = self.cluster.status_marker("Pod");
            let statuses_changed = pods_marker != last_pods_marker;
            let pods_changed = leader && statuses_changed;
            last_pods_marker = pods_marker;
            if statuses_changed {
                let statuses = self.cluster.statuses::<LabPodStatus>("Pod");
                self.status_reader.sync(
                    &self.agent.probes,
                    statuses.iter().map(|(_, _, s)| &s.status),
                );
                self.pod_statuses = statuses
                    .into_iter()
                    .map(|(ns, name, s)| ((ns, name), s.status))
                    .collect();
            }
            if !changed && last_sync.elapsed() >= RESYNC {
                let fp = self.cluster.objects_fingerprint();
                changed = last_fingerprint != Some(fp);
                last_fingerprint = Some(fp);
            }
            if changed || last_sync.elapsed() >= RESYNC {
                last_sync = Instant::now();
                problems.clear();
                match self.cluster.manifests() {
                    Err(e) => problems.push(format!("reading the cluster: {e}")),
                    Ok(m) => {
                        // Its error is among the datapath's problems.
                        let _ = self.dp.network(&m);
                        self.agent.sticky.replace(sticky_pods(&m));
                        problems.extend(self.agent.sync_modules(&m));
                        // Pods only once node networking is in place.
                        if self.dp.networked() {
                            problems.extend(self.kubelet.reconcile(&m.pods));
                        }
                        leader = self.leads();
                        if leader {
                            match endpoints::reconcile(&self.cluster, &m) {
                                Ok(r) if r != Default::default() => {
                                    tracing::debug!(?r, "endpoint slices reconciled")
                                }
                                Ok(_) => {}
                                Err(e) => problems.push(format!("endpoint slices: {e}")),
                            }
                        }
                        let ips = self.addresses();
                        self.dp.services(&m, &ips);
                        self.dp.policies(&m, &self.pod_statuses);
                        self.publish_datapath();
                    }
                }
                self.report.lock().endpoint_controller = leader;
                let mut r = self.report.lock();
                r.pods = self
                    .kubelet
                    .records()
                    .map(|p| format!("{}/{} {}", p.namespace, p.name, p.ips.join(",")))
                    .collect();
            } else if statuses_changed && let Ok(m) = self.cluster.manifests() {
                // Pods' addresses and phases are status: policies follow.
                if pods_changed && let Err(e) = endpoints::reconcile(&self.cluster, &m) {
                    tracing::warn!("endpoint slices: {e}");
                }
                self.dp.policies(&m, &self.pod_statuses);
                self.publish_datapath();
            }
            if self.dp.networked() {
                for p in self.kubelet.probe_tick() {
                    tracing::warn!("{p}");
                }
                if self.dp.pending() {
                    self.rt.block_on(self.dp.sync());
                    self.publish_datapath();
                }
            }
            if changed || last_beat.elapsed() >= HEARTBEAT {
                last_beat = Instant::now();
                let cni_ready = self.agent.registry.active_for(Role::Cni).is_some();
                let ready = self.dp.networked() && cni_ready;
                let datapath = self.dp.report();
                let mut r = self.report.lock();
                r.ready = ready;
                r.problems = problems.clone();
                r.problems.extend(self.dp.problems());
                if !cni_ready {
                    r.problems
                        .push("no CNI module is loaded (see /api/v1/modules)".into());
                }
                let mut status = self.status(ready, &r.problems);
                status.service_errors = datapath.service_errors.clone();
                r.datapath = datapath;
                drop(r);
                if let Err(e) = self.cluster.put_status("Node", "", &self.node, &status) {
                    tracing::warn!("writing the node's status: {e}");
                }
            }
            std::thread::sleep(POLL);
        }
    }

    fn status(&self, ready: bool, problems: &[String]) -> LabNodeStatus {
        let me = self.lab.config.node(&self.node);
        let mut addresses: Vec<NodeAddress> = me
            .into_iter()
            .flat_map(|n| n.addresses.iter())
            .map(|a| NodeAddress {
                type_: "InternalIP".into(),
                address: a.to_string(),
            })
            .collect();
        addresses.push(NodeAddress {
            type_: "Hostname".into(),
            address: self.node.clone(),
        });
        let now = super::view::k8s_now();
        LabNodeStatus {
            status: NodeStatus {
                addresses: Some(addresses),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    reason: Some(if ready { "AgentReady" } else { "AgentNotReady" }.into()),
                    message: Some(if ready {
                        "the agent serves CNI and node networking is in place".into()
                    } else {
                        problems.join("; ")
                    }),
                    last_heartbeat_time: Some(now),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            agent_pid: std::process::id(),
            heartbeat: unix_now(),
            problems: problems.to_vec(),
            service_errors: BTreeMap::new(),
        }
    }
}

/// Run the agent of lab node `node` in the lab at `dir` until SIGTERM.
pub async fn run(dir: &Path, node: &str) -> anyhow::Result<()> {
    tracing::info!(node, lab = %dir.display(), pid = std::process::id(), "lab agent starting");
    let lab = Lab::load(dir)?.with_context(|| {
        format!(
            "no lab in {} (run `switchyard lab up` first)",
            dir.display()
        )
    })?;
    let me = lab
        .config
        .node(node)
        .cloned()
        .with_context(|| format!("the lab has no node {node:?}"))?;
    let node_dir = lab.node_dir(node);
    std::fs::create_dir_all(&node_dir)?;
    let cluster = lab.cluster()?;
    let cni_socket = node_dir.join("cni.sock");
    let agent = Agent::start(AgentOptions {
        data_dir: node_dir.join("data"),
        local: Some(cluster.objects_dir()),
        node: node.to_string(),
        cni_socket: cni_socket.clone(),
        pod_cidrs: me.pod_cidrs.clone(),
        fuel: false,
        sticky_ttl: Duration::from_secs(600),
    })
    .await?;
    let report = Arc::new(Mutex::new(NodeReport {
        name: node.to_string(),
        lab: lab.config.name.clone(),
        datapath: DatapathReport {
            model: lab.config.model.to_string(),
            ..Default::default()
        },
        addresses: me.addresses.iter().map(|a| a.to_string()).collect(),
        pod_cidrs: me.pod_cidrs.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The agent runs in the node's namespace: its tables go there.
    let dp = NodeDatapath::new(
        &agent,
        None,
        Uplink::Named {
            name: UPLINK.into(),
            mtu: 1500,
        },
        tokio::runtime::Handle::current(),
    );
    let drops = match crate::policy::droplog::spawn(dp.policy_snapshot()) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("policy drops will not be logged: {e}");
            None
        }
    };
    let api_state = ApiState {
        drops,
        policy: Some(dp.policy_snapshot()),
        registry: agent.registry.clone(),
        ledger: agent.ledger.clone(),
        probes: agent.probes.clone(),
        source: Arc::new(LabSource {
            lab: lab.clone(),
            report: report.clone(),
        }),
    };
    let api_addr = std::net::SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), ADMIN_PORT);
    let api = tokio::spawn(crate::api::serve(
        api_addr,
        api_state,
        stopped(stop_rx.clone()),
    ));
    let agent = Arc::new(agent);
    let cni_agent = agent.clone();
    let cni = tokio::spawn(async move { cni_agent.serve(stopped(stop_rx)).await });

    // The kubelet execs the plugin, which needs the socket: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cni_socket.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let plugin = lab.dir.join("bin").join("switchyard-cni");
    let kubelet = Kubelet::new(
        lab.clone(),
        node,
        plugin,
        &cni_socket,
        tokio::runtime::Handle::current(),
        agent.probes.clone(),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let node_loop = NodeLoop {
        dp,
        pod_statuses: BTreeMap::new(),
        rt: tokio::runtime::Handle::current(),
        status_reader: StatusReader::default(),
        lab: lab.clone(),
        node: node.to_string(),
        cluster,
        kubelet,
        agent: agent.clone(),
        report,
        stop: stop.clone(),
    };
    let looper = std::thread::Builder::new()
        .name("lab-node".into())
        .spawn(move || node_loop.run())?;

    tokio::select! {
        _ = crate::agent::shutdown_signal() => {}
        r = cni => {
            stop.store(true, Ordering::Relaxed);
            let _ = looper.join();
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.context("the CNI server stopped")),
                Err(e) => Err(e.into()),
            };
        }
        r = api => {
            stop.store(true, Ordering::Relaxed);
            let _ = looper.join();
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("the admin API on port {ADMIN_PORT}"))),
                Err(e) => Err(e.into()),
            };
        }
    }
    let _ = stop_tx.send(true);
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || looper.join()).await;
    Ok(())
}
