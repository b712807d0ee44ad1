//! `switchyard agent`: the node agent's composition. Without Kubernetes it
//! runs from a directory of manifests (`--local`) and a data directory; in a
//! cluster (and in the lab) it runs as a DaemonSet, following the API server
//! ([`cluster`]), with the node's datapath ([`node`]) and the status it
//! writes back ([`status`]).

pub mod cluster;
pub mod dns;
pub mod node;
pub mod status;

use crate::cni::{CniService, StickyPods, journal::Journal, store::AttachmentStore};
use crate::datapath::ipam::{Ledger, PoolConfig};
use crate::datapath::netlink::NetlinkLinks;
use crate::datapath::probes::ProbeTable;
use crate::model::snapshot::{Manifests, sticky_owner};
use crate::model::{FailurePolicy, Role};
use crate::registry::source::{Blob, Fetcher, ModuleSource};
use crate::registry::{ModuleSpec, Registry};
use crate::runtime::{HostServices, Runtime, RuntimeConfig};
use anyhow::{Context, bail};
use ipnet::IpNet;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Where the ledger, the attachment store, journals and cached modules live.
    pub data_dir: PathBuf,
    /// A directory of manifests (Node, Pod, NetworkModule, ...).
    pub local: Option<PathBuf>,
    /// This node's name.
    pub node: String,
    pub cni_socket: PathBuf,
    /// Pod CIDRs when no Node manifest gives them.
    pub pod_cidrs: Vec<IpNet>,
    /// Further pools, for secondary networks: a network configuration names
    /// them in `pools`; a network that names none takes the pod CIDRs'.
    pub extra_pools: Vec<PoolConfig>,
    pub fuel: bool,
    /// How long compiling one module may take.
    pub compile_deadline: Duration,
    /// How long a StatefulSet pod's released address waits for it.
    pub sticky_ttl: Duration,
}

/// The binding name of the built-in CNI module when no NetworkModule names one.
pub const DEFAULT_CNI_BINDING: &str = "cni-bridge";
/// The binding of the service proxy when no NetworkModule serves it.
pub const DEFAULT_PROXY_BINDING: &str = "proxy-nftables";
/// The binding of NetworkPolicy when no NetworkModule serves it.
pub const DEFAULT_POLICY_BINDING: &str = "policy-kubernetes";

/// A running agent's parts.
pub struct Agent {
    pub registry: Arc<Registry>,
    pub cni: Arc<CniService>,
    pub ledger: Arc<Ledger>,
    /// Pods whose addresses outlive them, from the manifests.
    pub sticky: Arc<StickyPods>,
    /// Probe results, which the prober (or Pod status) writes and modules
    /// read through the `probes` host interface.
    pub probes: Arc<ProbeTable>,
    /// The module specs last applied, by binding name.
    applied: parking_lot::Mutex<HashMap<String, ModuleSpec>>,
    pub options: AgentOptions,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.options.node)
            .finish_non_exhaustive()
    }
}

/// Pools from the pod CIDRs (`v4` and `v6`, one per family), first, then
/// the extra pools of secondary networks, which must not overlap any other.
pub fn pools(cidrs: &[IpNet], extra: &[PoolConfig]) -> anyhow::Result<Vec<PoolConfig>> {
    let mut pools: Vec<PoolConfig> = vec![];
    for c in cidrs {
        let name = if c.addr().is_ipv4() { "v4" } else { "v6" };
        if pools.iter().any(|p| p.name == name) {
            bail!("more than one {name} pod CIDR ({c}); a node has at most one per family");
        }
        pools.push(PoolConfig {
            name: name.into(),
            subnet: c.trunc(),
        });
    }
    for e in extra {
        let subnet = e.subnet.trunc();
        if let Some(p) = pools.iter().find(|p| p.name == e.name) {
            bail!(
                "pool {} ({subnet}): the name is taken by pool {} ({}); v4 and v6 are the pod CIDRs' pools",
                e.name,
                p.name,
                p.subnet
            );
        }
        if let Some(p) = pools
            .iter()
            .find(|p| p.subnet.contains(&subnet.network()) || subnet.contains(&p.subnet.network()))
        {
            bail!(
                "pool {} ({subnet}) overlaps pool {} ({}): a pod's address must name one pool",
                e.name,
                p.name,
                p.subnet
            );
        }
        pools.push(PoolConfig {
            name: e.name.clone(),
            subnet,
        });
    }
    Ok(pools)
}

