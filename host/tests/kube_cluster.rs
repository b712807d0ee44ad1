//! The cluster agent against a real API server: the lab's control plane
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and its
//! agents, run exactly as a DaemonSet runs them. What a scripted API server
//! could only imitate happens here for real: a watch that cannot resume
//! after etcd compacted its history (410 Gone) and the relist that follows;
//! status written by server-side apply from several field managers; the
//! status Lease taken over when its holder dies; Events; and RBAC refusing
//! a verb, which the agent reports while it keeps serving.
//! Needs root (CI runs as root).

mod common;

use common::lab::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAB: &str = "kcluster";

fn lab() -> SharedLab {
    TestLab::shared(LAB, 2, "flat", "ipv4")
}

/// Wait until `f` holds, for at most `bound`; what it last saw otherwise.
fn until<T: std::fmt::Debug>(bound: Duration, what: &str, mut f: impl FnMut() -> (bool, T)) -> T {
    let t0 = Instant::now();
    loop {
        let (ok, seen) = f();
        if ok {
            return seen;
        }
        assert!(
            t0.elapsed() < bound,
            "{what}: not within {bound:?}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent_pid(lab: &TestLab, node: &str) -> i32 {
    std::fs::read_to_string(lab.dir.join("nodes").join(node).join("agent.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

fn apply(lab: &TestLab, yaml: &str) {
    let o = lab.apply(yaml);
    assert!(o.status.success(), "{}", text(&o));
}

fn json(lab: &TestLab, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&lab.kubectl_ok(&a)).unwrap()
}

/// A plain HTTP request to etcd's gRPC gateway, in the control-plane
/// namespace (etcd listens on its loopback only).
fn etcd(path: &str, body: &str) -> Value {
    let ns = Path::new("/var/run/netns").join(format!("sy{LAB}-control"));
    let (p, body) = (path.to_string(), body.to_string());
    let answer = switchyard::datapath::netlink::in_netns(&ns, move || {
        let path = p;
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:2379")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap();
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd {path}: {e}: {answer}"))
}

/// The kube-apiserver process of this lab, and its command line.
fn apiserver(lab: &TestLab) -> (i32, Vec<String>) {
    let marker = lab.dir.join("pki").display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("/kube-apiserver"))
            && args.iter().any(|a| a.contains(&marker))
        {
            return (pid, args);
        }
    }
    panic!("no kube-apiserver of lab {LAB} runs");
}

/// Kill the API server and start it again as the lab started it. It is not
/// waited for: it outlives the test, as the lab's own does, until `lab down`.
#[allow(clippy::zombie_processes)]
fn restart_apiserver(lab: &TestLab) {
    let (pid, args) = apiserver(lab);
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}/stat")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "kube-apiserver did not die"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.dir.join("control/kube-apiserver.log"))
        .unwrap();
    Command::new("ip")
        .args(["netns", "exec", &format!("sy{LAB}-control")])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = lab.dir.join("control/kube-apiserver.log");
    until(
        Duration::from_secs(60),
        "kube-apiserver ready again",
        || {
            let o = lab.kubectl(&["get", "--raw", "/readyz"]);
            // Its log's end, should it not come back.
            let tail: Vec<String> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .map(str::to_string)
                .collect();
            (o.status.success(), (text(&o), tail))
        },
    );
}

fn node_report(lab: &TestLab, node: &str) -> Value {
    lab.api(node, "/api/v1/node").1
}

/// A watch that cannot resume (etcd compacted the revisions it would resume
/// from, and the API server restarted with an empty watch cache) gets 410
/// Gone; the agent relists and sees what it missed meanwhile.
#[test]
fn a_watch_that_cannot_resume_relists() {
    let lab = lab();
    apply(
        &lab,
        "apiVersion: v1
kind: Namespace
metadata: {name: kc-watch}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: kc-watch, labels: {app: web}}
spec:
  nodeName: node-2
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
",
    );
    let relists = node_report(&lab, "node-1")["relists"].as_u64().unwrap();
    // node-1's agent sees nothing while stopped...
    let pid = agent_pid(&lab, "node-1");
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        apply(
            &lab,
            "apiVersion: v1
kind: Service
metadata: {name: missed, namespace: kc-watch}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: 80}]
",
        );
        // ...more writes move etcd's revision on, and etcd forgets the
        // history before it.
        for i in 0..20 {
            lab.kubectl_ok(&[
                "-n",
                "kc-watch",
                "create",
                "configmap",
                &format!("filler-{i}"),
                "--from-literal=k=v",
            ]);
        }
        let rev = etcd("/v3/kv/range", r#"{"key": "AA=="}"#)["header"]["revision"]
            .as_str()
            .unwrap()
            .to_string();
        let compacted = etcd(
            "/v3/kv/compaction",
            &format!(r#"{{"revision": "{rev}", "physical": true}}"#),
        );
        assert!(compacted["header"].is_object(), "{compacted}");
        // A new API server has only what etcd still holds.
        restart_apiserver(&lab);
    }));
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    if let Err(e) = resumed {
        std::panic::resume_unwind(e);
    }
    // Every watch of node-1 got 410 Gone ("too old resource version"),
    // reported while it lasts; each relists (after the watcher's back-off),
    // and the problems go.
    let report = until(Duration::from_secs(60), "relists on node-1", || {
        let r = node_report(&lab, "node-1");
        let done = r["relists"].as_u64().unwrap_or(0) > relists
            && r["problems"].as_array().is_some_and(|p| p.is_empty());
        (done, r)
    });
    let relisted = report["watches"]
        .as_object()
        .unwrap()
        .values()
        .filter(|w| w["relists"].as_u64() > Some(0))
        .count();
    assert!(relisted >= 5, "most kinds relisted: {report}");
    // What it missed is programmed now.
    let answer = lab.probe_until_allowed("node/node-1", "missed.kc-watch", 8080, "TCP", "ipv4");
    assert!(answer.contains("pod=kc-watch/web"), "{answer}");
    let log = std::fs::read_to_string(lab.dir.join("nodes/node-1/agent.log")).unwrap();
    assert!(
        log.contains("relisting"),
        "the agent's log says nothing of the relist"
    );
    lab.kubectl_ok(&["delete", "namespace", "kc-watch", "--wait=false"]);
}

