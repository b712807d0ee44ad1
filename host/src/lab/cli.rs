//! `switchyard lab ...`: bring a lab up and down, feed it manifests, look at
//! it and probe it.
//!
//! `lab up` builds a real cluster on the machine: the underlay and the
//! external host ([`super::topology`]), the control plane in a namespace of
//! its own ([`super::controlplane`]), and per node a namespace running the
//! lab's kubelet ([`super::kubelet`]) and the agent exactly as a cluster
//! runs it (`switchyard agent --kube`, with the agents' ServiceAccount).
//! Everything after that goes through the API server: `kubectl` works, and
//! `lab apply`, `status`, `probe`, `matrix` and `explain` read and write
//! the same objects.

use super::apply;
use super::behaviour::Behaviour;
use super::controlplane;
use super::layout::{ADMIN_PORT, DEFAULT_LAB_DIR, Families, KUBELET_PORT, Lab, LabConfig};
use super::podserver::{Identity, Listen};
use super::probe::{self, Protocol};
use super::topology::{self, EXTERNAL_LISTEN};
use crate::api::view::{ClusterView, NodeFacts, cluster_view};
use crate::datapath::netlink::in_netns;
use crate::model::crd::NetworkModel;
use crate::model::snapshot::Manifests;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Where the lab keeps its state (one lab per directory).
    #[arg(long, global = true, env = "SWITCHYARD_LAB_DIR", default_value = DEFAULT_LAB_DIR)]
    dir: PathBuf,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build a cluster: a real control plane and node namespaces, each
    /// running the agent and the lab's kubelet.
    Up(UpArgs),
    /// Remove everything the lab made. Idempotent.
    Down(DownArgs),
    /// Apply Kubernetes YAML to the lab's API server (as `kubectl apply
    /// --server-side`): any kind it serves, WasmNetworkPolicy,
    /// NetworkModule and ClusterNetwork included.
    Apply(ApplyArgs),
    /// Delete the objects the YAML names.
    Delete(FileArgs),
    /// Nodes, pods with their IPs and phase, Services and endpoints.
    Status(StatusArgs),
    /// Try one connection and print `allowed` or `denied` (exit 0 or 1; 2
    /// when the probe cannot be made).
    Probe(ProbeArgs),
    /// Probe every ordered pair of pods and print the reachability matrix.
    Matrix(MatrixArgs),
    /// Which NetworkPolicies and rules decide a connection (exit 0 when
    /// allowed, 1 when denied).
    Explain(ExplainArgs),
    /// Run a command in a pod's network namespace (or `external`,
    /// `node/NAME`).
    Exec(ExecArgs),
    /// Restart node agents (as a DaemonSet would after a crash).
    Restart(RestartArgs),
    /// The server inside a lab pod (started by the lab's kubelet).
    #[command(hide = true)]
    PodServer(PodServerArgs),
    /// The lab's kubelet of one node (started by `lab up`).
    #[command(hide = true)]
    Kubelet(KubeletArgs),
    /// The lab's cloud controller: LoadBalancer IPs (started by `lab up`).
    #[command(hide = true)]
    CloudController,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// flat, overlay, island or isolated.
    #[arg(long, default_value = "flat")]
    model: NetworkModel,
    /// ipv4, ipv6 or dual.
    #[arg(long = "ip-family", default_value = "ipv4")]
    ip_family: Families,
    /// Manifests to apply once the nodes are ready (files or directories).
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// The lab's name: namespaces and links are named after it (1 to 8
    /// lowercase letters and digits).
    #[arg(long, default_value = "lab")]
    name: String,
    /// How long to wait for the control plane, nodes and pods to be ready,
    /// in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Debug, Args)]
struct DownArgs {
    /// The name of a lab whose `lab.json` is gone (leftovers of a crash).
    #[arg(long, default_value = "lab")]
    name: String,
}

