//! The cluster agent's pod store: memory, and the cost a snapshot pays to
//! copy it, with pods as the API server sends them and trimmed to what the
//! agent reads (`switchyard::source::kube::trim_pod`).
//!
//! Pods are watched cluster-wide (NetworkPolicy peers live on every node),
//! so every agent holds every pod, and every snapshot (one per settled burst
//! of changes) copies the store. The pods are a realistic shape: a
//! Deployment's pod with an app container and a sidecar, probes, env,
//! volume mounts, resources, owner references, annotations, dual-stack
//! addresses, conditions and container statuses (managed fields already
//! dropped, as the source drops them from every kind).
//!
//! Stores are kube's reflector stores, filled as the watcher fills them.
//! Memory is counted by a global allocator wrapper (live heap bytes after
//! building a store, minus before). A snapshot's cost is timed with the
//! kube source's own functions: `owned` (copies, what every kind used and
//! pods used before) and `shared` (pods now), 30 samples each after
//! warm-up, the variants alternating.
//!
//! Run: `cargo run --release -p switchyard-bench --bin pod_store [-- SIZES]`

// The counting allocator below is the only unsafe code: it forwards to the
// system allocator.
#![allow(unsafe_code)]

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde::Serialize;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use switchyard::source::kube::{owned, shared, trim_pod};
use switchyard_bench::{Summary, header, machine, write_results};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// wrapper only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Pod `i` of a Deployment, on one of 100 nodes.
fn pod(i: u32) -> Pod {
    let (a, b) = (i / 250, i % 250 + 2);
    let v = serde_json::json!({
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": format!("web-7d9c8b6f5-{i:05x}"), "generateName": "web-7d9c8b6f5-",
        "namespace": format!("team-{}", i % 40), "uid": format!("6e5d4c3b-2a19-4f8e-9d7c-{i:012x}"),
        "resourceVersion": format!("{}", 100000 + i), "creationTimestamp": "2026-11-24T09:58:41Z",
        "labels": {"app": "web", "pod-template-hash": "7d9c8b6f5", "tier": "frontend",
                   "app.kubernetes.io/name": "web", "app.kubernetes.io/version": "1.27.3"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-20T08:00:00Z",
                        "prometheus.io/scrape": "true", "prometheus.io/port": "9187"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c8b6f5",
          "uid": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "controller": true, "blockOwnerDeletion": true}]},
      "spec": {"nodeName": format!("node-{}", i % 100), "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "web", "terminationGracePeriodSeconds": 30, "schedulerName": "default-scheduler",
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        "initContainers": [{"name": "log-shipper", "image": "fluent-bit:3.1", "restartPolicy": "Always",
          "ports": [{"name": "metrics", "containerPort": 2020, "protocol": "TCP"}],
          "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app"}],
          "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}],
        "containers": [{"name": "web", "image": "registry.example/web:1.27.3", "imagePullPolicy": "IfNotPresent",
          "args": ["--listen=:8080", "--metrics=:9187"],
          "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                  {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                  {"name": "LOG_LEVEL", "value": "info"}],
          "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9187, "protocol": "TCP"}],
          "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "periodSeconds": 5},
          "livenessProbe": {"httpGet": {"path": "/livez", "port": "http", "scheme": "HTTP"}, "periodSeconds": 10},
          "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
          "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app"},
                           {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
          "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
        "volumes": [{"name": "logs", "emptyDir": {}},
                    {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                      {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                      {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}]},
      "status": {"phase": "Running", "hostIP": format!("192.168.{}.{}", i % 100 / 250, i % 100 + 2),
        "podIP": format!("10.{}.{a}.{b}", 100 + i % 100 / 50),
        "podIPs": [{"ip": format!("10.{}.{a}.{b}", 100 + i % 100 / 50)}, {"ip": format!("fd00:10:{a:x}::{b:x}")}],
        "startTime": "2026-11-24T09:58:41Z", "qosClass": "Burstable",
        "conditions": [{"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": "2026-11-24T09:58:43Z"},
                       {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-24T09:58:44Z"},
                       {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-24T09:58:47Z"},
                       {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-24T09:58:47Z"},
                       {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-24T09:58:41Z"}],
        "containerStatuses": [{"name": "web", "ready": true, "started": true, "restartCount": 0,
          "image": "registry.example/web:1.27.3", "imageID": "registry.example/web@sha256:3f0c9a1b2c",
          "containerID": format!("containerd://{i:064x}"), "state": {"running": {"startedAt": "2026-11-24T09:58:45Z"}}}],
        "initContainerStatuses": [{"name": "log-shipper", "ready": true, "started": true, "restartCount": 0,
          "image": "fluent-bit:3.1", "imageID": "docker.io/fluent/fluent-bit@sha256:9a8b",
          "containerID": format!("containerd://{:064x}", i + 1), "state": {"running": {"startedAt": "2026-11-24T09:58:43Z"}}}]}
    });
    serde_json::from_value(v).expect("a pod")
}

/// Live heap bytes `f`'s result holds.
fn held<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let v = f();
    (v, LIVE.load(Ordering::Relaxed).saturating_sub(before))
}

/// A reflector store holding `pods`, as the kube source's watcher fills it.
fn store(pods: impl Iterator<Item = Pod>) -> Store<Pod> {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

#[derive(Serialize)]
struct SizeResult {
    pods: u32,
    full_bytes: usize,
    trimmed_bytes: usize,
    full_bytes_per_pod: usize,
    trimmed_bytes_per_pod: usize,
    memory_ratio: f64,
    snapshot_full_copied: Summary,
    snapshot_trimmed_copied: Summary,
    snapshot_trimmed_shared: Summary,
    /// p50 ratios against copying pods as sent.
    ratio_trimmed_copied: f64,
    ratio_trimmed_shared: f64,
}

#[derive(Serialize)]
struct Results {
    machine: switchyard_bench::Machine,
    sizes: Vec<SizeResult>,
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 30_000]
    } else {
        sizes
    };
    let mut out = vec![];
    header();
    for n in sizes {
        let (full, full_bytes) = held(|| store((0..n).map(pod)));
        let (trimmed, trimmed_bytes) = held(|| {
            store((0..n).map(|i| {
                let mut p = pod(i);
                trim_pod(&mut p);
                p
            }))
        });
        // What a snapshot does with the pod store: before, a copy of every
        // pod as sent; then of every trimmed pod; now the trimmed pods
        // shared with the store. Rounds alternate the three so drift hits
        // them alike.
        let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
        for round in 0..33 {
            let t = Instant::now();
            let v = owned(&full);
            let da = t.elapsed();
            drop(std::hint::black_box(v));
            let t = Instant::now();
            let v = owned(&trimmed);
            let db = t.elapsed();
            drop(std::hint::black_box(v));
            let t = Instant::now();
            let v = shared(&trimmed);
            let dc = t.elapsed();
            drop(std::hint::black_box(v));
            if round >= 3 {
                a.push(da);
                b.push(db);
                c.push(dc);
            }
        }
        let a = Summary::of(&format!("{n} pods: snapshot, pods as sent, copied"), a);
        let b = Summary::of(&format!("{n} pods: snapshot, trimmed, copied"), b);
        let c = Summary::of(&format!("{n} pods: snapshot, trimmed, shared"), c);
        for s in [&a, &b, &c] {
            s.print();
        }
        println!(
            "{n} pods: store {:.1} MiB as sent ({} B/pod), {:.1} MiB trimmed ({} B/pod)",
            full_bytes as f64 / 1048576.0,
            full_bytes / n as usize,
            trimmed_bytes as f64 / 1048576.0,
            trimmed_bytes / n as usize
        );
        out.push(SizeResult {
            pods: n,
            full_bytes,
            trimmed_bytes,
            full_bytes_per_pod: full_bytes / n as usize,
            trimmed_bytes_per_pod: trimmed_bytes / n as usize,
            memory_ratio: trimmed_bytes as f64 / full_bytes as f64,
            ratio_trimmed_copied: b.p50_us / a.p50_us,
            ratio_trimmed_shared: c.p50_us / a.p50_us,
            snapshot_full_copied: a,
            snapshot_trimmed_copied: b,
            snapshot_trimmed_shared: c,
        });
    }
    write_results(
        "pod-store",
        &Results {
            machine: machine(),
            sizes: out,
        },
    )
}