/// The sticky pods among `manifests`' pods, keyed by (namespace, name).
pub fn sticky_pods(manifests: &Manifests) -> HashMap<(String, String), String> {
    manifests
        .pods
        .iter()
        .filter_map(|p| {
            let owner = sticky_owner(p)?;
            let (ns, name) = owner.split_once('/')?;
            Some(((ns.to_string(), name.to_string()), owner.clone()))
        })
        .collect()
}

/// The modules node `node` should run, the CNI module first: the
/// highest-priority NetworkModule of role cni that selects the node (else the
/// built-in cni-bridge, with the MTU the cluster network needs), then every
/// other NetworkModule that selects the node, and the built-in
/// proxy-nftables and policy-kubernetes when none of them serves the role
/// for every object (a referenced-only module serves only the objects that
/// name it).
pub fn desired_modules(manifests: &Manifests, node: &str) -> Result<Vec<ModuleSpec>, String> {
    let labels = crate::model::snapshot::node_labels(manifests.node(node));
    let mut mine: Vec<_> = manifests
        .modules
        .iter()
        .filter(|m| m.spec.selects(&labels))
        .collect();
    mine.sort_by_key(|m| (m.spec.role != Role::Cni, -m.spec.priority, m.name.clone()));
    let mut specs = vec![];
    if mine.first().is_none_or(|m| m.spec.role != Role::Cni) {
        let mut s = ModuleSpec::new(
            DEFAULT_CNI_BINDING,
            Role::Cni,
            ModuleSource::Builtin("cni-bridge".into()),
        );
        s.failure_policy = FailurePolicy::FailClosed;
        // Pods' MTU follows the cluster network: the overlay's encapsulation
        // takes its share of the uplink's 1500.
        if let Some(net) = manifests.cluster_network() {
            let mtu = net
                .mtu
                .or((net.model == crate::model::crd::NetworkModel::Overlay)
                    .then_some(1500 - VXLAN_OVERHEAD));
            if let Some(mtu) = mtu {
                s.config = serde_json::json!({ "mtu": mtu });
            }
        }
        specs.push(s);
    }
    for (i, m) in mine.iter().enumerate() {
        // Lower-priority cni modules are not loaded: one serves.
        if m.spec.role == Role::Cni && i > 0 {
            continue;
        }
        let mut spec = ModuleSpec::from_crd(&m.name, m.generation, &m.spec)?;
        // A ConfigMap source loads the bytes the cluster holds now.
        if let ModuleSource::ConfigMap { name, key, bytes } = &mut spec.source {
            *bytes = manifests
                .config_maps
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|c| c.binary_data.as_ref()?.get(key.as_str()))
                .map(|b| Blob(Arc::from(b.0.as_slice())));
        }
        specs.push(spec);
    }
    // Services are proxied by the built-in nftables module unless a
    // NetworkModule serves the role here, or the cluster asks for another
    // mode (whose module is then a NetworkModule).
    let mode = manifests
        .cluster_network()
        .map(|n| n.proxy.mode.as_str())
        .unwrap_or("nftables");
    // A referenced-only module serves only the objects that name it, so it
    // does not take the role over: the built-in one stays for the rest.
    let serves_all = |specs: &[ModuleSpec], role: Role| {
        specs.iter().any(|s| s.role == role && !s.referenced_only)
    };
    if mode == "nftables" && !serves_all(&specs, Role::ServiceProxy) {
        specs.push(ModuleSpec::new(
            DEFAULT_PROXY_BINDING,
            Role::ServiceProxy,
            ModuleSource::Builtin("proxy-nftables".into()),
        ));
    }
    // NetworkPolicy is enforced by the built-in module unless a
    // NetworkModule serves the role here for every policy.
    if !serves_all(&specs, Role::NetworkPolicy) {
        specs.push(ModuleSpec::new(
            DEFAULT_POLICY_BINDING,
            Role::NetworkPolicy,
            ModuleSource::Builtin("policy-kubernetes".into()),
        ));
    }
    Ok(specs)
}

/// What a module sync did.
#[derive(Debug, Default)]
pub struct ModuleSync {
    /// A module was loaded, swapped, failed to load or removed.
    pub changed: bool,
    pub problems: Vec<String>,
}

