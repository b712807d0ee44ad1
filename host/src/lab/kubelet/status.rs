//! A pod's status as the kubelet computes it: the phase from the containers'
//! states and the restart policy, the conditions (with transition times that
//! move only when a condition turns), container statuses with restarts and
//! the last termination, and the pod's and host's addresses.

use super::super::prober::ContainerHealth;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;

/// Now, as a Kubernetes timestamp (second precision, as the API server keeps it).
pub fn now() -> Time {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap_or_default())
}

/// What the pod's "container" (its server process) is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Runtime {
    /// The sandbox (namespace and network) is being made, or failed to be.
    Creating {
        message: Option<String>,
    },
    /// The pod asks for something the kubelet cannot do (a bad annotation).
    ConfigError {
        message: String,
    },
    Running {
        started_at: Time,
    },
    /// Stopped, waiting out the crash-loop back-off.
    BackOff {
        message: String,
    },
    /// Stopped for good (restart policy), or stopped for the pod's deletion.
    Terminated {
        exit_code: i32,
        started_at: Option<Time>,
        finished_at: Time,
    },
}

/// The last time the container stopped, for `lastState`.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    pub exit_code: i32,
    pub reason: String,
    pub started_at: Option<Time>,
    pub finished_at: Time,
}

/// Everything a pod's status is made of.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub runtime: &'a Runtime,
    pub ips: &'a [String],
    pub host_ips: &'a [String],
    /// When the kubelet first took the pod on.
    pub start_time: &'a Time,
    pub restarts: i32,
    pub last_termination: Option<&'a Termination>,
    /// Each container's probe verdict, by name.
    pub health: &'a BTreeMap<String, ContainerHealth>,
}

/// Conditions' last transitions, kept per pod so that a condition's time
/// says when it turned, not when status was last written.
#[derive(Debug, Clone, Default)]
pub struct Transitions(BTreeMap<String, (String, Time)>);

impl Transitions {
    fn condition(
        &mut self,
        type_: &str,
        ok: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> PodCondition {
        let status = if ok { "True" } else { "False" };
        let time = match self.0.get(type_) {
            Some((s, t)) if s == status => t.clone(),
            _ => {
                let t = now();
                self.0
                    .insert(type_.to_string(), (status.to_string(), t.clone()));
                t
            }
        };
        PodCondition {
            type_: type_.to_string(),
            status: status.into(),
            last_transition_time: Some(time),
            reason: if ok { None } else { reason.map(str::to_string) },
            message: if ok { None } else { message },
            ..Default::default()
        }
    }
}

fn exit_reason(code: i32) -> &'static str {
    match code {
        0 => "Completed",
        137 => "OOMKilled",
        _ => "Error",
    }
}

/// The pod's status.
pub fn pod_status(i: &Inputs<'_>, t: &mut Transitions) -> PodStatus {
    let spec = i.pod.spec.as_ref();
    let containers: Vec<(String, String)> = spec
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let running = matches!(i.runtime, Runtime::Running { .. });
    let sandbox = !matches!(
        i.runtime,
        Runtime::Creating { .. } | Runtime::ConfigError { .. }
    );
    let statuses: Vec<ContainerStatus> = containers
        .iter()
        .map(|(name, image)| {
            let h = i.health.get(name).cloned().unwrap_or(ContainerHealth {
                started: true,
                ready: true,
                restart: None,
            });
            let waiting = |reason: &str, message: Option<String>| ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message,
                }),
                ..Default::default()
            };
            let state = match i.runtime {
                Runtime::Creating { message } => waiting("ContainerCreating", message.clone()),
                Runtime::ConfigError { message } => {
                    waiting("CreateContainerConfigError", Some(message.clone()))
                }
                Runtime::BackOff { message } => waiting("CrashLoopBackOff", Some(message.clone())),
                Runtime::Running { started_at } => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(started_at.clone()),
                    }),
                    ..Default::default()
                },
                Runtime::Terminated {
                    exit_code,
                    started_at,
                    finished_at,
                } => ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: *exit_code,
                        reason: Some(exit_reason(*exit_code).into()),
                        started_at: started_at.clone(),
                        finished_at: Some(finished_at.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            };
            let last_state = i.last_termination.map(|l| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: l.exit_code,
                    reason: Some(l.reason.clone()),
                    started_at: l.started_at.clone(),
                    finished_at: Some(l.finished_at.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            ContainerStatus {
                name: name.clone(),
                image: image.clone(),
                image_id: String::new(),
                ready: running && h.ready,
                restart_count: i.restarts,
                started: Some(running && h.started),
                state: Some(state),
                last_state,
                container_id: sandbox.then(|| {
                    format!(
                        "lab://{}-{name}",
                        i.pod.metadata.uid.as_deref().unwrap_or("")
                    )
                }),
                ..Default::default()
            }
        })
        .collect();
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let all_ready = unready.is_empty();
    let not_ready_message = Some(format!(
        "containers with unready status: [{}]",
        unready.join(" ")
    ));
    let phase = match i.runtime {
        Runtime::Creating { .. } | Runtime::ConfigError { .. } => "Pending",
        Runtime::Terminated { exit_code: 0, .. } => "Succeeded",
        Runtime::Terminated { .. } => "Failed",
        Runtime::Running { .. } | Runtime::BackOff { .. } => "Running",
    };
    let conditions = vec![
        t.condition("PodReadyToStartContainers", sandbox, None, None),
        t.condition("Initialized", true, None, None),
        t.condition(
            "Ready",
            all_ready,
            Some("ContainersNotReady"),
            not_ready_message.clone(),
        ),
        t.condition(
            "ContainersReady",
            all_ready,
            Some("ContainersNotReady"),
            not_ready_message,
        ),
        t.condition("PodScheduled", true, None, None),
    ];
    let ips: Vec<PodIP> = i.ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect();
    PodStatus {
        phase: Some(phase.into()),
        pod_ip: i.ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then_some(ips),
        host_ip: i.host_ips.first().cloned(),
        host_ips: Some(
            i.host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.clone() })
                .collect(),
        ),
        start_time: Some(i.start_time.clone()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        qos_class: i.pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_yaml::from_str(
            "metadata: {name: web, namespace: x, uid: u1}\nspec:\n  containers: [{name: server, image: agnhost}]\n",
        )
        .unwrap()
    }

    #[test]
    fn phases_and_conditions_follow_the_container() {
        let pod = pod();
        let health = BTreeMap::new();
        let start = now();
        let mut t = Transitions::default();
        let inputs = |runtime: &Runtime| -> PodStatus {
            let i = Inputs {
                pod: &pod,
                runtime,
                ips: &["10.244.0.5".to_string()],
                host_ips: &["198.18.1.11".to_string()],
                start_time: &start,
                restarts: 0,
                last_termination: None,
                health: &health,
            };
            pod_status(&i, &mut Transitions::default())
        };
        let creating = inputs(&Runtime::Creating { message: None });
        assert_eq!(creating.phase.as_deref(), Some("Pending"));
        let running = inputs(&Runtime::Running { started_at: now() });
        assert_eq!(running.phase.as_deref(), Some("Running"));
        let ready = running
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let failed = inputs(&Runtime::Terminated {
            exit_code: 3,
            started_at: None,
            finished_at: now(),
        });
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
        let st = &failed.container_statuses.unwrap()[0];
        assert_eq!(
            st.state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("Error")
        );
        // A condition's time moves only when it turns.
        let a = t.condition("Ready", true, None, None);
        let b = t.condition("Ready", true, None, None);
        assert_eq!(a.last_transition_time, b.last_transition_time);
    }
}
