//! The kubelet's part for lab pods: a node's agent runs the pods bound to its
//! node. A pod gets a network namespace, its network through the real CNI
//! plugin (exec'd as a container runtime execs it), and a pod server process
//! for the ports its containers declare; its status goes to the cluster
//! directory for every other agent and the CLI to read.
//!
//! What the kubelet started is recorded on disk, so an agent that restarts
//! adopts its pods (their namespaces, addresses and servers keep running)
//! instead of recreating them.

use super::layout::Lab;
use super::prober::{ContainerHealth, PodKey, ProbeStatus, Prober};
use crate::datapath::probes::ProbeTable;
use crate::source::cluster_dir::{ClusterDir, write_atomic};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
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

/// What the lab adds to a pod's status: where the pod lives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabPodStatus {
    pub status: PodStatus,
    /// The pod's network namespace (a name under /var/run/netns).
    pub netns: Option<String>,
    pub node: Option<String>,
    /// The pod's probes as its node's prober last saw them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeStatus>,
}

/// What the kubelet remembers about a pod it runs.
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
    pub started_at: String,
    pub restarts: i32,
    /// The server's exit code, once it terminated for good (restart policy
    /// Never or OnFailure).
    #[serde(default)]
    pub exit_code: Option<i32>,
}

/// The kubelet's crash-loop back-off: 10 s, doubling, at most 5 min; reset
/// after 10 min of running.
const CRASH_LOOP_FIRST: Duration = Duration::from_secs(10);
const CRASH_LOOP_MAX: Duration = Duration::from_secs(300);
const CRASH_LOOP_RESET: Duration = Duration::from_secs(600);

fn now() -> Time {
    super::view::k8s_now()
}

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

pub struct Kubelet {
    lab: Lab,
    node: String,
    cluster: ClusterDir,
    /// The CNI plugin and its network configuration.
    plugin: PathBuf,
    conf: Value,
    /// This binary, for pod servers.
    exe: PathBuf,
    records: BTreeMap<(String, String), PodRecord>,
    /// Servers this agent instance started (adopted ones are watched by pid).
    children: BTreeMap<(String, String), Child>,
    /// Pods whose start failed: when to try again, and how many tries so far.
    backoff: BTreeMap<(String, String), (Instant, u32)>,
    /// The pods this node runs, as last read.
    pods: BTreeMap<PodKey, Pod>,
    prober: Prober,
    /// Containers waiting out a crash-loop back-off: when they restart, and
    /// why they stopped.
    crash_loop: BTreeMap<PodKey, (Instant, String)>,
    /// When each pod's server (re)started, and its restarts in the last
    /// ten minutes (for the back-off).
    runs: BTreeMap<PodKey, (Instant, u32)>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    pub fn new(
        lab: Lab,
        node: &str,
        plugin: PathBuf,
        cni_socket: &Path,
        rt: tokio::runtime::Handle,
        probes: Arc<ProbeTable>,
    ) -> anyhow::Result<Kubelet> {
        let cluster = lab.cluster()?;
        let mut k = Kubelet {
            node: node.to_string(),
            cluster,
            plugin,
            conf: json!({"cniVersion": "1.1.0", "name": "lab", "type": "switchyard-cni", "socket": cni_socket}),
            exe: std::env::current_exe()?,
            records: BTreeMap::new(),
            children: BTreeMap::new(),
            backoff: BTreeMap::new(),
            pods: BTreeMap::new(),
            prober: Prober::new(rt, probes),
            crash_loop: BTreeMap::new(),
            runs: BTreeMap::new(),
            lab,
        };
        let dir = k.records_dir();
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)?.flatten() {
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
        write_atomic(
            &self.record_path(&r.namespace, &r.name),
            &serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?,
        )
    }

