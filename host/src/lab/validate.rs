//! Validation of the objects `lab apply` accepts, with the API server's
//! messages (`Pod "x" is invalid: spec.containers[0].ports[0].containerPort:
//! Invalid value: 70000: must be between 1 and 65535, inclusive`), so that a
//! manifest the lab takes is one a cluster would take.

use crate::probe::ProbeKind;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use std::collections::HashSet;

/// Field errors of one object.
#[derive(Debug, Default)]
pub struct Errors {
    list: Vec<String>,
}

impl Errors {
    fn required(&mut self, path: &str) {
        self.list.push(format!("{path}: Required value"));
    }

    fn invalid(&mut self, path: &str, value: impl std::fmt::Display, why: &str) {
        self.list
            .push(format!("{path}: Invalid value: {value}: {why}"));
    }

    fn duplicate(&mut self, path: &str, value: impl std::fmt::Display) {
        self.list.push(format!("{path}: Duplicate value: {value}"));
    }

    fn unsupported(&mut self, path: &str, value: &str, supported: &[&str]) {
        let s: Vec<String> = supported.iter().map(|v| format!("{v:?}")).collect();
        self.list.push(format!(
            "{path}: Unsupported value: {value:?}: supported values: {}",
            s.join(", ")
        ));
    }

    /// The API server's message, or `None` if the object is valid.
    pub fn message(&self, kind: &str, name: &str) -> Option<String> {
        match self.list.as_slice() {
            [] => None,
            [one] => Some(format!("{kind} {name:?} is invalid: {one}")),
            many => Some(format!("{kind} {name:?} is invalid: [{}]", many.join(", "))),
        }
    }
}

const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

/// IANA service names: at most 15 characters, lowercase letters, digits and
/// '-', at least one letter, no '-' at either end or twice in a row.
pub fn iana_svc_name(s: &str) -> Result<(), &'static str> {
    if s.len() > 15 {
        return Err("must be no more than 15 characters");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen");
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens");
    }
    Ok(())
}

fn meta(e: &mut Errors, name: Option<&str>, namespace: Option<&str>, namespaced: bool) {
    match name {
        None | Some("") => e.required("metadata.name"),
        Some(n) if !is_subdomain(n) => {
            e.invalid("metadata.name", format!("{n:?}"), DNS1123_SUBDOMAIN)
        }
        _ => {}
    }
    if namespaced
        && let Some(ns) = namespace
        && !is_label(ns)
    {
        e.invalid("metadata.namespace", format!("{ns:?}"), DNS1123_LABEL);
    }
}

const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];

