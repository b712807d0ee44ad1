//! The lab on its real control plane: how long `lab up` takes for 3 nodes
//! and 30 pods (the control plane, the nodes, and the pods through the
//! scheduler), how long one pod takes from apply to Running (in a burst of
//! 30, and alone), `lab down`, and how much memory each control-plane
//! process, agent, kubelet and pod server holds.
//!
//! It drives the real CLI (a release build of `switchyard`), exactly as a
//! user does, and watches the bench namespace's pods through the lab's API
//! server from this process (kube's watcher, with the lab's kubeconfig) to
//! time every pod.
//!
//! Run (root): `cargo build --release -p switchyard -p switchyard-cni &&
//! cargo run --release -p switchyard-bench --bin lab_up`

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_bench::{Summary, header, machine, write_results};

const ROUNDS: usize = 5;
const NODES: usize = 3;
const PODS: usize = 30;
const ALONE: usize = 10;
const NAME: &str = "bench";

fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("SWITCHYARD_BIN") {
        return Ok(p.into());
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace")
                .join("target")
        });
    let p = target.join("release").join("switchyard");
    anyhow::ensure!(
        p.is_file() && target.join("release").join("switchyard-cni").is_file(),
        "{} not found: run `cargo build --release -p switchyard -p switchyard-cni` first",
        p.display()
    );
    Ok(p)
}

fn pods_yaml(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1
kind: Pod
metadata: {{name: {prefix}{i:02}, namespace: bench, labels: {{app: bench}}}}
spec:
  containers:
  - name: server
    image: registry.k8s.io/e2e-test-images/agnhost:2.53
    args: [netexec, --http-port=80, --udp-port=80]
    ports: [{{containerPort: 80}}, {{containerPort: 80, protocol: UDP}}]
"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn lab(bin: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .arg("lab")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("running switchyard")
}

/// When each pod of the bench namespace was first seen Running, by name,
/// from a watch on the lab's API server (started once the API server is up).
struct PodClock {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Instant>>>,
    _rt: tokio::runtime::Runtime,
}

impl PodClock {
    fn start(dir: &Path) -> anyhow::Result<PodClock> {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::Pod;
        use kube::runtime::WatchStreamExt;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Instant>>> =
            Default::default();
        let out = seen.clone();
        let kubeconfig = dir.join("kubeconfig");
        rt.spawn(async move {
            let client = loop {
                match switchyard::lab::layout::kube_client(&kubeconfig).await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            let api: kube::Api<Pod> = kube::Api::namespaced(client, "bench");
            let stream = kube::runtime::watcher(api, Default::default()).default_backoff();
            let stream = stream.applied_objects();
            futures::pin_mut!(stream);
            while let Some(e) = stream.next().await {
                let Ok(p) = e else { continue };
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if running && let Some(name) = p.metadata.name {
                    seen.lock()
                        .expect("not poisoned")
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        });
        Ok(PodClock { seen: out, _rt: rt })
    }

    fn at(&self, name: &str) -> Option<Instant> {
        self.seen.lock().expect("not poisoned").get(name).copied()
    }
}

/// The lab's processes by role: pid, and a role name.
fn processes(dir: &Path) -> Vec<(u32, &'static str)> {
    let lab: Value =
        serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap_or_default())
            .unwrap_or(Value::Null);
    let k8s = lab["kubernetesBin"]
        .as_str()
        .unwrap_or("/nonexistent")
        .to_string();
    let dir_s = dir.display().to_string();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let first = args.first().cloned().unwrap_or_default();
        let has = |s: &str| args.iter().any(|a| a == s);
        let mentions_lab = args.iter().any(|a| a.contains(&dir_s));
        let role = if first.starts_with(&k8s) && mentions_lab {
            match first.rsplit('/').next().unwrap_or_default() {
                "etcd" => "etcd",
                "kube-apiserver" => "kube-apiserver",
                "kube-controller-manager" => "kube-controller-manager",
                "kube-scheduler" => "kube-scheduler",
                _ => continue,
            }
        } else if first.ends_with("/switchyard") && has("agent") && has("--kube") {
            "agent"
        } else if first.ends_with("/switchyard") && has("kubelet") && mentions_lab {
            "kubelet"
        } else if first.ends_with("/switchyard") && has("cloud-controller") && mentions_lab {
            "cloud-controller"
        } else if first.ends_with("/switchyard") && has("pod-server") && !has("external") {
            "pod server"
        } else {
            continue;
        };
        out.push((pid, role));
    }
    out
}

fn memory(pid: u32) -> (u64, u64) {
    let field = |file: &str, key: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "this benchmark needs root (network namespaces)"
    );
    let bin = binary()?;
    let work = tempfile::tempdir()?;
    let dir = work.path().join("lab");
    let manifests = work.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("00-ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n",
    )?;
    std::fs::write(manifests.join("10-pods.yaml"), pods_yaml("p", PODS))?;
    let _ = lab(&bin, &dir, &["down", "--name", NAME]);

