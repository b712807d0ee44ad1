//! Probes in the lab, end to end: the lab's kubelet probes its pods as the
//! kubelet does, pods misbehave on request (annotations), and the results
//! show in pod status, in the endpoints (kube-controller-manager's
//! EndpointSlices), in the agents' probe tables and in where Service traffic
//! goes. Timing bounds come from period × threshold, plus a slack for the
//! shared machine. The tests share one lab, each in namespaces of its own.
//! Needs root (CI runs as root).

mod common;

use common::lab::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Slack on top of every bound: status writes, the controller, a busy
/// machine.
const SLACK: Duration = Duration::from_secs(4);

/// Pod `name` of this file's namespaces (`p` and `q`: no name is in both).
fn pod<'a>(s: &'a Value, name: &str) -> &'a Value {
    pod_in(s, &format!("p/{name}"))
        .or_else(|| pod_in(s, &format!("q/{name}")))
        .unwrap_or_else(|| panic!("pod p/{name} or q/{name} in {s}"))
}

/// Polls `lab status` until `f` holds for pod `name`, for at most `bound`;
/// returns how long it took.
fn until(
    lab: &TestLab,
    name: &str,
    bound: Duration,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let s = lab.status();
        if f(pod(&s, name)) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < bound,
            "pod {name}: not {what} within {bound:?}: {}",
            pod(&s, name)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ready(p: &Value) -> bool {
    p["ready"] == true
}

fn restarts(p: &Value) -> i64 {
    p["restarts"].as_i64().unwrap_or(0)
}

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: p}
---
apiVersion: v1
kind: Pod
metadata:
  name: flip
  namespace: p
  labels: {app: web}
  annotations: {switchyard.dev/healthz-fail-after: "8s"}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{name: http, containerPort: 80}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: steady, namespace: p, labels: {app: web}}
spec:
  nodeName: node-2
  containers:
  - name: s
    image: lab
    ports: [{name: http, containerPort: 80}]
    readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata:
  name: live
  namespace: p
  annotations: {switchyard.dev/healthz-fail-after: "3s"}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    livenessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata:
  name: slow
  namespace: p
  annotations: {switchyard.dev/start-delay: "4s"}
spec:
  nodeName: node-2
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    startupProbe: {tcpSocket: {port: 80}, periodSeconds: 1, failureThreshold: 15}
    livenessProbe: {tcpSocket: {port: 80}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: grpc, namespace: p}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 9090}]
    readinessProbe: {grpc: {port: 9090}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: delayed, namespace: p}
spec:
  nodeName: node-2
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    readinessProbe: {tcpSocket: {port: 80}, initialDelaySeconds: 5, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: p}
spec:
  nodeName: node-2
  containers:
  - {name: s, image: lab, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: p}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#;

fn exec_pod(file: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: exec, namespace: p}}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{{containerPort: 80}}]
    readinessProbe: {{exec: {{command: [sh, -c, "test -e {file}"]}}, periodSeconds: 1, failureThreshold: 1}}
"#
    )
}