    fn cni(&self, cmd: &str, r: &PodRecord) -> Result<Value, String> {
        let netns = Lab::netns_path(&r.netns).display().to_string();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={};K8S_POD_INFRA_CONTAINER_ID={}",
            r.namespace, r.name, r.uid, r.container_id
        );
        let mut child = Command::new(&self.plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &r.container_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", &args)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("exec {}: {e}", self.plugin.display()))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(self.conf.to_string().as_bytes())
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

    fn start_server(&mut self, r: &mut PodRecord) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.lab
                    .node_dir(&self.node)
                    .join(format!("pods/{}_{}.log", r.namespace, r.name)),
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
            let behaviour = super::behaviour::Behaviour::from_annotations(&annotations)?;
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
    pub fn probe_tick(&mut self) -> Vec<String> {
        let mut problems = vec![];
        for key in self.prober.tick(Instant::now()) {
            let Some(mut r) = self.records.get(&key).cloned() else {
                continue;
            };
            let health = self.prober.health(&key).unwrap_or_default();
            if let Some(why) = health.values().find_map(|h| h.restart.clone()) {
                tracing::info!(pod = %format!("{}/{}", key.0, key.1), "{why}: restarting");
                self.stop_server(&r);
                self.container_exited(&key, &mut r, why, None);
            }
            if let Err(e) = self
                .cluster
                .put_status("Pod", &key.0, &key.1, &self.status_of(&r))
            {
                problems.push(format!("pod {}/{}: writing its status: {e}", key.0, key.1));
            }
        }
        problems
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
        let restart = match policy.as_str() {
            "Never" => false,
            // A probe kill counts as a failure.
            "OnFailure" => killed || code != Some(0),
            _ => true,
        };
        if !restart {
            r.server_pid = None;
            r.exit_code = Some(code.unwrap_or(137));
            let _ = self.save(r);
            self.records.insert(key.clone(), r.clone());
            self.prober.forget(key);
            return;
        }
        let delay = self.crash_loop_delay(key);
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
    }

    fn stop_server(&mut self, r: &PodRecord) {
        let key = (r.namespace.clone(), r.name.clone());
        if let Some(mut c) = self.children.remove(&key) {
            let _ = c.kill();
            let _ = c.wait();
        } else if let Some(pid) = r.server_pid
            && self.server_alive(r)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// The pod's status as the kubelet computes it: phase from the
    /// container's state and the restart policy, readiness from the probes.
    fn status_of(&self, r: &PodRecord) -> LabPodStatus {
        let key = (r.namespace.clone(), r.name.clone());
        let host_ip = self
            .lab
            .config
            .node(&self.node)
            .and_then(|n| n.addresses.first())
            .map(|a| a.to_string());
        let pod = self.pods.get(&key);
        let names: Vec<String> = pod
            .and_then(|p| p.spec.as_ref())
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .filter(|v: &Vec<String>| !v.is_empty())
            .unwrap_or_else(|| vec!["server".into()]);
        let health = self.prober.health(&key).unwrap_or_default();
        let waiting = self.crash_loop.get(&key);
        let terminated = r.exit_code;
        let running = waiting.is_none() && terminated.is_none() && r.server_pid.is_some();
        let statuses: Vec<ContainerStatus> = names
            .iter()
            .map(|name| {
                let h = health.get(name).cloned().unwrap_or(ContainerHealth {
                    started: true,
                    ready: true,
                    restart: None,
                });
                let state = if let Some(code) = terminated {
                    ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                } else if let Some((_, why)) = waiting {
                    ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: Some(why.clone()),
                        }),
                        ..Default::default()
                    }
                } else {
                    ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(Time(
                                r.started_at.parse().unwrap_or_else(|_| now().0),
                            )),
                        }),
                        ..Default::default()
                    }
                };
                ContainerStatus {
                    name: name.clone(),
                    image: "switchyard/lab-pod-server".into(),
                    image_id: String::new(),
                    ready: running && h.ready,
                    restart_count: r.restarts,
                    started: Some(running && h.started),
                    state: Some(state),
                    container_id: Some(format!("lab://{}", r.container_id)),
                    ..Default::default()
                }
            })
            .collect();
        let all_ready = statuses.iter().all(|c| c.ready);
        // Phase: Running while the container runs or will run again;
        // Succeeded or Failed once it terminated for good.
        let phase = match terminated {
            Some(0) => "Succeeded",
            Some(_) => "Failed",
            None => "Running",
        };
        let cond = |t: &str, ok: bool| PodCondition {
            type_: t.to_string(),
            status: if ok { "True" } else { "False" }.into(),
            last_transition_time: Some(now()),
            ..Default::default()
        };
        let conditions = vec![
            cond("PodScheduled", true),
            cond("Initialized", true),
            cond("PodReadyToStartContainers", true),
            cond("ContainersReady", all_ready),
            cond("Ready", all_ready),
        ];
        LabPodStatus {
            status: PodStatus {
                phase: Some(phase.into()),
                pod_ip: r.ips.first().cloned(),
                pod_ips: Some(r.ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
                host_ip,
                start_time: Some(now()),
                conditions: Some(conditions),
                container_statuses: Some(statuses),
                ..Default::default()
            },
            netns: Some(r.netns.clone()),
            node: Some(self.node.clone()),
            probes: self.prober.statuses(&key),
        }
    }

    fn fail_status(&self, ns: &str, name: &str, reason: &str, message: &str) {
        let s = LabPodStatus {
            status: PodStatus {
                phase: Some("Pending".into()),
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..Default::default()
            },
            netns: None,
            node: Some(self.node.clone()),
            probes: vec![],
        };
        let _ = self.cluster.put_status("Pod", ns, name, &s);
    }

    /// Start one pod: namespace, CNI ADD, server, status. A failed start is
    /// undone (CNI DEL, namespace removed), so the next try starts clean.
    fn start(&mut self, pod: &Pod) -> Result<(), String> {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{ns}-{name}"));
        let mut r = PodRecord {
            netns: self.lab.pod_netns(&ns, &name, &uid),
            container_id: random_id(),
            server_pid: None,
            ips: vec![],
            listen: listen_specs(pod),
            started_at: now().0.to_string(),
            restarts: 0,
            exit_code: None,
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
            self.start_server(&mut r)?;
            self.save(&r).map_err(|e| e.to_string())?;
            self.cluster
                .put_status("Pod", &ns, &name, &self.status_of(&r))
                .map_err(|e| e.to_string())
        })();
        match started {
            Ok(()) => {
                self.records.insert((ns, name), r);
                Ok(())
            }
            Err(e) => {
                let undo = self.stop(r);
                if undo.is_empty() {
                    Err(e)
                } else {
                    Err(format!("{e} (and undoing it: {})", undo.join("; ")))
                }
            }
        }
    }

    /// Stop one pod: server, CNI DEL, namespace, status, record.
    fn stop(&mut self, r: PodRecord) -> Vec<String> {
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
        let _ = self.cluster.delete_status("Pod", &r.namespace, &r.name);
        let _ = std::fs::remove_file(self.record_path(&r.namespace, &r.name));
        let key = (r.namespace.clone(), r.name.clone());
        self.prober.forget(&key);
        self.crash_loop.remove(&key);
        self.runs.remove(&key);
        self.records.remove(&(r.namespace.clone(), r.name.clone()));
        problems
    }

    /// Make this node's pods what the objects say.
    pub fn reconcile(&mut self, pods: &[Arc<Pod>]) -> Vec<String> {
        let mut problems = vec![];
        let mine: BTreeMap<(String, String), &Pod> = pods
            .iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str())
            })
            .map(|p| {
                (
                    (
                        p.metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        p.metadata.name.clone().unwrap_or_default(),
                    ),
                    &**p,
                )
            })
            .collect();
        self.pods = mine
            .iter()
            .map(|(k, p)| (k.clone(), (*p).clone()))
            .collect();
        // Pods that are gone, or were re-created (another uid).
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
            problems.extend(self.stop(r));
        }
        // Pods that failed to start and are gone: their Pending status too.
        let gone: Vec<(String, String)> = self
            .backoff
            .keys()
            .filter(|k| !mine.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.backoff.remove(&k);
            let _ = self.cluster.delete_status("Pod", &k.0, &k.1);
        }
        for (key, pod) in &mine {
            match self.records.get(key).cloned() {
                None => {
                    if self
                        .backoff
                        .get(key)
                        .is_some_and(|(at, _)| Instant::now() < *at)
                    {
                        continue;
                    }
                    match self.start(pod) {
                        Ok(()) => {
                            self.backoff.remove(key);
                        }
                        Err(e) => {
                            // Try again later, backing off from 1 s to 30 s.
                            let tries = self.backoff.get(key).map_or(0, |(_, n)| *n) + 1;
                            let wait = Duration::from_secs((1u64 << tries.min(5)).min(30));
                            self.backoff
                                .insert(key.clone(), (Instant::now() + wait, tries));
                            problems.push(format!("pod {}/{}: {e}", key.0, key.1));
                            self.fail_status(
                                &key.0,
                                &key.1,
                                "CreatePodSandboxFailed",
                                &format!("{e} (attempt {tries}; next in {} s)", wait.as_secs()),
                            );
                        }
                    }
                }
                Some(mut r) => {
                    if !Lab::netns_path(&r.netns).exists() {
                        // Its namespace vanished: start over.
                        problems.extend(self.stop(r));
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
                        } else {
                            continue;
                        }
                    } else if !self.server_alive(&r) {
                        // The "container" exited.
                        let code = self.exit_status(key);
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
                        // Adopted after an agent restart: probe it from now.
                        self.prober
                            .ensure(key, pod, &r.ips, &r.netns, Instant::now());
                    } else if self
                        .cluster
                        .status::<LabPodStatus>("Pod", &key.0, &key.1)
                        .is_some()
                    {
                        continue;
                    }
                    let _ =
                        self.cluster
                            .put_status("Pod", &r.namespace, &r.name, &self.status_of(&r));
                }
            }
        }
        problems
    }

    /// The exit code of a pod server that ended (128 + signal for a
    /// signal; 1 when an adopted server's end cannot be known).
    fn exit_status(&mut self, key: &PodKey) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match self.children.get_mut(key).map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => st
                .code()
                .or_else(|| st.signal().map(|s| 128 + s))
                .unwrap_or(1),
            _ => 1,
        }
    }

    /// Pods this kubelet runs.
    pub fn records(&self) -> impl Iterator<Item = &PodRecord> {
        self.records.values()
    }
}
