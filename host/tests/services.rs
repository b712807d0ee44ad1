//! Services in the lab, end to end: kube-controller-manager's EndpointSlice
//! controller, each node's proxy (the `proxy-nftables` module through the
//! agent) and real connections from pods, nodes and the external host, in
//! both families. Both tests share one lab, each in a namespace of its own.
//! Needs root (CI runs as root).

mod common;

use common::lab::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Pods a (node-1) and b (node-2) serve the Services; client runs on
/// node-2; solo (node-1) is alone behind its Service (hairpin).
const PODS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  nodeName: node-1
  containers:
  - {name: s, image: lab, ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 80, protocol: UDP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec:
  nodeName: node-2
  containers:
  - {name: s, image: lab, ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 80, protocol: UDP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec:
  nodeName: node-2
  containers:
  - {name: s, image: lab, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: x, labels: {app: solo}}
spec:
  nodeName: node-1
  containers:
  - {name: s, image: lab, ports: [{containerPort: 80}]}
";

fn service(name: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: x{extra_meta}}}
spec:
  ipFamilyPolicy: PreferDualStack
{spec}
"
    )
}

fn services() -> String {
    let web = "  selector: {app: web}\n";
    let http = "  ports: [{name: http, port: 8000, targetPort: http}]\n";
    [
        service(
            "rr",
            ", annotations: {switchyard.dev/scheduler: rr}",
            &format!(
                "{web}  ports: [{{name: http, port: 8000, targetPort: http}}, {{name: dns, port: 53, protocol: UDP, targetPort: dns}}]\n"
            ),
        ),
        service(
            "sh",
            ", annotations: {switchyard.dev/scheduler: sh}",
            &format!("{web}{http}"),
        ),
        service(
            "affinity",
            "",
            &format!(
                "{web}{http}  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}\n"
            ),
        ),
        service("lb", "", &format!("{web}{http}  type: LoadBalancer\n")),
        service(
            "local",
            "",
            &format!(
                "{web}  type: NodePort\n  externalTrafficPolicy: Local\n  ports: [{{name: http, port: 8000, targetPort: 80, nodePort: 30080}}]\n"
            ),
        ),
        service(
            "internal",
            "",
            &format!("{web}{http}  internalTrafficPolicy: Local\n"),
        ),
        service(
            "near",
            "",
            &format!("{web}{http}  trafficDistribution: PreferSameNode\n"),
        ),
        service(
            "solo",
            "",
            "  selector: {app: solo}\n  ports: [{port: 8000, targetPort: 80}]\n",
        ),
        service(
            "elsewhere",
            ", labels: {service.kubernetes.io/service-proxy-name: another-proxy}",
            &format!("{web}{http}"),
        ),
        service(
            "nobody",
            "",
            "  selector: {app: nobody}\n  ports: [{port: 8000, targetPort: 80}]\n",
        ),
        service(
            "fastest",
            ", annotations: {switchyard.dev/scheduler: fastest}",
            &format!("{web}{http}"),
        ),
        service(
            "weighted",
            ", annotations: {switchyard.dev/scheduler: rr, switchyard.dev/weights: \"a=3,b=1\"}",
            &format!("{web}{http}"),
        ),
        service(
            "zone",
            "",
            &format!("{web}{http}  trafficDistribution: PreferSameZone\n"),
        ),
        service("plain", "", &format!("{web}{http}")),
        // ipFamilyPolicy and ipFamilies: one family asked for, and both
        // required.
        "---
apiVersion: v1
kind: Service
metadata: {name: six, namespace: x}
spec:
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  selector: {app: web}
  ports: [{name: http, port: 8000, targetPort: http}]
"
        .to_string(),
        "---
apiVersion: v1
kind: Service
metadata: {name: both, namespace: x}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: http, port: 8000, targetPort: http}]
"
        .to_string(),
    ]
    .concat()
}

/// Which pods answered `n` connections, in order.
fn sequence(lab: &TestLab, from: &str, to: &str, fam: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (ok, answer) = lab.probe(from, to, 8000, "TCP", fam);
            assert!(ok, "{from} -> {to} ({fam}): {answer}");
            answered_by(&answer)
        })
        .collect()
}

/// Whether consecutive answers always differ.
fn alternates(seq: &[String]) -> bool {
    seq.windows(2).all(|w| w[0] != w[1])
}

/// `x/b` from "pod=x/b node=node-2 client=..." or "x/b: probe".
fn answered_by(answer: &str) -> String {
    if let Some(p) = answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pod="))
    {
        return p.to_string();
    }
    answer
        .trim_start_matches("allowed: ")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Which pods answered `n` connections.
fn spread(
    lab: &TestLab,
    from: &str,
    to: &str,
    port: u16,
    proto: &str,
    fam: &str,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (ok, answer) = lab.probe(from, to, port, proto, fam);
        assert!(ok, "{from} -> {to}:{port} ({fam}): {answer}");
        *seen.entry(answered_by(&answer)).or_default() += 1;
    }
    seen
}

