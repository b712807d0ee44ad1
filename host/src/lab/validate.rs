//! Validation of the objects `lab apply` accepts, with the API server's
//! messages (`Pod "x" is invalid: spec.containers[0].ports[0].containerPort:
//! Invalid value: 70000: must be between 1 and 65535, inclusive`), so that a
//! manifest the lab takes is one a cluster would take.

use crate::probe::ProbeKind;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, HashSet};

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
        let s: Vec<String> = supported.iter().map(|v| quote(v)).collect();
        self.list.push(format!(
            "{path}: Unsupported value: {}: supported values: {}",
            quote(value),
            s.join(", ")
        ));
    }

    /// `field.Required` with a detail.
    fn required_because(&mut self, path: &str, detail: &str) {
        self.list.push(format!("{path}: Required value: {detail}"));
    }

    /// `field.Forbidden`.
    fn forbidden(&mut self, path: &str, detail: &str) {
        self.list.push(format!("{path}: Forbidden: {detail}"));
    }

    /// The API server's message, or `None` if the object is valid. As the
    /// API server's aggregate, a message that occurs twice is given once.
    pub fn message(&self, kind: &str, name: &str) -> Option<String> {
        let mut seen = HashSet::new();
        let list: Vec<&str> = self
            .list
            .iter()
            .map(String::as_str)
            .filter(|m| seen.insert(*m))
            .collect();
        match list.as_slice() {
            [] => None,
            [one] => Some(format!("{kind} {name:?} is invalid: {one}")),
            many => Some(format!("{kind} {name:?} is invalid: [{}]", many.join(", "))),
        }
    }
}

/// A string as Go's `%q` (`strconv.Quote`) prints it, which is how the API
/// server shows a string value in a message.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control()
                || (c.is_whitespace() && c != ' ')
                || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}') =>
            {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

/// IANA service names (`IsValidPortName`): the first reason a name is not
/// one, as the API server lists them.
pub fn iana_svc_name(s: &str) -> Result<(), &'static str> {
    match port_name(s).first() {
        Some(why) => Err(why),
        None => Ok(()),
    }
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

// --- NetworkPolicy, as pkg/apis/networking/validation.ValidateNetworkPolicy.

const QUALIFIED_NAME: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const INVALID_CIDR: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
const NP_PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const POLICY_TYPES: [&str; 2] = ["Ingress", "Egress"];
const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, without the length limit.
fn label_re(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `IsDNS1123Subdomain`.
fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = vec![];
    if s.len() > 253 {
        out.push(max_len(253));
    }
    if !s.split('.').all(label_re) {
        out.push(DNS1123_SUBDOMAIN.to_string());
    }
    out
}

/// `IsDNS1123Label`.
fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = vec![];
    if s.len() > 63 {
        out.push(max_len(63));
    }
    if !label_re(s) {
        if s.split('.').all(label_re) {
            out.push("must not contain dots".to_string());
        } else {
            out.push(DNS1123_LABEL.to_string());
        }
    }
    out
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, without the length limit.
fn name_part_re(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `IsQualifiedName`: label keys and annotation keys.
fn qualified_name(s: &str) -> Vec<String> {
    let mut out = vec![];
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".to_string());
            } else {
                out.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            out.push(format!("a qualified name {QUALIFIED_NAME} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            return out;
        }
    };
    if name.is_empty() {
        out.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        out.push(format!("name part {}", max_len(63)));
    }
    if !name_part_re(name) {
        out.push(format!("name part {QUALIFIED_NAME}"));
    }
    out
}

/// `IsValidLabelValue`.
fn label_value(s: &str) -> Vec<String> {
    let mut out = vec![];
    if s.len() > 63 {
        out.push(max_len(63));
    }
    if !s.is_empty() && !name_part_re(s) {
        out.push(LABEL_VALUE.to_string());
    }
    out
}

/// `IsValidPortName`: every reason, in the API server's order.
pub fn port_name(s: &str) -> Vec<&'static str> {
    let mut out = vec![];
    if s.len() > 15 {
        out.push("must be no more than 15 characters");
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)");
    }
    if s.contains("--") {
        out.push("must not contain consecutive hyphens");
    }
    if s.starts_with('-') || s.ends_with('-') {
        out.push("must not begin or end with a hyphen");
    }
    out
}

