//! The userspace proxy mode in the lab: a Service whose scheduler is a
//! module (`least-latency`, the SDK's example) is carried by the agent, and
//! the module picks each connection's backend from the host's live view of
//! the backends, including probe latency and readiness. Needs root.

mod common;

use common::lab::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const OBJECTS: &str = r#"
apiVersion: switchyard.dev/v1alpha1
kind: NetworkModule
metadata: {name: least-latency}
spec:
  role: scheduler
  source: {builtin: example-scheduler}
---
apiVersion: v1
kind: Namespace
metadata: {name: u}
# lazy sorts first: a scheduler blind to latency would pick it on
# a tie (or half of the time, when ties are spread).
---
apiVersion: v1
kind: Pod
metadata:
  name: lazy
  namespace: u
  labels: {app: ll}
  annotations: {switchyard.dev/respond-delay: "300ms"}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    readinessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1, timeoutSeconds: 2}
---
apiVersion: v1
kind: Pod
metadata:
  name: quick
  namespace: u
  labels: {app: ll}
  annotations: {switchyard.dev/healthz-fail-after: "15s"}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    readinessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: u}
spec:
  nodeName: node-1
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: u}
spec:
  nodeName: node-2
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata:
  name: ll
  namespace: u
  annotations: {switchyard.dev/scheduler: least-latency}
spec:
  selector: {app: ll}
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
"#;

fn pod_ready(lab: &TestLab, name: &str) -> bool {
    pod_in(&lab.status(), &format!("u/{name}")).is_some_and(|p| p["ready"] == true)
}

/// Whether node-1's probe table has port-80 latencies for every address of
/// both backends, each of quick's below each of lazy's.
fn latency_known(lab: &TestLab) -> bool {
    let (_, table) = lab.api("node-1", "/api/v1/probes");
    let latencies = |pod: &str| -> Option<Vec<u64>> {
        let ips = lab.pod_ips(&format!("u/{pod}"));
        if ips.is_empty() {
            return None;
        }
        ips.iter()
            .map(|ip| {
                table["endpoints"].as_array()?.iter().find_map(|e| {
                    (e["address"] == ip.as_str() && e["port"] == 80)
                        .then(|| e["lastLatencyUs"].as_u64())
                        .flatten()
                })
            })
            .collect()
    };
    match (latencies("quick"), latencies("lazy")) {
        (Some(q), Some(l)) => q.iter().max() < l.iter().min(),
        _ => false,
    }
}

fn node_report(lab: &TestLab, node: &str) -> Value {
    lab.api(node, "/api/v1/node").1
}

#[test]
fn a_scheduler_module_picks_by_probe_latency_in_userspace() {
    let lab = TestLab::shared("uspace", 2, "flat", "dual");
    let o = lab.apply(OBJECTS);
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    while !(pod_ready(&lab, "quick") && pod_ready(&lab, "lazy")) {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", lab.status());
        std::thread::sleep(Duration::from_millis(200));
    }

    // node-1 probes both: quick answers at once, lazy after 300 ms. Ready
    // says one probe passed; wait until the probe table holds a latency for
    // every address of both, quick's the lower (a first probe of quick on a
    // busy machine can be slow, and the module rightly follows it).
    let t0 = Instant::now();
    while !latency_known(&lab) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{}",
            lab.api("node-1", "/api/v1/probes").1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The module sends every connection to the one with the lower latency.
    for family in ["ipv4", "ipv6"] {
        for _ in 0..8 {
            let a = lab.probe_until_allowed("u/client", "ll.u", 80, "TCP", family);
            assert!(a.contains("u/quick"), "{family}: {a}");
        }
    }
    // The agent carried them: its report lists the port, the scheduler and
    // the connections; the module counted its calls.
    // (The report follows within a heartbeat.)
    let t = Instant::now();
    let (report, port) = loop {
        let report = node_report(&lab, "node-1");
        let port = report["userspace"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["service"] == "u/ll")
            .unwrap_or_else(|| panic!("{report}"))
            .clone();
        if port["connections"].as_u64().unwrap() >= 16 || t.elapsed() > Duration::from_secs(5) {
            break (report, port);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(port["scheduler"], "least-latency", "{port}");
    assert!(port["connections"].as_u64().unwrap() >= 16, "{port}");
    assert_eq!(port["failures"], 0, "{port}");
    let (_, modules) = lab.api("node-1", "/api/v1/modules");
    let ll = modules
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "least-latency")
        .unwrap_or_else(|| panic!("{modules}"));
    assert!(ll["calls"].as_u64().unwrap() >= 16, "{ll}");
    // The UDP port is not served in this mode, and says so.
    let errors = &report["serviceErrors"];
    assert!(
        errors["u/ll"]
            .as_str()
            .unwrap_or_default()
            .contains("TCP only"),
        "{report}"
    );

    // From node-2, whose agent proxies the same Service for its own pods.
    let a = lab.probe_until_allowed("u/remote", "ll.u", 80, "TCP", "ipv4");
    assert!(a.contains("u/quick") || a.contains("u/lazy"), "{a}");

    // quick's /healthz fails 15 s after its start: once it is not ready,
    // every connection goes to lazy, however fast quick still answers.
    while pod_ready(&lab, "quick") {
        assert!(t0.elapsed() < Duration::from_secs(15 + 1) + Duration::from_secs(8));
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = Instant::now();
    let mut streak = 0;
    while streak < 5 {
        let a = lab.probe_until_allowed("u/client", "ll.u", 80, "TCP", "ipv4");
        streak = if a.contains("u/lazy") { streak + 1 } else { 0 };
        assert!(t.elapsed() < Duration::from_secs(10), "still to quick: {a}");
    }

    // Without the annotation the Service goes back to the nftables proxy:
    // it keeps answering, and the agent's listener is gone.
    let o = lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ll, namespace: u}\nspec:\n  selector: {app: ll}\n  ipFamilyPolicy: RequireDualStack\n  ports: [{name: http, port: 80}]\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = Instant::now();
    loop {
        let r = node_report(&lab, "node-1");
        if r["userspace"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let a = lab.probe_until_allowed("u/client", "ll.u", 80, "TCP", "ipv6");
    assert!(a.contains("u/lazy"), "{a}");
    drop(lab);
}
