//! The pods a lab kubelet runs: each gets a network namespace, its network
//! through the real CNI plugin (exec'd as a container runtime execs it), and
//! a pod server process for the ports its containers declare, which plays
//! the pod's containers. Probes run as the kubelet runs them; a liveness or
//! startup failure restarts the server with the kubelet's crash-loop
//! back-off, and the restart policy decides whether a server that exits is
//! started again.
//!
//! A pod being deleted is stopped gracefully: its server gets SIGTERM and
//! the pod's grace period to exit (meanwhile its endpoints are serving and
//! terminating), then SIGKILL; then its network is torn down (CNI DEL) and
//! the kubelet removes the Pod for good.
//!
//! What the kubelet started is recorded on disk, so a restarted kubelet
//! adopts its pods (their namespaces, addresses and servers keep running).
//! Nothing here talks to the API server: the loop in [`super`] hands pods in
//! and takes statuses, deletions and Events out.

use super::super::behaviour::Behaviour;
use super::super::layout::Lab;
use super::super::prober::{PodKey, ProbeStatus, Prober};
use super::dns::{self, DnsFlags};
use super::status::{self, Inputs, Runtime, Termination, Transitions};
use crate::datapath::probes::ProbeTable;
use crate::probe::{ProbeKind, ProbeSpec};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the kubelet remembers about a pod it runs (on disk, for adoption).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: String,
    pub container_id: String,
    pub server_pid: Option<u32>,
    pub ips: Vec<String>,
    pub listen: Vec<String>,
    /// When the kubelet took the pod on (`status.startTime`).
    pub start_time: Time,
    /// When the server last started.
    pub started_at: Time,
    pub restarts: i32,
    /// The server's exit code, once it terminated for good (restart policy
    /// Never or OnFailure).
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub finished_at: Option<Time>,
}

/// An Event about a pod, as the kubelet posts them.
#[derive(Debug, Clone, PartialEq)]
pub struct PodEvent {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// A pod the kubelet stopped for its deletion: remove it from the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub key: PodKey,
    pub uid: String,
}

/// The kubelet's crash-loop back-off: 10 s, doubling, at most 5 min; reset
/// after 10 min of running.
const CRASH_LOOP_FIRST: Duration = Duration::from_secs(10);
const CRASH_LOOP_MAX: Duration = Duration::from_secs(300);
const CRASH_LOOP_RESET: Duration = Duration::from_secs(600);