pub fn pod(p: &Pod) -> Result<(), String> {
    let mut e = Errors::default();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    meta(
        &mut e,
        p.metadata.name.as_deref(),
        p.metadata.namespace.as_deref(),
        true,
    );
    if let Some(a) = &p.metadata.annotations
        && let Err(why) = super::behaviour::Behaviour::from_annotations(a)
    {
        e.list
            .push(format!("metadata.annotations: Invalid value: {why}"));
    }
    match &p.spec {
        None => e.required("spec"),
        Some(spec) => {
            if spec.containers.is_empty() {
                e.required("spec.containers");
            }
            let mut names = HashSet::new();
            for (i, c) in spec.containers.iter().enumerate() {
                let at = format!("spec.containers[{i}]");
                if c.name.is_empty() {
                    e.required(&format!("{at}.name"));
                } else if !is_label(&c.name) {
                    e.invalid(
                        &format!("{at}.name"),
                        format!("{:?}", c.name),
                        DNS1123_LABEL,
                    );
                } else if !names.insert(c.name.clone()) {
                    e.duplicate(&format!("{at}.name"), format!("{:?}", c.name));
                }
                if c.image.as_deref().unwrap_or_default().is_empty() {
                    e.required(&format!("{at}.image"));
                }
                let mut port_names = HashSet::new();
                for (j, port) in c.ports.iter().flatten().enumerate() {
                    let pat = format!("{at}.ports[{j}]");
                    if port.container_port == 0 {
                        e.required(&format!("{pat}.containerPort"));
                    } else if !(1..=65535).contains(&port.container_port) {
                        e.invalid(
                            &format!("{pat}.containerPort"),
                            port.container_port,
                            "must be between 1 and 65535, inclusive",
                        );
                    }
                    if let Some(hp) = port.host_port
                        && !(1..=65535).contains(&hp)
                    {
                        e.invalid(
                            &format!("{pat}.hostPort"),
                            hp,
                            "must be between 1 and 65535, inclusive",
                        );
                    }
                    if let Some(proto) = &port.protocol
                        && !PROTOCOLS.contains(&proto.as_str())
                    {
                        e.unsupported(&format!("{pat}.protocol"), proto, &PROTOCOLS);
                    }
                    if let Some(n) = &port.name {
                        if let Err(why) = iana_svc_name(n) {
                            e.invalid(&format!("{pat}.name"), format!("{n:?}"), why);
                        } else if !port_names.insert(n.clone()) {
                            e.duplicate(&format!("{pat}.name"), format!("{n:?}"));
                        }
                    }
                }
                for kind in ProbeKind::ALL {
                    if let Some(p) = kind.of(c) {
                        e.list.extend(crate::probe::spec::validate(&at, kind, p, c));
                    }
                }
            }
        }
    }
    e.message("Pod", name).map_or(Ok(()), Err)
}

pub fn namespace(n: &Namespace) -> Result<(), String> {
    let mut e = Errors::default();
    let name = n.metadata.name.as_deref().unwrap_or_default();
    match n.metadata.name.as_deref() {
        None | Some("") => e.required("metadata.name"),
        Some(v) if !is_label(v) => e.invalid("metadata.name", format!("{v:?}"), DNS1123_LABEL),
        _ => {}
    }
    e.message("Namespace", name).map_or(Ok(()), Err)
}

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

pub fn service(s: &Service) -> Result<(), String> {
    let mut e = Errors::default();
    let name = s.metadata.name.as_deref().unwrap_or_default();
    meta(
        &mut e,
        s.metadata.name.as_deref(),
        s.metadata.namespace.as_deref(),
        true,
    );
    if let Some(n) = s.metadata.name.as_deref()
        && !n.is_empty()
        && !is_label(n)
    {
        e.invalid("metadata.name", format!("{n:?}"), DNS1123_LABEL);
    }
    let Some(spec) = &s.spec else {
        e.required("spec");
        return e.message("Service", name).map_or(Ok(()), Err);
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&ty) {
        e.unsupported("spec.type", ty, &SERVICE_TYPES);
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && spec.cluster_ip.as_deref() != Some("None") {
        e.required("spec.ports");
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        match &p.name {
            None | Some(_)
                if ports.len() > 1 && p.name.as_deref().unwrap_or_default().is_empty() =>
            {
                e.required(&format!("{at}.name"))
            }
            Some(n) if !n.is_empty() && !is_label(n) => {
                e.invalid(&format!("{at}.name"), format!("{n:?}"), DNS1123_LABEL)
            }
            Some(n) if !names.insert(n.clone()) => {
                e.duplicate(&format!("{at}.name"), format!("{n:?}"))
            }
            _ => {}
        }
        if !(1..=65535).contains(&p.port) {
            e.invalid(
                &format!("{at}.port"),
                p.port,
                "must be between 1 and 65535, inclusive",
            );
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !PROTOCOLS.contains(&proto) {
            e.unsupported(&format!("{at}.protocol"), proto, &PROTOCOLS);
        }
        if !seen.insert((p.port, proto.to_string())) {
            e.duplicate(
                &at,
                format!("{{\"protocol\":{proto:?},\"port\":{}}}", p.port),
            );
        }
        if let Some(np) = p.node_port
            && !(30000..=32767).contains(&np)
        {
            e.invalid(
                &format!("{at}.nodePort"),
                np,
                "provided port is not in the valid range. The range of valid ports is 30000-32767",
            );
        }
        match &p.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t))
                if !(1..=65535).contains(t) =>
            {
                e.invalid(
                    &format!("{at}.targetPort"),
                    t,
                    "must be between 1 and 65535, inclusive",
                );
            }
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(t)) => {
                if let Err(why) = iana_svc_name(t) {
                    e.invalid(&format!("{at}.targetPort"), format!("{t:?}"), why);
                }
            }
            _ => {}
        }
    }
    for (k, v) in spec.selector.iter().flatten() {
        if let Err(why) = switchyard_labels::validate_key(k) {
            e.invalid("spec.selector", format!("{k:?}"), &why);
        }
        if let Err(why) = switchyard_labels::validate_value(v) {
            e.invalid("spec.selector", format!("{v:?}"), &why);
        }
    }
    e.message("Service", name).map_or(Ok(()), Err)
}

