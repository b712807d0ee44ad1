//! The `switchyard` command line.

mod crds;
mod install;
mod module;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A WebAssembly-extensible Kubernetes network controller"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and validate network modules.
    #[command(subcommand)]
    Module(module::ModuleCommand),
    /// Run the node agent (CNI server, modules, datapath).
    Agent(AgentArgs),
    /// A multi-node cluster on this machine, built from network namespaces.
    Lab(crate::lab::cli::LabArgs),
    /// Print the CustomResourceDefinitions of switchyard.dev (or write them
    /// into a directory).
    Crds(crds::CrdsArgs),
    /// Install the CNI plugin and its network configuration on this node
    /// (the DaemonSet's init container).
    InstallCni(install::InstallCniArgs),
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// A directory of manifests (Node, Pod, NetworkModule), for running
    /// without Kubernetes.
    #[arg(long)]
    local: Option<std::path::PathBuf>,
    /// Where the address ledger, attachments, journals and modules are kept.
    #[arg(long, default_value = "/var/lib/switchyard")]
    data_dir: std::path::PathBuf,
    /// This node's name (defaults to the host name).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// The socket the switchyard-cni plugin talks to.
    #[arg(long, default_value = switchyard_cni::DEFAULT_SOCKET)]
    cni_socket: std::path::PathBuf,
    /// Pod CIDRs of this node, when no Node manifest gives them (one per family).
    #[arg(long = "pod-cidr")]
    pod_cidrs: Vec<ipnet::IpNet>,
    /// A further address pool, NAME=CIDR, for a secondary network whose
    /// configuration names it in `pools` (repeatable). Networks that name no
    /// pool take the pod CIDRs'.
    #[arg(long = "pool", value_name = "NAME=CIDR", value_parser = parse_pool)]
    pools: Vec<crate::datapath::ipam::PoolConfig>,
    /// Meter fuel so modules may be given instruction budgets (slows every call ~16%).
    #[arg(long)]
    fuel_metering: bool,
    /// How long compiling one module may take before it is refused.
    #[arg(long, default_value_t = crate::runtime::COMPILE_DEADLINE.as_millis() as u64)]
    compile_deadline_ms: u64,
    /// How long a StatefulSet pod's released address waits for the pod to return.
    #[arg(long, default_value_t = 600)]
    sticky_ttl_seconds: u64,
    /// Follow the Kubernetes API server (the in-cluster service account, or
    /// $KUBECONFIG): the node's datapath, NetworkModules, status, Events.
    /// Without it (and without --local) the agent serves CNI from its flags
    /// alone.
    #[arg(long, conflicts_with = "local")]
    kube: bool,
    /// With --kube: a kubelet that serves its probes' results (`/probes`,
    /// `/pods`; the lab's does), for probe latencies.
    #[arg(long, requires = "kube")]
    kubelet_url: Option<String>,
    /// With --kube: the cluster's name, as the admin API and console show it.
    #[arg(long, default_value = "kubernetes")]
    cluster_name: String,
    /// Standalone agent (without --kube): the unix socket of the admin API
    /// and console [default: admin.sock beside --cni-socket].
    #[arg(long, conflicts_with = "kube")]
    admin_socket: Option<std::path::PathBuf>,
    /// Standalone agent: also serve the admin API and console on this TCP
    /// address (it has no authentication of its own; keep it on a trusted
    /// network).
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "kube")]
    admin_address: Option<std::net::SocketAddr>,
    /// Standalone agent: no admin API on a unix socket.
    #[arg(long, conflicts_with_all = ["kube", "admin_socket"])]
    no_admin_socket: bool,
    /// With --kube: an upstream resolver of the node's DNS (`IP`,
    /// `IP:PORT`, `[IPv6]:PORT`; repeatable) [default: the ClusterNetwork's
    /// spec.dns.servers, else the node's resolv.conf].
    #[arg(long, requires = "kube", value_parser = crate::agent::dns::upstream)]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Enter this network namespace (a name under /var/run/netns, or a path)
    /// before anything else, as a host-network DaemonSet pod runs in its node's.
    #[arg(long)]
    netns: Option<std::path::PathBuf>,
}

/// Run the CLI; the exit code is 0 on success, 1 when the command failed
/// (an invalid module, say) and 2 on a usage error.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Agent(_) => "info",
        // kube's client logs every refused request; the lab says what failed
        // in its own words (and polls the API server while it starts).
        Command::Lab(_) => "warn,kube_client::client::builder=off",
        Command::Module(_) | Command::Crds(_) => "warn",
        Command::InstallCni(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let r = match cli.command {
        Command::Module(m) => module::run(m),
        Command::Agent(a) => agent(a),
        Command::Lab(l) => crate::lab::cli::run(l),
        Command::Crds(c) => crds::run(c),
        Command::InstallCni(a) => install::run(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `NAME=CIDR`: a pool's name (what a network configuration's `pools`
/// says) and its subnet.
fn parse_pool(s: &str) -> Result<crate::datapath::ipam::PoolConfig, String> {
    let (name, cidr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=CIDR (for example side=10.77.0.0/24)"))?;
    if name.is_empty()
        || name.len() > 32
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "pool name {name:?} must be 1 to 32 lowercase letters, digits, '-' or '_'"
        ));
    }
    let subnet = cidr
        .parse()
        .map_err(|e| format!("pool {name}: {cidr:?} is not a CIDR: {e}"))?;
    Ok(crate::datapath::ipam::PoolConfig {
        name: name.to_string(),
        subnet,
    })
}

fn agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    // Before any thread exists: every thread made later is in the namespace.
    if let Some(ns) = &a.netns {
        crate::datapath::netlink::enter_netns(ns)?;
    }
    let node = match a.node {
        Some(n) => n,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let admin = crate::agent::AdminOptions {
        socket: (!a.no_admin_socket).then(|| {
            a.admin_socket
                .clone()
                .unwrap_or_else(|| crate::agent::AdminOptions::socket_beside(&a.cni_socket))
        }),
        address: a.admin_address,
    };
    let options = crate::agent::AgentOptions {
        data_dir: a.data_dir,
        local: a.local,
        node,
        cni_socket: a.cni_socket,
        pod_cidrs: a.pod_cidrs,
        extra_pools: a.pools,
        fuel: a.fuel_metering,
        compile_deadline: std::time::Duration::from_millis(a.compile_deadline_ms),
        sticky_ttl: std::time::Duration::from_secs(a.sticky_ttl_seconds),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let kube = a.kube;
    let kubelet = a.kubelet_url;
    let cluster_name = a.cluster_name;
    let dns_upstreams = a.dns_upstream;
    let resolv_conf = crate::agent::dns::node_resolv_conf(a.netns.as_deref());
    rt.block_on(async move {
        if !kube {
            let agent = crate::agent::Agent::start(options).await?;
            return agent.run(admin).await;
        }
        // In a cluster: the in-cluster service account, or $KUBECONFIG.
        let client = kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "--kube: no Kubernetes API to follow ({e}); run in a cluster or set KUBECONFIG"
            )
        })?;
        crate::agent::cluster::run(
            options,
            client,
            crate::agent::cluster::ClusterOptions {
                kubelet,
                cluster_name,
                dns_upstreams,
                resolv_conf,
                ..Default::default()
            },
            crate::agent::shutdown_signal(),
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
