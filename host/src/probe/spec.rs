//! A container's probe as the kubelet runs it: the Kubernetes `Probe` with the
//! API server's defaults applied and its port resolved, and the API server's
//! validation of it (`spec.containers[0].readinessProbe.periodSeconds:
//! Invalid value: -1: must be greater than or equal to 0`).

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;

/// Which of a container's probes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];

    /// The field of the container that holds it.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startupProbe",
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
        }
    }

    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

/// What a probe does, its port resolved to a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// `httpGet`: success is a status of 200 to 399.
    Http {
        https: bool,
        /// `host`; the pod's address when empty.
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// `tcpSocket`: success is an established connection.
    Tcp { host: Option<String>, port: u16 },
    /// `grpc`: grpc.health.v1 `Check`; success is SERVING.
    Grpc { port: u16, service: String },
    /// `exec`: success is exit status 0.
    Exec { command: Vec<String> },
}

/// A probe ready to run: handler and timing, with Kubernetes' defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub container: String,
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// Kubernetes' defaults (`SetDefaults_Probe`).
pub const DEFAULT_PERIOD_SECONDS: i32 = 10;
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
pub const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
pub const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

fn or_default(v: Option<i32>, default: i32) -> i32 {
    match v {
        None | Some(0) => default,
        Some(v) => v,
    }
}

fn resolve_port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("port {n} is out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("container {} has no port named {name:?}", c.name)),
    }
}

impl ProbeSpec {
    /// The probe of kind `kind` of container `c`, if it has one. A probe that
    /// passed [`validate`] always converts.
    pub fn of(kind: ProbeKind, c: &Container) -> Option<Result<ProbeSpec, String>> {
        kind.of(c).map(|p| ProbeSpec::new(kind, p, c))
    }

