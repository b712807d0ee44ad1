//! The lab, end to end, as a user drives it: `switchyard lab ...` commands
//! against real namespaces, links, routes, nftables and packets. Every model in
//! every family is brought up, probed against its expected reachability, and
//! taken down leaving nothing behind. Needs root (CI runs as root).

mod common;

use common::lab::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Pods a and c on node-1, b on node-2, serving TCP and UDP on port 80.
const PODS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: node-1
  containers:
  - {name: s, image: registry.k8s.io/e2e-test-images/agnhost:2.53, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec:
  nodeName: node-2
  containers:
  - {name: s, image: registry.k8s.io/e2e-test-images/agnhost:2.53, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec:
  nodeName: node-1
  containers:
  - {name: s, image: registry.k8s.io/e2e-test-images/agnhost:2.53, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}
";

/// A NodePort Service in front of b (node-2), in every family the lab has.
const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: to-b, namespace: x}
spec:
  type: NodePort
  ipFamilyPolicy: PreferDualStack
  selector: {pod: b}
  ports: [{port: 8080, targetPort: 80, nodePort: 30080}]
";

/// What a model lets through, beyond pod to pod (always allowed).
struct Expect {
    pods_reach_outside: bool,
    outside_reaches_pods: bool,
    /// Pods reach the outside as their node's address.
    masqueraded: bool,
}

fn expect(model: &str) -> Expect {
    match model {
        "flat" => Expect {
            pods_reach_outside: true,
            outside_reaches_pods: true,
            masqueraded: false,
        },
        "overlay" | "island" => Expect {
            pods_reach_outside: true,
            outside_reaches_pods: false,
            masqueraded: true,
        },
        "isolated" => Expect {
            pods_reach_outside: false,
            outside_reaches_pods: false,
            masqueraded: false,
        },
        _ => unreachable!(),
    }
}

/// Bring a lab up in `model` for each family and check everything the model
/// promises, with real packets.
fn check_model(model: &str, short: &str) {
    let e = expect(model);
    for family in ["ipv4", "ipv6", "dual"] {
        let name = format!(
            "t{short}{}",
            match family {
                "ipv4" => "4",
                "ipv6" => "6",
                _ => "d",
            }
        );
        let lab = TestLab::up(&name, 2, model, family);
        let o = lab.apply(&format!("{PODS}---{SERVICE}"));
        assert!(o.status.success(), "apply: {}", text(&o));
        let fams: &[&str] = match family {
            "ipv4" => &["ipv4"],
            "ipv6" => &["ipv6"],
            _ => &["ipv4", "ipv6"],
        };
        for fam in fams {
            let v4 = *fam == "ipv4";
            let ctx = format!("{model} {family} ({fam})");
            // Pod to pod, same node and across nodes, TCP and UDP: the e2e
            // truth table with no policy is all allowed.
            for proto in ["TCP", "UDP"] {
                let m: Value = serde_json::from_str(&lab.ok(&[
                    "matrix",
                    "--json",
                    "--port",
                    "80",
                    "--protocol",
                    proto,
                    "--family",
                    fam,
                    "--timeout",
                    "2s",
                ]))
                .unwrap();
                assert_eq!(m["port"], 80);
                assert_eq!(m["protocol"], proto);
                let results = m["results"].as_array().unwrap();
                assert_eq!(results.len(), 9, "{ctx}: 3 pods, 9 ordered pairs: {m}");
                let denied: Vec<String> = results
                    .iter()
                    .filter(|r| r["allowed"] != true)
                    .map(|r| format!("{} -> {}", r["from"], r["to"]))
                    .collect();
                assert!(
                    denied.is_empty(),
                    "{ctx} {proto}: expected all allowed, denied: {denied:?}"
                );
            }
            // The answer says which pod answered: the probe reached the right one.
            let (ok, answer) = lab.probe("x/a", "x/b", 80, "TCP", fam);
            assert!(
                ok && answer.contains("pod=x/b node=node-2"),
                "{ctx}: {answer}"
            );
            let a_ip = lab
                .pod_ips("x/a")
                .into_iter()
                .find(|i| i.contains('.') == v4)
                .unwrap();
            assert_eq!(
                client_of(&answer),
                a_ip,
                "{ctx}: pod to pod keeps the source address"
            );

            // Pods and the outside.
            let (ok, answer) = lab.probe("x/a", "external", 80, "TCP", fam);
            assert_eq!(ok, e.pods_reach_outside, "{ctx}: pod -> external: {answer}");
            if ok {
                let seen = client_of(&answer);
                let want = if e.masqueraded {
                    lab.node_address("node-1", v4)
                } else {
                    a_ip.clone()
                };
                assert_eq!(seen, want, "{ctx}: the outside sees the pod as {seen}");
            }
            let (ok, answer) = lab.probe("x/a", "external", 80, "UDP", fam);
            assert_eq!(
                ok, e.pods_reach_outside,
                "{ctx}: pod -> external UDP: {answer}"
            );
            let (ok, answer) = lab.probe("external", "x/b", 80, "TCP", fam);
            assert_eq!(
                ok, e.outside_reaches_pods,
                "{ctx}: external -> pod: {answer}"
            );

            // Services work the same in every model: a pod reaches b through
            // its cluster IP across nodes, unmasqueraded (pod to pod), and
            // the outside reaches it through a node port on node-1,
            // masqueraded as node-1 so the answer comes back the same way.
            let answer = lab.probe_until_allowed("x/a", "to-b.x", 8080, "TCP", fam);
            assert!(
                answer.contains("pod=x/b"),
                "{ctx}: pod -> Service: {answer}"
            );
            assert_eq!(client_of(&answer), a_ip, "{ctx}: pod -> Service source");
            if model != "isolated" {
                let (ok, answer) = lab.probe("external", "node/node-1", 30080, "TCP", fam);
                assert!(ok, "{ctx}: external -> node port: {answer}");
                assert!(answer.contains("pod=x/b"), "{ctx}: {answer}");
            }

            // Nodes reach everything, and pods reach nodes, in every model.
            let (ok, answer) = lab.probe("node/node-1", "external", 80, "TCP", fam);
            assert!(ok, "{ctx}: node -> external: {answer}");
            let (ok, answer) = lab.probe("x/a", "node/node-2", 9090, "TCP", fam);
            assert!(ok, "{ctx}: pod -> node: {answer}");
            let (ok, answer) = lab.probe("node/node-1", "x/b", 80, "TCP", fam);
            assert!(ok, "{ctx}: node -> pod on another node: {answer}");
        }
        if model == "overlay" {
            for fam in fams {
                assert_encapsulated(&lab, fam);
            }
        }
        check_dns(&lab, family, &e, &format!("{model} {family}"));
        let dir = lab.dir.clone();
        drop(lab);
        assert_gone(&name, &dir);
    }
}

/// `dig` in a lab namespace (`x/a`, `node/NAME`), bounded by its own timeout:
/// the answers, one a line.
fn dig(lab: &TestLab, from: &str, args: &[&str]) -> String {
    let mut cmd = vec!["exec", from, "--", "dig", "+short", "+time=2", "+tries=2"];
    cmd.extend_from_slice(args);
    lab.ok(&cmd).trim().to_string()
}

/// The node's own DNS (the agent, `host/src/dns`) answers pods on the DNS
/// Service's ClusterIPs and the node-local address: cluster names from the
/// model, other names forwarded to the outside world's resolver, a new
/// Service as soon as the agent's next snapshot has it.
fn check_node_dns(lab: &TestLab, family: &str, dns_ips: &[&str], ctx: &str) {
    let o = lab.apply(
        "apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP}]
",
    );
    assert!(o.status.success(), "{ctx}: {}", text(&o));
    let web: Value =
        serde_json::from_str(&lab.kubectl_ok(&["get", "service", "-n", "x", "web", "-o", "json"]))
            .unwrap();
    let web_ips: Vec<String> = web["spec"]["clusterIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (first, kind) = if family == "ipv6" {
        (web_ips[0].clone(), "AAAA")
    } else {
        (
            web_ips.iter().find(|i| i.contains('.')).unwrap().clone(),
            "A",
        )
    };
    // Through the pod's resolv.conf (search path, ndots 5): the agent may
    // still be binding its sockets when the lab comes up, so ask until it
    // answers, for 20 s at most.
    let start = std::time::Instant::now();
    loop {
        let o = lab.run(&[
            "exec", "x/a", "--", "dig", "+short", "+time=1", "+tries=1", "+search", "web", kind,
        ]);
        let got = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if got == first {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{ctx}: x/a resolving web through its resolv.conf: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut servers: Vec<&str> = dns_ips.to_vec();
    if family != "ipv6" {
        servers.push("169.254.20.10");
    }
    for server in servers {
        for ip in &web_ips {
            let k = if ip.contains('.') { "A" } else { "AAAA" };
            assert_eq!(
                dig(
                    lab,
                    "x/a",
                    &[&format!("@{server}"), "web.x.svc.cluster.local", k]
                ),
                *ip,
                "{ctx}: asking {server}"
            );
        }
    }
    assert_eq!(
        dig(lab, "x/a", &["_http._tcp.web.x.svc.cluster.local", "SRV"]),
        "0 100 80 web.x.svc.cluster.local.",
        "{ctx}"
    );
    assert_eq!(
        dig(lab, "x/a", &["-x", &first]),
        "web.x.svc.cluster.local.",
        "{ctx}"
    );
    let nx = lab.ok(&[
        "exec",
        "x/a",
        "--",
        "dig",
        "+time=2",
        "+tries=2",
        "nope.x.svc.cluster.local",
    ]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("SOA"),
        "{ctx}: {nx}"
    );
    // Forwarded to the outside world's resolver, by the node.
    let www = dig(lab, "x/a", &["www.example.test", kind]);
    assert!(
        !www.is_empty() && www.lines().all(|l| l.parse::<std::net::IpAddr>().is_ok()),
        "{ctx}: {www}"
    );
    // A new Service is answered once the agent's snapshot has it.
    lab.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "late",
        "-n",
        "x",
        "--tcp=80:80",
    ]);
    let start = std::time::Instant::now();
    loop {
        let o = lab.run(&[
            "exec",
            "x/a",
            "--",
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            "late.x.svc.cluster.local",
            kind,
        ]);
        if o.status.success() && !o.stdout.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{ctx}: the new Service late.x never resolved"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.kubectl_ok(&["delete", "service", "-n", "x", "late", "web"]);
}

/// Cluster DNS as the lab sets it up: the kube-dns Service at the 10th
/// address of each Service CIDR, a pod's resolv.conf as the kubelet writes it
/// (what programs in the pod read, through `ip netns exec`), nodes resolving
/// through the external host's dnsmasq, pods reaching it where the model lets
/// them out, and a deleted pod's resolv.conf gone with it.
fn check_dns(lab: &TestLab, family: &str, e: &Expect, ctx: &str) {
    let (ips, resolvers): (&[&str], &[&str]) = match family {
        "ipv4" => (&["10.96.0.10"], &["nameserver 10.96.0.10"]),
        "ipv6" => (&["fd00:10:96::a"], &["nameserver fd00:10:96::a"]),
        _ => (
            &["10.96.0.10", "fd00:10:96::a"],
            &["nameserver 10.96.0.10", "nameserver fd00:10:96::a"],
        ),
    };
    let svc: Value = serde_json::from_str(&lab.kubectl_ok(&[
        "get",
        "service",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        svc["spec"]["clusterIPs"],
        serde_json::json!(ips),
        "{ctx}: {svc}"
    );
    assert_eq!(svc["metadata"]["labels"]["k8s-app"], "kube-dns", "{ctx}");
    let want = format!(
        "search x.svc.cluster.local svc.cluster.local cluster.local\n{}\noptions ndots:5\n",
        resolvers.join("\n")
    );
    assert_eq!(
        lab.ok(&["exec", "x/a", "--", "cat", "/etc/resolv.conf"]),
        want,
        "{ctx}: x/a's resolv.conf"
    );

    check_node_dns(lab, family, ips, ctx);

    let status = lab.status();
    let external: Vec<String> = status["external"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let ext = |v4: bool| {
        external
            .iter()
            .find(|a| a.contains('.') == v4)
            .unwrap()
            .clone()
    };
    // A node resolves through its own resolv.conf: the external host's
    // dnsmasq, authoritative for example.test and nothing else.
    let node_conf = lab.ok(&["exec", "node/node-1", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        node_conf.contains(&format!("nameserver {}", ext(family != "ipv6"))),
        "{ctx}: {node_conf}"
    );
    assert_eq!(
        dig(lab, "node/node-1", &["www.example.test", "A"]),
        ext(true),
        "{ctx}"
    );
    assert_eq!(
        dig(lab, "node/node-1", &["alias.example.test", "AAAA"]),
        format!("www.example.test.\n{}", ext(false)),
        "{ctx}"
    );
    assert_eq!(
        dig(lab, "node/node-1", &["info.example.test", "TXT"]),
        "\"switchyard lab upstream\"",
        "{ctx}"
    );
    let nx = lab.ok(&[
        "exec",
        "node/node-1",
        "--",
        "dig",
        "+time=2",
        "+tries=2",
        "nothing.example.test",
    ]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("SOA"),
        "{ctx}: {nx}"
    );
    let refused = lab.ok(&[
        "exec",
        "node/node-1",
        "--",
        "dig",
        "+time=2",
        "+tries=2",
        "example.com",
    ]);
    assert!(
        refused.contains("status: REFUSED"),
        "{ctx}: nothing is forwarded: {refused}"
    );
    // A pod asks the upstream directly, in each of its families.
    if e.pods_reach_outside {
        for v4 in [true, false] {
            if (v4 && family == "ipv6") || (!v4 && family == "ipv4") {
                continue;
            }
            let (server, kind) = (ext(v4), if v4 { "A" } else { "AAAA" });
            assert_eq!(
                dig(
                    lab,
                    "x/a",
                    &[&format!("@{server}"), "www.example.test", kind]
                ),
                ext(v4),
                "{ctx}: x/a asks {server}"
            );
        }
    }

    // Where the cluster's two servers and the pod's two make four, the
    // kubelet keeps three, and says so; so for 33 search paths.
    if family == "dual" {
        let searches: Vec<String> = (1..=30).map(|i| format!("s{i}.example")).collect();
        let o = lab.apply(&format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: trimmed, namespace: x}}
spec:
  nodeName: node-1
  dnsConfig:
    nameservers: [192.0.2.1, 192.0.2.2]
    searches: [{}]
    options: [{{name: ndots, value: \"2\"}}, {{name: edns0}}]
  containers: [{{name: s, image: registry.k8s.io/e2e-test-images/agnhost:2.53}}]
",
            searches.join(", ")
        ));
        assert!(o.status.success(), "{ctx}: {}", text(&o));
        let kept = searches[..29].join(" ");
        assert_eq!(
            lab.ok(&["exec", "x/trimmed", "--", "cat", "/etc/resolv.conf"]),
            format!(
                "search x.svc.cluster.local svc.cluster.local cluster.local {kept}\n\
                 nameserver 10.96.0.10\nnameserver fd00:10:96::a\nnameserver 192.0.2.1\n\
                 options ndots:2 edns0\n"
            ),
            "{ctx}"
        );
        let want = [
            "Nameserver limits were exceeded, some nameservers have been omitted, the applied \
             nameserver line is: 10.96.0.10 fd00:10:96::a 192.0.2.1"
                .to_string(),
            format!(
                "Search Line limits were exceeded, some search paths have been omitted, the \
                 applied search line is: x.svc.cluster.local svc.cluster.local cluster.local {kept}"
            ),
        ];
        let start = std::time::Instant::now();
        loop {
            let events: Value = serde_json::from_str(&lab.kubectl_ok(&[
                "get",
                "events",
                "-n",
                "x",
                "--field-selector",
                "involvedObject.name=trimmed,reason=DNSConfigForming",
                "-o",
                "json",
            ]))
            .unwrap();
            let mut said: Vec<String> = events["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "Warning")
                .map(|e| e["message"].as_str().unwrap().to_string())
                .collect();
            said.sort();
            if said == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{ctx}: the kubelet's DNSConfigForming Events: {said:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        lab.kubectl_ok(&["delete", "pod", "-n", "x", "trimmed", "--timeout=60s"]);
    }

    // A deleted pod's resolv.conf goes with its namespace.
    let pods_conf = || {
        std::fs::read_dir("/etc/netns")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("sy{}-p-", lab.name))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(pods_conf(), 3, "{ctx}: one resolv.conf per pod");
    lab.kubectl_ok(&["delete", "pod", "-n", "x", "c", "--timeout=60s"]);
    assert_eq!(pods_conf(), 2, "{ctx}: x/c's resolv.conf is still there");
}

/// In the overlay, pod addresses never appear on the underlay: between nodes
/// there is only VXLAN. Counted by the underlay switch itself.
fn assert_encapsulated(lab: &TestLab, family: &str) {
    let ul = format!("sy{}-underlay", lab.name);
    let _ = Command::new("ip")
        .args([
            "netns", "exec", &ul, "nft", "delete", "table", "bridge", "sytest",
        ])
        .output();
    let rules = "table bridge sytest {
  chain count {
    type filter hook forward priority 0; policy accept;
    ip saddr 10.244.0.0/16 counter
    ip6 saddr fd00:10:244::/56 counter
    udp dport 4789 counter
  }
}
";
    let f = lab.dir.join("count.nft");
    std::fs::write(&f, rules).unwrap();
    let o = Command::new("ip")
        .args(["netns", "exec", &ul, "nft", "-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for _ in 0..3 {
        let (ok, answer) = lab.probe("x/a", "x/b", 80, "TCP", family);
        assert!(ok, "{answer}");
    }
    let o = Command::new("ip")
        .args([
            "netns", "exec", &ul, "nft", "list", "table", "bridge", "sytest",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout).to_string();
    let counts: Vec<u64> = listing
        .lines()
        .filter_map(|l| l.split("packets ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(counts.len(), 3, "{listing}");
    assert_eq!(
        counts[0] + counts[1],
        0,
        "pod addresses on the underlay:\n{listing}"
    );
    assert!(counts[2] > 0, "no VXLAN on the underlay:\n{listing}");
}

#[test]
fn flat_model_in_every_family() {
    check_model("flat", "f");
}

#[test]
fn overlay_model_in_every_family() {
    check_model("overlay", "o");
}

#[test]
fn island_model_in_every_family() {
    check_model("island", "i");
}

#[test]
fn isolated_model_in_every_family() {
    check_model("isolated", "s");
}

/// An agent that restarts (gracefully or killed) keeps its pods, their
/// addresses and their traffic; its pods keep serving while it is down.
#[test]
fn restarting_an_agent_keeps_addresses_and_traffic() {
    let lab = TestLab::up("tpersist", 2, "flat", "dual");
    let o = lab.apply(PODS);
    assert!(o.status.success(), "{}", text(&o));
    let before: Vec<Vec<String>> = ["x/a", "x/b", "x/c"]
        .iter()
        .map(|p| lab.pod_ips(p))
        .collect();
    assert!(before.iter().all(|ips| ips.len() == 2), "{before:?}");
    let servers_before = pod_server_pids(&lab);

    // Kill node-1's agent as a crash would.
    let o = lab.run(&["restart", "node-1", "--kill"]);
    assert!(o.status.success(), "{}", text(&o));
    for fam in ["ipv4", "ipv6"] {
        let (ok, answer) = lab.probe("x/b", "x/a", 80, "TCP", fam);
        assert!(ok, "after the restart, {fam}: {answer}");
        let (ok, answer) = lab.probe("x/a", "x/b", 80, "UDP", fam);
        assert!(ok, "after the restart, {fam}: {answer}");
    }
    let after: Vec<Vec<String>> = ["x/a", "x/b", "x/c"]
        .iter()
        .map(|p| lab.pod_ips(p))
        .collect();
    assert_eq!(before, after, "addresses changed across the agent restart");
    assert_eq!(servers_before, pod_server_pids(&lab), "pods were restarted");

    // A graceful restart of every agent, then a new pod: no address is handed out twice.
    let o = lab.run(&["restart"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x}\nspec:\n  nodeName: node-1\n  containers: [{name: s, image: i, ports: [{containerPort: 80}]}]\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    let d = lab.pod_ips("x/d");
    for ips in &after {
        for ip in ips {
            assert!(!d.contains(ip), "x/d got {ip}, which a running pod holds");
        }
    }
    assert_eq!(
        before,
        ["x/a", "x/b", "x/c"]
            .iter()
            .map(|p| lab.pod_ips(p))
            .collect::<Vec<_>>()
    );
    let (ok, answer) = lab.probe("x/d", "x/b", 80, "TCP", "ipv6");
    assert!(ok, "{answer}");
    // The status shows no restarts: the containers kept running.
    let s = lab.status();
    for p in s["pods"].as_array().unwrap() {
        assert_eq!(p["restarts"], 0, "{p}");
        assert_eq!(p["phase"], "Running", "{p}");
    }
}

fn pod_server_pids(lab: &TestLab) -> Vec<u32> {
    let mut pids = vec![];
    for e in std::fs::read_dir(lab.dir.join("nodes")).unwrap().flatten() {
        for r in std::fs::read_dir(e.path().join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if r.path().extension().is_some_and(|x| x == "json") {
                let v: Value = serde_json::from_slice(&std::fs::read(r.path()).unwrap()).unwrap();
                pids.push(v["serverPid"].as_u64().unwrap() as u32);
            }
        }
    }
    pids.sort();
    pids
}

/// Bad input gets the API server's messages and changes nothing; a pod for a
/// node that does not exist stays Pending with a reason; `lab up` twice says
/// so and harms nothing; `lab down` is idempotent and leaves nothing.
#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let lab = TestLab::up("tbad", 1, "flat", "ipv4");
    let good_and_bad = "
apiVersion: v1
kind: Pod
metadata: {name: good}
spec:
  containers: [{name: s, image: i, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec:
  containers: [{name: s, image: i, ports: [{containerPort: 70000}]}]
";
    let o = lab.apply(good_and_bad);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Pod \"bad\" is invalid: spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");
    assert!(
        lab.status()["pods"].as_array().unwrap().is_empty(),
        "a pod of a refused apply was stored"
    );

    let o = lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: nope}\nspec: {containers: [{name: s, image: i}]}\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("namespaces \"nope\" not found"),
        "{}",
        text(&o)
    );

    let o = lab.apply("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: d}\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("no matches for kind \"Widget\" in version \"example.com/v1\""),
        "{}",
        text(&o)
    );

    let o = lab.apply("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 1.2.3.4, ports: [{port: 80}]}\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "failed to allocate IP 1.2.3.4: the provided IP (1.2.3.4) is not in the valid range"
        ),
        "{}",
        text(&o)
    );

    // A pod bound to a node that does not exist: admitted, Pending (no
    // kubelet will run it), and the lab says why.
    let o = lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: lost}\nspec:\n  nodeName: node-9\n  containers: [{name: s, image: i}]\n");
    assert!(o.status.success(), "{}", text(&o));
    let s = lab.status();
    let lost = s["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "lost")
        .unwrap()
        .clone();
    assert_eq!(lost["phase"], "Pending", "{lost}");
    assert_eq!(lost["reason"], "NodeNotFound", "{lost}");
    assert!(
        lost["message"]
            .as_str()
            .unwrap()
            .contains("node \"node-9\" does not exist"),
        "{lost}"
    );

    // A pod whose nodeSelector fits no node: Pending, Unschedulable.
    let o = lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: picky}\nspec:\n  nodeSelector: {disk: ssd}\n  containers: [{name: s, image: i}]\n");
    assert!(o.status.success(), "{}", text(&o));
    let s = lab.status();
    let picky = s["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "picky")
        .unwrap()
        .clone();
    assert_eq!(picky["reason"], "Unschedulable", "{picky}");

    // A good pod runs; changing its spec is refused as the API server does.
    let o = lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: good}\nspec:\n  containers: [{name: s, image: i, ports: [{containerPort: 80}]}]\n");
    assert!(o.status.success(), "{}", text(&o));
    let o = lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: good}\nspec:\n  containers: [{name: s, image: i, ports: [{containerPort: 81}]}]\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("spec: Forbidden: pod updates may not change fields"),
        "{}",
        text(&o)
    );

    // lab up twice: explained, exit 1, and the lab still works.
    let o = lab.run(&["up", "--name", "tbad"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is already up"),
        "{}",
        text(&o)
    );
    let (ok, answer) = lab.probe("default/good", "default/good", 80, "TCP", "ipv4");
    assert!(ok, "{answer}");

    // Deleting: what exists goes (with its network), what does not is NotFound.
    let netns = {
        let st: Value = serde_json::from_slice(
            &std::fs::read(lab.dir.join("nodes/node-1/pods/default_good.json")).unwrap(),
        )
        .unwrap();
        st["netns"].as_str().unwrap().to_string()
    };
    assert!(
        Path::new("/var/run/netns").join(&netns).exists(),
        "the kubelet's record names the pod's namespace {netns}"
    );
    let f = lab.dir.join("del.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: Pod\nmetadata: {name: good}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ghost}\n").unwrap();
    let o = lab.run(&["delete", "-f", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pod \"good\" deleted"),
        "{}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pods \"ghost\" not found"),
        "{}",
        text(&o)
    );
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !Path::new("/var/run/netns").join(&netns).exists()
    });
    assert!(gone, "the deleted pod's namespace {netns} is still there");

    let dir = lab.dir.clone();
    drop(lab);
    assert_gone("tbad", &dir);
    // Down again: nothing to do, still success.
    let o = Command::new(BIN)
        .args([
            "lab",
            "--dir",
            dir.to_str().unwrap(),
            "down",
            "--name",
            "tbad",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing to remove"),
        "{}",
        text(&o)
    );
}

/// The machine reaches the console and the admin API through the host link.
#[test]
fn the_console_and_admin_api_answer_from_the_host() {
    let lab = TestLab::up("tcons", 1, "island", "ipv4");
    let o = lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: s, image: i, ports: [{containerPort: 80}]}]\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    let node = lab.node_address("node-1", true);
    let (code, index) = lab.api_raw("node-1", "/");
    assert_eq!(code, 200, "{index}");
    assert!(
        index.contains("<script type=\"module\" src=\"/console.js\">"),
        "{index}"
    );
    assert!(
        lab.api_raw("node-1", "/console.js")
            .1
            .contains("function renderCluster")
    );
    let (_, v) = lab.api("node-1", "/api/v1/cluster");
    assert_eq!(v["model"], "island");
    assert_eq!(v["name"], "tcons");
    assert_eq!(v["pods"][0]["name"], "a");
    assert_eq!(v["pods"][0]["phase"], "Running");
    let (_, modules) = lab.api("node-1", "/api/v1/modules");
    let cni = &modules[0];
    assert_eq!(cni["name"], "cni-bridge", "{modules}");
    assert!(
        cni["calls"].as_u64().unwrap() >= 1,
        "the pod's ADD is counted: {modules}"
    );
    assert_eq!(cni["errors"], 0, "{modules}");
    let (_, node_v) = lab.api("node-1", "/api/v1/node");
    assert_eq!(node_v["ready"], true, "{node_v}");
    assert_eq!(node_v["masquerade"], true, "{node_v}");

    // The console itself, rendered by a real browser: its script ran, read
    // the API and filled the tables.
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("the console test needs chromium (scripts/setup.sh installs it)");
    let o = Command::new("timeout")
        .args([
            "60",
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("http://{node}:9090/"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("<td>default/a</td><td>node-1</td><td>Running</td>"),
        "the pods table: {dom}"
    );
    assert!(
        dom.contains("cluster \"tcons\" · island model · ipv4"),
        "the title: {dom}"
    );
    assert!(
        dom.contains("1/1 nodes ready · 1/1 pods running"),
        "the summary: {dom}"
    );
    assert!(
        dom.contains("<td>cni-bridge</td><td>cni</td>"),
        "the modules table: {dom}"
    );
    assert!(!dom.contains("the agent does not answer"), "{dom}");
}

/// An operator swaps the CNI module with a NetworkModule: new pods get the
/// new module's network (here, its MTU), running pods keep theirs and their
/// traffic, and the admin API shows which binding serves.
#[test]
fn a_networkmodule_takes_over_cni_without_breaking_running_pods() {
    let lab = TestLab::up("tswap", 1, "flat", "ipv4");
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: s, image: i, ports: [{{containerPort: 80}}]}}]\n"
        )
    };
    let mtu = |name: &str| -> String {
        let out = lab.ok(&[
            "exec",
            &format!("default/{name}"),
            "--",
            "cat",
            "/sys/class/net/eth0/mtu",
        ]);
        out.trim().to_string()
    };
    let o = lab.apply(&pod("before"));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mtu("before"), "1500");
    let o = lab.apply(
        "apiVersion: switchyard.dev/v1alpha1
kind: NetworkModule
metadata: {name: cni-small-mtu}
spec:
  role: cni
  priority: 10
  source: {builtin: cni-bridge}
  config: {mtu: 1400}
",
    );
    assert!(o.status.success(), "{}", text(&o));
    // The agent notices within its poll interval; the next pod uses it.
    let node = lab.node_address("node-1", true);
    let serving = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        let o = Command::new("curl")
            .args(["-s", &format!("http://{node}:9090/api/v1/modules")])
            .output();
        o.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"cni-small-mtu\""))
    });
    assert!(serving, "the NetworkModule was not loaded");
    let o = lab.apply(&pod("after"));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        mtu("after"),
        "1400",
        "the new pod did not get the new module's network"
    );
    assert_eq!(mtu("before"), "1500", "the running pod was touched");
    let (ok, answer) = lab.probe("default/after", "default/before", 80, "TCP", "ipv4");
    assert!(ok, "{answer}");

    // A NetworkModule the CRD's rules refuse is refused at apply, in the
    // API server's words.
    let o = lab.apply(
        "apiVersion: switchyard.dev/v1alpha1
kind: NetworkModule
metadata: {name: broken}
spec:
  role: cni
  source: {builtin: cni-bridge, file: /x.wasm}
",
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("NetworkModule.switchyard.dev \"broken\" is invalid: spec.source"),
        "{}",
        text(&o)
    );
}
