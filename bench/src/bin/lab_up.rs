//! The lab: how long `lab up` takes for 3 nodes and 30 pods, how long one
//! pod takes from apply to Running (in a burst of 30, and alone), and how
//! much memory an agent and a pod server hold.
//!
//! It drives the real CLI (a release build of `switchyard`), exactly as a
//! user does, and watches the cluster directory's status files from this
//! process to time every pod.
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

fn running(dir: &Path, name: &str) -> bool {
    std::fs::read(dir.join(format!("cluster/status/Pod/bench/{name}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v["status"]["phase"] == "Running")
}

/// Memory of a process: (VmRSS, Pss) in KiB.
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
    let mut cluster_up = vec![];
    let mut all_running = vec![];
    let mut burst = vec![];
    let mut alone = vec![];
    let mut down = vec![];
    let mut agent_rss = vec![];
    let mut agent_pss = vec![];
    let mut server_rss = vec![];
    let mut server_pss = vec![];
    for round in 0..ROUNDS {
        // lab up, watching its progress lines and the pods' status files.
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
        let mut ready_at: Vec<Option<Instant>> = vec![None; PODS];
        let mut up_at = None;
        loop {
            while let Ok((line, at)) = rx.try_recv() {
                if line.contains("the cluster is up") {
                    up_at = Some(at);
                }
                if line.starts_with("==> applying") {
                    applying = Some(at);
                }
                if line.starts_with("error") {
                    eprintln!("{line}");
                }
            }
            if applying.is_some() {
                for (i, r) in ready_at.iter_mut().enumerate() {
                    if r.is_none() && running(&dir, &format!("p{i:02}")) {
                        *r = Some(Instant::now());
                    }
                }
            }
            if let Some(status) = child.try_wait()? {
                anyhow::ensure!(status.success(), "lab up failed in round {round}");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = reader.join();
        while let Ok((line, at)) = rx.try_recv() {
            if line.contains("the cluster is up") {
                up_at = Some(at);
            }
        }
        let end = Instant::now();
        total.push(end - start);
        cluster_up.push(up_at.expect("progress line") - start);
        let applied = applying.expect("progress line");
        let readies: Vec<Instant> = ready_at.iter().map(|r| r.unwrap_or(end)).collect();
        all_running.push(*readies.iter().max().expect("pods") - applied);
        burst.extend(readies.iter().map(|r| *r - applied));

        // Memory, with 30 pods running.
        for e in std::fs::read_dir(dir.join("cluster/status/Node/_"))?.flatten() {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path())?)?;
            let (rss, pss) = memory(v["agentPid"].as_u64().unwrap_or(0) as u32);
            agent_rss.push(rss);
            agent_pss.push(pss);
        }
        for n in 1..=NODES {
            for e in std::fs::read_dir(dir.join(format!("nodes/node-{n}/pods")))?.flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    let v: Value = serde_json::from_slice(&std::fs::read(e.path())?)?;
                    let (rss, pss) = memory(v["serverPid"].as_u64().unwrap_or(0) as u32);
                    server_rss.push(rss);
                    server_pss.push(pss);
                }
            }
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
            while !running(&dir, &name) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            alone.push(t.elapsed());
        }

        let t = Instant::now();
        let o = lab(&bin, &dir, &["down"]);
        anyhow::ensure!(o.status.success(), "lab down failed");
        down.push(t.elapsed());
        eprintln!(
            "round {round}: up {:.2} s (nodes ready {:.2} s, 30 pods running {:.2} s after apply)",
            total.last().expect("pushed").as_secs_f64(),
            cluster_up.last().expect("pushed").as_secs_f64(),
            all_running.last().expect("pushed").as_secs_f64()
        );
    }

    header();
    let rows = [
        Summary::of("lab up, 3 nodes + 30 pods (whole command)", total),
        Summary::of("  of which: nodes ready (agents serving)", cluster_up),
        Summary::of("  of which: apply to all 30 pods Running", all_running),
        Summary::of("pod ready time, burst of 30 (apply to Running)", burst),
        Summary::of(
            "pod ready time, one pod alone (lab apply to Running)",
            alone,
        ),
        Summary::of("lab down (3 nodes, 30+ pods)", down),
    ];
    for r in &rows {
        r.print();
    }
    let mem = json!({
        "agentRssKiBMedian": median(agent_rss.clone()),
        "agentPssKiBMedian": median(agent_pss.clone()),
        "agentRssKiBMax": agent_rss.iter().max(),
        "podServerRssKiBMedian": median(server_rss.clone()),
        "podServerPssKiBMedian": median(server_pss.clone()),
        "agents": agent_rss.len(),
        "podServers": server_rss.len(),
    });
    println!("\nmemory (KiB, with {PODS} pods): {mem}");
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