/// The agent's module loader, off the control loop: it makes the loaded
/// modules what the latest snapshot asks for, one sync at a time, and tells
/// the loop when something changed so that the datapath renders with the
/// new versions. Fetching, compiling and `describe()` of a new module never
/// hold the loop up: it keeps serving with what is loaded meanwhile, and a
/// burst of snapshots during a long compile ends in one more sync with the
/// latest.
pub fn spawn_module_loader(
    agent: Arc<Agent>,
    mut manifests: tokio::sync::watch::Receiver<Arc<Manifests>>,
) -> tokio::sync::watch::Receiver<u64> {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        let mut loads = 0u64;
        loop {
            let m = manifests.borrow_and_update().clone();
            let a = agent.clone();
            let r = tokio::task::spawn_blocking(move || {
                a.sticky.replace(sticky_pods(&m));
                a.sync_modules(&m)
            })
            .await
            .unwrap_or_else(|e| ModuleSync {
                changed: false,
                problems: vec![format!("syncing modules: {e}")],
            });
            for p in &r.problems {
                tracing::warn!("{p}");
            }
            if r.changed {
                loads += 1;
                if tx.send(loads).is_err() {
                    return;
                }
            }
            if manifests.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The VXLAN overhead the overlay takes from the uplink MTU (IPv4 outer
/// header; IPv6 would take 70).
pub const VXLAN_OVERHEAD: u32 = 50;

impl Agent {
    /// Open the data directory, load modules and reconcile; not yet serving.
    pub async fn start(options: AgentOptions) -> anyhow::Result<Agent> {
        let manifests = match &options.local {
            Some(dir) => Manifests::load_dir(dir)?,
            None => Manifests::default(),
        };
        Self::start_with(options, &manifests).await
    }

    /// Start from the cluster as `manifests` show it (the kube source's
    /// first snapshot, or a manifest directory).
    pub async fn start_with(options: AgentOptions, manifests: &Manifests) -> anyhow::Result<Agent> {
        let data = &options.data_dir;
        std::fs::create_dir_all(data)
            .with_context(|| format!("creating the data directory {}", data.display()))?;
        let node = manifests.node(&options.node);
        let mut cidrs: Vec<IpNet> = node
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| {
                s.pod_cidrs
                    .clone()
                    .or_else(|| s.pod_cidr.clone().map(|c| vec![c]))
            })
            .unwrap_or_default()
            .iter()
            .map(|c| {
                c.parse().with_context(|| {
                    format!("Node {}: spec.podCIDRs: {c:?} is not a CIDR", options.node)
                })
            })
            .collect::<anyhow::Result<_>>()?;
        if cidrs.is_empty() {
            cidrs = options.pod_cidrs.clone();
        }
        if cidrs.is_empty() {
            tracing::warn!(
                "node {} has no pod CIDR: CNI STATUS reports not available until it has one",
                options.node
            );
        }
        let ledger = Arc::new(
            Ledger::open(
                &data.join("ipam.redb"),
                pools(&cidrs, &options.extra_pools)?,
            )?
            .with_sticky_ttl(options.sticky_ttl),
        );
        let links = Arc::new(NetlinkLinks::new(None));
        let probes = Arc::new(ProbeTable::default());
        let services = HostServices {
            probes: Some(probes.clone()),
            ipam: Some(ledger.clone()),
            links: Some(links.clone()),
        };
        let runtime = Runtime::with_config(RuntimeConfig {
            fuel: options.fuel,
            compile_deadline: options.compile_deadline,
            ..RuntimeConfig::default()
        })?;
        let fetcher = Fetcher {
            cache_dir: Some(data.join("modules")),
            ..Fetcher::default()
        };
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let registry = Registry::new(runtime, fetcher, services, cpus);

        let specs = desired_modules(manifests, &options.node).map_err(anyhow::Error::msg)?;
        let binding = specs[0].name.clone();
        let mut applied = HashMap::new();
        for spec in specs {
            if let Err(e) = registry.apply_async(spec.clone()).await {
                // The agent keeps running: STATUS says why ADD cannot be served,
                // the module's status why it did not load.
                tracing::error!("{e}");
            }
            applied.insert(spec.name.clone(), spec);
        }

        let sticky = Arc::new(StickyPods::new(sticky_pods(manifests)));
        let store =
            AttachmentStore::open(&data.join("attachments.redb")).map_err(anyhow::Error::msg)?;
        let journal = Journal::new(&data.join("journal"))?;
        let cni = CniService::new(
            registry.clone(),
            &binding,
            ledger.clone(),
            links,
            store,
            journal,
            sticky.clone(),
            64,
        );
        let svc = cni.clone();
        let reconciled = tokio::task::spawn_blocking(move || svc.reconcile()).await?;
        tracing::info!(
            interrupted = reconciled.interrupted,
            gone = reconciled.gone,
            orphans = reconciled.orphans,
            "reconciled pod attachments with the namespaces that exist"
        );
        for p in &reconciled.problems {
            tracing::warn!("reconciling: {p}");
        }
        Ok(Agent {
            registry,
            cni,
            ledger,
            sticky,
            probes,
            applied: parking_lot::Mutex::new(applied),
            options,
        })
    }

    /// Make the loaded modules what `manifests` ask for: load new and
    /// changed NetworkModules (a hot swap: calls in flight finish on the old
    /// version), drop removed ones, and move CNI to another binding if a
    /// different NetworkModule now serves it. Says whether anything changed,
    /// and the problems.
    pub fn sync_modules(&self, manifests: &Manifests) -> ModuleSync {
        let specs = match desired_modules(manifests, &self.options.node) {
            Ok(s) => s,
            Err(e) => {
                return ModuleSync {
                    changed: false,
                    problems: vec![e],
                };
            }
        };
        let mut changed = false;
        let mut problems = vec![];
        let mut applied = self.applied.lock();
        for spec in &specs {
            if applied.get(&spec.name) == Some(spec) {
                continue;
            }
            // Remembered even when it fails, so a bad module is not
            // recompiled every second; its status says why it is not loaded.
            if let Err(e) = self.registry.apply(spec.clone()) {
                problems.push(format!("NetworkModule {}: {e}", spec.name));
            }
            applied.insert(spec.name.clone(), spec.clone());
            changed = true;
        }
        let cni = &specs[0].name;
        if self.cni.binding() != *cni {
            tracing::info!(from = %self.cni.binding(), to = %cni, "CNI now served by another NetworkModule");
            self.cni.set_binding(cni);
        }
        let gone: Vec<String> = applied
            .keys()
            .filter(|n| !specs.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        for name in gone {
            self.registry.remove(&name);
            applied.remove(&name);
            changed = true;
        }
        ModuleSync { changed, problems }
    }

    /// Serve CNI, and the admin API where `admin` says, until SIGTERM or
    /// SIGINT: the standalone agent (`--local`, or flags alone).
    pub async fn run(self, admin: AdminOptions) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let manifests = match &self.options.local {
            Some(dir) => Some(Arc::new(Manifests::load_dir(dir)?)),
            None => None,
        };
        let state = crate::api::ApiState {
            registry: self.registry.clone(),
            ledger: self.ledger.clone(),
            probes: self.probes.clone(),
            policy: None,
            drops: None,
            dns: None,
            source: Arc::new(StandaloneSource {
                node: self.options.node.clone(),
                local: self.options.local.clone(),
                cni_socket: self.options.cni_socket.clone(),
                manifests,
                cni: self.cni.clone(),
                registry: self.registry.clone(),
                ledger: self.ledger.clone(),
            }),
        };
        // Bound before CNI is served, so a socket or port that cannot be
        // had stops the agent with the reason instead of going unnoticed.
        let mut servers = vec![];
        if let Some(path) = &admin.socket {
            let listener = bind_admin_socket(path)?;
            tracing::info!("admin API and console on unix socket {}", path.display());
            let (router, stop) = (crate::api::router(state.clone()), stopped(stop_rx.clone()));
            servers.push(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
            }));
        }
        if let Some(addr) = admin.address {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("the admin API cannot listen on {addr}"))?;
            tracing::info!(%addr, "admin API and console listening");
            let (router, stop) = (crate::api::router(state), stopped(stop_rx.clone()));
            servers.push(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
            }));
        }
        let served = self.serve(shutdown_signal()).await;
        let _ = stop_tx.send(true);
        for s in servers {
            match s.await {
                Ok(Err(e)) => tracing::warn!("the admin API: {e}"),
                Err(e) => tracing::warn!("the admin API: {e}"),
                Ok(Ok(())) => {}
            }
        }
        if let Some(path) = &admin.socket {
            let _ = std::fs::remove_file(path);
        }
        served
    }

    /// Serve CNI until `shutdown` completes.
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        crate::cni::server::serve(self.options.cni_socket.clone(), self.cni.clone(), shutdown)
            .await?;
        Ok(())
    }
}

