//! The node's datapath around the agent, whatever feeds it: node networking
//! for the cluster's network model (routes, VXLAN, masquerade;
//! [`crate::datapath::nodenet`]), the Service proxy (the service-proxy
//! module: built-in nftables, or the mode the ClusterNetwork names), the
//! userspace proxy for Services a scheduler module serves, and the
//! NetworkPolicy table.
//!
//! The cluster agent ([`crate::agent::cluster`]) feeds it [`Manifests`] snapshots
//! from the API server, in a cluster and in the lab alike (the lab runs a
//! real control plane); the kubelet probes pods and kube-controller-manager
//! writes EndpointSlices.

use crate::agent::Agent;
use crate::datapath::conntrack::ConntrackTool;
use crate::datapath::nft::Nft;
use crate::datapath::nodenet::{self, NodePlan};
use crate::model::ObjectRef;
use crate::model::service as convert;
use crate::model::snapshot::Manifests;
use crate::policy::engine::PolicyEngine;
use crate::proxy::userspace::{PortReport, UserspaceProxy};
use crate::proxy::{MIN_SYNC_INTERVAL, ServiceProxy};
use k8s_openapi::api::core::v1::PodStatus;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Where pods' traffic leaves the node.
#[derive(Debug, Clone)]
pub enum Uplink {
    /// A known link (the lab's `eth0`) and its MTU.
    Named { name: String, mtu: u32 },
    /// The link that holds one of the node's InternalIPs, as a cluster's
    /// node has it.
    Discover,
}

/// What the datapath reports of itself (part of the admin API's node view).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathReport {
    /// The network model node networking follows.
    pub model: String,
    /// The uplink node networking uses.
    pub uplink: String,
    /// Routes node networking installed: `dst via gw dev`.
    pub routes: Vec<String>,
    /// VXLAN peers (overlay): `vtep mac underlay`.
    pub vxlan_peers: Vec<String>,
    pub masquerade: bool,
    /// Services the node's proxy programs.
    pub services: usize,
    /// Why a Service is not (fully) programmed, by `namespace/name`.
    pub service_errors: BTreeMap<String, String>,
    /// Service ports the userspace proxy serves, with their counters.
    pub userspace: Vec<PortReport>,
    /// NetworkPolicies the node's policy table holds.
    pub policies: usize,
    /// Why a (Wasm)NetworkPolicy is not (fully) in force, by object
    /// (`NetworkPolicy prod/web`).
    pub policy_errors: BTreeMap<String, String>,
}

pub use crate::model::node::{internal_ips, node_infos};

fn describe_plan(plan: &NodePlan, r: &mut DatapathReport) {
    r.routes = plan
        .routes
        .iter()
        .map(|(dst, via, dev, _)| format!("{dst} via {via} dev {dev}"))
        .collect();
    r.vxlan_peers = plan
        .vxlan
        .iter()
        .flat_map(|v| v.peers.iter())
        .map(|(vtep, mac, underlay)| {
            let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
            format!("{vtep} {} {underlay}", mac.join(":"))
        })
        .collect();
    r.masquerade = plan.nft.contains("masquerade");
}

/// The node's datapath: node networking, the proxies and the policy table.
pub struct NodeDatapath {
    node: String,
    /// The network namespace programmed (a path), or the agent's own.
    netns: Option<PathBuf>,
    uplink: Uplink,
    /// The uplink found for these InternalIPs (discovery asks the kernel;
    /// it runs again when they change or node networking fails).
    discovered: Option<(Vec<IpAddr>, String, u32)>,
    /// The node networking plan in place, if one is.
    applied: Option<NodePlan>,
    /// Why node networking is not (fully) in place.
    network_error: Option<String>,
    proxy: ServiceProxy,
    /// Services whose scheduler is a module: proxied by the agent itself.
    /// Only when the agent programs its own namespace (its listeners are
    /// sockets of the agent's namespace).
    userspace: Option<UserspaceProxy>,
    policy: PolicyEngine,
    /// Services the proxy could not read, by `namespace/name`.
    unreadable: BTreeMap<String, String>,
    /// Policies that could not be resolved.
    policy_unresolved: BTreeMap<ObjectRef, String>,
    /// Why the proxy's table could not be loaded, until a full sync works.
    proxy_error: Option<String>,
    userspace_error: Option<String>,
    /// Why the policy table could not be loaded, until a full sync works.
    policy_error: Option<String>,
    last_proxy_sync: Instant,
    last_policy_sync: Instant,
    report: DatapathReport,
}