/// `ValidateLabels`: keys and values at the same path.
fn labels(e: &mut Errors, labels: Option<&BTreeMap<String, String>>, at: &str) {
    for (k, v) in labels.into_iter().flatten() {
        for why in qualified_name(k) {
            e.invalid(at, quote(k), &why);
        }
        for why in label_value(v) {
            e.invalid(at, quote(v), &why);
        }
    }
}

/// `ValidateObjectMeta` for a namespaced object named as a DNS subdomain.
/// A namespace of `None` is not checked (the caller fills it from the
/// request, as the API server does); an empty one is required.
fn object_meta(e: &mut Errors, m: &ObjectMeta) {
    match m.name.as_deref() {
        None | Some("") => e.required_because("metadata.name", "name or generateName is required"),
        Some(n) => {
            for why in dns1123_subdomain(n) {
                e.invalid("metadata.name", quote(n), &why);
            }
        }
    }
    match m.namespace.as_deref() {
        None => {}
        Some("") => e.required("metadata.namespace"),
        Some(ns) => {
            for why in dns1123_label(ns) {
                e.invalid("metadata.namespace", quote(ns), &why);
            }
        }
    }
    labels(e, m.labels.as_ref(), "metadata.labels");
    for k in m.annotations.iter().flat_map(|a| a.keys()) {
        // Annotation keys are qualified names but for case.
        for why in qualified_name(&k.to_lowercase()) {
            e.invalid("metadata.annotations", quote(k), &why);
        }
    }
}

/// `metav1validation.ValidateLabelSelector`, with invalid label values in
/// `matchExpressions` rejected (as on create).
fn label_selector(e: &mut Errors, s: &LabelSelector, at: &str) {
    labels(e, s.match_labels.as_ref(), &format!("{at}.matchLabels"));
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let at = format!("{at}.matchExpressions[{i}]");
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => e.required_because(
                &format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => e.forbidden(
                &format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            op if !OPERATORS.contains(&op) => e.invalid(
                &format!("{at}.operator"),
                quote(op),
                "not a valid selector operator",
            ),
            _ => {}
        }
        for why in qualified_name(&r.key) {
            e.invalid(&format!("{at}.key"), quote(&r.key), &why);
        }
        for (j, v) in values.iter().enumerate() {
            for why in label_value(v) {
                e.invalid(&format!("{at}.values[{j}]"), quote(v), &why);
            }
        }
    }
}

/// `ValidateNetworkPolicyPort`.
fn network_policy_port(e: &mut Errors, p: &NetworkPolicyPort, at: &str) {
    if let Some(proto) = &p.protocol
        && !NP_PROTOCOLS.contains(&proto.as_str())
    {
        e.unsupported(&format!("{at}.protocol"), proto, &NP_PROTOCOLS);
    }
    let end = format!("{at}.endPort");
    match &p.port {
        Some(IntOrString::Int(port)) => {
            if !(1..=65535).contains(port) {
                e.invalid(&format!("{at}.port"), port, PORT_RANGE);
            }
            if let Some(end_port) = p.end_port {
                if end_port < *port {
                    e.invalid(&end, end_port, "must be greater than or equal to `port`");
                }
                if !(1..=65535).contains(&end_port) {
                    e.invalid(&end, end_port, PORT_RANGE);
                }
            }
        }
        Some(IntOrString::String(name)) => {
            if let Some(end_port) = p.end_port {
                e.invalid(
                    &end,
                    end_port,
                    "may not be specified when `port` is non-numeric",
                );
            }
            for why in port_name(name) {
                e.invalid(&format!("{at}.port"), quote(name), why);
            }
        }
        None => {
            if let Some(end_port) = p.end_port {
                e.invalid(
                    &end,
                    end_port,
                    "may not be specified when `port` is not specified",
                );
            }
        }
    }
}