fn service_view(lab: &TestLab, name: &str) -> Value {
    lab.status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["namespace"] == "x" && s["name"] == name)
        .unwrap_or_else(|| panic!("no Service x/{name} in lab status"))
        .clone()
}

fn pod_ip(lab: &TestLab, pod: &str, v4: bool) -> String {
    lab.pod_ips(pod)
        .into_iter()
        .find(|i| i.contains('.') == v4)
        .unwrap()
}

#[test]
fn services_in_both_families_with_every_feature() {
    let lab = TestLab::shared("tsvc", 2, "flat", "dual");
    let o = lab.apply(PODS);
    assert!(o.status.success(), "apply pods: {}", text(&o));
    let o = lab.apply(&services());
    assert!(o.status.success(), "apply services: {}", text(&o));

    for fam in ["ipv4", "ipv6"] {
        let v4 = fam == "ipv4";
        let ctx = |what: &str| format!("{fam}: {what}");
        // ClusterIP from a pod, a named targetPort, TCP and UDP; rr spreads
        // evenly (numgen inc: strictly alternating for one client).
        lab.probe_until_allowed("x/client", "rr.x", 8000, "TCP", fam);
        let rr = sequence(&lab, "x/client", "rr.x", fam, 20);
        assert!(
            alternates(&rr),
            "{}",
            ctx(&format!("rr alternates: {rr:?}"))
        );
        // Weights (3:1) with rr: exactly three of every four go to a.
        let w = spread(&lab, "x/client", "weighted.x", 8000, "TCP", fam, 20);
        assert_eq!(
            (w.get("x/a"), w.get("x/b")),
            (Some(&15), Some(&5)),
            "{}",
            ctx(&format!("weights 3:1: {w:?}"))
        );
        let udp = spread(&lab, "x/client", "rr.x", 53, "UDP", fam, 10);
        assert_eq!(
            udp.keys().cloned().collect::<Vec<_>>(),
            ["x/a", "x/b"],
            "{}",
            ctx("UDP to a named UDP port reaches both")
        );

        // sh: a client keeps its backend; so does ClientIP affinity.
        for svc in ["sh.x", "affinity.x"] {
            let s = spread(&lab, "x/client", svc, 8000, "TCP", fam, 10);
            assert_eq!(
                s.len(),
                1,
                "{}",
                ctx(&format!("{svc} keeps one backend: {s:?}"))
            );
            let s = spread(&lab, "node/node-1", svc, 8000, "TCP", fam, 6);
            assert_eq!(s.len(), 1, "{}", ctx(&format!("{svc} from node-1: {s:?}")));
        }

        // internalTrafficPolicy Local and PreferSameNode: the client on
        // node-2 only gets b, node-2's endpoint.
        for svc in ["internal.x", "near.x", "zone.x"] {
            let s = spread(&lab, "x/client", svc, 8000, "TCP", fam, 6);
            assert_eq!(
                s.keys().cloned().collect::<Vec<_>>(),
                ["x/b"],
                "{}",
                ctx(&format!("{svc} stays on the node"))
            );
        }

        // Hairpin: solo reaches itself through its Service, masqueraded so
        // it does not answer itself directly.
        let answer = lab.probe_until_allowed("x/solo", "solo.x", 8000, "TCP", fam);
        assert_eq!(answered_by(&answer), "x/solo", "{}", ctx("hairpin"));
        assert_ne!(
            client_of(&answer),
            pod_ip(&lab, "x/solo", v4),
            "{}",
            ctx("hairpin traffic is masqueraded")
        );

        // From the outside: the LoadBalancer IP (routed to node-1), and
        // the eTP Local node port, which keeps the client's address and
        // only serves where an endpoint runs.
        let ext = lab.status()["external"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .find(|a| a.contains('.') == v4)
            .unwrap();
        let lb = spread(&lab, "external", "lb.x", 8000, "TCP", fam, 8);
        assert!(!lb.is_empty(), "{}", ctx("LoadBalancer"));
        for (node, pod) in [("node-1", "x/a"), ("node-2", "x/b")] {
            let (ok, answer) = lab.probe("external", &format!("node/{node}"), 30080, "TCP", fam);
            assert!(
                ok,
                "{}",
                ctx(&format!("eTP Local node port on {node}: {answer}"))
            );
            assert_eq!(answered_by(&answer), pod, "{}", ctx("local endpoint only"));
            assert_eq!(client_of(&answer), ext, "{}", ctx("source preserved"));
        }

        // No endpoints: refused at once; a Service for another proxy: not
        // ours, nothing answers.
        if v4 {
            let (ok, answer) = lab.probe("x/client", "nobody.x", 8000, "TCP", fam);
            assert!(
                !ok && answer.contains("refused"),
                "{}",
                ctx(&format!("no endpoints: {answer}"))
            );
        }
        let (ok, answer) = lab.probe("x/client", "elsewhere.x", 8000, "TCP", fam);
        assert!(
            !ok,
            "{}",
            ctx(&format!("another proxy's Service: {answer}"))
        );
    }

    // Families: SingleStack IPv6 has one IPv6 cluster IP, RequireDualStack
    // one of each, and both answer in their families.
    let six = service_view(&lab, "six");
    let ips: Vec<&str> = six["clusterIps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ips.len() == 1 && ips[0].contains(':'), "{six}");
    lab.probe_until_allowed("x/client", "six.x", 8000, "TCP", "ipv6");
    let both = service_view(&lab, "both");
    assert_eq!(both["clusterIps"].as_array().unwrap().len(), 2, "{both}");
    for fam in ["ipv4", "ipv6"] {
        lab.probe_until_allowed("x/client", "both.x", 8000, "TCP", fam);
    }

    // externalIPs: addresses the outside routes to a node (here, next to
    // the LoadBalancer pool), in both families.
    let lb = service_view(&lab, "lb");
    let ext_ips: Vec<String> = lb["externalIps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let ip: std::net::IpAddr = v.as_str().unwrap().parse().unwrap();
            match ip {
                std::net::IpAddr::V4(a) => {
                    let o = a.octets();
                    format!("{}.{}.{}.100", o[0], o[1], o[2])
                }
                std::net::IpAddr::V6(a) => {
                    let mut s = a.segments();
                    s[7] = 0x100;
                    std::net::Ipv6Addr::from(s).to_string()
                }
            }
        })
        .collect();
    assert_eq!(ext_ips.len(), 2, "{lb}");
    let o = lab.apply(&service(
        "ext",
        "",
        &format!(
            "  selector: {{app: web}}\n  externalIPs: [{}]\n  ports: [{{name: http, port: 8000, targetPort: http}}]\n",
            ext_ips.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ")
        ),
    ));
    assert!(o.status.success(), "{}", text(&o));
    for fam in ["ipv4", "ipv6"] {
        let answer = lab.probe_until_allowed("external", "ext.x", 8000, "TCP", fam);
        assert!(answer.contains("pod=x/"), "{fam}: {answer}");
    }

    // The default scheduler comes from ClusterNetwork: rr there, and a
    // Service without the annotation rotates strictly.
    lab.kubectl_ok(&[
        "patch",
        "clusternetwork",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec": {"proxy": {"mode": "nftables", "defaultScheduler": "rr"}}}"#,
    ]);
    let start = Instant::now();
    loop {
        let seq = sequence(&lab, "x/client", "plain.x", "ipv4", 12);
        if alternates(&seq) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ClusterNetwork's rr never took effect: {seq:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Back to the default for the lab's other tests.
    lab.kubectl_ok(&[
        "patch",
        "clusternetwork",
        "default",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/proxy/defaultScheduler"}]"#,
    ]);

    // Bad input, reported by name, the other Services unharmed (above).
    let nobody = service_view(&lab, "nobody");
    assert!(
        nobody["problems"]
            .to_string()
            .contains("the selector app=nobody matches no pod in namespace x"),
        "{nobody}"
    );
    let fastest = service_view(&lab, "fastest");
    assert!(
        fastest["problems"]
            .to_string()
            .contains("unknown scheduler \\\"fastest\\\""),
        "{fastest}"
    );
    let (ok, answer) = lab.probe("x/client", "fastest.x", 8000, "TCP", "ipv4");
    assert!(
        !ok,
        "a Service the module refused is closed, not half-programmed: {answer}"
    );
    let rr = service_view(&lab, "rr");
    // 2 pods x 2 families; TCP and UDP both target port 80.
    assert_eq!(rr["endpoints"].as_array().unwrap().len(), 4, "{rr}");
    for (yaml, want) in [
        (
            service(
                "clash",
                "",
                "  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, nodePort: 30080}]\n",
            ),
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated",
        ),
        (
            service(
                "low",
                "",
                "  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, nodePort: 80}]\n",
            ),
            "provided port is not in the valid range",
        ),
    ] {
        let o = lab.apply(&yaml);
        assert!(!o.status.success(), "{yaml}");
        let err = text(&o);
        assert!(
            err.contains(want) && err.contains("nothing was applied"),
            "{err}"
        );
    }
}

/// Endpoints written by hand (a Service without a selector), with the
/// conditions of KEP-1669: serving-but-terminating endpoints carry traffic
/// only when no endpoint is ready.
#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let lab = TestLab::shared("tsvc", 2, "flat", "dual");
    // Namespace t: the same pods as x.
    let o = lab.apply(
        &PODS
            .replace("name: x}", "name: t}")
            .replace("namespace: x", "namespace: t"),
    );
    assert!(o.status.success(), "apply pods: {}", text(&o));
    let a = pod_ip(&lab, "t/a", true);
    let b = pod_ip(&lab, "t/b", true);
    let slice = |ready_a: bool| {
        format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: manual-1, namespace: t, labels: {{kubernetes.io/service-name: manual}}}}
addressType: IPv4
ports: [{{name: http, port: 80, protocol: TCP}}]
endpoints:
- addresses: [{a}]
  conditions: {{ready: {ready_a}, serving: {ready_a}, terminating: false}}
- addresses: [{b}]
  conditions: {{ready: false, serving: true, terminating: true}}
"
        )
    };
    let svc = "---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: t}