    pub fn new(kind: ProbeKind, p: &Probe, c: &Container) -> Result<ProbeSpec, String> {
        let handler = if let Some(h) = &p.http_get {
            Handler::Http {
                https: h.scheme.as_deref() == Some("HTTPS"),
                host: h.host.clone().filter(|h| !h.is_empty()),
                port: resolve_port(&h.port, c)?,
                path: h
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("/".into()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        } else if let Some(t) = &p.tcp_socket {
            Handler::Tcp {
                host: t.host.clone().filter(|h| !h.is_empty()),
                port: resolve_port(&t.port, c)?,
            }
        } else if let Some(g) = &p.grpc {
            Handler::Grpc {
                port: resolve_port(&IntOrString::Int(g.port), c)?,
                service: g.service.clone().unwrap_or_default(),
            }
        } else if let Some(e) = &p.exec {
            Handler::Exec {
                command: e.command.clone().unwrap_or_default(),
            }
        } else {
            return Err(format!(
                "the {} of container {} has no handler",
                kind.field(),
                c.name
            ));
        };
        let secs = |v: i32| Duration::from_secs(v.max(0) as u64);
        Ok(ProbeSpec {
            kind,
            container: c.name.clone(),
            handler,
            initial_delay: secs(p.initial_delay_seconds.unwrap_or(0)),
            period: secs(or_default(p.period_seconds, DEFAULT_PERIOD_SECONDS)),
            timeout: secs(or_default(p.timeout_seconds, DEFAULT_TIMEOUT_SECONDS)),
            success_threshold: or_default(p.success_threshold, DEFAULT_SUCCESS_THRESHOLD) as u32,
            failure_threshold: or_default(p.failure_threshold, DEFAULT_FAILURE_THRESHOLD) as u32,
        })
    }
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

/// An HTTP header field name: an RFC 7230 token.
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn port_errors(path: &str, p: &IntOrString, c: &Container, out: &mut Vec<String>) {
    match p {
        IntOrString::Int(n) => {
            if !(1..=65535).contains(n) {
                out.push(format!("{path}: Invalid value: {n}: {PORT_RANGE}"));
            }
        }
        IntOrString::String(name) => {
            if let Err(why) = crate::k8s::iana_svc_name(name) {
                out.push(format!("{path}: Invalid value: {name:?}: {why}"));
            } else if resolve_port(p, c).is_err() {
                // The API server leaves this to the kubelet, whose probe then
                // fails forever; the lab says so at once.
                out.push(format!(
                    "{path}: Invalid value: {name:?}: no port of container {:?} has this name",
                    c.name
                ));
            }
        }
    }
}

/// The API server's field errors for probe `p` of kind `kind` of container
/// `c`, whose path is `at` (`spec.containers[0]`).
pub fn validate(at: &str, kind: ProbeKind, p: &Probe, c: &Container) -> Vec<String> {
    let path = format!("{at}.{}", kind.field());
    let mut out = vec![];
    let handlers: Vec<&str> = [
        ("exec", p.exec.is_some()),
        ("httpGet", p.http_get.is_some()),
        ("tcpSocket", p.tcp_socket.is_some()),
        ("grpc", p.grpc.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(n, _)| n)
    .collect();
    match handlers.as_slice() {
        [] => out.push(format!(
            "{path}: Required value: must specify a handler type"
        )),
        [_] => {}
        [_, more @ ..] => {
            for h in more {
                out.push(format!(
                    "{path}.{h}: Forbidden: may not specify more than 1 handler type"
                ));
            }
        }
    }
    for (field, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = v
            && v < 0
        {
            out.push(format!(
                "{path}.{field}: Invalid value: {v}: must be greater than or equal to 0"
            ));
        }
    }
    if let Some(v) = p.termination_grace_period_seconds
        && v <= 0
    {
        out.push(format!(
            "{path}.terminationGracePeriodSeconds: Invalid value: {v}: must be greater than 0"
        ));
    }
    if kind != ProbeKind::Readiness
        && let Some(v) = p.success_threshold
        && v > 1
    {
        out.push(format!(
            "{path}.successThreshold: Invalid value: {v}: must be 1"
        ));
    }
    if kind == ProbeKind::Readiness && p.termination_grace_period_seconds.is_some() {
        out.push(format!(
            "{path}.terminationGracePeriodSeconds: Invalid value: {}: must not be set for readinessProbes",
            p.termination_grace_period_seconds.unwrap_or_default()
        ));
    }
    if let Some(h) = &p.http_get {
        port_errors(&format!("{path}.httpGet.port"), &h.port, c, &mut out);
        if let Some(s) = &h.scheme
            && s != "HTTP"
            && s != "HTTPS"
        {
            out.push(format!(
                "{path}.httpGet.scheme: Unsupported value: {s:?}: supported values: \"HTTP\", \"HTTPS\""
            ));
        }
        for (i, hd) in h.http_headers.iter().flatten().enumerate() {
            if !is_header_name(&hd.name) {
                out.push(format!(
                    "{path}.httpGet.httpHeaders[{i}].name: Invalid value: {:?}: a valid HTTP header must consist of alphanumeric characters or '-'",
                    hd.name
                ));
            }
        }
    }
    if let Some(t) = &p.tcp_socket {
        port_errors(&format!("{path}.tcpSocket.port"), &t.port, c, &mut out);
    }
    if let Some(g) = &p.grpc
        && !(1..=65535).contains(&g.port)
    {
        out.push(format!(
            "{path}.grpc.port: Invalid value: {}: {PORT_RANGE}",
            g.port
        ));
    }
    if let Some(e) = &p.exec
        && e.command.as_ref().is_none_or(|c| c.is_empty())
    {
        out.push(format!("{path}.exec.command: Required value"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(y: &str) -> Container {
        serde_yaml::from_str(y).unwrap()
    }

    const WEB: &str = r#"
name: web
image: x
ports: [{name: http, containerPort: 8080}]
"#;

    fn with(probe: &str) -> Container {
        container(&format!(
            "{WEB}readinessProbe: {probe}\nlivenessProbe: {probe}\n"
        ))
    }

    #[test]
    fn defaults_and_named_ports_are_applied() {
        let c = with("{httpGet: {port: http}}");
        let s = ProbeSpec::of(ProbeKind::Readiness, &c).unwrap().unwrap();
        assert_eq!(
            s.handler,
            Handler::Http {
                https: false,
                host: None,
                port: 8080,
                path: "/".into(),
                headers: vec![]
            }
        );
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        assert_eq!(s.initial_delay, Duration::ZERO);
        assert!(ProbeSpec::of(ProbeKind::Startup, &c).is_none());
        let g = with("{grpc: {port: 9090, service: db}, periodSeconds: 2, failureThreshold: 5}");
        let s = ProbeSpec::of(ProbeKind::Liveness, &g).unwrap().unwrap();
        assert_eq!(
            s.handler,
            Handler::Grpc {
                port: 9090,
                service: "db".into()
            }
        );
        assert_eq!((s.period, s.failure_threshold), (Duration::from_secs(2), 5));
    }

    #[test]
    fn invalid_probes_get_the_api_servers_messages() {
        let at = "spec.containers[0]";
        let errs = |probe: &str, kind: ProbeKind| {
            let c = with(probe);
            validate(at, kind, kind.of(&c).unwrap(), &c)
        };
        assert_eq!(
            errs(
                "{tcpSocket: {port: 80}, periodSeconds: -1}",
                ProbeKind::Readiness
            ),
            [
                "spec.containers[0].readinessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0"
            ]
        );
        assert_eq!(
            errs(
                "{tcpSocket: {port: 80}, httpGet: {port: 80}}",
                ProbeKind::Readiness
            ),
            [
                "spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"
            ]
        );
        assert_eq!(
            errs("{httpGet: {port: metrics}}", ProbeKind::Liveness),
            [
                "spec.containers[0].livenessProbe.httpGet.port: Invalid value: \"metrics\": no port of container \"web\" has this name"
            ]
        );
        assert_eq!(
            errs("{periodSeconds: 3}", ProbeKind::Liveness),
            ["spec.containers[0].livenessProbe: Required value: must specify a handler type"]
        );
        assert_eq!(
            errs(
                "{tcpSocket: {port: 80}, successThreshold: 2}",
                ProbeKind::Liveness
            ),
            ["spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1"]
        );
        assert!(
            errs(
                "{tcpSocket: {port: 80}, successThreshold: 2}",
                ProbeKind::Readiness
            )
            .is_empty()
        );
        assert_eq!(
            errs("{grpc: {port: 70000}}", ProbeKind::Readiness),
            [
                "spec.containers[0].readinessProbe.grpc.port: Invalid value: 70000: must be between 1 and 65535, inclusive"
            ]
        );
        assert_eq!(
            errs("{exec: {command: []}}", ProbeKind::Readiness),
            ["spec.containers[0].readinessProbe.exec.command: Required value"]
        );
        assert_eq!(
            errs("{httpGet: {port: 80, scheme: FTP}}", ProbeKind::Readiness),
            [
                "spec.containers[0].readinessProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\""
            ]
        );
    }
}