/// A CIDR as `k8s.io/utils/net.ParseCIDRSloppy` reads it, which is what the
/// API server checks `ipBlock` with while the StrictIPCIDRValidation gate is
/// off (its default): IPv4 octets and the prefix length may have leading
/// zeros, and bits after the prefix may be set. `ip` is the network
/// address, 4 bytes for an IPv4 CIDR and 16 for IPv6 (IPv4-mapped ones
/// included), and `mask` is as long.
struct SloppyCidr {
    ip: Vec<u8>,
    mask: Vec<u8>,
    ones: u32,
}

/// Go's `dtoi` over the whole string: decimal digits, at least one.
fn dtoi(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u32, |n, b| {
        let n = n * 10 + u32::from(b - b'0');
        (n < 0xFF_FFFF).then_some(n)
    })
}

fn ipv4_sloppy(s: &str) -> Option<[u8; 4]> {
    let parts: Vec<&str> = s.split('.').collect();
    let [a, b, c, d] = parts.as_slice() else {
        return None;
    };
    let octet = |p: &str| dtoi(p).and_then(|n| u8::try_from(n).ok());
    Some([octet(a)?, octet(b)?, octet(c)?, octet(d)?])
}

fn ipv6_sloppy(s: &str) -> Option<[u8; 16]> {
    if let Ok(a) = s.parse::<std::net::Ipv6Addr>() {
        return Some(a.octets());
    }
    // An embedded IPv4 address may have leading zeros too.
    let (head, tail) = s.rsplit_once(':')?;
    let [a, b, c, d] = ipv4_sloppy(tail)?;
    format!("{head}:{a}.{b}.{c}.{d}")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|a| a.octets())
}

fn parse_cidr_sloppy(s: &str) -> Option<SloppyCidr> {
    let (addr, len) = s.split_once('/')?;
    let ip = match ipv4_sloppy(addr) {
        Some(v4) => v4.to_vec(),
        None => ipv6_sloppy(addr)?.to_vec(),
    };
    let ones = dtoi(len)?;
    let bits = 8 * ip.len() as u32;
    if ones > bits {
        return None;
    }
    let mask: Vec<u8> = (0..ip.len() as u32)
        .map(|i| {
            let n = ones.saturating_sub(8 * i).min(8);
            (0xFF00u16 >> n) as u8
        })
        .collect();
    let ip = ip.iter().zip(&mask).map(|(a, m)| a & m).collect();
    Some(SloppyCidr { ip, mask, ones })
}

/// Go's `IP.To4`.
fn to4(ip: &[u8]) -> Option<&[u8]> {
    match ip.len() {
        4 => Some(ip),
        16 if ip[..10].iter().all(|b| *b == 0) && ip[10] == 0xFF && ip[11] == 0xFF => {
            Some(&ip[12..])
        }
        _ => None,
    }
}

impl SloppyCidr {
    /// Go's `IPNet.Contains`: an address of the other family is outside.
    fn contains(&self, ip: &[u8]) -> bool {
        let nn = to4(&self.ip).unwrap_or(&self.ip);
        let m = match (self.mask.len(), nn.len()) {
            (16, 4) => &self.mask[12..],
            (m, n) if m == n => &self.mask[..],
            _ => return false,
        };
        let ip = to4(ip).unwrap_or(ip);
        ip.len() == nn.len() && (0..ip.len()).all(|i| nn[i] & m[i] == ip[i] & m[i])
    }
}

/// `ValidateIPBlock`.
fn ip_block(e: &mut Errors, b: &IPBlock, at: &str) {
    let cidr_at = format!("{at}.cidr");
    if b.cidr.is_empty() {
        e.required(&cidr_at);
        return;
    }
    let Some(cidr) = parse_cidr_sloppy(&b.cidr) else {
        e.invalid(&cidr_at, quote(&b.cidr), INVALID_CIDR);
        return;
    };
    for (i, x) in b.except.iter().flatten().enumerate() {
        let except_at = format!("{at}.except[{i}]");
        let Some(except) = parse_cidr_sloppy(x) else {
            e.invalid(&except_at, quote(x), INVALID_CIDR);
            continue;
        };
        if !cidr.contains(&except.ip) || cidr.ones >= except.ones {
            e.invalid(&except_at, quote(x), "must be a strict subset of `cidr`");
        }
    }
}