/// Where a standalone agent serves its admin API.
#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    /// A unix socket (root only, like the CNI socket: the API has no
    /// authentication of its own).
    pub socket: Option<PathBuf>,
    /// A TCP address, for operators who want it on the network.
    pub address: Option<std::net::SocketAddr>,
}

impl AdminOptions {
    /// The admin socket's default place: `admin.sock` beside the CNI socket.
    pub fn socket_beside(cni_socket: &std::path::Path) -> PathBuf {
        cni_socket
            .parent()
            .unwrap_or_else(|| std::path::Path::new("/run/switchyard"))
            .join("admin.sock")
    }
}

/// Listen on a unix socket only root may use, replacing a stale one.
fn bind_admin_socket(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the admin socket", dir.display()))?;
    }
    if crate::cni::server::is_listening(path) {
        bail!(
            "the admin socket {} is served by another process (another agent?)",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("the admin API cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} root's only", path.display()))?;
    Ok(listener)
}

/// The admin API's view of a standalone agent: the node from its flags or
/// manifests, and (with `--local`) the manifests as the cluster.
struct StandaloneSource {
    node: String,
    local: Option<PathBuf>,
    cni_socket: PathBuf,
    manifests: Option<Arc<Manifests>>,
    cni: Arc<CniService>,
    registry: Arc<Registry>,
    ledger: Arc<Ledger>,
}

