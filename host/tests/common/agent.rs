//! A real `switchyard agent` process in a node namespace of its own, and the
//! real `switchyard-cni` plugin exec'd the way a container runtime execs it.

use super::netns::{Netns, wait_for};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use switchyard::datapath::ipam::{Ipam, Ledger, PoolConfig};

pub struct AgentProc {
    pub node: Netns,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl AgentProc {
    /// Start an agent for node `test-node` with these pod CIDRs and
    /// (optionally) a manifest directory holding `manifests`.
    pub fn start(tag: &str, pod_cidrs: &[&str], manifests: Option<&str>) -> AgentProc {
        Self::start_with(tag, pod_cidrs, manifests, &[])
    }

    /// As [`AgentProc::start`], with more arguments for `switchyard agent`.
    pub fn start_with(
        tag: &str,
        pod_cidrs: &[&str],
        manifests: Option<&str>,
        extra: &[&str],
    ) -> AgentProc {
        let node = Netns::new(tag);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cni.sock");
        let mut args = vec![
            "agent".to_string(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--node".into(),
            "test-node".into(),
            "--cni-socket".into(),
            socket.display().to_string(),
            "--sticky-ttl-seconds".into(),
            "600".into(),
        ];
        for c in pod_cidrs {
            args.push("--pod-cidr".into());
            args.push(c.to_string());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        if let Some(m) = manifests {
            let local = dir.path().join("local");
            std::fs::create_dir_all(&local).unwrap();
            std::fs::write(local.join("manifests.yaml"), m).unwrap();
            args.push("--local".into());
            args.push(local.display().to_string());
        }
        let mut a = AgentProc {
            node,
            dir,
            socket,
            args,
            child: None,
        };
        a.spawn();
        a
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.node.name,
            env!("CARGO_BIN_EXE_switchyard"),
        ])
        .args(&self.args)
        .env("SWITCHYARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        let socket = self.socket.clone();
        let up = wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        assert!(up, "the agent did not start serving:\n{}", self.log());
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let done = wait_for(Duration::from_secs(5), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// Kill the agent without warning, as `kill -9` does. `ip netns exec`
    /// runs the agent as its own process, so the signal reaches it directly.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The agent's ledger, opened while the agent is stopped.
    pub fn ledger(&self, pools: &[(&str, &str)]) -> Ledger {
        assert!(
            self.child.is_none(),
            "stop the agent before reading its ledger"
        );
        Ledger::open(
            &self.dir.path().join("data/ipam.redb"),
            pools
                .iter()
                .map(|(n, s)| PoolConfig {
                    name: n.to_string(),
                    subnet: s.parse().unwrap(),
                })
                .collect(),
        )
        .unwrap()
    }

    /// The agent's attachment records, read while the agent is stopped.
    pub fn records(&self) -> Vec<switchyard::cni::store::AttachmentRecord> {
        assert!(
            self.child.is_none(),
            "stop the agent before reading its attachment store"
        );
        switchyard::cni::store::AttachmentStore::open(
            &self.dir.path().join("data/attachments.redb"),
        )
        .unwrap()
        .all()
        .unwrap()
    }

    /// Interfaces whose master is the bridge `bridge` in the node namespace.
    pub fn bridge_ports(&self, bridge: &str) -> Vec<String> {
        let o = super::netns::run(
            "ip",
            &[
                "-n",
                &self.node.name,
                "-br",
                "link",
                "show",
                "master",
                bridge,
            ],
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|n| n.split('@').next().unwrap().to_string())
            .collect()
    }

    /// GET `path` of the agent's admin API on its unix socket.
    pub fn admin_get(&self, path: &str) -> (u16, Value) {
        let socket = self.dir.path().join("admin.sock");
        let s = std::os::unix::net::UnixStream::connect(&socket)
            .unwrap_or_else(|e| panic!("the admin socket {}: {e}", socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        http_get(s, path)
    }

    /// Host ends of pod veths on the node.
    pub fn pod_veths(&self) -> Vec<String> {
        self.node
            .ip(&["-br", "link"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with("syv"))
            .map(|n| n.split('@').next().unwrap().to_string())
            .collect()
    }

    /// The network configuration for this agent's socket.
    pub fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "pods", "type": "switchyard-cni", "socket": self.socket})
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The outcome of one plugin run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub out: Value,
    pub raw: String,
}

impl Run {
    pub fn ok(&self) -> &Value {
        assert_eq!(self.code, 0, "the plugin failed: {}", self.raw);
        &self.out
    }

    /// The CNI error code (0 on success).
    pub fn error_code(&self) -> u64 {
        if self.code == 0 {
            0
        } else {
            self.out["code"].as_u64().unwrap_or(999)
        }
    }
}

/// Exec the plugin with exactly these `CNI_*` variables and stdin.
pub fn cni(vars: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(switchyard::modules::CNI_PLUGIN);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&o.stdout).into_owned();
    Run {
        code: o.status.code().unwrap_or(-1),
        out: serde_json::from_str(raw.trim()).unwrap_or(Value::Null),
        raw: format!("{raw}{}", String::from_utf8_lossy(&o.stderr)),
    }
}

/// ADD, DEL or CHECK for a container in a namespace, with `config`.
pub fn verb(cmd: &str, container: &str, netns: &Path, config: &Value) -> Run {
    verb_if(cmd, container, netns, "eth0", config)
}

/// As [`verb`], for the interface `ifname`.
pub fn verb_if(cmd: &str, container: &str, netns: &Path, ifname: &str, config: &Value) -> Run {
    let ns = netns.display().to_string();
    cni(
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", &ns),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/opt/cni/bin"),
        ],
        &config.to_string(),
    )
}

/// The addresses (without prefix) a result lists.
pub fn result_ips(v: &Value) -> Vec<String> {
    v["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(|s| s.split('/').next().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every attachment the ledger says holds an address.
pub fn held(l: &Ledger) -> usize {
    l.attachments().unwrap().len()
}

/// GET `path` over an HTTP/1.1 stream; the status code and the JSON body.
pub fn http_get(mut stream: impl std::io::Read + std::io::Write, path: &str) -> (u16, Value) {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}