/// `ValidateNetworkPolicyPeer`: an ipBlock, or a podSelector and/or a
/// namespaceSelector.
fn network_policy_peer(e: &mut Errors, p: &NetworkPolicyPeer, at: &str) {
    let mut peers = 0;
    if let Some(s) = &p.pod_selector {
        peers += 1;
        label_selector(e, s, &format!("{at}.podSelector"));
    }
    if let Some(s) = &p.namespace_selector {
        peers += 1;
        label_selector(e, s, &format!("{at}.namespaceSelector"));
    }
    if let Some(b) = &p.ip_block {
        peers += 1;
        ip_block(e, b, &format!("{at}.ipBlock"));
    }
    if peers == 0 {
        e.required_because(at, "must specify a peer");
    } else if peers > 1 && p.ip_block.is_some() {
        e.forbidden(at, "may not specify both ipBlock and another peer");
    }
}

/// A NetworkPolicy as the API server validates one on create
/// (`ValidateNetworkPolicy`), but for a missing `spec`, which the lab
/// requires.
pub fn network_policy(p: &NetworkPolicy) -> Result<(), String> {
    let mut e = Errors::default();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    object_meta(&mut e, &p.metadata);
    match &p.spec {
        None => e.required("spec"),
        Some(spec) => network_policy_spec(&mut e, spec),
    }
    e.message("NetworkPolicy", name).map_or(Ok(()), Err)
}

/// A WasmNetworkPolicy: its NetworkPolicy fields as a NetworkPolicy's, a
/// module name, and a config object (the module checks its schema).
pub fn wasm_network_policy(
    meta: &ObjectMeta,
    spec: &crate::model::crd::WasmNetworkPolicySpec,
) -> Result<(), String> {
    let mut e = Errors::default();
    let name = meta.name.as_deref().unwrap_or_default();
    object_meta(&mut e, meta);
    if spec.module.is_empty() {
        e.required("spec.module");
    } else {
        for why in dns1123_subdomain(&spec.module) {
            e.invalid("spec.module", quote(&spec.module), &why);
        }
    }
    if let Some(c) = &spec.config
        && !c.is_object()
    {
        e.invalid("spec.config", c, "must be an object");
    }
    network_policy_spec(&mut e, &spec.network_policy_spec());
    e.message("WasmNetworkPolicy", name).map_or(Ok(()), Err)
}