impl NodeDatapath {
    /// The datapath of `agent`'s node, programming the network namespace
    /// `netns` (a name under /var/run/netns) or the agent's own. Proxy
    /// listeners and async work run on `rt`.
    pub fn new(
        agent: &Agent,
        netns: Option<&str>,
        uplink: Uplink,
        rt: tokio::runtime::Handle,
    ) -> NodeDatapath {
        let path = netns.map(|n| std::path::Path::new("/var/run/netns").join(n));
        let nft = || Arc::new(Nft::new(path.clone()));
        let mut policy_error = None;
        // Bridged pod-to-pod traffic reaches the policy table only through
        // br_netfilter: a node-wide setting, left alone when the agent
        // programs another namespace.
        if path.is_none()
            && let Err(e) = crate::datapath::sysctl::enable_bridge_netfilter()
        {
            tracing::error!("{e}");
            policy_error = Some(e);
        }
        let userspace = path
            .is_none()
            .then(|| UserspaceProxy::new(agent.registry.clone(), agent.probes.clone(), nft(), rt));
        NodeDatapath {
            node: agent.options.node.clone(),
            proxy: ServiceProxy::new(
                agent.registry.clone(),
                nft(),
                Arc::new(ConntrackTool {
                    netns: netns.map(str::to_string),
                }),
            ),
            policy: PolicyEngine::new(agent.registry.clone(), nft()),
            netns: path,
            uplink,
            discovered: None,
            applied: None,
            network_error: None,
            userspace,
            unreadable: BTreeMap::new(),
            policy_unresolved: BTreeMap::new(),
            proxy_error: None,
            userspace_error: None,
            policy_error,
            last_proxy_sync: Instant::now() - MIN_SYNC_INTERVAL,
            last_policy_sync: Instant::now() - MIN_SYNC_INTERVAL,
            report: DatapathReport::default(),
        }
    }

    /// The policy engine's view for the admin API (explain, drops).
    pub fn policy_snapshot(&self) -> crate::policy::engine::SharedSnapshot {
        self.policy.snapshot()
    }

    /// Whether node networking is in place.
    pub fn networked(&self) -> bool {
        self.applied.is_some()
    }

    /// The uplink and its MTU.
    fn uplink(&mut self, me: &[IpAddr]) -> Result<(String, u32), String> {
        if let Uplink::Named { name, mtu } = &self.uplink {
            return Ok((name.clone(), *mtu));
        }
        if let Some((ips, name, mtu)) = &self.discovered
            && ips == me
        {
            return Ok((name.clone(), *mtu));
        }
        let (name, mtu) = nodenet::link_holding(self.netns.as_ref(), me)?.ok_or_else(|| {
            let ips: Vec<String> = me.iter().map(|a| a.to_string()).collect();
            if ips.is_empty() {
                format!("Node {} has no InternalIP address", self.node)
            } else {
                format!(
                    "no link of node {} holds its InternalIP {}",
                    self.node,
                    ips.join(", ")
                )
            }
        })?;
        self.discovered = Some((me.to_vec(), name.clone(), mtu));
        Ok((name, mtu))
    }

    /// Make node networking what `m` asks for (routes to the other nodes'
    /// pod CIDRs, VXLAN, masquerade); nothing is done when the plan did not
    /// change. Returns why it could not be.
    pub fn network(&mut self, m: &Manifests) -> Result<(), String> {
        let r = self.try_network(m);
        if r.is_err() {
            // The links may have changed under us: look again next time.
            self.discovered = None;
        }
        self.network_error = r.as_ref().err().cloned();
        r
    }

    fn try_network(&mut self, m: &Manifests) -> Result<(), String> {
        let net = m.cluster_network().cloned().unwrap_or_default();
        self.report.model = net.model.to_string();
        let nodes = node_infos(m);
        let me = nodes
            .iter()
            .find(|n| n.name == self.node)
            .map(|n| n.addresses.clone())
            .unwrap_or_default();
        let (uplink, mtu) = self.uplink(&me)?;
        let plan = nodenet::plan(&self.node, &uplink, mtu, &nodes, &net);
        if self.applied.as_ref() == Some(&plan) {
            return Ok(());
        }
        nodenet::apply(self.netns.as_ref(), &uplink, &plan)?;
        tracing::info!(
            routes = plan.routes.len(),
            vxlan = plan.vxlan.is_some(),
            %uplink,
            "node networking applied"
        );
        describe_plan(&plan, &mut self.report);
        self.report.uplink = uplink;
        self.applied = Some(plan);
        Ok(())
    }