spec:
  ports: [{name: http, port: 8000, targetPort: 80}]
";
    let o = lab.apply(&format!("{svc}{}", slice(true)));
    assert!(o.status.success(), "{}", text(&o));
    lab.probe_until_allowed("t/client", "manual.t", 8000, "TCP", "ipv4");
    let s = spread(&lab, "t/client", "manual.t", 8000, "TCP", "ipv4", 8);
    assert_eq!(
        s.keys().cloned().collect::<Vec<_>>(),
        ["t/a"],
        "a ready endpoint is preferred"
    );
    // a stops being ready: the terminating b serves.
    let o = lab.apply(&slice(false));
    assert!(o.status.success(), "{}", text(&o));
    let start = Instant::now();
    loop {
        let s = spread(&lab, "t/client", "manual.t", 8000, "TCP", "ipv4", 4);
        if s.keys().cloned().collect::<Vec<_>>() == ["t/b"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the terminating endpoint never took over: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A bad slice is refused by name, in the API server's words.
    let o = lab.apply(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bad, namespace: t}
addressType: IPv4
endpoints: [{addresses: [\"fd00::1\"]}]
",
    );
    let err = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("EndpointSlice.discovery.k8s.io \"bad\" is invalid")
            && err.contains(
                "endpoints[0].addresses: Invalid value: \"fd00::1\": must be an IPv4 address"
            ),
        "{err}"
    );
}

/// A pod deleted gracefully: the kubelet sends SIGTERM and gives it its
/// grace period; this one keeps serving for 4 s of it (as agnhost's
/// `--delay-shutdown`), and meanwhile its endpoint is serving and
/// terminating, and Service traffic still reaches it (no other endpoint is
/// ready). Then it is gone, and so is its network.
#[test]
fn a_deleted_pod_serves_while_it_terminates() {
    let lab = TestLab::shared("tsvc", 2, "flat", "dual");
    let o = lab.apply(
        "apiVersion: v1
kind: Namespace
metadata: {name: g}
---
apiVersion: v1
kind: Pod
metadata:
  name: slow
  namespace: g
  labels: {app: g}
  annotations: {switchyard.dev/shutdown-delay: 4s}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 20
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: g}
spec:
  nodeName: node-1
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: g, namespace: g}
spec:
  selector: {app: g}
  ports: [{port: 8000, targetPort: 80}]
",
    );
    assert!(o.status.success(), "{}", text(&o));
    lab.probe_until_allowed("g/client", "g.g", 8000, "TCP", "ipv4");
    let record = lab.dir.join("nodes/node-2/pods/g_slow.json");
    let netns: String = serde_json::from_slice::<Value>(&std::fs::read(&record).unwrap()).unwrap()
        ["netns"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    lab.kubectl_ok(&["-n", "g", "delete", "pod", "slow", "--wait=false"]);
    // Serving and terminating, and still answering.
    let conditions = loop {
        let slices = lab.kubectl_ok(&[
            "-n",
            "g",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=g",
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_str(&slices).unwrap();
        let c = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| e["conditions"].clone())
            .find(|c| c["terminating"] == true);
        if let Some(c) = c {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "never terminating: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (
            &conditions["ready"],
            &conditions["serving"],
            &conditions["terminating"]
        ),
        (&Value::Bool(false), &Value::Bool(true), &Value::Bool(true)),
        "{conditions}"
    );
    let answer = lab.probe_until_allowed("g/client", "g.g", 8000, "TCP", "ipv4");
    assert!(answer.contains("pod=g/slow"), "{answer}");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "checked within the shutdown delay"
    );
    // Gone after its server exits (4 s), well within the grace period.
    loop {
        let o = lab.kubectl(&["-n", "g", "get", "pod", "slow"]);
        if !o.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the pod outlived its server: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "gone before its delay: {took:?}"
    );
    assert!(
        !std::path::Path::new("/var/run/netns").join(&netns).exists(),
        "its network namespace {netns} is still there"
    );
    lab.kubectl_ok(&["delete", "namespace", "g", "--wait=false"]);
}