fn network_policy_spec(e: &mut Errors, spec: &NetworkPolicySpec) {
    if let Some(s) = &spec.pod_selector {
        label_selector(e, s, "spec.podSelector");
    }
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            network_policy_port(e, port, &format!("{at}.ports[{j}]"));
        }
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            network_policy_peer(e, peer, &format!("{at}.from[{j}]"));
        }
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            network_policy_port(e, port, &format!("{at}.ports[{j}]"));
        }
        for (j, peer) in rule.to.iter().flatten().enumerate() {
            network_policy_peer(e, peer, &format!("{at}.to[{j}]"));
        }
    }
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.len() > POLICY_TYPES.len() {
        // Go prints the list with %#v.
        let list: Vec<String> = types.iter().map(|t| quote(t)).collect();
        e.invalid(
            "spec.policyTypes",
            format!("[]networking.PolicyType{{{}}}", list.join(", ")),
            "may not specify more than two policyTypes",
        );
    } else {
        for (i, t) in types.iter().enumerate() {
            if !POLICY_TYPES.contains(&t.as_str()) {
                e.unsupported(&format!("spec.policyTypes[{i}]"), t, &POLICY_TYPES);
            }
        }
    }
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

    fn np(y: &str) -> NetworkPolicy {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn wasm_network_policies_are_checked_as_network_policies_plus_module_and_config() {
        let check = |spec: &str| {
            let meta: ObjectMeta = serde_yaml::from_str("{name: w, namespace: shop}").unwrap();
            let spec: crate::model::crd::WasmNetworkPolicySpec =
                serde_yaml::from_str(spec).unwrap();
            wasm_network_policy(&meta, &spec)
        };
        assert_eq!(
            check("{module: egress-allowlist, podSelector: {}, config: {cidrs: []}}"),
            Ok(())
        );
        assert_eq!(
            check("{module: Egress_Allowlist, config: [1], policyTypes: [Sideways]}").unwrap_err(),
            format!(
                "WasmNetworkPolicy \"w\" is invalid: [spec.module: Invalid value: \"Egress_Allowlist\": {DNS1123_SUBDOMAIN}, spec.config: Invalid value: [1]: must be an object, spec.policyTypes[0]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\"]"
            )
        );
        assert_eq!(
            check("{module: \"\", egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]}").unwrap_err(),
            "WasmNetworkPolicy \"w\" is invalid: [spec.module: Required value, spec.egress[0].to[0].ipBlock.except[0]: Invalid value: \"11.0.0.0/8\": must be a strict subset of `cidr`]"
        );
    }

    /// The message for a policy named `x` in `default` with this spec.
    fn np_err(spec: &str) -> String {
        let mut p = np(&format!(
            "metadata: {{name: x, namespace: default}}\nspec: {spec}"
        ));
        p.metadata.namespace = Some("default".into());
        network_policy(&p).unwrap_err()
    }

    /// The single field error of a policy with this spec.
    fn np_one(spec: &str) -> String {
        let m = np_err(spec);
        m.strip_prefix("NetworkPolicy \"x\" is invalid: ")
            .unwrap_or_else(|| panic!("{m}"))
            .to_string()
    }

    #[test]
    fn network_policy_with_every_feature_is_valid() {
        let p = np(r#"
metadata:
  name: web.allow-1
  namespace: prod
  labels: {app.kubernetes.io/name: web, tier: ""}
  annotations: {Example.com/Note: hi}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [front, edge]}
    - {key: example.com/track, operator: NotIn, values: [canary]}
    - {key: debug, operator: Exists}
    - {key: legacy, operator: DoesNotExist, values: []}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ops}}
    - podSelector: {matchLabels: {role: client}}
      namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4/32]}
    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}
    ports:
    - {protocol: TCP, port: 80}
    - {protocol: TCP, port: 8000, endPort: 8080}
    - {protocol: UDP, port: dns}
    - {protocol: SCTP, port: 9000, endPort: 9000}
    - {port: http-alt}
    - {protocol: TCP}
  - {}
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}
    - ipBlock: {cidr: 10.0.0.1/8}
    - ipBlock: {cidr: 010.0.0.0/08, except: [10.0.0.0/016]}
    ports: [{port: 53, protocol: UDP}, {port: 65535}]
  - to: [{namespaceSelector: {}}]
