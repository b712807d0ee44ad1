//! The lab's cloud controller: what a cloud provider's service controller
//! (or MetalLB) does in a cluster, for the lab's "broader network". It gives
//! each Service of type LoadBalancer an ingress IP per IP family from the
//! lab's pools (`198.19.X.64/26`, `fd19:0:X::/112`) and writes it into the
//! Service's status; the external host routes the pools to the first node,
//! as a router would after a BGP announcement. It runs in the
//! control-plane namespace (`switchyard lab cloud-controller`) as the user
//! `switchyard-lab:cloud-controller`, which may only read Services and write
//! their status.
//!
//! Services with a `loadBalancerClass` belong to another controller and are
//! left alone. An address stays with its Service while the Service is a
//! LoadBalancer; a deleted Service's address is free again.

use super::controlplane::cloud_kubeconfig;
use super::layout::{Lab, kube_client, watch_store};
use anyhow::Context;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// The ingress IPs a Service holds now.
fn ingress(s: &Service) -> Vec<IpAddr> {
    s.status
        .iter()
        .filter_map(|st| st.load_balancer.as_ref())
        .flat_map(|l| l.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn wants_ingress(s: &Service) -> bool {
    s.spec.as_ref().is_some_and(|spec| {
        spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.is_none()
    })
}

/// The families a Service asks for, in its order.
fn families(s: &Service) -> Vec<bool> {
    s.spec
        .iter()
        .flat_map(|spec| spec.ip_families.iter().flatten())
        .map(|f| f == "IPv4")
        .collect()
}

/// The first address of `pool` no Service holds (the network address is
/// skipped, as a router's).
fn first_free(pool: &IpNet, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    pool.hosts()
        .find(|a| !used.contains(a) && *a != pool.network())
}

/// What each Service's ingress should be: `(namespace, name, ips)` for the
/// Services whose status must change.
pub fn plan(services: &[Arc<Service>], pools: &[IpNet]) -> Vec<(String, String, Vec<IpAddr>)> {
    let in_pools = |a: &IpAddr| pools.iter().any(|p| p.contains(a));
    let mut used: BTreeSet<IpAddr> = services
        .iter()
        .filter(|s| wants_ingress(s))
        .flat_map(|s| ingress(s))
        .filter(in_pools)
        .collect();
    let mut changes = vec![];
    let mut sorted: Vec<&Arc<Service>> = services.iter().collect();
    // Oldest first: a Service keeps what it has, new ones take what is left.
    sorted.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.metadata.namespace.clone(),
            s.metadata.name.clone(),
        )
    });
    for s in sorted {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        let have = ingress(s);
        if !wants_ingress(s) {
            if s.spec
                .as_ref()
                .and_then(|x| x.load_balancer_class.as_ref())
                .is_none()
                && !have.is_empty()
            {
                changes.push((ns, name, vec![]));
            }
            continue;
        }
        let mut want = vec![];
        for v4 in families(s) {
            if let Some(a) = have.iter().find(|a| a.is_ipv4() == v4 && in_pools(a)) {
                want.push(*a);
                continue;
            }
            let Some(pool) = pools.iter().find(|p| p.addr().is_ipv4() == v4) else {
                continue;
            };
            if let Some(a) = first_free(pool, &used) {
                used.insert(a);
                want.push(a);
            }
        }
        if want != have {
            changes.push((ns, name, want));
        }
    }
    changes
}

/// Run the cloud controller of the lab in `dir` until SIGTERM.
pub async fn run(dir: &Path) -> anyhow::Result<()> {
    let lab = Lab::load(dir)?.with_context(|| format!("no lab in {}", dir.display()))?;
    let pools = lab.config.load_balancer_pools();
    let client = kube_client(&cloud_kubeconfig(&lab)).await?;
    let api: Api<Service> = Api::all(client.clone());
    // The watch runs on its own task, which wakes the loop on every change.
    let (reader, wake) = watch_store(api, watcher::Config::default(), "Services");
    tracing::info!(pools = ?pools, "lab cloud controller: LoadBalancer ingress IPs");
    let mut shutdown = std::pin::pin!(crate::agent::shutdown_signal());
    tokio::select! {
        _ = &mut shutdown => return Ok(()),
        r = reader.wait_until_ready() => r.context("listing Services")?,
    }
    loop {
        for (ns, name, ips) in plan(&reader.state(), &pools) {
            let api: Api<Service> = Api::namespaced(client.clone(), &ns);
            let ingress: Vec<serde_json::Value> = ips
                .iter()
                .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                .collect();
            let body = json!({"status": {"loadBalancer": {"ingress": ingress}}});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {
                    tracing::info!(service = %format!("{ns}/{name}"), ?ips, "LoadBalancer ingress")
                }
                Err(e) => {
                    tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "writing LoadBalancer ingress")
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, lb: bool, families: &[&str], ingress: &[&str]) -> Arc<Service> {
        let ing: Vec<serde_json::Value> = ingress.iter().map(|i| json!({"ip": i})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "x"},
                "spec": {"type": if lb { "LoadBalancer" } else { "ClusterIP" }, "ipFamilies": families},
                "status": {"loadBalancer": {"ingress": ing}},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ingress_ips_per_family_and_kept() {
        let pools: Vec<IpNet> = vec![
            "198.19.5.64/26".parse().unwrap(),
            "fd19:0:5::/112".parse().unwrap(),
        ];
        let s = vec![
            svc("kept", true, &["IPv4"], &["198.19.5.65"]),
            svc("new", true, &["IPv6", "IPv4"], &[]),
            svc("plain", false, &["IPv4"], &[]),
            svc("was-lb", false, &["IPv4"], &["198.19.5.70"]),
        ];
        let p = plan(&s, &pools);
        assert_eq!(
            p,
            vec![
                (
                    "x".into(),
                    "new".into(),
                    vec![
                        "fd19:0:5::1".parse().unwrap(),
                        "198.19.5.66".parse().unwrap()
                    ]
                ),
                ("x".into(), "was-lb".into(), vec![]),
            ]
        );
    }
}