#[derive(Debug, Args)]
struct FileArgs {
    /// Files or directories of YAML; `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct ApplyArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Wait until the applied pods run (or are stuck for a reason), up to
    /// this many seconds.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "60")]
    wait: Option<u64>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 1s or 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if !(0.001..=600.0).contains(&secs) {
        return Err(format!("{s:?}: must be between 1ms and 10m"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Family {
    Ipv4,
    Ipv6,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// NS/POD, `external` or `node/NAME`.
    #[arg(long)]
    from: String,
    /// NS/POD, an IP, SERVICE[.NS], `external` or `node/NAME`. A Service
    /// means its cluster IP, or from `external` its LoadBalancer or
    /// external IP (the outside cannot reach cluster IPs).
    #[arg(long)]
    to: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "TCP")]
    protocol: Protocol,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Which address of the target to use (the lab's first family by default).
    #[arg(long, value_enum)]
    family: Option<Family>,
    /// Also print what the server answered (for TCP, an HTTP GET /).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Debug, Args)]
struct MatrixArgs {
    #[arg(long, default_value_t = 80)]
    port: u16,
    #[arg(long, default_value = "TCP")]
    protocol: Protocol,
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    #[arg(long, value_enum)]
    family: Option<Family>,
    /// Only pods in these namespaces (all by default).
    #[arg(long = "namespace", short = 'n')]
    namespaces: Vec<String>,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// NS/POD.
    #[arg(long)]
    from: String,
    /// NS/POD or an IP.
    #[arg(long)]
    to: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "TCP")]
    protocol: Protocol,
    /// Which family's addresses (the lab's first family by default).
    #[arg(long, value_enum)]
    family: Option<Family>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// NS/POD, `external` or `node/NAME`.
    target: String,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct RestartArgs {
    /// Nodes whose agents to restart (all by default).
    nodes: Vec<String>,
    /// Kill the agent with SIGKILL, as a crash would, instead of SIGTERM.
    #[arg(long)]
    kill: bool,
}

#[derive(Debug, Args)]
struct KubeletArgs {
    #[arg(long)]
    node: String,
    /// The node's network namespace, entered first. (Not `ip netns exec`:
    /// that gives the kubelet a mount namespace of its own, and pods'
    /// namespaces it mounts there would be invisible to the agent.)
    #[arg(long)]
    netns: PathBuf,
    /// The cluster DNS Service's IPs, as the kubelet's `--cluster-dns`
    /// (comma-separated); none makes ClusterFirst pods fall back to Default.
    #[arg(long = "cluster-dns", value_delimiter = ',')]
    cluster_dns: Vec<IpAddr>,
    /// As the kubelet's `--cluster-domain` (empty: no cluster search paths).
    #[arg(long = "cluster-domain", default_value = "")]
    cluster_domain: String,
    /// The node's resolver configuration, as the kubelet's `--resolv-conf`
    /// (empty: none, so pods of the Default policy ask the loopback).
    #[arg(long = "resolv-conf", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
}

#[derive(Debug, Args)]
struct PodServerArgs {
    #[arg(long)]
    pod: String,
    #[arg(long)]
    node: String,
    /// PROTOCOL:PORT, repeated.
    #[arg(long = "listen")]
    listen: Vec<Listen>,
    /// KEY=VALUE, repeated: how to misbehave (see `lab::behaviour`), e.g.
    /// `healthz-fail-after=10s`.
    #[arg(long = "behave", value_name = "KEY=VALUE")]
    behave: Vec<String>,
}

/// Progress on stderr.
fn say(msg: &str) {
    eprintln!("==> {msg}");
}

/// A lab that is up, with a client of its API server.
struct Ctx {
    lab: Lab,
    rt: tokio::runtime::Runtime,
    client: kube::Client,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn need_lab(dir: &Path) -> anyhow::Result<Lab> {
    Lab::load(dir)?.with_context(|| {
        format!(
            "no lab is up in {} (run `switchyard lab up` first)",
            dir.display()
        )
    })
}

/// The server a kubeconfig names.
fn kubeconfig_server(path: &Path) -> anyhow::Result<String> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    kc.clusters
        .iter()
        .filter_map(|c| c.cluster.as_ref()?.server.clone())
        .next()
        .with_context(|| format!("{} names no server", path.display()))
}

fn ctx(dir: &Path) -> anyhow::Result<Ctx> {
    let lab = need_lab(dir)?;
    let kubeconfig = lab.kubeconfig();
    let server = kubeconfig_server(&kubeconfig)?;
    if server != lab.config.apiserver_url() {
        bail!(
            "{} points at {server}, not at this lab's API server {}: it is not this lab's; \
             take the lab down (`switchyard lab down --dir {}`) and bring it up again",
            kubeconfig.display(),
            lab.config.apiserver_url(),
            dir.display()
        );
    }
    let rt = runtime()?;
    let client = rt.block_on(lab.client())?;
    Ok(Ctx { lab, rt, client })
}

impl Ctx {
    fn pod(&self, ns: &str, name: &str) -> anyhow::Result<Option<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        self.rt
            .block_on(api.get_opt(name))
            .map_err(|e| anyhow::anyhow!("reading pod {ns}/{name}: {}", apply::api_message(&e)))
    }

    fn service(&self, ns: &str, name: &str) -> anyhow::Result<Option<Service>> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        self.rt
            .block_on(api.get_opt(name))
            .map_err(|e| anyhow::anyhow!("reading service {ns}/{name}: {}", apply::api_message(&e)))
    }

    /// Everything `status` shows, from the API server.
    fn manifests(&self) -> anyhow::Result<Manifests> {
        self.rt.block_on(list_all(&self.client))
    }
}

/// The objects the lab's views read, listed from the API server.
async fn list_all(client: &kube::Client) -> anyhow::Result<Manifests> {
    async fn all<K>(client: &kube::Client) -> anyhow::Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K::Scope: std::any::Any,
    {
        let api: Api<K> = Api::all(client.clone());
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(|e| anyhow::anyhow!("listing {}: {}", K::plural(&()), apply::api_message(&e)))?
            .items)
    }
    let cluster_networks = all::<crate::model::crd::ClusterNetwork>(client)
        .await?
        .into_iter()
        .map(|c| crate::model::snapshot::ClusterNetwork {
            name: c.metadata.name.clone().unwrap_or_default(),
            generation: c.metadata.generation.unwrap_or(1),
            spec: c.spec,
        })
        .collect();
    Ok(Manifests {
        cluster_networks,
        nodes: all::<Node>(client).await?,
        pods: all::<Pod>(client)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect(),
        namespaces: all::<Namespace>(client).await?,
        services: all::<Service>(client).await?,
        endpoint_slices: all::<EndpointSlice>(client).await?,
        network_policies: all::<NetworkPolicy>(client).await?,
        ..Default::default()
    })
}

/// The network namespace of a running pod: the lab's kubelet names it from
/// the pod's uid.
fn pod_netns(lab: &Lab, p: &Pod) -> Option<String> {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let name = p.metadata.name.as_deref()?;
    let uid = p.metadata.uid.as_deref()?;
    let netns = lab.pod_netns(ns, name, uid);
    Lab::netns_path(&netns).exists().then_some(netns)
}