/// Each agent writes its node's entry of a NetworkModule's status under its
/// own field manager, the Lease holder writes the summary under another,
/// and none replaces the others'. When the holder dies, the other agent
/// takes the Lease over and summarizes.
#[test]
fn status_from_several_managers_and_a_lease_takeover() {
    let lab = lab();
    apply(
        &lab,
        "apiVersion: switchyard.dev/v1alpha1
kind: NetworkModule
metadata: {name: kc-sched}
spec:
  role: scheduler
  source: {builtin: example-scheduler}
",
    );
    let obj = until(
        Duration::from_secs(30),
        "both nodes' entries and a summary",
        || {
            let o = json(
                &lab,
                &["get", "networkmodule", "kc-sched", "--show-managed-fields"],
            );
            let mut nodes: Vec<String> = o["status"]["nodeResults"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["state"] == "Ready")
                .map(|e| e["node"].as_str().unwrap().to_string())
                .collect();
            nodes.sort();
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (nodes == ["node-1", "node-2"] && ready, o)
        },
    );
    let managers: Vec<(String, String)> = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap().to_string(),
                m["subresource"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for want in [
        "switchyard-agent/node-1",
        "switchyard-agent/node-2",
        "switchyard-status-leader",
    ] {
        assert!(
            managers.contains(&(want.to_string(), "status".to_string())),
            "{want} does not manage status: {managers:?}"
        );
    }
    // node-1's manager owns node-1's entry, and only it.
    let owned = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == "switchyard-agent/node-1")
        .unwrap()["fieldsV1"]
        .to_string();
    assert!(owned.contains(r#"k:{\"node\":\"node-1\"}"#), "{owned}");
    assert!(!owned.contains("node-2"), "{owned}");

    // The Lease: its holder dies; the other agent takes over.
    let holder = |lab: &TestLab| -> String {
        json(
            lab,
            &[
                "-n",
                "switchyard-system",
                "get",
                "lease",
                "switchyard-status-leader",
            ],
        )["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let first = until(Duration::from_secs(30), "a Lease holder", || {
        let h = holder(&lab);
        (h.starts_with("node-"), h)
    });
    let other = if first == "node-1" {
        "node-2"
    } else {
        "node-1"
    };
    let pid = agent_pid(&lab, &first);
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let t0 = Instant::now();
    // 15 s of Lease, plus the survivor's 5 s tick.
    let now = until(Duration::from_secs(40), "the Lease taken over", || {
        let h = holder(&lab);
        (h == other, h)
    });
    eprintln!(
        "{now} took the Lease over {:.1} s after {first}'s agent died",
        t0.elapsed().as_secs_f64()
    );
    // The new leader summarizes: node entries change, the summary follows.
    lab.kubectl_ok(&[
        "patch",
        "networkmodule",
        "kc-sched",
        "--type=merge",
        "-p",
        r#"{"spec": {"source": {"builtin": "no-such-module"}}}"#,
    ]);
    until(
        Duration::from_secs(30),
        "the new leader's Degraded summary",
        || {
            let o = json(&lab, &["get", "networkmodule", "kc-sched"]);
            let degraded = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Degraded" && c["status"] == "True");
            (degraded, o["status"].clone())
        },
    );
    let o = lab.run(&["restart", &first]);
    assert!(o.status.success(), "{}", text(&o));
    lab.kubectl_ok(&["delete", "networkmodule", "kc-sched"]);
}

/// A module that cannot load: every agent posts a Warning Event about the
/// NetworkModule, naming its node and the cause.
#[test]
fn a_failing_module_gets_events_from_every_node() {
    let lab = lab();
    apply(
        &lab,
        "apiVersion: switchyard.dev/v1alpha1
kind: NetworkModule
metadata: {name: kc-missing}
spec:
  role: scheduler
  source: {file: /nonexistent/kc.wasm, sha256: 0000000000000000000000000000000000000000000000000000000000000000}
",
    );
    let events = until(Duration::from_secs(30), "an Event from each node", || {
        let ev = json(
            &lab,
            &[
                "get",
                "events",
                "-A",
                "--field-selector",
                "involvedObject.kind=NetworkModule,involvedObject.name=kc-missing",
            ],
        );
        let notes: Vec<String> = ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "Warning" && e["reason"] == "ModuleLoadFailed")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect();
        let both = ["node-1", "node-2"]
            .iter()
            .all(|n| notes.iter().any(|m| m.contains(&format!("node {n}:"))));
        (both, notes)
    });
    assert!(
        events.iter().all(|m| m.contains("/nonexistent/kc.wasm")),
        "{events:?}"
    );
    lab.kubectl_ok(&["delete", "networkmodule", "kc-missing"]);
}

/// RBAC takes a verb away: the agent says which, by name, and keeps serving
/// (Services keep working, new pods get their network); given the verb
/// back, the problem goes.
#[test]
fn an_rbac_denial_is_reported_and_the_agent_keeps_serving() {
    let lab = lab();
    apply(
        &lab,
        "apiVersion: v1
kind: Namespace
metadata: {name: kc-rbac}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: kc-rbac, labels: {app: web}}
spec:
  nodeName: node-2
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: kc-rbac}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: 80}]
",
    );
    lab.probe_until_allowed("node/node-1", "web.kc-rbac", 8080, "TCP", "ipv4");
    // The agents' ClusterRole without the status of NetworkModules.
    let role = json(&lab, &["get", "clusterrole", "switchyard-agent"]);
    let mut reduced = role.clone();
    reduced["rules"] = Value::Array(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["resources"].to_string().contains("networkmodules/status"))
            .cloned()
            .collect(),
    );
    for k in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        reduced["metadata"].as_object_mut().unwrap().remove(k);
    }
    let f = lab.dir.join("kc-role.json");
    std::fs::write(&f, reduced.to_string()).unwrap();
    lab.kubectl_ok(&["replace", "-f", f.to_str().unwrap()]);
    let restore = || {
        let mut r = role.clone();
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
        ] {
            r["metadata"].as_object_mut().unwrap().remove(k);
        }
        std::fs::write(&f, r.to_string()).unwrap();
        lab.kubectl_ok(&["replace", "-f", f.to_str().unwrap()]);
    };
    let denied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A new module gives the agents a status to write.
        apply(
            &lab,
            "apiVersion: switchyard.dev/v1alpha1
kind: NetworkModule
metadata: {name: kc-rbac}
spec:
  role: scheduler
  source: {builtin: example-scheduler}
",
        );
        let report = until(Duration::from_secs(30), "the denial reported", || {
            let r = node_report(&lab, "node-1");
            let said = r["problems"].as_array().unwrap().iter().any(|p| {
                let p = p.as_str().unwrap_or_default();
                p.contains("NetworkModule kc-rbac")
                    && p.contains("forbidden")
                    && p.contains("networkmodules/status")
            });
            (said, r)
        });
        assert_eq!(report["ready"], false, "{report}");
        // Still serving: the Service, and a new pod's network.
        let answer = lab.probe_until_allowed("node/node-1", "web.kc-rbac", 8080, "TCP", "ipv4");
        assert!(answer.contains("pod=kc-rbac/web"), "{answer}");
        apply(
            &lab,
            "apiVersion: v1
kind: Pod
metadata: {name: late, namespace: kc-rbac}
spec:
  nodeName: node-1
  containers: [{name: s, image: lab, ports: [{containerPort: 80}]}]
",
        );
        let (ok, answer) = lab.probe("kc-rbac/late", "web.kc-rbac", 8080, "TCP", "ipv4");
        assert!(ok, "{answer}");
    }));
    restore();
    if let Err(e) = denied {
        std::panic::resume_unwind(e);
    }
    until(
        Duration::from_secs(30),
        "the problem gone with the verb back",
        || {
            let r = node_report(&lab, "node-1");
            (r["problems"].as_array().unwrap().is_empty(), r)
        },
    );
    lab.kubectl_ok(&["delete", "networkmodule", "kc-rbac"]);
    lab.kubectl_ok(&["delete", "namespace", "kc-rbac", "--wait=false"]);
}