"#);
        assert_eq!(network_policy(&p), Ok(()));
        // The smallest policy, and policy types the API server does not
        // deduplicate.
        assert_eq!(
            network_policy(&np("metadata: {name: x}\nspec: {podSelector: {}}")),
            Ok(())
        );
        assert_eq!(
            network_policy(&np(
                "metadata: {name: x}\nspec: {policyTypes: [Ingress, Ingress]}"
            )),
            Ok(())
        );
    }

    #[test]
    fn network_policy_message_format() {
        assert_eq!(
            np_err("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}"),
            "NetworkPolicy \"x\" is invalid: spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
        );
        // Several errors are bracketed; the same message twice is given once.
        assert_eq!(
            np_err("{ingress: [{ports: [{port: 0}, {port: 0}]}], policyTypes: [Foo]}"),
            "NetworkPolicy \"x\" is invalid: [spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, spec.ingress[0].ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive, spec.policyTypes[0]: Unsupported value: \"Foo\": supported values: \"Ingress\", \"Egress\"]"
        );
        assert_eq!(
            np_err("{podSelector: {matchLabels: {a: b_, c: b_}}}"),
            format!(
                "NetworkPolicy \"x\" is invalid: spec.podSelector.matchLabels: Invalid value: \"b_\": {LABEL_VALUE}"
            )
        );
    }

    #[test]
    fn network_policy_metadata() {
        let m = network_policy(&np("metadata: {namespace: default}\nspec: {}")).unwrap_err();
        assert_eq!(
            m,
            "NetworkPolicy \"\" is invalid: metadata.name: Required value: name or generateName is required"
        );
        let m = network_policy(&np("metadata: {name: Web_1}\nspec: {}")).unwrap_err();
        assert_eq!(
            m,
            format!(
                "NetworkPolicy \"Web_1\" is invalid: metadata.name: Invalid value: \"Web_1\": {DNS1123_SUBDOMAIN}"
            )
        );
        // A subdomain's labels may be longer than 63, the whole not than 253.
        let long = format!("{}.b", "a".repeat(64));
        assert!(network_policy(&np(&format!("metadata: {{name: {long}}}\nspec: {{}}"))).is_ok());
        let long = "a".repeat(254);
        let m =
            network_policy(&np(&format!("metadata: {{name: {long}}}\nspec: {{}}"))).unwrap_err();
        assert_eq!(
            m,
            format!(
                "NetworkPolicy \"{long}\" is invalid: metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"
            )
        );
        let m = network_policy(&np("metadata: {name: x, namespace: Prod}\nspec: {}")).unwrap_err();
        assert_eq!(
            m,
            format!(
                "NetworkPolicy \"x\" is invalid: metadata.namespace: Invalid value: \"Prod\": {DNS1123_LABEL}"
            )
        );
        let m = network_policy(&np("metadata: {name: x, namespace: a.b}\nspec: {}")).unwrap_err();
        assert_eq!(
            m,
            "NetworkPolicy \"x\" is invalid: metadata.namespace: Invalid value: \"a.b\": must not contain dots"
        );
        let m = network_policy(&np("metadata: {name: x, namespace: \"\"}\nspec: {}")).unwrap_err();
        assert_eq!(
            m,
            "NetworkPolicy \"x\" is invalid: metadata.namespace: Required value"
        );
        let m = network_policy(&np("metadata: {name: x, labels: {\"a/b/c\": v}}\nspec: {}"))
            .unwrap_err();
        assert_eq!(
            m,
            format!(
                "NetworkPolicy \"x\" is invalid: metadata.labels: Invalid value: \"a/b/c\": a qualified name {QUALIFIED_NAME} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )
        );
        // The lab requires a spec.
        let m = network_policy(&np("metadata: {name: x}")).unwrap_err();
        assert_eq!(m, "NetworkPolicy \"x\" is invalid: spec: Required value");
    }

    #[test]
    fn network_policy_selectors() {
        assert_eq!(
            np_one("{podSelector: {matchExpressions: [{key: a, operator: Foo}]}}"),
            "spec.podSelector.matchExpressions[0].operator: Invalid value: \"Foo\": not a valid selector operator"
        );
        assert_eq!(
            np_one("{podSelector: {matchExpressions: [{key: a, operator: In}]}}"),
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
        assert_eq!(
            np_one("{podSelector: {matchExpressions: [{key: a, operator: NotIn, values: []}]}}"),
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
        assert_eq!(
            np_one(
                "{ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}]}]}"
            ),
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        );
        assert_eq!(
            np_one(
                "{egress: [{to: [{namespaceSelector: {matchExpressions: [{key: a, operator: DoesNotExist, values: [b]}]}}]}]}"
            ),
            "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        );
        assert_eq!(
            np_one(
                "{podSelector: {matchExpressions: [{key: a, operator: In, values: [ok, \"-bad\"]}]}}"
            ),
            format!(
                "spec.podSelector.matchExpressions[0].values[1]: Invalid value: \"-bad\": {LABEL_VALUE}"
            )
        );
        assert_eq!(
            np_one("{podSelector: {matchExpressions: [{key: \"-a\", operator: Exists}]}}"),
            format!(
                "spec.podSelector.matchExpressions[0].key: Invalid value: \"-a\": name part {QUALIFIED_NAME}"
            )
        );
        // A bad prefix, and an empty name part (two reasons).
        assert_eq!(
            np_one(
                "{ingress: [{from: [{namespaceSelector: {matchLabels: {\"Example.com/a\": b}}}]}]}"
            ),
            format!(
                "spec.ingress[0].from[0].namespaceSelector.matchLabels: Invalid value: \"Example.com/a\": prefix part {DNS1123_SUBDOMAIN}"
            )
        );
        let m = np_err("{podSelector: {matchLabels: {\"example.com/\": b}}}");
        assert!(m.contains("spec.podSelector.matchLabels: Invalid value: \"example.com/\": name part must be non-empty, "), "{m}");
        assert!(m.contains(&format!("spec.podSelector.matchLabels: Invalid value: \"example.com/\": name part {QUALIFIED_NAME}")), "{m}");
        assert_eq!(
            np_one("{podSelector: {matchLabels: {\"/a\": b}}}"),
            "spec.podSelector.matchLabels: Invalid value: \"/a\": prefix part must be non-empty"
        );
        let long = "a".repeat(64);
        assert_eq!(
            np_one(&format!(
                "{{egress: [{{to: [{{podSelector: {{matchLabels: {{a: {long}}}}}}}]}}]}}"
            )),
            format!(
                "spec.egress[0].to[0].podSelector.matchLabels: Invalid value: \"{long}\": must be no more than 63 characters"
            )
        );
        assert_eq!(
            np_one(&format!("{{podSelector: {{matchLabels: {{{long}: b}}}}}}")),
            format!(
                "spec.podSelector.matchLabels: Invalid value: \"{long}\": name part must be no more than 63 characters"
            )
        );
    }

    #[test]
    fn network_policy_peers() {
        assert_eq!(
            np_one("{ingress: [{from: [{}]}]}"),
            "spec.ingress[0].from[0]: Required value: must specify a peer"
        );
        assert_eq!(
            np_one("{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}"),
            "spec.egress[0].to[0]: Forbidden: may not specify both ipBlock and another peer"
        );
        assert_eq!(
            np_one(
                "{ingress: [{from: [{namespaceSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}, podSelector: {}}]}]}"
            ),
            "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer"
        );
        // Errors inside the peer come before the peer's own.
        assert_eq!(
            np_err(
                "{ingress: [{from: [{ipBlock: {cidr: nope}, podSelector: {matchLabels: {a: \"b c\"}}}]}]}"
            ),
            format!(
                "NetworkPolicy \"x\" is invalid: [spec.ingress[0].from[0].podSelector.matchLabels: Invalid value: \"b c\": {LABEL_VALUE}, spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"nope\": {INVALID_CIDR}, spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer]"
            )
        );
    }

    #[test]
    fn network_policy_ip_blocks() {
        let block = |b: &str| np_one(&format!("{{ingress: [{{from: [{{ipBlock: {b}}}]}}]}}"));
        assert_eq!(
            block("{cidr: \"\"}"),
            "spec.ingress[0].from[0].ipBlock.cidr: Required value"
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0/8",
            "256.0.0.0/8",
            "10.0.0.0/-1",
            "2001:db8::/129",
            "10.0.0.0/8/8",
            "fe80::1%eth0/64",
            " 10.0.0.0/8",
        ] {
            assert_eq!(
                block(&format!("{{cidr: \"{bad}\"}}")),
                format!(
                    "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"{bad}\": {INVALID_CIDR}"
                )
            );
        }
        assert_eq!(
            block("{cidr: 10.0.0.0/8, except: [10.0.0.0/8/8]}"),
            format!(
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/8/8\": {INVALID_CIDR}"
            )
        );
        for bad in [
            "10.0.0.0/8",
            "10.0.0.0/7",
            "11.0.0.0/16",
            "2001:db8::/64",
            "::ffff:11.0.0.0/120",
        ] {
            assert_eq!(
                block(&format!(
                    "{{cidr: 10.0.0.0/8, except: [10.0.0.0/9, \"{bad}\"]}}"
                )),
                format!(
                    "spec.ingress[0].from[0].ipBlock.except[1]: Invalid value: \"{bad}\": must be a strict subset of `cidr`"
                )
            );
        }
        assert_eq!(
            block("{cidr: \"2001:db8::/32\", except: [10.0.0.0/8]}"),
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/8\": must be a strict subset of `cidr`"
        );
        // An invalid cidr is reported alone; the excepts are not looked at.
        assert_eq!(
            block("{cidr: 10.0.0.0/33, except: [bad]}"),
            format!(
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": {INVALID_CIDR}"
            )
        );
        // The API server's sloppy parser (StrictIPCIDRValidation off): host
        // bits, leading zeros, an IPv4-mapped except within an IPv4 cidr.
        let ok = |b: &str| {
            network_policy(&np(&format!(
                "metadata: {{name: x}}\nspec: {{ingress: [{{from: [{{ipBlock: {b}}}]}}]}}"
            )))
        };
        assert_eq!(ok("{cidr: 10.1.2.3/8, except: [10.1.2.3/24]}"), Ok(()));
        assert_eq!(
            ok("{cidr: 010.000.0.0/008, except: [\"::ffff:10.1.0.0/112\"]}"),
            Ok(())
        );
        assert_eq!(
            ok("{cidr: \"::ffff:10.0.0.0/104\", except: [\"::ffff:10.1.0.0/112\"]}"),
            Ok(())
        );
    }

    #[test]
    fn network_policy_ports() {
        let port = |p: &str| np_one(&format!("{{egress: [{{ports: [{p}]}}]}}"));
        assert_eq!(
            port("{protocol: ICMP, port: 1}"),
            "spec.egress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\""
        );
        assert_eq!(
            port("{protocol: tcp}"),
            "spec.egress[0].ports[0].protocol: Unsupported value: \"tcp\": supported values: \"TCP\", \"UDP\", \"SCTP\""
        );
        for bad in ["0", "-1", "65536"] {
            assert_eq!(
                port(&format!("{{port: {bad}}}")),
                format!(
                    "spec.egress[0].ports[0].port: Invalid value: {bad}: must be between 1 and 65535, inclusive"
                )
            );
        }
        assert_eq!(
            port("{port: \"80\"}"),
            "spec.egress[0].ports[0].port: Invalid value: \"80\": must contain at least one letter (a-z)"
        );
        assert_eq!(
            port("{port: a-very-long-port-name}"),
            "spec.egress[0].ports[0].port: Invalid value: \"a-very-long-port-name\": must be no more than 15 characters"
        );
        assert_eq!(
            np_err("{egress: [{ports: [{port: \"-Web--\"}]}]}"),
            "NetworkPolicy \"x\" is invalid: [spec.egress[0].ports[0].port: Invalid value: \"-Web--\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), spec.egress[0].ports[0].port: Invalid value: \"-Web--\": must not contain consecutive hyphens, spec.egress[0].ports[0].port: Invalid value: \"-Web--\": must not begin or end with a hyphen]"
        );
        assert_eq!(
            port("{port: 80, endPort: 79}"),
            "spec.egress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`"
        );
        assert_eq!(
            port("{port: 80, endPort: 65536}"),
            "spec.egress[0].ports[0].endPort: Invalid value: 65536: must be between 1 and 65535, inclusive"
        );
        assert_eq!(
            np_err("{egress: [{ports: [{port: 80, endPort: 0}]}]}"),
            "NetworkPolicy \"x\" is invalid: [spec.egress[0].ports[0].endPort: Invalid value: 0: must be greater than or equal to `port`, spec.egress[0].ports[0].endPort: Invalid value: 0: must be between 1 and 65535, inclusive]"
        );
        assert_eq!(
            port("{port: http, endPort: 90}"),
            "spec.egress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric"
        );
        assert_eq!(
            port("{protocol: UDP, endPort: 90}"),
            "spec.egress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not specified"
        );
        assert_eq!(
            np_one("{ingress: [{}, {ports: [{port: 80}, {port: 70000}]}]}"),
            "spec.ingress[1].ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn network_policy_policy_types() {
        assert_eq!(
            np_one("{policyTypes: [Ingress, egress]}"),
            "spec.policyTypes[1]: Unsupported value: \"egress\": supported values: \"Ingress\", \"Egress\""
        );
        assert_eq!(
            np_one("{policyTypes: [Ingress, Egress, Ingress]}"),
            "spec.policyTypes: Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"Ingress\"}: may not specify more than two policyTypes"
        );
        // More than two is reported alone, as the API server stops there.
        assert_eq!(
            np_one("{policyTypes: [Foo, Bar, Baz]}"),
            "spec.policyTypes: Invalid value: []networking.PolicyType{\"Foo\", \"Bar\", \"Baz\"}: may not specify more than two policyTypes"
        );
    }

    #[test]
    fn values_are_quoted_as_go_does() {
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("\t\n\u{1}\u{7f}é\u{a0}"), r#""\t\n\x01\x7fé\u00a0""#);
    }
}