impl crate::api::NodeSource for StandaloneSource {
    fn node(&self) -> serde_json::Value {
        use crate::datapath::ipam::Ipam;
        let pools = self.ledger.pools();
        let mut problems = vec![];
        if pools.is_empty() {
            problems.push(format!(
                "node {} has no pod CIDR (a Node manifest's spec.podCIDRs, or --pod-cidr): CNI ADD cannot be served",
                self.node
            ));
        }
        let binding = self.cni.binding();
        if let Some(b) = self.registry.binding(&binding)
            && b.active().is_none()
        {
            problems.push(format!(
                "the CNI module {binding} is not loaded: {}",
                b.condition().message
            ));
        }
        serde_json::json!({
            "name": self.node,
            "pid": std::process::id(),
            "source": if self.local.is_some() { "local" } else { "flags" },
            "manifests": self.local,
            "cniSocket": self.cni_socket,
            "cniModule": binding,
            "podCIDRs": pools.iter().map(|p| p.subnet.to_string()).collect::<Vec<_>>(),
            "ready": problems.is_empty(),
            "problems": problems,
        })
    }

    fn cluster(&self) -> Option<serde_json::Value> {
        let m = self.manifests.as_ref()?;
        let facts = crate::api::view::NodeFacts {
            cluster_name: "standalone".into(),
            ..Default::default()
        };
        serde_json::to_value(crate::api::view::cluster_view(m, &facts)).ok()
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn modules_of(yaml: &str) -> Vec<(String, Role)> {
        let mut m = Manifests::default();
        m.add_text(Path::new("example.yaml"), yaml).unwrap();
        desired_modules(&m, "node-1")
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.role))
            .collect()
    }

    #[test]
    fn extra_pools_follow_the_pod_cidrs_and_may_not_overlap_or_share_names() {
        let cidrs: Vec<IpNet> = vec!["10.1.0.0/24".parse().unwrap(), "fd01::/64".parse().unwrap()];
        let pool = |name: &str, subnet: &str| PoolConfig {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
        };
        let got = pools(&cidrs, &[pool("side", "10.77.0.5/24")]).unwrap();
        let names: Vec<&str> = got.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["v4", "v6", "side"]);
        assert_eq!(got[2].subnet.to_string(), "10.77.0.0/24");
        let e = pools(&cidrs, &[pool("v4", "10.77.0.0/24")]).unwrap_err();
        assert!(e.to_string().contains("the name is taken"), "{e}");
        let e = pools(&cidrs, &[pool("side", "10.1.0.128/25")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("pool side (10.1.0.128/25) overlaps pool v4 (10.1.0.0/24)"),
            "{e}"
        );
    }

    /// The unmodified example of a referenced-only policy module: applying
    /// it must not turn NetworkPolicy off.
    #[test]
    fn a_referenced_only_module_leaves_the_role_to_the_built_in_one() {
        let got = modules_of(include_str!(
            "../../../crds/examples/wasm-egress-allowlist.yaml"
        ));
        assert!(
            got.contains(&("egress-allowlist".into(), Role::NetworkPolicy)),
            "{got:?}"
        );
        assert!(
            got.contains(&(DEFAULT_POLICY_BINDING.into(), Role::NetworkPolicy)),
            "NetworkPolicy lost its module: {got:?}"
        );
    }

    /// A module that serves the role for every object replaces the built-in.
    #[test]
    fn a_module_for_every_object_replaces_the_built_in_one() {
        let yaml = include_str!("../../../crds/examples/wasm-egress-allowlist.yaml")
            .replace("referencedOnly: true", "referencedOnly: false");
        let got = modules_of(&yaml);
        assert!(
            !got.iter().any(|(n, _)| n == DEFAULT_POLICY_BINDING),
            "{got:?}"
        );
    }
}
