//! Compatibility (root): Switchyard's plugin driven by libcni (v1.3.0, the
//! library containerd and CRI-O use, pinned in tests/libcni/go.mod), chained
//! with the reference plugins from Debian's containernetworking-plugins:
//! tuning, portmap and bandwidth; and GC and STATUS as libcni sends them.

mod common;

use common::agent::AgentProc;
use common::netns::{Netns, require_root, run, sh};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use switchyard::datapath::netlink::in_netns;

const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// Build the libcni driver once per test binary (the tests run in
/// parallel): Go modules, against the libcni pinned in tests/libcni/go.mod
/// and go.sum (fetched from the Go module proxy into Go's module cache, the
/// first time on a machine), with the machine's Go. The binary goes beside
/// this build's own, so clones with other target directories do not share it.
fn driver() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_driver).clone()
}

fn build_driver() -> PathBuf {
    let out = Path::new(env!("CARGO_BIN_EXE_switchyard"))
        .parent()
        .unwrap()
        .join("cnidriver");
    std::fs::create_dir_all(&out).unwrap();
    let bin = out.join("cnidriver");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libcni");
    let go = ["/usr/local/go/bin/go", "go"]
        .into_iter()
        .find(|g| !g.starts_with('/') || Path::new(g).exists())
        .unwrap();
    let o = Command::new("timeout")
        .args(["600", go, "build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        // go.sum pins every module; the build may fetch them, never change the pins.
        .env("GOFLAGS", "-mod=readonly")
        .env_remove("GOPATH")
        .env_remove("GO111MODULE")
        .output()
        .expect("go is installed (Go 1.26 in /usr/local/go; scripts/setup.sh fetches the driver's modules)");
    assert!(
        o.status.success(),
        "building the libcni driver with {go} failed (is the Go module proxy reachable the first time?): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    bin
}

/// One libcni call (`cmd` on `conflist`) for container `id` in `pod`.
#[allow(clippy::too_many_arguments)]
fn libcni(
    agent: &AgentProc,
    driver: &Path,
    cmd: &str,
    conflist: &Path,
    id: &str,
    pod: &Netns,
    plugins: &Path,
    caps: &Value,
) -> (bool, String) {
    let cache = agent.dir.path().join("libcni-cache");
    let o = Command::new("timeout")
        .args(["30", "ip", "netns", "exec", &agent.node.name])
        .arg(driver)
        .args([
            cmd,
            &conflist.display().to_string(),
            id,
            &pod.path.display().to_string(),
            "eth0",
            &cache.display().to_string(),
        ])
        .arg(plugins)
        .arg(REFERENCE_PLUGINS)
        .env("CNIDRIVER_CAPS", caps.to_string())
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn libcni_drives_switchyard_chained_with_tuning_portmap_and_bandwidth() {
    require_root();
    for p in ["tuning", "portmap", "bandwidth"] {
        assert!(
            Path::new(REFERENCE_PLUGINS).join(p).exists(),
            "the reference plugin {p} is missing; scripts/setup.sh installs containernetworking-plugins"
        );
    }
    let driver = driver();
    let agent = AgentProc::start("chain", &["10.74.0.0/24", "fd74::/64"], None);
    let pod = Netns::new("pchain");
    // The runtime finds our plugin by its type in a plugin directory.
    let plugins = plugin_dir(&agent);
    let conflist = agent.dir.path().join("10-chain.conflist");
    std::fs::write(
        &conflist,
        json!({
            "cniVersion": "1.0.0",
            "name": "chain",
            "plugins": [
                {"type": "switchyard-cni", "socket": agent.socket},
                {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let caps = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 1_000_000, "egressRate": 10_000_000, "egressBurst": 1_000_000}
    });

    let (ok, out) = libcni(
        &agent, &driver, "ADD", &conflist, "chained", &pod, &plugins, &caps,
    );
    assert!(ok, "libcni ADD failed: {out}");
    let result: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let pod_ip = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(pod_ip.starts_with("10.74.0."), "{result}");

    // tuning set its sysctl in the pod, after our plugin made eth0.
    let v = String::from_utf8(
        pod.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"])
            .stdout,
    )
    .unwrap();
    assert_eq!(v.trim(), "1");
    // bandwidth shaped the host end of our veth (it finds it from our result).
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let qdisc = agent.node.ip(&["link"]);
    assert!(qdisc.contains(&host_if));
    let tc = sh(
        "ip",
        &[
            "netns",
            "exec",
            &agent.node.name,
            "tc",
            "qdisc",
            "show",
            "dev",
            &host_if,
        ],
    );
    assert!(
        tc.contains("tbf") || tc.contains("ingress"),
        "no shaping on {host_if}: {tc}"
    );
    // portmap's DNAT carries a real connection to the pod: from the node,
    // port 8080 on the node's bridge address reaches port 80 in the pod.
    let listener = in_netns(&pod.path, || std::net::TcpListener::bind("0.0.0.0:80")).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"pong:").unwrap();
        s.write_all(&b).unwrap();
    });
    let reply = in_netns(&agent.node.path, || {
        let mut c = std::net::TcpStream::connect_timeout(
            &"10.74.0.1:8080".parse().unwrap(),
            std::time::Duration::from_secs(3),
        )?;
        c.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        c.write_all(b"hello")?;
        let mut r = vec![];
        c.read_to_end(&mut r)?;
        Ok(r)
    })
    .unwrap();
    server.join().unwrap();
    assert_eq!(reply, b"pong:hello");

    // CHECK through libcni. The reference portmap's own CHECK is broken in
    // Debian's 1.1.1 (containernetworking/plugins#819: it looks for NAT rules
    // of the wrong family), so the same network without it is checked; libcni
    // keys its cached result by network name and container, so this CHECKs
    // the same attachment.
    let mut without_portmap: Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    without_portmap["plugins"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["type"] != "portmap");
    let check_list = agent.dir.path().join("10-chain-check.conflist");
    std::fs::write(&check_list, without_portmap.to_string()).unwrap();
    let (ok, out) = libcni(
        &agent,
        &driver,
        "CHECK",
        &check_list,
        "chained",
        &pod,
        &plugins,
        &caps,
    );
    assert!(ok, "libcni CHECK failed: {out}");
    // And CHECK notices when our part is broken: the pod lost its address.
    pod.ip(&["addr", "del", &format!("{pod_ip}/24"), "dev", "eth0"]);
    let (ok, out) = libcni(
        &agent,
        &driver,
        "CHECK",
        &check_list,
        "chained",
        &pod,
        &plugins,
        &caps,
    );
    assert!(
        !ok && out.contains("is missing from eth0"),
        "CHECK should fail: {out}"
    );

    let (ok, out) = libcni(
        &agent, &driver, "DEL", &conflist, "chained", &pod, &plugins, &caps,
    );
    assert!(ok, "libcni DEL failed: {out}");
    assert!(agent.pod_veths().is_empty());
    let rules = run(
        "ip",
        &[
            "netns",
            "exec",
            &agent.node.name,
            "iptables-save",
            "-t",
            "nat",
        ],
    );
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains(&pod_ip),
        "portmap's rules for {pod_ip} are gone"
    );
}

/// The plugin directory a runtime searches, holding our plugin.
fn plugin_dir(agent: &AgentProc) -> PathBuf {
    let plugins = agent.dir.path().join("bin");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(
        switchyard::modules::CNI_PLUGIN,
        plugins.join("switchyard-cni"),
    )
    .unwrap();
    plugins
}

#[test]
fn libcni_checks_switchyard_after_another_plugin() {
    require_root();
    assert!(
        Path::new(REFERENCE_PLUGINS).join("loopback").exists(),
        "the reference plugin loopback is missing; scripts/setup.sh installs containernetworking-plugins"
    );
    let driver = driver();
    let agent = AgentProc::start("after", &["10.75.0.0/24"], None);
    let pod = Netns::new("pafter");
    let plugins = plugin_dir(&agent);
    // loopback runs first, so our prevResult lists its lo addresses: ADD
    // chains after them, CHECK must accept them and check only ours.
    let conflist = agent.dir.path().join("10-after.conflist");
    std::fs::write(
        &conflist,
        json!({
            "cniVersion": "1.0.0",
            "name": "after",
            "plugins": [{"type": "loopback"}, {"type": "switchyard-cni", "socket": agent.socket}]
        })
        .to_string(),
    )
    .unwrap();
    let caps = json!({});
    let call = |cmd: &str| {
        libcni(
            &agent, &driver, cmd, &conflist, "after", &pod, &plugins, &caps,
        )
    };
    let (ok, out) = call("ADD");
    assert!(ok, "libcni ADD failed: {out}");
    let result: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let ips: Vec<&str> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    assert!(ips.contains(&"127.0.0.1/8"), "loopback's address: {result}");
    let ours = ips
        .iter()
        .find(|a| a.starts_with("10.75.0."))
        .unwrap_or_else(|| panic!("our address: {result}"))
        .to_string();
    let (ok, out) = call("CHECK");
    assert!(ok, "libcni CHECK failed: {out}");
    // CHECK still fails when our part is broken.
    pod.ip(&["addr", "del", &ours, "dev", "eth0"]);
    let (ok, out) = call("CHECK");
    assert!(
        !ok && out.contains("is missing from eth0"),
        "CHECK should fail: {out}"
    );
    let (ok, out) = call("DEL");
    assert!(ok, "libcni DEL failed: {out}");
    assert!(agent.pod_veths().is_empty());
}

/// A libcni call that names no container: GC (with its valid attachments)
/// or STATUS.
fn libcni_node(
    agent: &AgentProc,
    driver: &Path,
    cmd: &str,
    conflist: &Path,
    valid: Option<&Value>,
    plugins: &Path,
) -> (bool, String) {
    let cache = agent.dir.path().join("libcni-cache");
    let mut c = Command::new("timeout");
    c.args(["30", "ip", "netns", "exec", &agent.node.name])
        .arg(driver)
        .arg(cmd)
        .arg(conflist);
    if let Some(v) = valid {
        c.arg(v.to_string());
    }
    let o = c.arg(&cache).arg(plugins).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// libcni's GC of one network, with the runtime's valid attachments, as
/// containerd sends it: the network's attachments not listed go, whether
/// libcni's cache knows them (it DELs those itself) or only the agent does
/// (our GC verb); another network on the same agent keeps all of its own.
/// libcni's STATUS says when a network's pool is exhausted (code 50). The
/// `ips` capability reaches the plugin through libcni too.
#[test]
fn libcni_gc_and_status_per_network() {
    require_root();
    let driver = driver();
    let agent = AgentProc::start_with(
        "gcnet",
        &["10.78.0.0/24"],
        None,
        &["--pool", "tiny=10.78.9.0/30"],
    );
    let plugins = plugin_dir(&agent);
    let write = |name: &str, extra: Value| {
        let mut plugin = json!({"type": "switchyard-cni", "socket": agent.socket});
        if let (Some(p), Some(e)) = (plugin.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        let path = agent.dir.path().join(format!("20-{name}.conflist"));
        std::fs::write(
            &path,
            json!({"cniVersion": "1.1.0", "name": name, "plugins": [plugin]}).to_string(),
        )
        .unwrap();
        path
    };
    let net_a = write("net-a", json!({"capabilities": {"ips": true}}));
    let net_b = write("net-b", json!({}));
    let net_c = write("net-c", json!({"pools": ["tiny"], "bridge": "sy9"}));
    let pods: Vec<Netns> = (0..5).map(|_| Netns::new("pgc")).collect();
    let none = json!({});
    // Through libcni: a1 (with a static address), a2 and b1; straight to
    // the plugin, as if libcni's cache had lost them: a3 and b2.
    let add = |id: &str, pod: &Netns, list: &Path, caps: &Value| {
        let (ok, out) = libcni(&agent, &driver, "ADD", list, id, pod, &plugins, caps);
        assert!(ok, "libcni ADD {id}: {out}");
        serde_json::from_str::<Value>(out.trim()).unwrap()
    };
    let a1 = add("a1", &pods[0], &net_a, &json!({"ips": ["10.78.0.50/24"]}));
    assert_eq!(a1["ips"][0]["address"], "10.78.0.50/24", "{a1}");
    add("a2", &pods[1], &net_a, &none);
    add("b1", &pods[2], &net_b, &none);
    let exec = |id: &str, pod: &Netns, name: &str| {
        let conf = json!({"cniVersion": "1.1.0", "name": name, "type": "switchyard-cni", "socket": agent.socket});
        let ns = pod.path.display().to_string();
        let r = common::agent::cni(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &ns),
                ("CNI_IFNAME", "eth0"),
            ],
            &conf.to_string(),
        );
        assert_eq!(r.code, 0, "ADD {id}: {}", r.raw);
    };
    exec("a3", &pods[3], "net-a");
    exec("b2", &pods[4], "net-b");
    assert_eq!(agent.pod_veths().len(), 5);

    let valid = json!([{"containerID": "a1", "ifname": "eth0"}]);
    let (ok, out) = libcni_node(&agent, &driver, "GC", &net_a, Some(&valid), &plugins);
    assert!(ok, "libcni GC of net-a: {out}");
    let has_eth0 = |p: &Netns| p.ip(&["-br", "link"]).contains("eth0");
    let kept: Vec<bool> = pods.iter().map(has_eth0).collect();
    assert_eq!(
        kept,
        [true, false, true, false, true],
        "a1 stays, a2 (in libcni's cache) and a3 (only in the agent) go, b1 and b2 stay"
    );
    assert_eq!(agent.pod_veths().len(), 3, "{:?}", agent.pod_veths());
    let (status, ipam) = agent.admin_get("/api/v1/ipam");
    assert_eq!(status, 200);
    let mut holders: Vec<String> = ipam["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["containerId"].as_str().map(str::to_string))
        .collect();
    holders.sort();
    assert_eq!(holders, ["a1", "b1", "b2"], "{ipam}");
    for (id, pod, list) in [("a1", &pods[0], &net_a), ("b1", &pods[2], &net_b)] {
        let (ok, out) = libcni(&agent, &driver, "CHECK", list, id, pod, &plugins, &none);
        assert!(ok, "libcni CHECK {id} after the GC: {out}");
    }

    // STATUS per network: net-c's pool has one address.
    for list in [&net_a, &net_c] {
        let (ok, out) = libcni_node(&agent, &driver, "STATUS", list, None, &plugins);
        assert!(ok, "libcni STATUS: {out}");
    }
    let tiny = Netns::new("pgc");
    add("c1", &tiny, &net_c, &none);
    let (ok, out) = libcni_node(&agent, &driver, "STATUS", &net_c, None, &plugins);
    assert!(
        !ok && out.contains("pool tiny (10.78.9.0/30) has no free address"),
        "STATUS of the exhausted network: {out}"
    );
    let (ok, out) = libcni_node(&agent, &driver, "STATUS", &net_a, None, &plugins);
    assert!(ok, "net-a is still served: {out}");

    for (id, pod, list) in [
        ("a1", &pods[0], &net_a),
        ("b1", &pods[2], &net_b),
        ("c1", &tiny, &net_c),
    ] {
        let (ok, out) = libcni(&agent, &driver, "DEL", list, id, pod, &plugins, &none);
        assert!(ok, "libcni DEL {id}: {out}");
    }
    let (ok, out) = libcni_node(&agent, &driver, "GC", &net_b, Some(&json!([])), &plugins);
    assert!(ok, "libcni GC of net-b with nothing valid: {out}");
    assert!(agent.pod_veths().is_empty(), "{:?}", agent.pod_veths());
    let (_, ipam) = agent.admin_get("/api/v1/ipam");
    assert_eq!(ipam["allocations"], json!([]), "{ipam}");
}