fn pod_ips(p: &Pod) -> Vec<IpAddr> {
    p.status
        .iter()
        .flat_map(|s| s.pod_ips.iter().flatten())
        .filter_map(|i| i.ip.parse().ok())
        .collect()
}

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir;
    match args.command {
        LabCommand::Up(a) => up(&dir, a),
        LabCommand::Down(a) => down(&dir, a),
        LabCommand::Apply(a) => {
            let c = ctx(&dir)?;
            let docs = apply::read(&a.files.files)?;
            match c.rt.block_on(apply::apply(&c.client, &docs)) {
                Ok(lines) => {
                    for l in &lines {
                        println!("{l}");
                    }
                    if let Some(secs) = a.wait {
                        let names = apply::pod_names(&docs);
                        c.rt.block_on(apply::wait_pods(
                            &c.client,
                            &names,
                            Duration::from_secs(secs),
                        ))?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        LabCommand::Delete(a) => {
            let c = ctx(&dir)?;
            let docs = apply::read(&a.files)?;
            let (done, errors) = c.rt.block_on(apply::delete(&c.client, &docs));
            for l in &done {
                println!("{l}");
            }
            for e in &errors {
                eprintln!("{e}");
            }
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        LabCommand::Status(a) => {
            let c = ctx(&dir)?;
            let view = lab_view(&c)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_status(&c.lab, &view);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Probe(a) => probe_cmd(&ctx(&dir)?, a),
        LabCommand::Matrix(a) => matrix(&ctx(&dir)?, a),
        LabCommand::Explain(a) => {
            let c = ctx(&dir)?;
            let v4 = want_v4(&c.lab, a.family);
            let lookup = |name: &str| -> anyhow::Result<(String, Vec<IpAddr>)> {
                let (ns, n) = name
                    .split_once('/')
                    .with_context(|| format!("{name:?} is not NAMESPACE/POD"))?;
                let p = c
                    .pod(ns, n)?
                    .with_context(|| format!("pod {ns}/{n} not found"))?;
                let node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .with_context(|| format!("pod {ns}/{n} is not bound to a node yet"))?;
                Ok((node, pod_ips(&p)))
            };
            let protocol = a.protocol.to_string();
            let allowed = super::explain::run(
                &c.lab,
                &lookup,
                super::explain::Query {
                    from: &a.from,
                    to: &a.to,
                    port: a.port,
                    protocol: &protocol,
                    v4,
                    json: a.json,
                },
            )?;
            Ok(if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        LabCommand::Exec(a) => {
            let c = ctx(&dir)?;
            let ns = source_netns(&c, &a.target)?;
            let e = Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&a.command)
                .exec();
            bail!("running ip netns exec: {e}")
        }
        LabCommand::Restart(a) => restart(&ctx(&dir)?, a),
        LabCommand::PodServer(a) => {
            let behaviour = Behaviour::from_args(&a.behave).map_err(anyhow::Error::msg)?;
            super::podserver::run(
                Identity {
                    pod: a.pod,
                    node: a.node,
                },
                a.listen,
                behaviour,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Kubelet(a) => {
            // Before any thread exists: every thread made later is there.
            crate::datapath::netlink::enter_netns(&a.netns)?;
            let dns = super::kubelet::dns::DnsFlags {
                cluster_dns: a.cluster_dns,
                cluster_domain: a.cluster_domain,
                resolv_conf: Some(a.resolv_conf).filter(|p| !p.as_os_str().is_empty()),
            };
            runtime()?.block_on(super::kubelet::run(&dir, &a.node, dns))?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::CloudController => {
            runtime()?.block_on(super::cloud::run(&dir))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn valid_name(s: &str) -> bool {
    (1..=8).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The CNI plugin to install into the lab: beside this binary, else where
/// the build put it.
fn find_plugin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("switchyard-cni");
    if beside.is_file() {
        return Ok(beside);
    }
    let built = PathBuf::from(crate::modules::CNI_PLUGIN);
    if built.is_file() {
        return Ok(built);
    }
    bail!(
        "the switchyard-cni plugin is neither beside {} nor at {}: build it with `cargo build -p switchyard-cni`",
        exe.display(),
        built.display()
    )
}

fn install(from: &Path, to: &Path) -> anyhow::Result<()> {
    // Copy then rename: a running binary is never overwritten in place.
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn log_level() -> String {
    std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "info".into())
}

/// Start a node's kubelet in its namespace, detached: it outlives this command.
///
/// Its DNS comes in flags, as a kubelet's does (a kubelet knows nothing of
/// Service CIDRs): `--cluster-dns` the ClusterIPs `lab up` gives
/// `kube-system/kube-dns` (both from [`LabConfig::cluster_dns`], so they
/// cannot disagree), `--cluster-domain`, and `--resolv-conf` the node's own
/// resolv.conf, which [`topology::build_node`] wrote.
fn start_kubelet(lab: &Lab, node: &str) -> anyhow::Result<std::process::Child> {
    let log = log_file(&lab.node_dir(node).join("kubelet.log"))?;
    let mut cmd = Command::new(lab.dir.join("bin").join("switchyard"));
    cmd.arg("lab").arg("--dir").arg(&lab.dir);
    cmd.args(["kubelet", "--node", node, "--netns", &lab.node_netns(node)]);
    for ip in lab.config.cluster_dns() {
        cmd.arg(format!("--cluster-dns={ip}"));
    }
    cmd.arg(format!("--cluster-domain={}", lab.config.cluster_domain))
        .arg("--resolv-conf")
        .arg(Lab::netns_resolv_conf(&lab.node_netns(node)))
        .env("SWITCHYARD_LOG", log_level())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the kubelet of {node}"))
}

/// The pid file of a node's agent.
fn agent_pid_file(lab: &Lab, node: &str) -> PathBuf {
    lab.node_dir(node).join("agent.pid")
}

/// Start a node's agent in its namespace, as the DaemonSet runs it
/// (`agent --kube` with the agents' ServiceAccount), detached.
fn start_agent(lab: &Lab, node: &str) -> anyhow::Result<std::process::Child> {
    let dir = lab.node_dir(node);
    let log = log_file(&dir.join("agent.log"))?;
    let child = Command::new(lab.dir.join("bin").join("switchyard"))
        .arg("agent")
        .arg("--kube")
        .args(["--node", node, "--netns", &lab.node_netns(node)])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--cni-socket")
        .arg(dir.join("cni.sock"))
        .arg("--kubelet-url")
        .arg(format!("http://127.0.0.1:{KUBELET_PORT}"))
        .args(["--cluster-name", &lab.config.name])
        // The node's DNS forwards to the outside world's resolver, never to
        // this machine's.
        .args(
            lab.config
                .dns_upstreams()
                .iter()
                .flat_map(|ip| ["--dns-upstream".to_string(), ip.to_string()]),
        )
        .env("KUBECONFIG", controlplane::agent_kubeconfig(lab, node))
        .env("POD_NAMESPACE", controlplane::AGENT_NAMESPACE)
        .env("SWITCHYARD_LOG", log_level())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the agent of {node}"))?;
    crate::util::write_atomic(
        &agent_pid_file(lab, node),
        child.id().to_string().as_bytes(),
    )?;
    Ok(child)
}

fn start_cloud_controller(lab: &Lab) -> anyhow::Result<std::process::Child> {
    let log = log_file(&lab.control_dir().join("cloud-controller.log"))?;
    Command::new("ip")
        .args(["netns", "exec", &lab.control_netns()])
        .arg(lab.dir.join("bin").join("switchyard"))
        .arg("lab")
        .arg("--dir")
        .arg(&lab.dir)
        .arg("cloud-controller")
        .env("SWITCHYARD_LOG", log_level())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the lab's cloud controller")
}

fn start_external_server(lab: &Lab) -> anyhow::Result<()> {
    let log = log_file(&lab.dir.join("external.log"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.external_netns()])
        .arg(lab.dir.join("bin").join("switchyard"))
        .args([
            "lab",
            "pod-server",
            "--pod",
            "external",
            "--node",
            "external",
        ]);
    for l in EXTERNAL_LISTEN {
        cmd.args(["--listen", l]);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the external host's server")?;
    Ok(())
}

/// Start the external host's DNS server ([`topology::dnsmasq_conf`]),
/// detached, logging to `DIR/external/dnsmasq.log`, and wait until it
/// accepts connections on port 53 (`lab down` stops it with everything else
/// in the lab's namespaces).
fn start_external_dns(lab: &Lab) -> anyhow::Result<()> {
    let dir = lab.external_dir();
    let conf = dir.join("dnsmasq.conf");
    crate::util::write_atomic(&conf, topology::dnsmasq_conf(lab).as_bytes())
        .with_context(|| format!("writing {}", conf.display()))?;
    let log_path = dir.join("dnsmasq.log");
    let log = log_file(&log_path)?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.external_netns(), topology::DNSMASQ])
        .arg(format!("--conf-file={}", conf.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the external host's DNS server (dnsmasq)")?;
    let netns = Lab::netns_path(&lab.external_netns());
    let to = SocketAddr::new(lab.config.dns_upstreams()[0], 53);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the external host's DNS server exited ({status}); {}",
                tail(&log_path, 12)
            );
        }
        let up = in_netns(&netns, move || {
            Ok(std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok())
        })?;
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the external host's DNS server does not answer on {to} after 10 s; {}",
                tail(&log_path, 12)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cluster domain a ClusterNetwork `default` among `docs` asks for.
fn cluster_domain_in(docs: &[apply::Doc]) -> Option<String> {
    docs.iter()
        .map(|d| &d.value)
        .find(|v| {
            v["kind"].as_str() == Some("ClusterNetwork")
                && v["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("switchyard.dev/"))
                && v["metadata"]["name"].as_str() == Some("default")
        })
        .and_then(|v| v["spec"]["dns"]["clusterDomain"].as_str())
        .map(str::to_string)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let t: Vec<&str> = text.lines().rev().take(lines).collect();
    format!(
        "the end of {}:\n{}",
        path.display(),
        t.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// A node's processes, as `up` and `restart` started them.
struct NodeProcs {
    name: String,
    kubelet: Option<std::process::Child>,
    agent: Option<std::process::Child>,
}

impl NodeProcs {
    /// Fails with the log of a process that exited.
    fn check(&mut self, lab: &Lab) -> anyhow::Result<()> {
        for (what, child) in [("kubelet", &mut self.kubelet), ("agent", &mut self.agent)] {
            if let Some(c) = child
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "the {what} of {} exited ({status}); {}",
                    self.name,
                    tail(&lab.node_dir(&self.name).join(format!("{what}.log")), 12)
                );
            }
        }
        Ok(())
    }
}

fn node_ready(n: &Node) -> bool {
    n.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn node_pod_cidrs(n: &Node) -> Vec<ipnet::IpNet> {
    n.spec
        .iter()
        .flat_map(|s| s.pod_cidrs.iter().flatten())
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Wait until every node of `procs` satisfies `ok`, saying how many do.
async fn wait_nodes(
    lab: &Lab,
    client: &kube::Client,
    running: &mut controlplane::Running,
    procs: &mut [NodeProcs],
    timeout: Duration,
    what: &str,
    ok: impl Fn(&Node) -> bool,
) -> anyhow::Result<Vec<Node>> {
    let api: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let mut last = usize::MAX;
    loop {
        let mut done = vec![];
        let mut waiting = vec![];
        for p in procs.iter() {
            match api.get_opt(&p.name).await? {
                Some(n) if ok(&n) => done.push(n),
                Some(n) => {
                    let why = n
                        .status
                        .iter()
                        .flat_map(|s| s.conditions.iter().flatten())
                        .find(|c| c.type_ == "Ready")
                        .and_then(|c| c.message.clone())
                        .unwrap_or_else(|| "registered".into());
                    waiting.push(format!("{}: {why}", p.name));
                }
                None => waiting.push(format!("{}: not registered yet", p.name)),
            }
        }
        if done.len() != last {
            say(&format!("nodes {what}: {}/{}", done.len(), procs.len()));
            last = done.len();
        }
        if waiting.is_empty() {
            return Ok(done);
        }
        for p in procs.iter_mut() {
            p.check(lab)?;
        }
        running.check(lab)?;
        if Instant::now() >= deadline {
            bail!(
                "nodes not {what} after {} s: {} (logs are in {}/nodes/*/)",
                timeout.as_secs(),
                waiting.join(", "),
                lab.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn up(dir: &Path, a: UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if let Some(lab) = Lab::load(dir)? {
        let c = &lab.config;
        eprintln!(
            "a lab named {:?} is already up in {} ({} nodes, {} model, {}); nothing was changed.\n\
             Use it with `export KUBECONFIG={}` and kubectl, or `switchyard lab status --dir {}`;\n\
             or take it down first with `switchyard lab down --dir {}`.",
            c.name,
            dir.display(),
            c.nodes.len(),
            c.model,
            c.families,
            lab.kubeconfig().display(),
            dir.display(),
            dir.display(),
        );
        return Ok(ExitCode::from(1));
    }
    if !valid_name(&a.name) {
        bail!(
            "invalid lab name {:?}: 1 to 8 lowercase letters and digits (it prefixes interface names)",
            a.name
        );
    }
    if !(1..=40).contains(&a.nodes) {
        bail!("--nodes must be between 1 and 40, not {}", a.nodes);
    }
    // Read the manifests and find the programs before building anything: a
    // typo or a missing build fails fast.
    let docs = if a.files.is_empty() {
        vec![]
    } else {
        apply::read(&a.files)?
    };
    let bin = controlplane::locate()?;
    let mut config = LabConfig::new(&a.name, a.nodes, a.model, a.ip_family, true, bin);
    // The kubelets' --cluster-domain is node configuration, fixed when they
    // start: a ClusterNetwork given here sets it; one applied later does not.
    if let Some(domain) = cluster_domain_in(&docs) {
        config.cluster_domain = domain;
    }
    let lab = Lab {
        dir: dir.to_path_buf(),
        config,
    };
    topology::preflight(&lab)?;
    let plugin = find_plugin()?;
    say(&format!(
        "bringing up lab {:?}: {} nodes, {} model, {} (state in {})",
        a.name,
        a.nodes,
        a.model,
        a.ip_family,
        dir.display()
    ));
    std::fs::create_dir_all(dir.join("bin"))?;
    lab.save()?;
    let rt = runtime()?;
    let timeout = Duration::from_secs(a.timeout);
    let built = rt.block_on(async {
        install(&std::env::current_exe()?, &dir.join("bin/switchyard"))?;
        install(&plugin, &dir.join("bin/switchyard-cni"))?;
        let c = &lab.config;
        say(&format!(
            "underlay {} and {}, external host {}, host link {} ({})",
            c.underlay()[0],
            c.underlay()[1],
            c.external
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            lab.host_link_name(),
            c.host_link_addresses().0
        ));
        topology::build_underlay(&lab)?;
        start_external_server(&lab)?;
        start_external_dns(&lab)?;
        controlplane::create_pki(&lab)?;
        let t = Instant::now();
        let (mut running, client) = controlplane::start(&lab, timeout).await?;
        say(&format!(
            "control plane: Kubernetes {} on {} (etcd and kube-apiserver ready in {:.1} s)",
            controlplane::KUBERNETES_VERSION,
            c.apiserver_url(),
            t.elapsed().as_secs_f64()
        ));
        controlplane::bootstrap(&lab, &client, timeout).await?;
        say("installed the switchyard.dev CRDs, the agents' RBAC and ClusterNetwork \"default\"");
        say(&format!(
            "cluster DNS: Service kube-system/kube-dns on {}, domain {}; upstream {} (dnsmasq on the external host, zone {})",
            c.cluster_dns()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            c.cluster_domain,
            c.dns_upstreams()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            super::layout::EXTERNAL_ZONE
        ));
        let mut procs = vec![];
        for n in &c.nodes {
            topology::build_node(&lab, n)?;
            procs.push(NodeProcs {
                name: n.name.clone(),
                kubelet: Some(start_kubelet(&lab, &n.name)?),
                agent: None,
            });
        }
        // The agents start at once: each waits for its Node's pod CIDRs
        // (kube-controller-manager's node IPAM controller gives them a few
        // seconds after it starts) while it loads its modules.
        for p in &mut procs {
            controlplane::agent_credentials(&lab, &client, &p.name).await?;
            p.agent = Some(start_agent(&lab, &p.name)?);
        }
        let _cloud = start_cloud_controller(&lab)?;
        let want = c.cluster_pod_cidrs.len();
        let nodes = wait_nodes(
            &lab,
            &client,
            &mut running,
            &mut procs,
            timeout,
            "Ready",
            |n| node_ready(n) && node_pod_cidrs(n).len() == want,
        )
        .await?;
        for n in &nodes {
            say(&format!(
                "{}: {} pod CIDRs {}",
                n.metadata.name.as_deref().unwrap_or_default(),
                lab.config
                    .node(n.metadata.name.as_deref().unwrap_or_default())
                    .map(|l| l
                        .addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default(),
                node_pod_cidrs(n)
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        if c.model == NetworkModel::Flat {
            let routes: Vec<(String, Vec<ipnet::IpNet>)> = nodes
                .iter()
                .map(|n| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        node_pod_cidrs(n),
                    )
                })
                .collect();
            topology::route_pod_cidrs(&lab, &routes)?;
        }
        anyhow::Ok(client)
    });
    let client = match built {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            say("removing what was built");
            if let Err(d) = topology::down(dir, &a.name) {
                eprintln!("error: {d:#}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    say(&format!(
        "the cluster is up in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let mut code = ExitCode::SUCCESS;
    if !docs.is_empty() {
        say(&format!(
            "applying {}",
            a.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        match rt.block_on(apply::apply(&client, &docs)) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                let names = apply::pod_names(&docs);
                if let Err(e) = rt.block_on(apply::wait_pods(&client, &names, timeout)) {
                    eprintln!("error: {e:#}");
                    code = ExitCode::from(1);
                }
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                eprintln!("the lab is up, but the manifests were not applied");
                code = ExitCode::from(1);
            }
        }
    }
    let first = &lab.config.nodes[0].name;
    let url = lab.admin_url(first).unwrap_or_default();
    let dir_arg = if dir == Path::new(DEFAULT_LAB_DIR) {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    };
    println!();
    println!(
        "lab {:?} is up ({:.1} s): {} nodes, {} model, {}, Kubernetes {}",
        lab.config.name,
        started.elapsed().as_secs_f64(),
        lab.config.nodes.len(),
        lab.config.model,
        lab.config.families,
        controlplane::KUBERNETES_VERSION
    );
    println!("  kubeconfig: {}", lab.kubeconfig().display());
    println!(
        "  kubectl:    export KUBECONFIG={}; kubectl get nodes,pods -A -o wide",
        lab.kubeconfig().display()
    );
    println!(
        "              (kubectl {} is {})",
        controlplane::KUBERNETES_VERSION,
        lab.config.kubernetes_bin.join("kubectl").display()
    );
    println!("  console:    {url}");
    println!("  admin API:  {url}api/v1/cluster (every node serves one on port {ADMIN_PORT})");
    println!(
        "  next:       switchyard lab status{dir_arg} | switchyard lab matrix{dir_arg} | switchyard lab down{dir_arg}"
    );
    Ok(code)
}

fn down(dir: &Path, a: DownArgs) -> anyhow::Result<ExitCode> {
    let name = match Lab::load(dir) {
        Ok(Some(lab)) => lab.config.name,
        // A lab.json we cannot read still names nothing we could trust.
        _ => a.name,
    };
    let r = topology::down(dir, &name)?;
    if r.processes == 0 && r.namespaces == 0 && r.links == 0 && !r.files {
        println!("no lab {name:?} in {}: nothing to remove", dir.display());
    } else {
        println!(
            "lab {name:?} removed: {} processes, {} network namespaces, {} host links, {}",
            r.processes,
            r.namespaces,
            r.links,
            if r.files {
                format!("the files in {}", dir.display())
            } else {
                "no files".into()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The agent's own report from its admin API, if it answers.
fn agent_report(lab: &Lab, node: &str) -> Option<serde_json::Value> {
    let url = format!("{}api/v1/node", lab.admin_url(node)?);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let text = agent
        .get(&url)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    serde_json::from_str(&text).ok()
}

fn restart(c: &Ctx, a: RestartArgs) -> anyhow::Result<ExitCode> {
    let lab = &c.lab;
    let nodes: Vec<String> = if a.nodes.is_empty() {
        lab.config.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        for n in &a.nodes {
            if lab.config.node(n).is_none() {
                bail!("the lab has no node {n:?}");
            }
        }
        a.nodes.clone()
    };
    for n in &nodes {
        let pid = std::fs::read_to_string(agent_pid_file(lab, n))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("agent") && cmdline.contains(n.as_str()) {
                let sig = if a.kill {
                    nix::sys::signal::Signal::SIGKILL
                } else {
                    nix::sys::signal::Signal::SIGTERM
                };
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                let deadline = Instant::now() + Duration::from_secs(10);
                while topology::alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                say(&format!("stopped the agent of {n} (pid {pid}, {sig})"));
            }
        }
    }
    let mut agents = vec![];
    for n in &nodes {
        let child = start_agent(lab, n)?;
        say(&format!("started the agent of {n} (pid {})", child.id()));
        agents.push((n.clone(), child));
    }
    // Ready: this very agent answers with a complete view of the cluster.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (n, child) in &mut agents {
        loop {
            let r = agent_report(lab, n);
            let ours = r.as_ref().is_some_and(|r| {
                r["pid"].as_u64() == Some(child.id() as u64) && r["snapshot"].as_u64() > Some(0)
            });
            if ours {
                say(&format!("the agent of {n} serves again"));
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the agent of {n} exited ({status}); {}",
                    tail(&lab.node_dir(n).join("agent.log"), 12)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent of {n} did not answer within 60 s; {}",
                    tail(&lab.node_dir(n).join("agent.log"), 12)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The namespace a probe or exec starts in.
fn source_netns(c: &Ctx, from: &str) -> anyhow::Result<String> {
    let lab = &c.lab;
    if from == "external" {
        return Ok(lab.external_netns());
    }
    if let Some(n) = from.strip_prefix("node/") {
        lab.config
            .node(n)
            .with_context(|| format!("the lab has no node {n:?}"))?;
        return Ok(lab.node_netns(n));
    }
    let (ns, name) = from
        .split_once('/')
        .with_context(|| format!("{from:?}: expected NAMESPACE/POD, `external` or `node/NAME`"))?;
    let p = c
        .pod(ns, name)?
        .with_context(|| format!("pod {ns}/{name} not found"))?;
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    match pod_netns(lab, &p) {
        Some(netns) if phase == "Running" => Ok(netns),
        _ => bail!(
            "pod {ns}/{name} is {phase} ({}): it has no network yet",
            apply::waiting_reason(Some(&p))
        ),
    }
}

fn want_v4(lab: &Lab, family: Option<Family>) -> bool {
    match family {
        Some(Family::Ipv4) => true,
        Some(Family::Ipv6) => false,
        None => lab.config.families.v4(),
    }
}

fn pick(addrs: &[IpAddr], v4: bool, what: &str) -> anyhow::Result<IpAddr> {
    addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == v4)
        .with_context(|| format!("{what} has no {} address", if v4 { "IPv4" } else { "IPv6" }))
}

/// The address a probe goes to.
fn target_ip(
    c: &Ctx,
    to: &str,
    family: Option<Family>,
    from_outside: bool,
) -> anyhow::Result<IpAddr> {
    let lab = &c.lab;
    if let Ok(ip) = to.parse::<IpAddr>() {
        return Ok(ip);
    }
    let v4 = want_v4(lab, family);
    if to == "external" {
        return pick(&lab.config.external, v4, "the external host");
    }
    if let Some(n) = to.strip_prefix("node/") {
        let node = lab
            .config
            .node(n)
            .with_context(|| format!("the lab has no node {n:?}"))?;
        return pick(&node.addresses, v4, &format!("node {n}"));
    }
    if let Some((ns, name)) = to.split_once('/') {
        let p = c
            .pod(ns, name)?
            .with_context(|| format!("pod {ns}/{name} not found"))?;
        let ips = pod_ips(&p);
        if ips.is_empty() {
            bail!("pod {ns}/{name} has no IP yet");
        }
        return pick(&ips, v4, &format!("pod {ns}/{name}"));
    }
    let (svc, ns) = to.split_once('.').unwrap_or((to, "default"));
    let s = c.service(ns, svc)?.with_context(|| {
        format!(
            "{to:?} is not an IP, NAMESPACE/POD, `external`, `node/NAME` or a Service (service {ns}/{svc} not found)"
        )
    })?;
    if from_outside {
        let mut ips: Vec<IpAddr> = s
            .status
            .iter()
            .filter_map(|st| st.load_balancer.as_ref())
            .flat_map(|l| l.ingress.iter().flatten())
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        ips.extend(
            s.spec
                .iter()
                .flat_map(|s| s.external_ips.iter().flatten())
                .filter_map(|i| i.parse::<IpAddr>().ok()),
        );
        if ips.is_empty() {
            bail!(
                "service {ns}/{svc} has no LoadBalancer or external IP: from outside, reach it by a node port (--to node/NAME --port NODEPORT)"
            );
        }
        return pick(&ips, v4, &format!("service {ns}/{svc}'s external IPs"));
    }
    let ips: Vec<IpAddr> = s
        .spec
        .and_then(|s| s.cluster_ips)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.parse().ok())
        .collect();
    if ips.is_empty() {
        bail!("service {ns}/{svc} has no cluster IP (headless or ExternalName)");
    }
    pick(&ips, v4, &format!("service {ns}/{svc}"))
}

fn probe_cmd(c: &Ctx, a: ProbeArgs) -> anyhow::Result<ExitCode> {
    let ns = source_netns(c, &a.from)?;
    let ip = target_ip(c, &a.to, a.family, a.from == "external")?;
    let to = SocketAddr::new(ip, a.port);
    match probe::probe(&Lab::netns_path(&ns), to, a.protocol, a.timeout, a.verbose) {
        Ok(o) => {
            let word = if o.allowed { "allowed" } else { "denied" };
            if a.verbose && !o.detail.is_empty() {
                println!("{word}: {}", o.detail);
            } else {
                println!("{word}");
            }
            Ok(if o.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(e) => {
            eprintln!("error: probing {} from {} to {to}: {e}", a.protocol, a.from);
            Ok(ExitCode::from(2))
        }
    }
}

/// What `lab status` shows: the cluster's view, with the lab's own facts.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LabView {
    dir: String,
    kubeconfig: String,
    #[serde(flatten)]
    cluster: ClusterView,
}

/// A GET against a node's kubelet, on the node's loopback.
fn kubelet_get(lab: &Lab, node: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let path = path.to_string();
    let body = in_netns(&Lab::netns_path(&lab.node_netns(node)), move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], KUBELET_PORT)),
            Duration::from_secs(1),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    let (_, json) = body
        .split_once("\r\n\r\n")
        .with_context(|| format!("node {node}'s kubelet answered no body"))?;
    Ok(serde_json::from_str(json)?)
}

fn lab_view(c: &Ctx) -> anyhow::Result<LabView> {
    let lab = &c.lab;
    let m = c.manifests()?;
    let mut facts = NodeFacts {
        cluster_name: lab.config.name.clone(),
        ..Default::default()
    };
    let mut problems = vec![];
    for n in &lab.config.nodes {
        if let Some(url) = lab.admin_url(&n.name) {
            facts.admin_urls.insert(n.name.clone(), url);
        }
        match kubelet_get(lab, &n.name, "/pods") {
            Ok(v) => {
                for p in v["pods"].as_array().into_iter().flatten() {
                    let probes = serde_json::from_value(p["probes"].clone()).unwrap_or_default();
                    facts.probes.insert(
                        (
                            p["namespace"].as_str().unwrap_or_default().to_string(),
                            p["name"].as_str().unwrap_or_default().to_string(),
                        ),
                        probes,
                    );
                }
            }
            Err(e) => problems.push(format!("node {}: the kubelet: {e:#}", n.name)),
        }
        match agent_report(lab, &n.name) {
            Some(r) => {
                for (svc, e) in r["serviceErrors"].as_object().into_iter().flatten() {
                    facts
                        .service_errors
                        .entry(svc.clone())
                        .or_default()
                        .push(format!("{}: {}", n.name, e.as_str().unwrap_or_default()));
                }
            }
            None => problems.push(format!(
                "node {}: the agent's admin API does not answer",
                n.name
            )),
        }
    }
    let mut cluster = cluster_view(&m, &facts);
    cluster.problems.extend(problems);
    cluster.external = lab.config.external.iter().map(|a| a.to_string()).collect();
    Ok(LabView {
        dir: lab.dir.display().to_string(),
        kubeconfig: lab.kubeconfig().display().to_string(),
        cluster,
    })
}

#[derive(Debug, Clone, serde::Serialize)]
struct MatrixResult {
    from: String,
    to: String,
    allowed: bool,
}

#[derive(Debug, serde::Serialize)]
struct Matrix {
    port: u16,
    protocol: Protocol,
    family: &'static str,
    results: Vec<MatrixResult>,
}

fn matrix(c: &Ctx, a: MatrixArgs) -> anyhow::Result<ExitCode> {
    let lab = &c.lab;
    let v4 = want_v4(lab, a.family);
    let api: Api<Pod> = Api::all(c.client.clone());
    let mut pods =
        c.rt.block_on(api.list(&ListParams::default()))
            .map_err(|e| anyhow::anyhow!("listing pods: {}", apply::api_message(&e)))?
            .items;
    pods.sort_by(|x, y| {
        (&x.metadata.namespace, &x.metadata.name).cmp(&(&y.metadata.namespace, &y.metadata.name))
    });
    // (name, netns, address of the asked family) of every running pod.
    let mut ends = vec![];
    for p in &pods {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        if !a.namespaces.is_empty() && !a.namespaces.contains(&ns) {
            continue;
        }
        if p.metadata.deletion_timestamp.is_some()
            || p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running")
        {
            continue;
        }
        let Some(netns) = pod_netns(lab, p) else {
            continue;
        };
        if let Some(ip) = pod_ips(p).into_iter().find(|i| i.is_ipv4() == v4) {
            ends.push((
                format!("{ns}/{}", p.metadata.name.as_deref().unwrap_or_default()),
                netns,
                ip,
            ));
        }
    }
    let mut jobs = vec![];
    for f in &ends {
        for t in &ends {
            jobs.push((f.0.clone(), f.1.clone(), t.0.clone(), t.2));
        }
    }
    let results = std::sync::Mutex::new(vec![None; jobs.len()]);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..jobs.len().clamp(1, 32) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((from, netns, to, ip)) = jobs.get(i) else {
                        break;
                    };
                    match probe::probe(
                        &Lab::netns_path(netns),
                        SocketAddr::new(*ip, a.port),
                        a.protocol,
                        a.timeout,
                        false,
                    ) {
                        Ok(o) => {
                            results.lock().expect("not poisoned")[i] = Some(MatrixResult {
                                from: from.clone(),
                                to: to.clone(),
                                allowed: o.allowed,
                            })
                        }
                        Err(e) => errors
                            .lock()
                            .expect("not poisoned")
                            .push(format!("{from} -> {to}: {e}")),
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().expect("not poisoned");
    if !errors.is_empty() {
        for e in errors.iter().take(5) {
            eprintln!("error: {e}");
        }
        return Ok(ExitCode::from(2));
    }
    let m = Matrix {
        port: a.port,
        protocol: a.protocol,
        family: if v4 { "IPv4" } else { "IPv6" },
        results: results
            .into_inner()
            .expect("not poisoned")
            .into_iter()
            .flatten()
            .collect(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&m)?);
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<&str> = ends.iter().map(|e| e.0.as_str()).collect();
    let w = names.iter().map(|n| n.len()).max().unwrap_or(1).max(4);
    let mut out = String::new();
    out.push_str(&format!(
        "{} {}/{} ({}): . allowed, X denied; rows are sources, columns destinations\n",
        "reachability", m.protocol, m.port, m.family
    ));
    out.push_str(&format!("{:w$}", "", w = w + 1));
    for n in &names {
        out.push_str(&format!(" {n:w$}"));
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    for (i, from) in names.iter().enumerate() {
        out.push_str(&format!("{from:w$} "));
        for j in 0..names.len() {
            let r = &m.results[i * names.len() + j];
            out.push_str(&format!(" {:w$}", if r.allowed { "." } else { "X" }));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn print_status(lab: &Lab, v: &LabView) {
    let mut out = std::io::stdout().lock();
    let bold = |s: &str| {
        if std::io::stdout().is_terminal() {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let _ = writeln!(
        out,
        "{} {:?}: {} model, {}, {} nodes; external host {}",
        bold("LAB"),
        v.cluster.name,
        v.cluster.model,
        v.cluster.ip_family,
        v.cluster.nodes.len(),
        v.cluster.external.join(" ")
    );
    let _ = writeln!(out, "kubeconfig {}", v.kubeconfig);
    if let Some(url) = lab.admin_url(&lab.config.nodes[0].name) {
        let _ = writeln!(out, "console {url}");
    }
    let table = |out: &mut std::io::StdoutLock<'_>, head: &[&str], rows: Vec<Vec<String>>| {
        let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:w$}", w = w[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let _ = writeln!(
            out,
            "{}",
            line(head.iter().map(|h| h.to_string()).collect())
        );
        for r in rows {
            let _ = writeln!(out, "{}", line(r));
        }
    };
    let _ = writeln!(out, "\n{}", bold("NODES"));
    table(
        &mut out,
        &[
            "NAME",
            "READY",
            "ADDRESSES",
            "POD CIDRS",
            "ZONE",
            "PODS",
            "MESSAGE",
        ],
        v.cluster
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    if n.ready { "True" } else { "False" }.into(),
                    n.addresses.join(","),
                    n.pod_cidrs.join(","),
                    n.zone.clone().unwrap_or_default(),
                    n.pods.to_string(),
                    if n.ready {
                        String::new()
                    } else {
                        n.message.clone()
                    },
                ]
            })
            .collect(),
    );
    let _ = writeln!(out, "\n{}", bold("PODS"));
    table(
        &mut out,
        &[
            "NAMESPACE",
            "NAME",
            "NODE",
            "PHASE",
            "READY",
            "IPS",
            "RESTARTS",
            "REASON",
        ],
        v.cluster
            .pods
            .iter()
            .map(|p| {
                vec![
                    p.namespace.clone(),
                    p.name.clone(),
                    p.node.clone().unwrap_or_else(|| "<none>".into()),
                    p.phase.clone(),
                    if p.ready { "1/1" } else { "0/1" }.into(),
                    p.ips.join(","),
                    p.restarts.to_string(),
                    [p.reason.clone(), p.message.clone()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": "),
                ]
            })
            .collect(),
    );
    let _ = writeln!(out, "\n{}", bold("SERVICES"));
    table(
        &mut out,
        &[
            "NAMESPACE",
            "NAME",
            "TYPE",
            "CLUSTER-IPS",
            "EXTERNAL-IPS",
            "PORTS",
            "ENDPOINTS",
        ],
        v.cluster
            .services
            .iter()
            .map(|s| {
                vec![
                    s.namespace.clone(),
                    s.name.clone(),
                    s.type_.clone(),
                    s.cluster_ips.join(","),
                    if s.external_ips.is_empty() {
                        "<none>".into()
                    } else {
                        s.external_ips.join(",")
                    },
                    s.ports.join(","),
                    if s.endpoints.is_empty() {
                        "<none>".into()
                    } else {
                        s.endpoints.join(",")
                    },
                ]
            })
            .collect(),
    );
    for s in &v.cluster.services {
        for p in &s.problems {
            let _ = writeln!(out, "service {}/{}: {p}", s.namespace, s.name);
        }
    }
    if !v.cluster.network_policies.is_empty() {
        let _ = writeln!(out, "\n{}", bold("NETWORK POLICIES"));
        table(
            &mut out,
            &["NAMESPACE", "NAME", "POD-SELECTOR", "TYPES"],
            v.cluster
                .network_policies
                .iter()
                .map(|p| {
                    vec![
                        p.namespace.clone(),
                        p.name.clone(),
                        if p.pod_selector.is_empty() {
                            "<all>".into()
                        } else {
                            p.pod_selector.clone()
                        },
                        p.policy_types.join(","),
                    ]
                })
                .collect(),
        );
    }
    for p in &v.cluster.problems {
        let _ = writeln!(out, "problem: {p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_network_given_to_up_sets_the_cluster_domain() {
        let doc = |yaml: &str| apply::Doc {
            origin: "test".into(),
            value: serde_yaml::from_str(yaml).unwrap(),
        };
        let cn = "apiVersion: switchyard.dev/v1alpha1\nkind: ClusterNetwork\n\
                  metadata: {name: default}\nspec: {dns: {clusterDomain: corp.internal}}";
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: default}";
        assert_eq!(
            cluster_domain_in(&[doc(pod), doc(cn)]).as_deref(),
            Some("corp.internal")
        );
        assert_eq!(cluster_domain_in(&[doc(pod)]), None);
        let no_dns = "apiVersion: switchyard.dev/v1alpha1\nkind: ClusterNetwork\n\
                      metadata: {name: default}\nspec: {model: flat}";
        assert_eq!(cluster_domain_in(&[doc(no_dns)]), None);
    }

    #[test]
    fn durations_and_names() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(
            valid_name("lab")
                && valid_name("t1")
                && !valid_name("Lab")
                && !valid_name("toolongname")
        );
    }
}
