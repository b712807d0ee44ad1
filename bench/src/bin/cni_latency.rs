//! CNI ADD and DEL latency, ours against the reference plugins (Debian's
//! containernetworking-plugins `bridge` + `host-local`), side by side in one
//! run: each plugin exec'd with the CNI environment and stdin the way a
//! container runtime execs it, both dual-stack, both from the same node
//! namespace (created here; nothing touches the machine's own).
//!
//! Then 1000 ADD/DEL cycles of ours, counting what is left: addresses in the
//! ledger, links on the node, rules in nftables and iptables.
//!
//! Run (root): `cargo run --release -p switchyard-bench --bin cni_latency`

use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchyard::agent::{Agent, AgentOptions};
use switchyard::datapath::ipam::Ipam;
use switchyard_bench::{Summary, header, machine, write_results};

const ROUNDS: usize = 3;
const SEQUENTIAL: usize = 30;
const CONCURRENT: usize = 50;
const CYCLES: usize = 1000;

fn sh(args: &[&str]) -> String {
    let o = Command::new("timeout")
        .arg("20")
        .args(args)
        .output()
        .expect("run a command");
    assert!(
        o.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Pod {
    name: String,
    path: PathBuf,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn pods(tag: &str, n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            let name = format!("syb-{tag}-{}-{i}", std::process::id());
            sh(&["ip", "netns", "add", &name]);
            Pod {
                path: PathBuf::from(format!("/var/run/netns/{name}")),
                name,
            }
        })
        .collect()
}

/// Exec a plugin as a runtime does; returns the latency (panics on failure).
fn exec(
    plugin: &Path,
    cni_path: &str,
    cmd: &str,
    id: &str,
    netns: &Path,
    conf: &Value,
) -> Duration {
    let t = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{} {cmd} {id} failed: {}{}",
        plugin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    cni_path: String,
    conf: Value,
}

impl Plugin {
    fn run(&self, cmd: &str, id: &str, pod: &Pod) -> Duration {
        exec(&self.bin, &self.cni_path, cmd, id, &pod.path, &self.conf)
    }
}

fn count_links(prefix: &str) -> usize {
    sh(&["ip", "-br", "link"])
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "this benchmark needs root (network namespaces)"
    );
    let work = tempfile::tempdir()?;
    // Enter a node namespace of our own before any thread exists: every
    // thread and child process of this benchmark lives in it.
    let node = format!("syb-node-{}", std::process::id());
    sh(&["ip", "netns", "add", &node]);
    let node_path = PathBuf::from(format!("/var/run/netns/{node}"));
    nix::sched::setns(
        std::fs::File::open(&node_path)?,
        nix::sched::CloneFlags::CLONE_NEWNET,
    )?;
    sh(&["ip", "link", "set", "lo", "up"]);

    let socket = work.path().join("cni.sock");
    let options = AgentOptions {
        data_dir: work.path().join("data"),
        local: None,
        node: "bench-node".into(),
        cni_socket: socket.clone(),
        pod_cidrs: vec!["10.81.0.0/16".parse()?, "fd81::/64".parse()?],
        extra_pools: vec![],
        fuel: false,
        compile_deadline: switchyard::runtime::COMPILE_DEADLINE,
        sticky_ttl: Duration::from_secs(600),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let agent = rt.block_on(Agent::start(options))?;
    let ledger = agent.ledger.clone();
    let cni = agent.cni.clone();
    let sock = socket.clone();
    rt.spawn(
        async move { switchyard::cni::server::serve(sock, cni, std::future::pending()).await },
    );
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }

    let ours = Plugin {
        label: "switchyard",
        bin: switchyard::modules::CNI_PLUGIN.into(),
        cni_path: "/opt/cni/bin".into(),
        conf: json!({"cniVersion": "1.0.0", "name": "ours", "type": "switchyard-cni", "socket": socket}),
    };
    let reference = Plugin {
        label: "bridge+host-local",
        bin: "/usr/lib/cni/bridge".into(),
        cni_path: "/usr/lib/cni".into(),
        conf: json!({
            "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cni-ref0",
            "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": work.path().join("host-local"),
                     "ranges": [[{"subnet": "10.82.0.0/16"}], [{"subnet": "fd82::/64"}]]}
        }),
    };
    let plugins = [&ours, &reference];

    // Warm both up (first ADD creates each bridge).
    let warm = pods("warm", 2);
    for (p, pod) in plugins.iter().zip(&warm) {
        p.run("ADD", "warm", pod);
        p.run("DEL", "warm", pod);
    }

    // Sequential: 30 pods one after another, interleaved op by op.
    let mut seq_add = [vec![], vec![]];
    let mut seq_del = [vec![], vec![]];
    for round in 0..ROUNDS {
        let ps = [pods("sa", SEQUENTIAL), pods("sb", SEQUENTIAL)];
        // Pod i of each plugin, side by side.
        let pairs: Vec<[&Pod; 2]> = ps[0].iter().zip(&ps[1]).map(|(a, b)| [a, b]).collect();
        for (verb, samples) in [("ADD", &mut seq_add), ("DEL", &mut seq_del)] {
            for (i, pair) in pairs.iter().enumerate() {
                for (k, p) in plugins.iter().enumerate() {
                    samples[k].push(p.run(verb, &format!("s{round}-{i}"), pair[k]));
                }
            }
        }
    }

    // Concurrent: 50 pods at once, each plugin in turn, per round.
    let mut con_add = [vec![], vec![]];
    let mut con_del = [vec![], vec![]];
    let mut con_wall = [vec![], vec![]];
    for round in 0..ROUNDS {
        for (k, p) in plugins.iter().enumerate() {
            let ps = pods("c", CONCURRENT);
            let t = Instant::now();
            let lat: Vec<Duration> = std::thread::scope(|s| {
                let hs: Vec<_> = ps
                    .iter()
                    .enumerate()
                    .map(|(i, pod)| s.spawn(move || p.run("ADD", &format!("c{round}-{i}"), pod)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            con_wall[k].push(t.elapsed());
            con_add[k].extend(lat);
            let lat: Vec<Duration> = std::thread::scope(|s| {
                let hs: Vec<_> = ps
                    .iter()
                    .enumerate()
                    .map(|(i, pod)| s.spawn(move || p.run("DEL", &format!("c{round}-{i}"), pod)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            con_del[k].extend(lat);
        }
    }

    // 1000 ADD/DEL cycles of ours; then count what is left behind.
    let rules_before = (sh(&["nft", "list", "ruleset"]), sh(&["iptables-save"]));
    let links_before = count_links("syv");
    let cycle_pods = pods("cy", 10);
    let t = Instant::now();
    for i in 0..CYCLES {
        let pod = &cycle_pods[i % cycle_pods.len()];
        ours.run("ADD", &format!("cy{i}"), pod);
        ours.run("DEL", &format!("cy{i}"), pod);
    }
    let cycles_took = t.elapsed();
    let left_addresses = ledger.attachments()?.len();
    let left_links = count_links("syv") - links_before;
    let rules_after = (sh(&["nft", "list", "ruleset"]), sh(&["iptables-save"]));
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let left_rules = usize::from(rules_after.0 != rules_before.0)
        + usize::from(strip(&rules_after.1) != strip(&rules_before.1));

    let mut results = vec![];
    for (k, p) in plugins.iter().enumerate() {
        results.push(Summary::of(
            &format!("[{}] ADD, sequential", p.label),
            std::mem::take(&mut seq_add[k]),
        ));
        results.push(Summary::of(
            &format!("[{}] DEL, sequential", p.label),
            std::mem::take(&mut seq_del[k]),
        ));
        results.push(Summary::of(
            &format!("[{}] ADD, {CONCURRENT} concurrent", p.label),
            std::mem::take(&mut con_add[k]),
        ));
        results.push(Summary::of(
            &format!("[{}] DEL, {CONCURRENT} concurrent", p.label),
            std::mem::take(&mut con_del[k]),
        ));
        results.push(Summary::of(
            &format!("[{}] wall time of {CONCURRENT} concurrent ADDs", p.label),
            std::mem::take(&mut con_wall[k]),
        ));
    }
    header();
    for r in &results {
        r.print();
    }
    let add_ratio = results[0].p50_us / results[5].p50_us;
    let del_ratio = results[1].p50_us / results[6].p50_us;
    println!("\nADD p50 ours/reference: {add_ratio:.2}   DEL p50 ours/reference: {del_ratio:.2}");
    println!(
        "{CYCLES} ADD/DEL cycles in {:.1} s; left behind: {left_addresses} addresses, {left_links} links, {left_rules} rule sets changed",
        cycles_took.as_secs_f64()
    );

    write_results(
        "cni-latency",
        &json!({
            "benchmark": "cni-latency",
            "machine": machine(),
            "rounds": ROUNDS,
            "sequentialPods": SEQUENTIAL,
            "concurrentPods": CONCURRENT,
            "results": results,
            "addP50Ratio": add_ratio,
            "delP50Ratio": del_ratio,
            "cycles": {"count": CYCLES, "seconds": cycles_took.as_secs_f64(),
                       "leftAddresses": left_addresses, "leftLinks": left_links, "leftRuleSetsChanged": left_rules},
        }),
    )?;
    drop(warm);
    drop(cycle_pods);
    let _ = Command::new("ip").args(["netns", "del", &node]).output();
    assert!(
        left_addresses == 0 && left_links == 0 && left_rules == 0,
        "{CYCLES} cycles left something behind"
    );
    Ok(())
}