#[test]
fn probes_drive_readiness_restarts_and_endpoints() {
    let lab = TestLab::shared("probes", 2, "flat", "ipv4");
    let file = std::env::temp_dir().join(format!("switchyard-exec-{}", rand_suffix()));
    let _ = std::fs::remove_file(&file);
    let o = lab.apply(&format!("{PODS}---{}", exec_pod(file.to_str().unwrap())));
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();

    // httpGet and tcpSocket readiness: ready after the first success (one
    // period).
    until(&lab, "flip", Duration::from_secs(1) + SLACK, "ready", ready);
    until(
        &lab,
        "steady",
        Duration::from_secs(1) + SLACK,
        "ready",
        ready,
    );
    // grpc (grpc.health.v1 SERVING).
    until(&lab, "grpc", Duration::from_secs(1) + SLACK, "ready", ready);
    // initialDelaySeconds 5: not ready before, ready within a period after.
    let s = lab.status();
    if t0.elapsed() < Duration::from_secs(4) {
        assert!(!ready(pod(&s, "delayed")), "ready before its initial delay");
    }
    until(
        &lab,
        "delayed",
        Duration::from_secs(6) + SLACK,
        "ready",
        ready,
    );
    // A startup probe protects a slow starter: its server listens after 4 s,
    // and the liveness probe (failureThreshold 1) would kill it at once.
    until(&lab, "slow", Duration::from_secs(5) + SLACK, "ready", ready);
    assert_eq!(
        restarts(pod(&lab.status(), "slow")),
        0,
        "the startup probe held liveness back"
    );

    // exec: not ready until the file exists, ready within a period of it.
    assert!(!ready(pod(&lab.status(), "exec")));
    std::fs::write(&file, b"").unwrap();
    until(&lab, "exec", Duration::from_secs(1) + SLACK, "ready", ready);
    std::fs::remove_file(&file).unwrap();
    until(
        &lab,
        "exec",
        Duration::from_secs(1) + SLACK,
        "not ready",
        |p| !ready(p),
    );

    // Service traffic reaches both web pods while both are ready.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let a = lab.probe_until_allowed("p/client", "web.p", 80, "TCP", "ipv4");
        seen.insert(if a.contains("p/flip") {
            "flip"
        } else {
            "steady"
        });
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both ready pods serve: {seen:?}");

    // flip's /healthz fails 8 s after its start: not ready within
    // failureThreshold (2) × period (1 s) of that; it is not restarted.
    until(
        &lab,
        "flip",
        Duration::from_secs(8) + Duration::from_secs(2) + SLACK,
        "not ready",
        |p| !ready(p),
    );
    let s = lab.status();
    assert_eq!(restarts(pod(&s, "flip")), 0, "readiness never restarts");
    assert_eq!(pod(&s, "flip")["phase"], "Running");
    let probes = &pod(&s, "flip")["probes"][0];
    assert_eq!(probes["result"], "Failure", "{probes}");
    assert!(
        probes["lastMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("500"),
        "{probes}"
    );
    // The admin API shows the pod with its probes, and the node's probe
    // table as modules read it: flip's port from node-1's kubelet (which
    // the agent asks every half second), and steady (node-2's) from its Pod
    // status.
    let t = Instant::now();
    loop {
        let (code, v) = lab.api("node-1", "/api/v1/pods/p/flip");
        assert_eq!(code, 200, "{v}");
        if v["probes"][0]["result"] == "Failure" {
            break;
        }
        assert!(t.elapsed() < SLACK, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, v) = lab.api("node-1", "/api/v1/pods/p/nobody");
    assert_eq!(code, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"nobody\""), "{v}");
    let entry = |table: &Value, ip: &str, source: &str| {
        table["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == ip && e["source"] == source)
            .cloned()
    };
    let flip_ip = lab.pod_ips("p/flip")[0].clone();
    let steady_ip = lab.pod_ips("p/steady")[0].clone();
    let t = Instant::now();
    loop {
        let (_, table) = lab.api("node-1", "/api/v1/probes");
        let flip = entry(&table, &flip_ip, "probe");
        let steady = entry(&table, &steady_ip, "pod-status");
        let ok = flip.as_ref().is_some_and(|e| {
            e["port"] == 80
                && e["ready"] == false
                && e["consecutiveFailures"].as_u64().unwrap_or(0) >= 2
        }) && steady.as_ref().is_some_and(|e| e["ready"] == true);
        if ok {
            break;
        }
        assert!(t.elapsed() < SLACK, "{table}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Traffic through the Service stops reaching it (once the endpoints
    // and every node's proxy followed).
    let t = Instant::now();
    let mut streak = 0;
    while streak < 10 {
        let a = lab.probe_until_allowed("p/client", "web.p", 80, "TCP", "ipv4");
        streak = if a.contains("p/steady") {
            streak + 1
        } else {
            0
        };
        assert!(t.elapsed() < SLACK * 3, "traffic still reaches flip: {a}");
    }

    // Liveness: live's /healthz fails 3 s after start; restarted within
    // failureThreshold (2) × period (1 s) of that.
    until(
        &lab,
        "live",
        Duration::from_secs(3) + Duration::from_secs(2) + SLACK,
        "restarted",
        |p| restarts(p) >= 1,
    );
    drop(lab);
}

/// What the API server refuses is refused with its own messages; what it
/// accepts and the kubelet cannot run is reported as the kubelet reports
/// it: in the pod's container status and in Events.
#[test]
fn invalid_probes_are_refused_with_the_api_servers_messages() {
    let lab = TestLab::shared("probes", 2, "flat", "ipv4");
    let bad = r#"
apiVersion: v1
kind: Namespace
metadata: {name: pbad}
---
apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: pbad}
spec:
  containers:
  - name: s
    image: lab
    ports: [{name: http, containerPort: 80}]
    readinessProbe: {tcpSocket: {port: 80}, httpGet: {port: 80}, periodSeconds: -1}
"#;
    let o = lab.apply(bad);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "Pod \"bad\" is invalid",
        "spec.containers[0].readinessProbe",
        "may not specify more than 1 handler type",
        "spec.containers[0].readinessProbe.periodSeconds: Invalid value: -1",
        "nothing was applied",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    // Nothing was admitted: not even the namespace of the same apply.
    let o = lab.kubectl(&["get", "namespace", "pbad"]);
    assert!(!o.status.success(), "{}", text(&o));

    // Accepted by the API server, refused by the kubelet: an annotation of
    // ours with a bad value, and a probe naming a port no container has.
    let odd = r#"
apiVersion: v1
kind: Namespace
metadata: {name: pbad}
---
apiVersion: v1
kind: Pod
metadata: {name: odd, namespace: pbad, annotations: {switchyard.dev/healthz-fail-after: "soon"}}
spec:
  nodeName: node-1
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: unnamed, namespace: pbad}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    livenessProbe: {httpGet: {port: metrics}}
"#;
    let f = lab.dir.join("odd.yaml");
    std::fs::write(&f, odd).unwrap();
    lab.ok(&["apply", "-f", f.to_str().unwrap()]);
    let t0 = Instant::now();
    loop {
        let s = lab.status();
        let p = pod_in(&s, "pbad/odd").unwrap().clone();
        let events = lab.kubectl_ok(&["-n", "pbad", "get", "events", "-o", "json"]);
        let reported = p["reason"] == "CreateContainerConfigError"
            && p["message"]
                .as_str()
                .unwrap_or_default()
                .contains("switchyard.dev/healthz-fail-after")
            && events.contains("\"Failed\"")
            && events.contains("switchyard.dev/healthz-fail-after")
            && events.contains("Unable to probe: container s has no port named \\\"metrics\\\"");
        if reported {
            assert_eq!(p["phase"], "Pending", "{p}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not reported as the kubelet would: {p}\n{events}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.kubectl_ok(&["delete", "namespace", "pbad", "--wait=false"]);
}

const OPTIONS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: q}
---
apiVersion: v1
kind: Pod
metadata:
  name: laggy
  namespace: q
  annotations: {switchyard.dev/respond-delay: "2s"}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    readinessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1, timeoutSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata:
  name: patient
  namespace: q
  annotations: {switchyard.dev/respond-delay: "2s"}
spec:
  nodeName: node-2
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    readinessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 4, timeoutSeconds: 3}
---
apiVersion: v1
kind: Pod
metadata: {name: steps, namespace: q}
spec:
  nodeName: node-1
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 2, successThreshold: 3}
---
apiVersion: v1
kind: Pod
metadata:
  name: refuser
  namespace: q
  labels: {app: r}
  annotations: {switchyard.dev/refuse-after: "12s"}
spec:
  nodeName: node-2
  containers:
  - name: s
    image: lab
    ports: [{containerPort: 80}]
    readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1, failureThreshold: 3}
---
apiVersion: v1
kind: Service
metadata: {name: r, namespace: q}
spec:
  selector: {app: r}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: done
  namespace: q
  annotations: {switchyard.dev/exit-after: "2s", switchyard.dev/exit-code: "0"}
spec:
  nodeName: node-1
  restartPolicy: OnFailure
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: broke
  namespace: q
  annotations: {switchyard.dev/exit-after: "2s", switchyard.dev/exit-code: "3"}
spec:
  nodeName: node-2
  restartPolicy: Never
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: crashy
  namespace: q
  annotations: {switchyard.dev/exit-after: "2s", switchyard.dev/exit-code: "1"}
spec:
  nodeName: node-1
  restartPolicy: OnFailure
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
"#;

/// The probe options one by one (timeoutSeconds, successThreshold,
/// failureThreshold with a refusing server), the endpoints following
/// readiness, and restartPolicy against exiting servers.
#[test]
fn probe_options_and_restart_policies() {
    let lab = TestLab::shared("probes", 2, "flat", "ipv4");
    let o = lab.apply(OPTIONS);
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();

    // successThreshold 3, period 2 s: a pod is seen with a successful
    // last result and still not ready, then ready within 3 periods.
    until(
        &lab,
        "steps",
        Duration::from_secs(2) + SLACK,
        "succeeding but not ready yet",
        |p| p["probes"][0]["consecutiveSuccesses"].as_u64() >= Some(1) && !ready(p),
    );
    let steps = until(
        &lab,
        "steps",
        Duration::from_secs(6) + SLACK,
        "ready",
        ready,
    );
    let p = pod(&lab.status(), "steps").clone();
    assert!(
        p["probes"][0]["consecutiveSuccesses"].as_u64().unwrap() >= 3,
        "{p}"
    );
    eprintln!("steps ready {steps:?} after its first success");

    // The refuser is ready, then refuses connections 12 s after its start
    // (late enough to be seen ready after the checks above):
    // not ready after failureThreshold (3) × period (1 s), and out of its
    // Service's endpoints within one more period.
    until(&lab, "refuser", Duration::from_secs(12), "ready", ready);
    let ip = lab.pod_ips("q/refuser")[0].clone();
    let endpoints = |lab: &TestLab| -> Vec<String> {
        let s = lab.status();
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["namespace"] == "q" && v["name"] == "r")
            .map(|v| {
                v["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let bound = t0 + Duration::from_secs(12 + 3 + 1) + SLACK;
    let mut was_in = false;
    loop {
        let e = endpoints(&lab);
        if e.contains(&format!("{ip}:80")) {
            was_in = true;
        } else if was_in {
            break;
        }
        assert!(
            Instant::now() < bound,
            "refuser's endpoint: in {was_in}, not out within {:?}: {e:?}",
            bound - t0
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = pod(&lab.status(), "refuser").clone();
    assert!(!ready(&p), "{p}");
    assert_eq!(restarts(&p), 0, "{p}");
    assert!(
        p["probes"][0]["lastMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{p}"
    );

    // timeoutSeconds: the same 2 s answer fails a 1 s timeout and passes a
    // 3 s one.
    until(
        &lab,
        "patient",
        Duration::from_secs(4 + 2) + SLACK,
        "ready",
        ready,
    );
    let p = pod(&lab.status(), "laggy").clone();
    assert!(!ready(&p), "answered within its timeout: {p}");
    assert_eq!(p["probes"][0]["result"], "Failure", "{p}");
    assert!(
        p["probes"][0]["lastMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("timeout"),
        "{p}"
    );

    // restartPolicy: OnFailure with exit 0 completes; Never with exit 3
    // fails; OnFailure with exit 1 restarts, then backs off.
    let t = Duration::from_secs(2) + SLACK;
    until(&lab, "done", t, "Succeeded", |p| {
        p["phase"] == "Succeeded" && p["reason"] == "Completed"
    });
    until(&lab, "broke", t, "Failed", |p| {
        p["phase"] == "Failed" && p["reason"] == "Error"
    });
    until(
        &lab,
        "crashy",
        t + Duration::from_secs(2),
        "backing off",
        |p| restarts(p) >= 2 && p["reason"] == "CrashLoopBackOff" && p["phase"] == "Running",
    );
    let s = lab.status();
    assert_eq!(restarts(pod(&s, "done")), 0);
    assert_eq!(restarts(pod(&s, "broke")), 0);
    drop(lab);
}