/// Label key and value rules (the same as the SDK's, for the host).
mod switchyard_labels {
    pub fn validate_key(key: &str) -> Result<(), String> {
        let (prefix, name) = match key.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, key),
        };
        if let Some(p) = prefix
            && !super::is_subdomain(p)
        {
            return Err("prefix part must be a lowercase RFC 1123 subdomain".into());
        }
        validate_value(name).and_then(|()| {
            if name.is_empty() {
                Err("name part must be non-empty".into())
            } else {
                Ok(())
            }
        })
    }

    pub fn validate_value(v: &str) -> Result<(), String> {
        let ok = v.is_empty()
            || (v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
        if ok {
            Ok(())
        } else {
            Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_yaml(y: &str) -> Pod {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn pod_messages_read_like_the_api_servers() {
        let p = pod_yaml(
            "metadata: {name: x}\nspec: {containers: [{name: c, image: i, ports: [{containerPort: 70000}]}]}",
        );
        assert_eq!(
            pod(&p).unwrap_err(),
            "Pod \"x\" is invalid: spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        let p = pod_yaml(
            "metadata: {name: Web}\nspec: {containers: [{name: c}, {name: c, image: i, ports: [{containerPort: 80, protocol: ICMP, name: http-port-too-long}]}]}",
        );
        let m = pod(&p).unwrap_err();
        assert!(m.starts_with("Pod \"Web\" is invalid: [metadata.name: Invalid value: \"Web\": a lowercase RFC 1123 subdomain"), "{m}");
        assert!(
            m.contains("spec.containers[0].image: Required value"),
            "{m}"
        );
        assert!(
            m.contains("spec.containers[1].name: Duplicate value: \"c\""),
            "{m}"
        );
        assert!(m.contains("spec.containers[1].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""), "{m}");
        assert!(m.contains("spec.containers[1].ports[0].name: Invalid value: \"http-port-too-long\": must be no more than 15 characters"), "{m}");
        assert!(pod(&pod_yaml("metadata: {name: ok}\nspec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}")).is_ok());
    }

    #[test]
    fn services_and_namespaces() {
        let s: Service = serde_yaml::from_str("metadata: {name: web}\nspec: {type: NodePort, ports: [{name: a, port: 80, nodePort: 80}, {port: 0}]}").unwrap();
        let m = service(&s).unwrap_err();
        assert!(
            m.contains(
                "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range"
            ),
            "{m}"
        );
        assert!(m.contains("spec.ports[1].name: Required value"), "{m}");
        assert!(m.contains("spec.ports[1].port: Invalid value: 0"), "{m}");
        let n: Namespace = serde_yaml::from_str("metadata: {name: a.b}").unwrap();
        assert!(namespace(&n).unwrap_err().contains("RFC 1123 label"));
    }
}