/// An agent starts only from a complete view of the cluster: while RBAC
/// keeps it from listing one kind, it serves nothing and says so in its
/// log; given the verb, it starts.
#[test]
fn an_agent_starts_only_from_a_complete_view() {
    let lab = lab();
    let role = json(&lab, &["get", "clusterrole", "switchyard-agent"]);
    let strip = |mut r: Value| {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
        ] {
            r["metadata"].as_object_mut().unwrap().remove(k);
        }
        r
    };
    let mut reduced = strip(role.clone());
    for rule in reduced["rules"].as_array_mut().unwrap() {
        if rule["resources"]
            .to_string()
            .contains("\"wasmnetworkpolicies\"")
        {
            rule["verbs"] = serde_json::json!(["get"]);
        }
    }
    let f = lab.dir.join("kc-role-list.json");
    std::fs::write(&f, reduced.to_string()).unwrap();
    lab.kubectl_ok(&["replace", "-f", f.to_str().unwrap()]);
    let pid = agent_pid(&lab, "node-2");
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    // Started by hand, as `lab restart` starts it, without waiting for it.
    let started = Instant::now();
    let restart = std::thread::spawn({
        let dir = lab.dir.clone();
        move || {
            Command::new(BIN)
                .arg("lab")
                .arg("--dir")
                .arg(&dir)
                .args(["restart", "node-2"])
                .output()
                .unwrap()
        }
    });
    let held = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let log = lab.dir.join("nodes/node-2/agent.log");
        until(
            Duration::from_secs(30),
            "the refused list in the log",
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = text.lines().rev().take(40).collect::<Vec<_>>().join("\n");
                (
                    tail.contains("WasmNetworkPolicy") && tail.contains("forbidden"),
                    tail,
                )
            },
        );
        // No snapshot, no admin API: nothing was served from half a view.
        let node = lab.api_raw_result("node-2", "/api/v1/node");
        assert!(
            node.is_err(),
            "node-2's agent answered from a partial view: {node:?}"
        );
    }));
    lab.kubectl_ok(&["replace", "-f", {
        std::fs::write(&f, strip(role).to_string()).unwrap();
        f.to_str().unwrap()
    }]);
    if let Err(e) = held {
        let _ = restart.join();
        std::panic::resume_unwind(e);
    }
    let o = restart.join().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    eprintln!(
        "node-2's agent served {:.1} s after its restart, once it could list",
        started.elapsed().as_secs_f64()
    );
    let report = node_report(&lab, "node-2");
    assert!(report["snapshot"].as_u64() > Some(0), "{report}");
}