    let mut total = vec![];
    let mut control_up = vec![];
    let mut cluster_up = vec![];
    let mut all_running = vec![];
    let mut burst = vec![];
    let mut alone = vec![];
    let mut down = vec![];
    let mut memory_by_role: std::collections::BTreeMap<&'static str, (Vec<u64>, Vec<u64>)> =
        Default::default();
    for round in 0..ROUNDS {
        // lab up, watching its progress lines, and the pods through the API.
        let start = Instant::now();
        let mut child = Command::new(&bin)
            .arg("lab")
            .arg("--dir")
            .arg(&dir)
            .args(["up", "--name", NAME, "--nodes", &NODES.to_string(), "-f"])
            .arg(&manifests)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send((line, Instant::now()));
            }
        });
        let mut applying: Option<Instant> = None;
        let mut control_at = None;
        let mut up_at = None;
        let mut clock = None;
        let mut take =
            |line: &str, at: Instant, clock: &mut Option<PodClock>| -> anyhow::Result<()> {
                if line.contains("==> control plane:") {
                    control_at = Some(at);
                    *clock = Some(PodClock::start(&dir)?);
                }
                if line.contains("the cluster is up") {
                    up_at = Some(at);
                }
                if line.starts_with("==> applying") {
                    applying = Some(at);
                }
                if line.starts_with("error") {
                    eprintln!("{line}");
                }
                Ok(())
            };
        loop {
            while let Ok((line, at)) = rx.try_recv() {
                take(&line, at, &mut clock)?;
            }
            if let Some(status) = child.try_wait()? {
                anyhow::ensure!(status.success(), "lab up failed in round {round}");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = reader.join();
        while let Ok((line, at)) = rx.try_recv() {
            take(&line, at, &mut clock)?;
        }
        let end = Instant::now();
        let clock = clock.expect("the control plane's progress line");
        total.push(end - start);
        control_up.push(control_at.expect("progress line") - start);
        cluster_up.push(up_at.expect("progress line") - start);
        let applied = applying.expect("progress line");
        let readies: Vec<Instant> = (0..PODS)
            .map(|i| clock.at(&format!("p{i:02}")).unwrap_or(end))
            .collect();
        all_running.push(*readies.iter().max().expect("pods") - applied);
        burst.extend(readies.iter().map(|r| *r - applied));

        // Memory, with 30 pods running.
        for (pid, role) in processes(&dir) {
            let (rss, pss) = memory(pid);
            let e = memory_by_role.entry(role).or_default();
            e.0.push(rss);
            e.1.push(pss);
        }

        // One pod at a time: from `lab apply` to Running.
        for i in 0..ALONE {
            let f = work.path().join("one.yaml");
            std::fs::write(&f, pods_yaml(&format!("s{round}x{i}-"), 1))?;
            let name = format!("s{round}x{i}-00");
            let t = Instant::now();
            let o = lab(&bin, &dir, &["apply", "-f", f.to_str().expect("utf-8")]);
            anyhow::ensure!(
                o.status.success(),
                "apply: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let deadline = t + Duration::from_secs(30);
            let at = loop {
                if let Some(at) = clock.at(&name) {
                    break at;
                }
                anyhow::ensure!(Instant::now() < deadline, "{name} not Running within 30 s");
                std::thread::sleep(Duration::from_millis(1));
            };
            alone.push(at - t);
        }
        drop(clock);

        let t = Instant::now();
        let o = lab(&bin, &dir, &["down"]);
        anyhow::ensure!(o.status.success(), "lab down failed");
        down.push(t.elapsed());
        eprintln!(
            "round {round}: up {:.2} s (control plane {:.2} s, nodes ready {:.2} s, 30 pods running {:.2} s after apply)",
            total.last().expect("pushed").as_secs_f64(),
            control_up.last().expect("pushed").as_secs_f64(),
            cluster_up.last().expect("pushed").as_secs_f64(),
            all_running.last().expect("pushed").as_secs_f64()
        );
    }

    header();
    let rows = [
        Summary::of("lab up, 3 nodes + 30 pods (whole command)", total),
        Summary::of(
            "  of which: etcd and kube-apiserver ready (from the command's start)",
            control_up,
        ),
        Summary::of(
            "  of which: nodes Ready (from the command's start)",
            cluster_up,
        ),
        Summary::of("  of which: apply to all 30 pods Running", all_running),
        Summary::of(
            "pod ready time through the scheduler, burst of 30 (apply to Running)",
            burst,
        ),
        Summary::of(
            "pod ready time, one pod alone (lab apply to Running)",
            alone,
        ),
        Summary::of("lab down (3 nodes, 30+ pods)", down),
    ];
    for r in &rows {
        r.print();
    }
    let mem: serde_json::Map<String, Value> = memory_by_role
        .into_iter()
        .map(|(role, (rss, pss))| {
            (
                role.to_string(),
                json!({
                    "processes": rss.len(),
                    "rssKiBMedian": median(rss.clone()),
                    "rssKiBMax": rss.iter().max(),
                    "pssKiBMedian": median(pss),
                }),
            )
        })
        .collect();
    println!("\nmemory (KiB, with {PODS} pods running):");
    for (role, m) in &mem {
        println!("  {role:<24} {m}");
    }
    write_results(
        "lab-up",
        &json!({
            "machine": machine(),
            "rounds": ROUNDS,
            "nodes": NODES,
            "pods": PODS,
            "timings": rows,
            "memory": mem,
        }),
    )?;
    Ok(())
}