    /// The proxies' view of the node (addresses `node_ips`) and the Services.
    pub fn services(&mut self, m: &Manifests, node_ips: &[IpAddr]) {
        let net = m.cluster_network().cloned().unwrap_or_default();
        let zone = m
            .node(&self.node)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(crate::model::ZONE_LABEL).cloned());
        let ctx = convert::node_context(&self.node, zone, node_ips, &net);
        self.policy.set_context(ctx.clone());
        self.proxy.set_context(ctx);
        let (mut inputs, unreadable) = convert::inputs(m);
        // The cluster DNS Service's ClusterIPs belong to every node's own
        // DNS (`agent::dns`): not DNATed to endpoints.
        if let Some((ns, name)) = crate::agent::dns::served_service(m) {
            inputs.retain(|(s, _)| !(s.namespace == ns && s.name == name));
        }
        self.unreadable = unreadable;
        let rest = match &mut self.userspace {
            Some(u) => {
                let rest = u.take(inputs, &net.proxy.default_scheduler);
                self.userspace_error = u.sync().err();
                if let Some(e) = &self.userspace_error {
                    tracing::warn!("{e}");
                }
                rest
            }
            None => inputs,
        };
        self.proxy.set_services(rest);
        self.publish();
    }

    /// The policy engine's view: every (Wasm)NetworkPolicy resolved against
    /// the pods and namespaces; `statuses` override pods' own status (the
    /// lab keeps them apart), by namespace and name.
    pub fn policies(&mut self, m: &Manifests, statuses: &BTreeMap<(String, String), PodStatus>) {
        let (policies, unresolved) = crate::policy::inputs(m, statuses);
        let keep = unresolved.keys().cloned().collect();
        for (p, e) in &unresolved {
            tracing::warn!(policy = %p, "cannot be resolved: {e}");
        }
        self.policy_unresolved = unresolved;
        self.policy.set_policies(policies, &keep);
        self.publish();
    }

    /// Whether the proxy or the policy table has work to do.
    pub fn pending(&self) -> bool {
        self.proxy.pending() || self.policy.pending()
    }

    /// Load what changed into the proxy's and the policy's tables, each at
    /// most once per [`MIN_SYNC_INTERVAL`].
    pub async fn sync(&mut self) {
        if self.proxy.pending() && self.last_proxy_sync.elapsed() >= MIN_SYNC_INTERVAL {
            self.last_proxy_sync = Instant::now();
            let r = self.proxy.sync().await;
            if r.rendered > 0 || r.full || r.error.is_some() {
                tracing::info!(
                    rendered = r.rendered,
                    full = r.full,
                    bytes = r.script_bytes,
                    render_us = r.render.as_micros() as u64,
                    apply_us = r.apply.as_micros() as u64,
                    conntrack_deleted = r.conntrack_deleted,
                    error = r.error.as_deref().unwrap_or(""),
                    "proxy synced"
                );
            }
            if r.full || r.error.is_some() {
                self.proxy_error = r.error;
            }
        }
        if self.policy.pending() && self.last_policy_sync.elapsed() >= MIN_SYNC_INTERVAL {
            self.last_policy_sync = Instant::now();
            let r = self.policy.sync().await;
            if r.rendered > 0 || r.full || r.error.is_some() {
                tracing::info!(
                    rendered = r.rendered,
                    merged = r.merged,
                    full = r.full,
                    bytes = r.script_bytes,
                    render_us = r.render.as_micros() as u64,
                    apply_us = r.apply.as_micros() as u64,
                    error = r.error.as_deref().unwrap_or(""),
                    "policy synced"
                );
            }
            if r.full || r.error.is_some() {
                self.policy_error = r.error;
            }
        }
        self.publish();
    }

    /// Why (Wasm)NetworkPolicies are not (fully) in force, by object: the
    /// engine's error of an object, if any, wins over its resolution's.
    pub fn policy_errors(&self) -> BTreeMap<ObjectRef, String> {
        self.policy_unresolved
            .iter()
            .chain(self.policy.errors())
            .map(|(o, e)| (o.clone(), e.clone()))
            .collect()
    }

    /// Why node networking is not in place, if it is not.
    pub fn network_error(&self) -> Option<&str> {
        self.network_error.as_deref()
    }

    /// What keeps the datapath from being whole, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        if let Some(e) = &self.network_error {
            p.push(format!("node networking: {e}"));
        }
        if let Some(e) = &self.proxy_error {
            p.push(format!("the proxy's table could not be loaded: {e}"));
        }
        if let Some(e) = &self.userspace_error {
            p.push(format!("the userspace proxy: {e}"));
        }
        if let Some(e) = &self.policy_error {
            p.push(format!("the policy table could not be loaded: {e}"));
        }
        p
    }

    fn publish(&mut self) {
        let mut errors = self.unreadable.clone();
        let userspace_errors = self.userspace.iter().flat_map(|u| u.errors());
        for (o, e) in self.proxy.errors().iter().chain(userspace_errors) {
            errors.insert(format!("{}/{}", o.namespace, o.name), e.clone());
        }
        let r = &mut self.report;
        r.services = self.proxy.store().installed().count()
            + self.userspace.as_ref().map_or(0, |u| u.services());
        r.service_errors = errors;
        r.userspace = self
            .userspace
            .as_ref()
            .map(|u| u.report())
            .unwrap_or_default();
        r.policies = self.policy.policies().len();
        r.policy_errors = self
            .policy_unresolved
            .iter()
            .chain(self.policy.errors())
            .map(|(o, e)| (o.to_string(), e.clone()))
            .collect();
    }

    /// What the datapath reports of itself.
    pub fn report(&self) -> DatapathReport {
        let mut r = self.report.clone();
        if let Some(u) = &self.userspace {
            // Counters move between syncs.
            r.userspace = u.report();
        }
        r
    }
}
