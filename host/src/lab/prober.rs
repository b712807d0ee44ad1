//! The lab kubelet's prober: a [`Worker`] per probe of each container of each
//! pod this node runs, attempts run on the agent's tokio runtime, results
//! collected on the kubelet's thread. What comes out per pod is the
//! kubelet's view: which containers are started and ready, and which must be
//! restarted (a liveness or startup probe failed). Readiness also goes to the
//! agent's [`ProbeTable`], which modules read through the `probes` host
//! interface.

use crate::datapath::probes::{EndpointHealth, ProbeTable};
use crate::probe::check::{self, Target};
use crate::probe::{Attempt, ProbeKind, ProbeResult, ProbeSpec, Worker};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub type PodKey = (String, String);

struct PodProbes {
    uid: String,
    /// Bumped on every restart, so results of attempts against the old
    /// container are dropped.
    generation: u64,
    workers: Vec<Worker>,
    target: Target,
    /// The container ports, for the probe table (address, port) keys.
    ports: Vec<u16>,
    /// Every address of the pod: probes go to the first (the kubelet
    /// probes status.podIP), results are the pod's, in every family.
    addresses: Vec<IpAddr>,
    containers: Vec<String>,
}

struct Done {
    key: PodKey,
    generation: u64,
    index: usize,
    attempt: Attempt,
    latency: Duration,
}

/// A container as its probes see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerHealth {
    pub started: bool,
    pub ready: bool,
    /// Why the container must be restarted, if it must.
    pub restart: Option<String>,
}

pub use crate::probe::ProbeStatus;

pub struct Prober {
    rt: tokio::runtime::Handle,
    table: Arc<ProbeTable>,
    pods: BTreeMap<PodKey, PodProbes>,
    tx: mpsc::Sender<Done>,
    rx: mpsc::Receiver<Done>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("pods", &self.pods.len())
            .finish_non_exhaustive()
    }
}

fn describe(s: &ProbeSpec) -> String {
    use crate::probe::Handler;
    match &s.handler {
        Handler::Http {
            https, port, path, ..
        } => format!(
            "http-get {}://:{port}{path}",
            if *https { "https" } else { "http" }
        ),
        Handler::Tcp { port, .. } => format!("tcp-socket :{port}"),
        Handler::Grpc { port, service } => format!("grpc :{port} {service}"),
        Handler::Exec { command } => format!("exec {}", command.join(" ")),
    }
}

impl Prober {
    pub fn new(rt: tokio::runtime::Handle, table: Arc<ProbeTable>) -> Prober {
        let (tx, rx) = mpsc::channel();
        Prober {
            rt,
            table,
            pods: BTreeMap::new(),
            tx,
            rx,
        }
    }

