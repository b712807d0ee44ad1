//! The lab kubelet's Node: it registers the Node (labels, addresses,
//! capacity, node info), keeps its Lease in `kube-node-lease` renewed, and
//! reports Ready as the kubelet does: when the container runtime's network
//! is ready, which here means the CNI plugin's STATUS succeeds (the agent
//! serves, with a module and a pod CIDR). The podCIDRs come from
//! kube-controller-manager's node IPAM controller, as in a cluster.

use super::super::layout::{KUBELET_PORT, Lab};
use super::status::now;
use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// How long a node's Lease is valid; renewed every quarter of it.
pub const LEASE_SECONDS: i32 = 40;

fn node_object(lab: &Lab, node: &str) -> anyhow::Result<Node> {
    let me = lab
        .config
        .node(node)
        .with_context(|| format!("the lab has no node {node:?}"))?;
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "topology.kubernetes.io/zone": me.zone,
            },
        },
        "spec": {},
    }))?)
}

/// Create the Node, or take over the one a previous run registered.
pub async fn register(client: &kube::Client, lab: &Lab, node: &str) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let obj = node_object(lab, node)?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.patch(
                node,
                &PatchParams::default(),
                &Patch::Strategic(json!({"metadata": {"labels": obj.metadata.labels}})),
            )
            .await
            .with_context(|| format!("updating Node {node}'s labels"))?;
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "registering Node {node}: {}",
            super::super::apply::api_message(&e)
        )),
    }
}

/// The Node's status as the kubelet reports it; `network` is the runtime
/// network's readiness (the CNI plugin's STATUS).
pub fn status(
    lab: &Lab,
    node: &str,
    network: &Result<(), String>,
    ready_since: &str,
) -> serde_json::Value {
    let me = lab.config.node(node);
    let v4_first = lab.config.families.v4();
    let mut addresses: Vec<std::net::IpAddr> = me.map(|n| n.addresses.clone()).unwrap_or_default();
    addresses.sort_by_key(|a| a.is_ipv4() != v4_first);
    let mut addrs: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a.to_string()}))
        .collect();
    addrs.push(json!({"type": "Hostname", "address": node}));
    let heartbeat = now();
    let (ready, reason, message) = match network {
        Ok(()) => (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        ),
        Err(e) => (
            "False",
            "KubeletNotReady",
            format!(
                "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: {e}"
            ),
        ),
    };
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": t,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": ready_since,
        })
    };
    let capacity = json!({"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"});
    let uname = nix::sys::utsname::uname().ok();
    json!({
        "status": {
            "addresses": addrs,
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", ready, reason, &message),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {
                "machineID": node,
                "systemUUID": node,
                "bootID": lab.config.name,
                "kernelVersion": uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
                "osImage": "Switchyard lab node",
                "containerRuntimeVersion": format!("switchyard-lab://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": super::super::controlplane::KUBERNETES_VERSION,
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            },
        }
    })
}

/// Write the Node's status.
pub async fn write_status(
    client: &kube::Client,
    node: &str,
    status: &serde_json::Value,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    // A merge patch replaces the lists whole: a strategic one merges node
    // addresses by type, which folds both families' InternalIPs into one.
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "writing Node {node}'s status: {}",
                super::super::apply::api_message(&e)
            )
        })?;
    Ok(())
}

/// Renew (or create) the node's Lease.
pub async fn renew_lease(
    client: &kube::Client,
    node: &str,
    uid: Option<&str>,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = k8s_openapi::jiff::Timestamp::now();
    let spec = json!({
        "holderIdentity": node,
        "leaseDurationSeconds": LEASE_SECONDS,
        "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renew),
    });
    match api
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": spec,
            });
            if let Some(uid) = uid {
                lease["metadata"]["ownerReferences"] = json!([{
                    "apiVersion": "v1", "kind": "Node", "name": node, "uid": uid,
                }]);
            }
            api.create(&PostParams::default(), &serde_json::from_value(lease)?)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "creating the node Lease: {}",
                        super::super::apply::api_message(&e)
                    )
                })?;
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "renewing the node Lease: {}",
            super::super::apply::api_message(&e)
        )),
    }
}

/// The Node's uid (for its Lease's owner) and podCIDRs, once registered.
pub async fn read(client: &kube::Client, node: &str) -> anyhow::Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    api.get(node)
        .await
        .with_context(|| format!("reading Node {node}"))
}
