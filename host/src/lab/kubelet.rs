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
use crate::source::cluster_dir::{ClusterDir, write_atomic};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the lab adds to a pod's status: where the pod lives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabPodStatus {
    pub status: PodStatus,
    /// The pod's network namespace (a name under /var/run/netns).
    pub netns: Option<String>,
    pub node: Option<String>,
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
}

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
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the pod server: {e}"))?;
        r.server_pid = Some(child.id());
        self.children
            .insert((r.namespace.clone(), r.name.clone()), child);
        Ok(())
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

    fn status_of(&self, r: &PodRecord, ready: bool) -> LabPodStatus {
        let host_ip = self
            .lab
            .config
            .node(&self.node)
            .and_then(|n| n.addresses.first())
            .map(|a| a.to_string());
        let cond = |t: &str| PodCondition {
            type_: t.to_string(),
            status: "True".into(),
            last_transition_time: Some(now()),
            ..Default::default()
        };
        let mut conditions = vec![
            cond("PodScheduled"),
            cond("Initialized"),
            cond("PodReadyToStartContainers"),
        ];
        let readiness = |t: &str| PodCondition {
            status: if ready { "True" } else { "False" }.into(),
            ..cond(t)
        };
        conditions.push(readiness("ContainersReady"));
        conditions.push(readiness("Ready"));
        LabPodStatus {
            status: PodStatus {
                phase: Some("Running".into()),
                pod_ip: r.ips.first().cloned(),
                pod_ips: Some(r.ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
                host_ip,
                start_time: Some(now()),
                conditions: Some(conditions),
                container_statuses: Some(vec![ContainerStatus {
                    name: "server".into(),
                    image: "switchyard/lab-pod-server".into(),
                    image_id: String::new(),
                    ready,
                    restart_count: r.restarts,
                    started: Some(true),
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(now()),
                        }),
                        ..Default::default()
                    }),
                    container_id: Some(format!("lab://{}", r.container_id)),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            netns: Some(r.netns.clone()),
            node: Some(self.node.clone()),
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
                .put_status("Pod", &ns, &name, &self.status_of(&r, true))
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
        self.records.remove(&(r.namespace.clone(), r.name.clone()));
        problems
    }

    /// Make this node's pods what the objects say.
    pub fn reconcile(&mut self, pods: &[Pod]) -> Vec<String> {
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
                    p,
                )
            })
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
                    } else if !self.server_alive(&r) {
                        // The "container" exited: restart it (restartPolicy Always).
                        r.restarts += 1;
                        match self.start_server(&mut r) {
                            Ok(()) => {
                                let _ = self.save(&r);
                                let _ = self.cluster.put_status(
                                    "Pod",
                                    &r.namespace,
                                    &r.name,
                                    &self.status_of(&r, true),
                                );
                                self.records.insert(key.clone(), r);
                            }
                            Err(e) => problems.push(format!("pod {}/{}: {e}", key.0, key.1)),
                        }
                    } else if self
                        .cluster
                        .status::<LabPodStatus>("Pod", &key.0, &key.1)
                        .is_none()
                    {
                        let _ = self.cluster.put_status(
                            "Pod",
                            &r.namespace,
                            &r.name,
                            &self.status_of(&r, true),
                        );
                    }
                }
            }
        }
        problems
    }

    /// Pods this kubelet runs.
    pub fn records(&self) -> impl Iterator<Item = &PodRecord> {
        self.records.values()
    }
}
