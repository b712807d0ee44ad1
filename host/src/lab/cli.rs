//! `switchyard lab ...`: bring a lab up and down, feed it manifests, look at
//! it and probe it.

use super::apply;
use super::behaviour::Behaviour;
use super::kubelet::LabPodStatus;
use super::layout::{ADMIN_PORT, DEFAULT_LAB_DIR, Families, Lab, LabConfig};
use super::podserver::{Identity, Listen};
use super::probe::{self, Protocol};
use super::topology::{self, EXTERNAL_LISTEN};
use super::view::{ClusterView, LabNodeStatus, PodView};
use crate::model::crd::NetworkModel;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
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
    /// Build a cluster of node namespaces, each running its own agent.
    Up(UpArgs),
    /// Remove everything the lab made. Idempotent.
    Down(DownArgs),
    /// Admit Kubernetes YAML (Namespace, Pod, Service, NetworkPolicy,
    /// NetworkModule, ClusterNetwork) into the lab.
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
    /// The server inside a lab pod (started by the agent).
    #[command(hide = true)]
    PodServer(PodServerArgs),
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
    /// How long to wait for nodes and pods to be ready, in seconds.
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
    /// Wait until the applied pods run (or fail), up to this many seconds.
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

fn need_lab(dir: &Path) -> anyhow::Result<Lab> {
    Lab::load(dir)?.with_context(|| {
        format!(
            "no lab is up in {} (run `switchyard lab up` first)",
            dir.display()
        )
    })
}

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir;
    match args.command {
        LabCommand::Up(a) => up(&dir, a),
        LabCommand::Down(a) => down(&dir, a),
        LabCommand::Apply(a) => {
            let lab = need_lab(&dir)?;
            let docs = apply::read(&a.files.files)?;
            match apply::apply(&lab, docs.clone()) {
                Ok(lines) => {
                    for l in &lines {
                        println!("{l}");
                    }
                    if let Some(secs) = a.wait {
                        let names = pod_names(&docs);
                        wait_pods(&lab, &names, Duration::from_secs(secs))?;
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
            let lab = need_lab(&dir)?;
            let (done, errors) = apply::delete(&lab, apply::read(&a.files)?)?;
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
            let lab = need_lab(&dir)?;
            let view = ClusterView::read(&lab);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_status(&lab, &view);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Probe(a) => probe_cmd(&need_lab(&dir)?, a),
        LabCommand::Matrix(a) => matrix(&need_lab(&dir)?, a),
        LabCommand::Explain(a) => {
            let lab = need_lab(&dir)?;
            let v4 = want_v4(&lab, a.family);
            let allowed = super::explain::run(
                &lab,
                &a.from,
                &a.to,
                a.port,
                &a.protocol.to_string(),
                v4,
                a.json,
            )?;
            Ok(if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        LabCommand::Exec(a) => {
            let lab = need_lab(&dir)?;
            let ns = source_netns(&lab, &a.target)?;
            let e = Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&a.command)
                .exec();
            bail!("running ip netns exec: {e}")
        }
        LabCommand::Restart(a) => restart(&need_lab(&dir)?, a),
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
    }
}

fn pod_names(docs: &[apply::Doc]) -> Vec<(String, String)> {
    docs.iter()
        .filter(|d| d.value.get("kind").and_then(|k| k.as_str()) == Some("Pod"))
        .filter_map(|d| {
            let m = d.value.get("metadata")?;
            Some((
                m.get("namespace")
                    .and_then(|n| n.as_str())
                    .unwrap_or("default")
                    .to_string(),
                m.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Wait until every pod named runs or is stuck for a reason; print progress.
fn wait_pods(lab: &Lab, names: &[(String, String)], timeout: Duration) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let cluster = lab.cluster()?;
    let mut last = usize::MAX;
    loop {
        let statuses: Vec<Option<LabPodStatus>> = names
            .iter()
            .map(|(ns, n)| cluster.status::<LabPodStatus>("Pod", ns, n))
            .collect();
        let running = statuses
            .iter()
            .filter(|s| {
                s.as_ref()
                    .is_some_and(|s| s.status.phase.as_deref() == Some("Running"))
            })
            .count();
        // Pending with a reason no wait will change (no such node, no fit).
        let stuck: Vec<String> = names
            .iter()
            .zip(&statuses)
            .filter_map(|((ns, n), s)| {
                let s = s.as_ref()?;
                let r = s.status.reason.as_deref()?;
                matches!(r, "NodeNotFound" | "Unschedulable").then(|| {
                    format!(
                        "{ns}/{n}: {r}: {}",
                        s.status.message.as_deref().unwrap_or("")
                    )
                })
            })
            .collect();
        if running != last {
            say(&format!("pods running: {running}/{}", names.len()));
            last = running;
        }
        if running + stuck.len() == names.len() {
            for s in stuck {
                say(&format!("pending: {s}"));
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let waiting: Vec<String> = names
                .iter()
                .zip(&statuses)
                .filter(|(_, s)| {
                    s.as_ref()
                        .is_none_or(|s| s.status.phase.as_deref() != Some("Running"))
                })
                .map(|((ns, n), s)| {
                    let why = s
                        .as_ref()
                        .and_then(|s| s.status.message.clone())
                        .unwrap_or_else(|| "no status yet".into());
                    format!("{ns}/{n} ({why})")
                })
                .collect();
            bail!(
                "pods not running after {} s: {}",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
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

fn node_manifest(lab: &Lab, i: usize) -> String {
    let n = &lab.config.nodes[i];
    let zone = ["zone-a", "zone-b", "zone-c"][i % 3];
    let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    let addrs: Vec<String> = n
        .addresses
        .iter()
        .map(|a| format!("  - {{type: InternalIP, address: \"{a}\"}}"))
        .collect();
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    topology.kubernetes.io/zone: {zone}
spec:
  podCIDR: \"{first}\"
  podCIDRs: [{cidrs}]
status:
  addresses:
{addrs}
  - {{type: Hostname, address: {name}}}
",
        name = n.name,
        first = n
            .pod_cidrs
            .first()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        cidrs = cidrs.join(", "),
        addrs = addrs.join("\n"),
    )
}

fn cluster_network_manifest(c: &LabConfig) -> String {
    let q = |v: &[ipnet::IpNet]| -> String {
        v.iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "apiVersion: switchyard.dev/v1alpha1
kind: ClusterNetwork
metadata:
  name: default
spec:
  model: {}
  podCIDRs: [{}]
  serviceCIDRs: [{}]
",
        c.model,
        q(&c.cluster_pod_cidrs),
        q(&c.service_cidrs)
    )
}

/// Start a node's agent in its namespace, detached: it outlives this command.
fn start_agent(lab: &Lab, node: &str) -> anyhow::Result<std::process::Child> {
    let dir = lab.node_dir(node);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))?;
    let child = Command::new(lab.dir.join("bin").join("switchyard"))
        .arg("agent")
        .arg("--lab")
        .arg(&lab.dir)
        .args(["--node", node, "--netns", &lab.node_netns(node)])
        .env(
            "SWITCHYARD_LOG",
            std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the agent of {node}"))?;
    Ok(child)
}

fn start_external_server(lab: &Lab) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lab.dir.join("external.log"))?;
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

/// Wait for the agents just started (`agents`) to report Ready.
fn wait_nodes(
    lab: &Lab,
    agents: &mut [(String, std::process::Child)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let nodes: Vec<(String, u32)> = agents.iter().map(|(n, c)| (n.clone(), c.id())).collect();
    let cluster = lab.cluster()?;
    let deadline = Instant::now() + timeout;
    let mut last = usize::MAX;
    loop {
        let mut ready = 0;
        let mut waiting = vec![];
        for (n, pid) in &nodes {
            // The status this very agent wrote, not its predecessor's.
            let s: Option<LabNodeStatus> = cluster
                .status("Node", "", n)
                .filter(|s: &LabNodeStatus| s.agent_pid == *pid);
            let ok = s.as_ref().is_some_and(|s| {
                s.status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ok {
                ready += 1;
            } else {
                let why = s
                    .map(|s| s.problems.join("; "))
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "starting".into());
                waiting.push(format!("{n}: {why}"));
            }
        }
        if ready != last {
            say(&format!("nodes ready: {ready}/{}", nodes.len()));
            last = ready;
        }
        if waiting.is_empty() {
            return Ok(());
        }
        // An agent that exited will not become ready: show its log's end.
        for (n, child) in agents.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = lab.node_dir(n).join("agent.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                bail!(
                    "the agent of {n} exited ({status}); the end of {}:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "nodes not ready after {} s: {} (agent logs are in {}/nodes/*/agent.log)",
                timeout.as_secs(),
                waiting.join(", "),
                lab.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn up(dir: &Path, a: UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if let Some(lab) = Lab::load(dir)? {
        let c = &lab.config;
        eprintln!(
            "a lab named {:?} is already up in {} ({} nodes, {} model, {}); nothing was changed.\n\
             Add manifests with `switchyard lab apply -f DIR`, look at it with `switchyard lab status`,\n\
             or take it down first with `switchyard lab down`.",
            c.name,
            dir.display(),
            c.nodes.len(),
            c.model,
            c.families
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
    // Read the manifests before building anything: a typo fails fast.
    let docs = if a.files.is_empty() {
        vec![]
    } else {
        apply::read(&a.files)?
    };
    let lab = Lab {
        dir: dir.to_path_buf(),
        config: LabConfig::new(&a.name, a.nodes, a.model, a.ip_family, true),
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
    let built = (|| -> anyhow::Result<()> {
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
        let cluster = lab.cluster()?;
        for ns in ["default", "kube-system"] {
            cluster.put_object(
                "Namespace",
                "",
                ns,
                &format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{kubernetes.io/metadata.name: {ns}}}\n"
                ),
            )?;
        }
        cluster.put_object(
            "ClusterNetwork",
            "",
            "default",
            &cluster_network_manifest(c),
        )?;
        for (i, n) in c.nodes.iter().enumerate() {
            say(&format!(
                "{}: {} pod CIDRs {}",
                n.name,
                n.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                n.pod_cidrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            topology::build_node(&lab, n)?;
            cluster.put_object("Node", "", &n.name, &node_manifest(&lab, i))?;
        }
        let mut agents = vec![];
        for n in &c.nodes {
            agents.push((n.name.clone(), start_agent(&lab, &n.name)?));
        }
        wait_nodes(&lab, &mut agents, Duration::from_secs(a.timeout))?;
        Ok(())
    })();
    if let Err(e) = built {
        eprintln!("error: {e:#}");
        say("removing what was built");
        if let Err(d) = topology::down(dir, &a.name) {
            eprintln!("error: {d:#}");
        }
        return Ok(ExitCode::from(1));
    }
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
        match apply::apply(&lab, docs.clone()) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                if let Err(e) = wait_pods(&lab, &pod_names(&docs), Duration::from_secs(a.timeout)) {
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
    println!();
    println!(
        "lab {:?} is up ({:.1} s): {} nodes, {} model, {}",
        lab.config.name,
        started.elapsed().as_secs_f64(),
        lab.config.nodes.len(),
        lab.config.model,
        lab.config.families
    );
    println!("  console:   {url}");
    println!("  admin API: {url}api/v1/cluster (every node serves one on port {ADMIN_PORT})");
    println!("  next:      switchyard lab status | switchyard lab matrix | switchyard lab down");
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

fn restart(lab: &Lab, a: RestartArgs) -> anyhow::Result<ExitCode> {
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
    let cluster = lab.cluster()?;
    for n in &nodes {
        if let Some(s) = cluster.status::<LabNodeStatus>("Node", "", n) {
            let pid = s.agent_pid as i32;
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
    wait_nodes(lab, &mut agents, Duration::from_secs(60))?;
    Ok(ExitCode::SUCCESS)
}

/// The namespace a probe or exec starts in.
fn source_netns(lab: &Lab, from: &str) -> anyhow::Result<String> {
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
    let cluster = lab.cluster()?;
    if cluster.object("Pod", ns, name).is_none() {
        bail!("pod {ns}/{name} not found");
    }
    let st: Option<LabPodStatus> = cluster.status("Pod", ns, name);
    match st {
        Some(s) if s.status.phase.as_deref() == Some("Running") && s.netns.is_some() => {
            Ok(s.netns.expect("checked"))
        }
        Some(s) => bail!(
            "pod {ns}/{name} is {} ({}): it has no network yet",
            s.status.phase.as_deref().unwrap_or("Pending"),
            s.status.message.as_deref().unwrap_or("no reason given")
        ),
        None => bail!("pod {ns}/{name} has no status yet: its node has not started it"),
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
    lab: &Lab,
    to: &str,
    family: Option<Family>,
    from_outside: bool,
) -> anyhow::Result<IpAddr> {
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
    let cluster = lab.cluster()?;
    if let Some((ns, name)) = to.split_once('/') {
        let st: Option<LabPodStatus> = cluster.status("Pod", ns, name);
        let ips: Vec<IpAddr> = st
            .and_then(|s| s.status.pod_ips)
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.ip.parse().ok())
            .collect();
        if cluster.object("Pod", ns, name).is_none() {
            bail!("pod {ns}/{name} not found");
        }
        if ips.is_empty() {
            bail!("pod {ns}/{name} has no IP yet");
        }
        return pick(&ips, v4, &format!("pod {ns}/{name}"));
    }
    let (svc, ns) = to.split_once('.').unwrap_or((to, "default"));
    let text = cluster.object("Service", ns, svc).with_context(|| {
        format!(
            "{to:?} is not an IP, NAMESPACE/POD, `external`, `node/NAME` or a Service (service {ns}/{svc} not found)"
        )
    })?;
    let s: k8s_openapi::api::core::v1::Service = serde_yaml::from_str(&text)?;
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

fn probe_cmd(lab: &Lab, a: ProbeArgs) -> anyhow::Result<ExitCode> {
    let ns = source_netns(lab, &a.from)?;
    let ip = target_ip(lab, &a.to, a.family, a.from == "external")?;
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

fn matrix(lab: &Lab, a: MatrixArgs) -> anyhow::Result<ExitCode> {
    let view = ClusterView::read(lab);
    let cluster = lab.cluster()?;
    let v4 = want_v4(lab, a.family);
    let pods: Vec<&PodView> = view
        .pods
        .iter()
        .filter(|p| p.phase == "Running")
        .filter(|p| a.namespaces.is_empty() || a.namespaces.contains(&p.namespace))
        .collect();
    // (name, netns, address of the asked family)
    let mut ends = vec![];
    for p in &pods {
        let st: Option<LabPodStatus> = cluster.status("Pod", &p.namespace, &p.name);
        let Some(netns) = st.and_then(|s| s.netns) else {
            continue;
        };
        let ip = p
            .ips
            .iter()
            .filter_map(|i| i.parse::<IpAddr>().ok())
            .find(|i| i.is_ipv4() == v4);
        if let Some(ip) = ip {
            ends.push((format!("{}/{}", p.namespace, p.name), netns, ip));
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

fn print_status(lab: &Lab, v: &ClusterView) {
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
        v.name,
        v.model,
        v.ip_family,
        v.nodes.len(),
        v.external.join(" ")
    );
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
        v.nodes
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
        v.pods
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
        v.services
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
    for s in &v.services {
        for p in &s.problems {
            let _ = writeln!(out, "service {}/{}: {p}", s.namespace, s.name);
        }
    }
    if !v.network_policies.is_empty() {
        let _ = writeln!(out, "\n{}", bold("NETWORK POLICIES"));
        table(
            &mut out,
            &["NAMESPACE", "NAME", "POD-SELECTOR", "TYPES"],
            v.network_policies
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
    for p in &v.problems {
        let _ = writeln!(out, "problem: {p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