    /// Probe `pod`, whose server started at `started`, from now on (a pod
    /// already probed under the same uid keeps its state).
    pub fn ensure(
        &mut self,
        key: &PodKey,
        pod: &Pod,
        ips: &[String],
        netns: &str,
        started: Instant,
    ) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.pods.get(key).is_some_and(|p| p.uid == uid) {
            return;
        }
        self.forget(key);
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        let mut workers = vec![];
        let mut ports = vec![];
        let mut names = vec![];
        for c in containers {
            names.push(c.name.clone());
            ports.extend(
                c.ports
                    .iter()
                    .flatten()
                    .filter_map(|p| u16::try_from(p.container_port).ok()),
            );
            for kind in ProbeKind::ALL {
                // Admission validated the probes; one that still does not
                // convert is left out (and the container counts as having none).
                if let Some(Ok(spec)) = ProbeSpec::of(kind, c) {
                    workers.push(Worker::new(spec, started));
                }
            }
        }
        let addresses: Vec<IpAddr> = ips.iter().filter_map(|a| a.parse().ok()).collect();
        let address = addresses.first().copied();
        self.pods.insert(
            key.clone(),
            PodProbes {
                uid,
                generation: 0,
                workers,
                target: Target {
                    address,
                    netns: netns.to_string(),
                },
                ports,
                addresses,
                containers: names,
            },
        );
        self.publish(key);
    }

    pub fn forget(&mut self, key: &PodKey) {
        if let Some(p) = self.pods.remove(key) {
            for a in &p.addresses {
                for port in &p.ports {
                    self.table.remove(*a, *port);
                }
            }
        }
    }

    /// The pod's server restarted at `now`: every probe starts over.
    /// Returns false if the pod is not probed yet.
    pub fn restarted(&mut self, key: &PodKey, now: Instant) -> bool {
        let Some(p) = self.pods.get_mut(key) else {
            return false;
        };
        p.generation += 1;
        for w in &mut p.workers {
            w.restarted(now);
        }
        self.publish(key);
        true
    }

    /// Begin the attempts that are due and take in those that ended.
    /// Returns the pods whose health, or a probe's raw result, changed.
    pub fn tick(&mut self, now: Instant) -> Vec<PodKey> {
        let mut changed = vec![];
        while let Ok(d) = self.rx.try_recv() {
            let Some(p) = self.pods.get_mut(&d.key) else {
                continue;
            };
            if p.generation != d.generation {
                continue;
            }
            if d.index >= p.workers.len() {
                continue;
            }
            let before = health_of(p);
            let last = p.workers[d.index].last_attempt();
            let last_message = p.workers[d.index].last_message.clone();
            p.workers[d.index].finish(d.attempt, d.latency);
            // Pod status follows the health, and also each turn of a raw
            // result (a first success under a successThreshold of 3 shows)
            // or of its cause (refused, then timing out), but not every
            // attempt: a steady pod writes nothing.
            let w = &p.workers[d.index];
            if health_of(p) != before || w.last_attempt() != last || w.last_message != last_message
            {
                changed.push(d.key.clone());
            }
            let key = d.key.clone();
            self.publish(&key);
        }
        for (key, p) in &mut self.pods {
            let started: BTreeMap<String, bool> = p
                .containers
                .iter()
                .map(|c| (c.clone(), startup_passed(&p.workers, c)))
                .collect();
            for (index, w) in p.workers.iter_mut().enumerate() {
                // A startup probe holds back the container's other probes.
                if w.spec.kind != ProbeKind::Startup && !started[&w.spec.container] {
                    continue;
                }
                if !w.due(now) {
                    continue;
                }
                w.begin(now);
                let tx = self.tx.clone();
                let handler = w.spec.handler.clone();
                let timeout = w.spec.timeout;
                let target = p.target.clone();
                let key = key.clone();
                let generation = p.generation;
                self.rt.spawn(async move {
                    let t0 = Instant::now();
                    let attempt = check::run(&handler, &target, timeout).await;
                    let _ = tx.send(Done {
                        key,
                        generation,
                        index,
                        attempt,
                        latency: t0.elapsed(),
                    });
                });
            }
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// Each container's health, by name.
    pub fn health(&self, key: &PodKey) -> Option<BTreeMap<String, ContainerHealth>> {
        self.pods.get(key).map(health_of)
    }

    /// Every probe of the pod.
    pub fn statuses(&self, key: &PodKey) -> Vec<ProbeStatus> {
        let Some(p) = self.pods.get(key) else {
            return vec![];
        };
        p.workers
            .iter()
            .map(|w| ProbeStatus {
                container: w.spec.container.clone(),
                kind: w.spec.kind,
                handler: describe(&w.spec),
                result: w.result,
                consecutive_successes: w.consecutive_successes,
                consecutive_failures: w.consecutive_failures,
                last_latency_ms: w.last_latency.map(|d| d.as_secs_f64() * 1e3),
                last_message: w.last_message.clone(),
                attempts: w.attempts,
                period_seconds: w.spec.period.as_secs(),
                failure_threshold: w.spec.failure_threshold,
                success_threshold: w.spec.success_threshold,
            })
            .collect()
    }

    /// Readiness into the probe table, per container port of the pod.
    fn publish(&self, key: &PodKey) {
        let Some(p) = self.pods.get(key) else {
            return;
        };
        let health = health_of(p);
        let ready = health.values().all(|h| h.ready);
        let readiness = p
            .workers
            .iter()
            .find(|w| w.spec.kind == ProbeKind::Readiness);
        let e = EndpointHealth {
            ready,
            last_result: readiness.map_or(
                if ready {
                    ProbeResult::Success
                } else {
                    ProbeResult::Unknown
                },
                |w| w.result,
            ),
            last_latency: readiness.and_then(|w| w.last_latency),
            consecutive_failures: readiness.map_or(0, |w| w.consecutive_failures),
            consecutive_successes: readiness.map_or(0, |w| w.consecutive_successes),
        };
        for a in &p.addresses {
            for port in &p.ports {
                self.table.set(*a, *port, e.clone());
            }
        }
    }
}

fn startup_passed(workers: &[Worker], container: &str) -> bool {
    workers
        .iter()
        .filter(|w| w.spec.container == container && w.spec.kind == ProbeKind::Startup)
        .all(|w| w.result == ProbeResult::Success)
}

fn health_of(p: &PodProbes) -> BTreeMap<String, ContainerHealth> {
    p.containers
        .iter()
        .map(|c| {
            let started = startup_passed(&p.workers, c);
            let mine = || p.workers.iter().filter(move |w| w.spec.container == *c);
            let ready = started
                && mine()
                    .filter(|w| w.spec.kind == ProbeKind::Readiness)
                    .all(|w| w.result == ProbeResult::Success);
            let restart = mine()
                .find(|w| w.spec.kind != ProbeKind::Readiness && w.result == ProbeResult::Failure)
                .map(|w| {
                    format!(
                        "container {c} failed its {} probe: {}",
                        match w.spec.kind {
                            ProbeKind::Startup => "startup",
                            _ => "liveness",
                        },
                        w.last_message.as_deref().unwrap_or("failed")
                    )
                });
            (
                c.clone(),
                ContainerHealth {
                    started,
                    ready,
                    restart,
                },
            )
        })
        .collect()
}