fn random_id() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sh(args: &[&str]) -> Result<String, String> {
    let o = Command::new("timeout")
        .arg("20")
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The ports a pod's containers declare, as pod-server listen specs.
pub fn listen_specs(pod: &Pod) -> Vec<String> {
    let mut v: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| {
            format!(
                "{}:{}",
                p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                p.container_port
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn key_of(p: &Pod) -> PodKey {
    (
        p.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

fn container_names(pod: Option<&Pod>) -> Vec<String> {
    pod.and_then(|p| p.spec.as_ref())
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// The pods of one node.
pub struct Pods {
    lab: Lab,
    node: String,
    /// The CNI plugin and its network configuration.
    plugin: PathBuf,
    conf: Value,
    /// This binary, for pod servers.
    exe: PathBuf,
    /// The node's addresses (`status.hostIPs`).
    host_ips: Vec<String>,
    /// The kubelet's DNS flags, for the pods' resolv.conf.
    dns: DnsFlags,
    records: BTreeMap<PodKey, PodRecord>,
    /// Servers this kubelet started (adopted ones are watched by pid).
    children: BTreeMap<PodKey, Child>,
    /// Pods whose sandbox failed: when to try again, how many tries so far,
    /// and why.
    backoff: BTreeMap<PodKey, (Instant, u32, String)>,
    /// The pods bound to this node, as last read.
    pods: BTreeMap<PodKey, Arc<Pod>>,
    prober: Prober,
    /// Containers waiting out a crash-loop back-off: when they restart, and
    /// why they stopped.
    crash_loop: BTreeMap<PodKey, (Instant, String)>,
    /// When each pod's server (re)started, and its restarts in the last
    /// ten minutes (for the back-off).
    runs: BTreeMap<PodKey, (Instant, u32)>,
    /// Pods being deleted: when their grace period ends.
    terminating: BTreeMap<PodKey, Instant>,
    /// Pods whose configuration the kubelet cannot run, and why.
    config_errors: BTreeMap<PodKey, String>,
    transitions: BTreeMap<PodKey, Transitions>,
    last_termination: BTreeMap<PodKey, Termination>,
    /// When pods the kubelet has not started yet were first seen.
    first_seen: BTreeMap<PodKey, Time>,
    /// The status last written, per pod.
    written: BTreeMap<PodKey, PodStatus>,
    /// Events to post.
    events: Vec<PodEvent>,
    /// Pods stopped for their deletion, to remove from the API.
    finished: Vec<Finished>,
}

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods")
            .field("node", &self.node)
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl Pods {
    pub fn new(
        lab: Lab,
        node: &str,
        plugin: PathBuf,
        cni_socket: &Path,
        rt: tokio::runtime::Handle,
        probes: Arc<ProbeTable>,
        dns: DnsFlags,
    ) -> anyhow::Result<Pods> {
        let v4_first = lab.config.families.v4();
        let mut host_ips: Vec<std::net::IpAddr> = lab
            .config
            .node(node)
            .map(|n| n.addresses.clone())
            .unwrap_or_default();
        host_ips.sort_by_key(|a| a.is_ipv4() != v4_first);
        let mut k = Pods {
            node: node.to_string(),
            plugin,
            conf: json!({"cniVersion": "1.1.0", "name": "lab", "type": "switchyard-cni", "socket": cni_socket}),
            exe: std::env::current_exe()?,
            host_ips: host_ips.iter().map(|a| a.to_string()).collect(),
            dns,
            records: BTreeMap::new(),
            children: BTreeMap::new(),
            backoff: BTreeMap::new(),
            pods: BTreeMap::new(),
            prober: Prober::new(rt, probes),
            crash_loop: BTreeMap::new(),
            runs: BTreeMap::new(),
            terminating: BTreeMap::new(),
            config_errors: BTreeMap::new(),
            transitions: BTreeMap::new(),
            last_termination: BTreeMap::new(),
            first_seen: BTreeMap::new(),
            written: BTreeMap::new(),
            events: vec![],
            finished: vec![],
            lab,
        };
        let dir = k.records_dir();
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.path().extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            if let Some(r) = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<PodRecord>(&b).ok())
            {
                k.records.insert((r.namespace.clone(), r.name.clone()), r);
            }
        }
        Ok(k)
    }

    fn records_dir(&self) -> PathBuf {
        self.lab.node_dir(&self.node).join("pods")
    }

    fn record_path(&self, ns: &str, name: &str) -> PathBuf {
        self.records_dir().join(format!("{ns}_{name}.json"))
    }

    fn save(&self, r: &PodRecord) -> std::io::Result<()> {
        crate::util::write_atomic(
            &self.record_path(&r.namespace, &r.name),
            &serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?,
        )
    }

    fn event(&mut self, key: &PodKey, warning: bool, reason: &str, note: String) {
        let uid = self
            .pods
            .get(key)
            .and_then(|p| p.metadata.uid.clone())
            .unwrap_or_default();
        self.events.push(PodEvent {
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid,
            warning,
            reason: reason.into(),
            note,
        });
    }

    /// Run the CNI plugin as a container runtime does.
    fn cni(&self, cmd: &str, r: &PodRecord) -> Result<Value, String> {
        let netns = Lab::netns_path(&r.netns).display().to_string();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={};K8S_POD_INFRA_CONTAINER_ID={}",
            r.namespace, r.name, r.uid, r.container_id
        );
        cni_exec(
            &self.plugin,
            &self.conf,
            cmd,
            &[
                ("CNI_CONTAINERID", r.container_id.as_str()),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", args.as_str()),
            ],
        )
    }

    /// The network's readiness as the runtime reports it to the kubelet:
    /// the plugin's STATUS verb.
    pub fn network_status(&self) -> Result<(), String> {
        cni_exec(&self.plugin, &self.conf, "STATUS", &[]).map(|_| ())
    }

    fn start_server(&mut self, r: &mut PodRecord) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.records_dir()
                    .join(format!("{}_{}.log", r.namespace, r.name)),
            )
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &r.netns]).arg(&self.exe).args([
            "lab",
            "pod-server",
            "--pod",
            &format!("{}/{}", r.namespace, r.name),
            "--node",
            &self.node,
        ]);
        for l in &r.listen {
            cmd.args(["--listen", l]);
        }
        let key = (r.namespace.clone(), r.name.clone());
        if let Some(pod) = self.pods.get(&key) {
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            let behaviour = Behaviour::from_annotations(&annotations)?;
            cmd.args(behaviour.to_args());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the pod server: {e}"))?;
        r.server_pid = Some(child.id());
        r.started_at = status::now();
        self.children.insert(key.clone(), child);
        let now = Instant::now();
        let restarts = match self.runs.get(&key) {
            // Ten minutes of running resets the back-off, as in the kubelet.
            Some((at, n)) if now.duration_since(*at) < CRASH_LOOP_RESET => n + 1,
            Some(_) => 1,
            None => 0,
        };
        self.runs.insert(key.clone(), (now, restarts));
        // A restart keeps the pod's probes (and bumps their generation, so
        // attempts still running against the old server are dropped).
        if !self.prober.restarted(&key, now)
            && let Some(pod) = self.pods.get(&key).cloned()
        {
            self.prober.ensure(&key, &pod, &r.ips, &r.netns, now);
        }
        for c in container_names(self.pods.get(&key).map(|p| &**p)) {
            self.event(&key, false, "Started", format!("Started container {c}"));
        }
        Ok(())
    }

    /// How long a container that stopped waits before its restart: none the
    /// first time, then 10 s doubling to 5 min (the kubelet's back-off).
    fn crash_loop_delay(&self, key: &PodKey) -> Duration {
        match self.runs.get(key) {
            Some((at, n)) if at.elapsed() < CRASH_LOOP_RESET && *n >= 1 => {
                (CRASH_LOOP_FIRST * 2u32.pow((*n - 1).min(5))).min(CRASH_LOOP_MAX)
            }
            _ => Duration::ZERO,
        }
    }

    /// Probe results that came in, attempts that are due, and what they
    /// change: a pod's readiness (its status) or a restart.
    pub fn probe_tick(&mut self) {
        for key in self.prober.tick(Instant::now()) {
            let Some(mut r) = self.records.get(&key).cloned() else {
                continue;
            };
            // A failing probe is an Event, as the kubelet's "Unhealthy".
            for p in self.prober.statuses(&key) {
                if p.result == crate::datapath::probes::ProbeResult::Failure
                    && p.consecutive_failures == 1
                {
                    let kind = match p.kind {
                        ProbeKind::Liveness => "Liveness",
                        ProbeKind::Readiness => "Readiness",
                        ProbeKind::Startup => "Startup",
                    };
                    self.event(
                        &key,
                        true,
                        "Unhealthy",
                        format!(
                            "{kind} probe failed: {}",
                            p.last_message.clone().unwrap_or_default()
                        ),
                    );
                }
            }
            if self.terminating.contains_key(&key) {
                continue;
            }
            let health = self.prober.health(&key).unwrap_or_default();
            if let Some(why) = health.values().find_map(|h| h.restart.clone()) {
                tracing::info!(pod = %format!("{}/{}", key.0, key.1), "{why}: restarting");
                for c in container_names(self.pods.get(&key).map(|p| &**p)) {
                    self.event(
                        &key,
                        false,
                        "Killing",
                        format!("Container {c} {why}, will be restarted"),
                    );
                }
                self.stop_server(&r);
                self.container_exited(&key, &mut r, why, None);
            }
        }
    }

    /// The pod's server stopped (`code`, when known): restart it as the
    /// restart policy says, after the back-off, or leave it terminated.
    fn container_exited(
        &mut self,
        key: &PodKey,
        r: &mut PodRecord,
        why: String,
        code: Option<i32>,
    ) {
        let policy = self
            .pods
            .get(key)
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let killed = code.is_none();
        let exit_code = code.unwrap_or(137);
        let restart = match policy.as_str() {
            "Never" => false,
            // A probe kill counts as a failure.
            "OnFailure" => killed || code != Some(0),
            _ => true,
        };
        let finished_at = status::now();
        self.last_termination.insert(
            key.clone(),
            Termination {
                exit_code,
                reason: if killed {
                    "Error".into()
                } else if exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                started_at: Some(r.started_at.clone()),
                finished_at: finished_at.clone(),
            },
        );
        if !restart {
            r.server_pid = None;
            r.exit_code = Some(exit_code);
            r.finished_at = Some(finished_at);
            let _ = self.save(r);
            self.records.insert(key.clone(), r.clone());
            self.prober.forget(key);
            return;
        }
        let delay = self.crash_loop_delay(key);
        if !delay.is_zero() {
            for c in container_names(self.pods.get(key).map(|p| &**p)) {
                self.event(
                    key,
                    true,
                    "BackOff",
                    format!(
                        "Back-off {} s restarting failed container {c}",
                        delay.as_secs()
                    ),
                );
            }
        }
        self.crash_loop
            .insert(key.clone(), (Instant::now() + delay, why));
        r.server_pid = None;
        r.restarts += 1;
        let _ = self.save(r);
        self.records.insert(key.clone(), r.clone());
    }

    fn server_alive(&mut self, r: &PodRecord) -> bool {
        let key = (r.namespace.clone(), r.name.clone());
        if let Some(c) = self.children.get_mut(&key) {
            return matches!(c.try_wait(), Ok(None));
        }
        let Some(pid) = r.server_pid else {
            return false;
        };
        // Adopted: alive if the pid is still our pod server.
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("pod-server"))
            .unwrap_or(false)
            && super::super::topology::alive(pid as i32)
    }

    fn signal_server(&mut self, r: &PodRecord, sig: nix::sys::signal::Signal) {
        if let Some(pid) = r.server_pid
            && self.server_alive(r)
        {
            // The server leads its own process group.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    fn stop_server(&mut self, r: &PodRecord) {
        let key = (r.namespace.clone(), r.name.clone());
        if let Some(mut c) = self.children.remove(&key) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.kill();
            let _ = c.wait();
        } else {
            self.signal_server(r, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// What the pod's container is doing, for its status.
    fn runtime(&self, key: &PodKey) -> Runtime {
        if let Some(m) = self.config_errors.get(key) {
            return Runtime::ConfigError { message: m.clone() };
        }
        let Some(r) = self.records.get(key) else {
            return Runtime::Creating {
                message: self.backoff.get(key).map(|(_, _, why)| why.clone()),
            };
        };
        if let Some(code) = r.exit_code {
            return Runtime::Terminated {
                exit_code: code,
                started_at: Some(r.started_at.clone()),
                finished_at: r.finished_at.clone().unwrap_or_else(status::now),
            };
        }
        if let Some((_, why)) = self.crash_loop.get(key) {
            return Runtime::BackOff {
                message: format!("back-off restarting failed container: {why}"),
            };
        }
        if r.server_pid.is_some() {
            return Runtime::Running {
                started_at: r.started_at.clone(),
            };
        }
        Runtime::Creating { message: None }
    }

    /// The statuses that differ from what was last written, with the pod's uid.
    pub fn statuses(&mut self) -> Vec<(PodKey, String, PodStatus)> {
        let keys: Vec<PodKey> = self.pods.keys().cloned().collect();
        let mut out = vec![];
        for key in keys {
            let pod = self.pods[&key].clone();
            let runtime = self.runtime(&key);
            let (ips, restarts, start_time) = match self.records.get(&key) {
                Some(r) => (r.ips.clone(), r.restarts, r.start_time.clone()),
                None => (
                    vec![],
                    0,
                    self.first_seen
                        .entry(key.clone())
                        .or_insert_with(status::now)
                        .clone(),
                ),
            };
            let health = self.prober.health(&key).unwrap_or_default();
            let last = self.last_termination.get(&key).cloned();
            let st = status::pod_status(
                &Inputs {
                    pod: &pod,
                    runtime: &runtime,
                    ips: &ips,
                    host_ips: &self.host_ips,
                    start_time: &start_time,
                    restarts,
                    last_termination: last.as_ref(),
                    health: &health,
                },
                self.transitions.entry(key.clone()).or_default(),
            );
            if self.written.get(&key) != Some(&st) {
                out.push((key, pod.metadata.uid.clone().unwrap_or_default(), st));
            }
        }
        out
    }

    /// `status` was written for `key`.
    pub fn written(&mut self, key: &PodKey, status: PodStatus) {
        self.written.insert(key.clone(), status);
    }

    pub fn take_events(&mut self) -> Vec<PodEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.finished)
    }

    /// The pod's resolver configuration, as the kubelet forms it for the
    /// sandbox; the Warning Events it posts meanwhile are queued.
    fn pod_dns(&mut self, key: &PodKey, pod: &Pod) -> Result<dns::ResolvConf, String> {
        let node_ips: Vec<std::net::IpAddr> = self
            .host_ips
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let d = dns::pod_dns(pod, &self.dns.read(&node_ips)?);
        for w in d.warnings {
            self.event(key, true, w.reason, w.message);
        }
        Ok(d.config)
    }

    /// Start one pod: its DNS configuration (formed first, as the kubelet
    /// forms the sandbox's), namespace, resolv.conf, CNI ADD, server. A
    /// failed start is undone (CNI DEL, namespace and resolv.conf removed),
    /// so the next try starts clean.
    fn start(&mut self, pod: &Pod) -> Result<(), String> {
        let (ns, name) = key_of(pod);
        let resolv = self.pod_dns(&(ns.clone(), name.clone()), pod)?;
        let uid = pod
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{ns}-{name}"));
        let start_time = self
            .first_seen
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_else(status::now);
        let mut r = PodRecord {
            netns: self.lab.pod_netns(&ns, &name, &uid),
            container_id: random_id(),
            server_pid: None,
            ips: vec![],
            listen: listen_specs(pod),
            start_time,
            started_at: status::now(),
            restarts: 0,
            exit_code: None,
            finished_at: None,
            namespace: ns.clone(),
            name: name.clone(),
            uid,
        };
        if !Lab::netns_path(&r.netns).exists() {
            sh(&["ip", "netns", "add", &r.netns])?;
        }
        // Save first: whatever happens next, the pod's resources are findable.
        self.save(&r).map_err(|e| e.to_string())?;
        self.records.insert((ns.clone(), name.clone()), r.clone());
        let started = (|| -> Result<(), String> {
            // Where `ip netns exec`, and so the pod's server and `lab exec`,
            // find it as /etc/resolv.conf. Every pod gets one, hostNetwork
            // pods too: the lab runs those in a namespace of their own as
            // well, so theirs (the node's, or the cluster's under
            // ClusterFirstWithHostNet) is written there.
            let path = Lab::netns_resolv_conf(&r.netns);
            crate::util::write_atomic(&path, resolv.render().as_bytes())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            let result = self.cni("ADD", &r)?;
            r.ips = result["ips"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|ip| {
                            ip["address"]
                                .as_str()?
                                .split('/')
                                .next()
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            // The pod's primary address is of the cluster's first family.
            let v4_first = self.lab.config.families.v4();
            r.ips.sort_by_key(|ip| ip.contains(':') == v4_first);
            self.start_server(&mut r)?;
            self.save(&r).map_err(|e| e.to_string())
        })();
        match started {
            Ok(()) => {
                self.records.insert((ns, name), r);
                Ok(())
            }
            Err(e) => {
                let undo = self.teardown(r);
                if undo.is_empty() {
                    Err(e)
                } else {
                    Err(format!("{e} (and undoing it: {})", undo.join("; ")))
                }
            }
        }
    }

    /// Tear one pod down: server, CNI DEL, namespace and its resolv.conf,
    /// record, probes.
    fn teardown(&mut self, r: PodRecord) -> Vec<String> {
        let mut problems = vec![];
        self.stop_server(&r);
        if let Err(e) = self.cni("DEL", &r) {
            problems.push(e);
        }
        if Lab::netns_path(&r.netns).exists()
            && let Err(e) = sh(&["ip", "netns", "del", &r.netns])
        {
            problems.push(e);
        }
        // `ip netns del` leaves /etc/netns/NAME behind.
        let etc = Lab::netns_etc_dir(&r.netns);
        match std::fs::remove_dir_all(&etc) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("removing {}: {e}", etc.display())),
        }
        let _ = std::fs::remove_file(self.record_path(&r.namespace, &r.name));
        let key = (r.namespace.clone(), r.name.clone());
        self.prober.forget(&key);
        self.crash_loop.remove(&key);
        self.runs.remove(&key);
        self.terminating.remove(&key);
        self.records.remove(&key);
        problems
    }

    /// Forget everything about a pod that is gone from the API.
    fn forget(&mut self, key: &PodKey) {
        self.transitions.remove(key);
        self.last_termination.remove(key);
        self.first_seen.remove(key);
        self.written.remove(key);
        self.config_errors.remove(key);
        self.backoff.remove(key);
        self.terminating.remove(key);
    }

    /// A pod being deleted: SIGTERM first, then after the grace period (or
    /// once the server is gone) SIGKILL and teardown.
    fn terminate(&mut self, key: &PodKey, pod: &Pod) -> Vec<String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(r) = self.records.get(key).cloned() else {
            // Never started: nothing to stop.
            self.finished.push(Finished {
                key: key.clone(),
                uid,
            });
            return vec![];
        };
        let now = Instant::now();
        if !self.terminating.contains_key(key) {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64;
            self.terminating
                .insert(key.clone(), now + Duration::from_secs(grace));
            for c in container_names(Some(pod)) {
                self.event(key, false, "Killing", format!("Stopping container {c}"));
            }
            self.crash_loop.remove(key);
            self.signal_server(&r, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = self.terminating[key];
        let alive = self.server_alive(&r);
        if alive && now < deadline {
            return vec![];
        }
        let code = if alive {
            137
        } else {
            self.exit_status(key).unwrap_or(0)
        };
        let mut r = r;
        r.exit_code = Some(code);
        r.finished_at = Some(status::now());
        r.server_pid = r.server_pid.filter(|_| alive);
        let problems = self.teardown(r.clone());
        // The final status says how the container ended.
        self.records.insert(key.clone(), r);
        self.finished.push(Finished {
            key: key.clone(),
            uid,
        });
        problems
    }

    /// Make this node's pods what the API server says: start new ones, stop
    /// deleted ones, restart servers that exited. Returns the problems.
    pub fn reconcile(&mut self, pods: &[Arc<Pod>]) -> Vec<String> {
        let mut problems = vec![];
        let mine: BTreeMap<PodKey, Arc<Pod>> = pods
            .iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str())
            })
            .map(|p| (key_of(p), p.clone()))
            .collect();
        // Pods that are gone (deleted for good, by us or by force), or were
        // re-created (another uid): stop at once.
        let stale: Vec<PodRecord> = self
            .records
            .values()
            .filter(|r| match mine.get(&(r.namespace.clone(), r.name.clone())) {
                None => true,
                Some(p) => p.metadata.uid.as_deref().is_some_and(|u| u != r.uid),
            })
            .cloned()
            .collect();
        for r in stale {
            let key = (r.namespace.clone(), r.name.clone());
            problems.extend(self.teardown(r));
            self.forget(&key);
        }
        let gone: Vec<PodKey> = self
            .pods
            .keys()
            .filter(|k| !mine.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.forget(&k);
        }
        self.pods = mine.clone();
        for (key, pod) in &mine {
            if pod.metadata.deletion_timestamp.is_some() {
                if self.finished.iter().any(|f| &f.key == key) {
                    continue;
                }
                if self.records.get(key).is_some_and(|r| r.exit_code.is_some())
                    && !self.terminating.contains_key(key)
                {
                    // Terminated already (restart policy): only the Pod goes.
                    if let Some(r) = self.records.get(key).cloned() {
                        problems.extend(self.teardown(r.clone()));
                        self.records.insert(key.clone(), r);
                    }
                    self.finished.push(Finished {
                        key: key.clone(),
                        uid: pod.metadata.uid.clone().unwrap_or_default(),
                    });
                    continue;
                }
                problems.extend(self.terminate(key, pod));
                continue;
            }
            // The kubelet's own checks of what the API server accepts.
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            match Behaviour::from_annotations(&annotations) {
                Err(e) => {
                    if self.config_errors.get(key) != Some(&e) {
                        self.event(key, true, "Failed", format!("Error: {e}"));
                        self.config_errors.insert(key.clone(), e);
                    }
                    continue;
                }
                Ok(_) => {
                    self.config_errors.remove(key);
                }
            }
            match self.records.get(key).cloned() {
                None => {
                    if self
                        .backoff
                        .get(key)
                        .is_some_and(|(at, _, _)| Instant::now() < *at)
                    {
                        continue;
                    }
                    self.first_seen
                        .entry(key.clone())
                        .or_insert_with(status::now);
                    for why in probe_problems(pod) {
                        self.event(key, true, "Failed", format!("Unable to probe: {why}"));
                    }
                    match self.start(pod) {
                        Ok(()) => {
                            self.backoff.remove(key);
                        }
                        Err(e) => {
                            // Try again later, backing off from 1 s to 30 s.
                            let tries = self.backoff.get(key).map_or(0, |(_, n, _)| *n) + 1;
                            let wait = Duration::from_secs((1u64 << tries.min(5)).min(30));
                            let message = format!(
                                "Failed to create pod sandbox: {e} (attempt {tries}; next in {} s)",
                                wait.as_secs()
                            );
                            self.event(key, true, "FailedCreatePodSandBox", message.clone());
                            self.backoff
                                .insert(key.clone(), (Instant::now() + wait, tries, message));
                            problems.push(format!("pod {}/{}: {e}", key.0, key.1));
                        }
                    }
                }
                Some(mut r) => {
                    if !Lab::netns_path(&r.netns).exists() {
                        // Its namespace vanished: start over.
                        problems.extend(self.teardown(r));
                        if let Err(e) = self.start(pod) {
                            problems.push(format!("pod {}/{}: {e}", key.0, key.1));
                        }
                        continue;
                    }
                    if r.exit_code.is_some() {
                        // Terminated for good (restart policy): nothing runs.
                    } else if let Some((at, _)) = self.crash_loop.get(key) {
                        if Instant::now() >= *at {
                            self.crash_loop.remove(key);
                            if let Err(e) = self.start_server(&mut r) {
                                problems.push(format!("pod {}/{}: {e}", key.0, key.1));
                            }
                            let _ = self.save(&r);
                            self.records.insert(key.clone(), r.clone());
                        }
                    } else if !self.server_alive(&r) {
                        // The "container" exited.
                        let code = self.exit_status(key).unwrap_or(1);
                        self.container_exited(
                            key,
                            &mut r,
                            format!("the server exited with code {code}"),
                            Some(code),
                        );
                        // No back-off the first time: restart at once.
                        if self
                            .crash_loop
                            .get(key)
                            .is_some_and(|(at, _)| Instant::now() >= *at)
                        {
                            self.crash_loop.remove(key);
                            if let Err(e) = self.start_server(&mut r) {
                                problems.push(format!("pod {}/{}: {e}", key.0, key.1));
                            }
                            let _ = self.save(&r);
                            self.records.insert(key.clone(), r.clone());
                        }
                    } else if self.prober.health(key).is_none() {
                        // Adopted after a kubelet restart: probe it from now.
                        self.prober
                            .ensure(key, pod, &r.ips, &r.netns, Instant::now());
                    }
                }
            }
        }
        problems
    }

    /// The exit code of a pod server that ended (128 + signal for a
    /// signal); `None` when an adopted server's end cannot be known.
    fn exit_status(&mut self, key: &PodKey) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        match self.children.get_mut(key).map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Some(
                st.code()
                    .or_else(|| st.signal().map(|s| 128 + s))
                    .unwrap_or(1),
            ),
            _ => None,
        }
    }

    /// Pods this kubelet runs.
    pub fn records(&self) -> impl Iterator<Item = &PodRecord> {
        self.records.values()
    }

    /// Every probe of a pod, as the prober last saw them.
    pub fn probes(&self, key: &PodKey) -> Vec<ProbeStatus> {
        self.prober.statuses(key)
    }
}

/// Probes the API server accepted that the kubelet cannot run (a named
/// port no container declares, say): why, naming the container.
fn probe_problems(pod: &Pod) -> Vec<String> {
    let mut out = vec![];
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for kind in ProbeKind::ALL {
            if let Some(Err(e)) = ProbeSpec::of(kind, c) {
                out.push(e);
            }
        }
    }
    out
}

/// Exec a CNI plugin with `conf` on stdin, as a runtime does.
pub fn cni_exec(
    plugin: &Path,
    conf: &Value,
    cmd: &str,
    env: &[(&str, &str)],
) -> Result<Value, String> {
    let mut child = Command::new(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("exec {}: {e}", plugin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    if out.status.success() {
        Ok(v)
    } else {
        Err(format!(
            "CNI {cmd} failed: {}",
            v["msg"].as_str().unwrap_or(&text)
        ))
    }
}
