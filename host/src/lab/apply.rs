//! `lab apply` and `lab delete`: the lab's API server. It admits ordinary
//! Kubernetes YAML the way a cluster would (validation with the API server's
//! messages, defaults, Service IPs, node ports), plays the scheduler for
//! pods without `spec.nodeName`, and writes the objects to the cluster
//! directory, where the agents pick them up.
//!
//! An apply is all or nothing: if any document is invalid, nothing is
//! written, and every problem is reported at once.

use super::kubelet::LabPodStatus;
use super::layout::Lab;
use super::validate;
use crate::model::crd::{
    self, API_VERSION, ClusterNetworkSpec, NetworkModuleSpec, WasmNetworkPolicySpec,
};
use crate::source::cluster_dir::ClusterDir;
use crate::source::local::Manifests;
use anyhow::Context;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodCondition, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One YAML document and where it came from.
#[derive(Debug, Clone)]
pub struct Doc {
    /// `file` or `file (document N)`.
    pub origin: String,
    pub value: serde_yaml::Value,
}

/// The kinds the lab serves, in the order an apply writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    ClusterNetwork,
    NetworkModule,
    Service,
    EndpointSlice,
    NetworkPolicy,
    WasmNetworkPolicy,
    Pod,
}

impl Kind {
    /// The kind's name, which is also its directory in the cluster directory.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ClusterNetwork => "ClusterNetwork",
            Kind::NetworkModule => "NetworkModule",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::WasmNetworkPolicy => "WasmNetworkPolicy",
            Kind::Pod => "Pod",
        }
    }

    /// What kubectl prints before the name (`pod/web created`).
    fn resource(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::ClusterNetwork => "clusternetwork.switchyard.dev",
            Kind::NetworkModule => "networkmodule.switchyard.dev",
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice.discovery.k8s.io",
            Kind::NetworkPolicy => "networkpolicy.networking.k8s.io",
            Kind::WasmNetworkPolicy => "wasmnetworkpolicy.switchyard.dev",
            Kind::Pod => "pod",
        }
    }

    /// The plural kubectl uses in "not found" errors.
    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::ClusterNetwork => "clusternetworks.switchyard.dev",
            Kind::NetworkModule => "networkmodules.switchyard.dev",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices.discovery.k8s.io",
            Kind::NetworkPolicy => "networkpolicies.networking.k8s.io",
            Kind::WasmNetworkPolicy => "wasmnetworkpolicies.switchyard.dev",
            Kind::Pod => "pods",
        }
    }

    fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::Service
                | Kind::EndpointSlice
                | Kind::NetworkPolicy
                | Kind::WasmNetworkPolicy
                | Kind::Pod
        )
    }

    fn of(api_version: &str, kind: &str) -> Option<Kind> {
        match (api_version, kind) {
            ("v1", "Namespace") => Some(Kind::Namespace),
            ("v1", "Pod") => Some(Kind::Pod),
            ("v1", "Service") => Some(Kind::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Kind::EndpointSlice),
            ("networking.k8s.io/v1", "NetworkPolicy") => Some(Kind::NetworkPolicy),
            (API_VERSION, "NetworkModule") => Some(Kind::NetworkModule),
            (API_VERSION, "WasmNetworkPolicy") => Some(Kind::WasmNetworkPolicy),
            (API_VERSION, "ClusterNetwork") => Some(Kind::ClusterNetwork),
            _ => None,
        }
    }
}

/// Read documents from files, directories (every `.yaml`, `.yml` and
/// `.json`, in name order) or `-` (standard input).
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut files = vec![];
    for p in paths {
        if p.as_os_str() == "-" {
            files.push(p.clone());
        } else if p.is_dir() {
            let mut found = vec![];
            collect(p, &mut found).with_context(|| format!("reading {}", p.display()))?;
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{}: no .yaml, .yml or .json files", p.display());
            }
            files.extend(found);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            anyhow::bail!("the path {:?} does not exist", p.display().to_string());
        }
    }
    let mut docs = vec![];
    for f in files {
        let (name, text) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            ("STDIN".to_string(), s)
        } else {
            (
                f.display().to_string(),
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
            )
        };
        let multi = text.contains("\n---");
        for (i, d) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let origin = if multi {
                format!("{name} (document {})", i + 1)
            } else {
                name.clone()
            };
            let value = serde_yaml::Value::deserialize(d)
                .map_err(|e| anyhow::anyhow!("error parsing {origin}: {e}"))?;
            if value.is_null() {
                continue;
            }
            // A kubectl List is many objects.
            if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
                for item in value
                    .get("items")
                    .and_then(|i| i.as_sequence())
                    .into_iter()
                    .flatten()
                {
                    docs.push(Doc {
                        origin: origin.clone(),
                        value: item.clone(),
                    });
                }
                continue;
            }
            docs.push(Doc { origin, value });
        }
    }
    Ok(docs)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// A document identified: its kind, namespace and name.
#[derive(Debug, Clone)]
struct Object {
    kind: Kind,
    namespace: String,
    name: String,
    doc: Doc,
}

fn identify(doc: Doc) -> Result<Object, String> {
    let s = |k: &str| {
        doc.value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    let (api_version, kind) = (s("apiVersion"), s("kind"));
    if kind.is_empty() {
        return Err(format!(
            "error validating {:?}: Object 'Kind' is missing",
            doc.origin
        ));
    }
    let meta = doc.value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let Some(k) = Kind::of(api_version, kind) else {
        return Err(format!(
            "error: resource mapping not found for name: {name:?} from {:?}: no matches for kind {kind:?} in version {api_version:?} (the lab serves v1 Namespace, Pod and Service, discovery.k8s.io/v1 EndpointSlice, networking.k8s.io/v1 NetworkPolicy, and {API_VERSION} NetworkModule, ClusterNetwork and WasmNetworkPolicy)",
            doc.origin
        ));
    };
    let namespace = if k.namespaced() {
        meta.and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    Ok(Object {
        kind: k,
        namespace,
        name,
        doc,
    })
}

fn now() -> Time {
    super::view::k8s_now()
}

/// An object's uid and creation time are the stored version's, or new for
/// a new object (the API server sets them; an apply does not change them).
fn keep_identity(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    old: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) {
    meta.uid = old.and_then(|o| o.uid.clone()).or_else(|| Some(new_uid()));
    meta.creation_timestamp = old
        .and_then(|o| o.creation_timestamp.clone())
        .or_else(|| Some(now()));
}

fn new_uid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn decode<T: serde::de::DeserializeOwned>(o: &Object) -> Result<T, String> {
    serde_yaml::from_value(o.doc.value.clone()).map_err(|e| {
        format!(
            "error when applying {:?}: {} in version {:?} cannot be handled as a {}: {e}",
            o.doc.origin,
            o.kind.name(),
            o.doc
                .value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .unwrap_or_default(),
            o.kind.name()
        )
    })
}

/// The cluster as admission sees it: what is stored plus what this apply has
/// admitted so far.
struct Admission<'a> {
    lab: &'a Lab,
    cluster: ClusterDir,
    stored: Manifests,
    namespaces: BTreeSet<String>,
    /// Pods per node, for spreading.
    load: BTreeMap<String, usize>,
    service_ips: HashSet<IpAddr>,
    node_ports: HashSet<i32>,
    /// LoadBalancer ingress IPs in use.
    lb_ips: HashSet<IpAddr>,
}

/// One admitted object, ready to write.
struct Write {
    kind: Kind,
    namespace: String,
    name: String,
    yaml: String,
    /// `created`, `configured` or `unchanged`.
    verb: &'static str,
    /// A status to write with it (a pod no node will run).
    pending: Option<LabPodStatus>,
}

impl<'a> Admission<'a> {
    fn new(lab: &'a Lab) -> anyhow::Result<Admission<'a>> {
        let cluster = lab.cluster()?;
        let stored = cluster
            .manifests()
            .map_err(|e| anyhow::anyhow!("the lab's stored objects: {e}"))?;
        let namespaces = stored
            .namespaces
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let mut load: BTreeMap<String, usize> = lab
            .config
            .nodes
            .iter()
            .map(|n| (n.name.clone(), 0))
            .collect();
        for p in &stored.pods {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_ref())
                && let Some(c) = load.get_mut(n)
            {
                *c += 1;
            }
        }
        let mut service_ips = HashSet::new();
        let mut node_ports = HashSet::new();
        let mut lb_ips = HashSet::new();
        for s in &stored.services {
            for i in s
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|l| l.ingress.iter().flatten())
            {
                if let Some(ip) = i.ip.as_deref().and_then(|i| i.parse().ok()) {
                    lb_ips.insert(ip);
                }
            }
            if let Some(spec) = &s.spec {
                // externalIPs are not handed out as LoadBalancer IPs.
                for ip in spec.external_ips.iter().flatten() {
                    if let Ok(a) = ip.parse() {
                        lb_ips.insert(a);
                    }
                }
                for ip in spec.cluster_ips.iter().flatten() {
                    if let Ok(a) = ip.parse() {
                        service_ips.insert(a);
                    }
                }
                for p in spec.ports.iter().flatten() {
                    if let Some(np) = p.node_port {
                        node_ports.insert(np);
                    }
                }
            }
        }
        Ok(Admission {
            lab,
            cluster,
            stored,
            namespaces,
            load,
            service_ips,
            node_ports,
            lb_ips,
        })
    }

    fn existing<T: serde::de::DeserializeOwned>(&self, o: &Object) -> Option<T> {
        let text = self.cluster.object(o.kind.name(), &o.namespace, &o.name)?;
        serde_yaml::from_str(&text).ok()
    }

    fn need_namespace(&self, o: &Object) -> Result<(), String> {
        if o.kind.namespaced() && !self.namespaces.contains(&o.namespace) {
            return Err(format!(
                "Error from server (NotFound): error when creating {:?}: namespaces {:?} not found",
                o.doc.origin, o.namespace
            ));
        }
        Ok(())
    }

    fn admit(&mut self, o: &Object) -> Result<Write, String> {
        self.need_namespace(o)?;
        match o.kind {
            Kind::Namespace => {
                let mut n: Namespace = decode(o)?;
                validate::namespace(&n)?;
                self.namespaces.insert(o.name.clone());
                let old: Option<Namespace> = self.existing(o);
                let mut m = n.metadata.clone();
                keep_identity(&mut m, old.as_ref().map(|x| &x.metadata));
                let mut labels = m.labels.take().unwrap_or_default();
                labels.insert("kubernetes.io/metadata.name".into(), o.name.clone());
                m.labels = Some(labels);
                n.metadata = m;
                let verb = verb(old.as_ref(), &n);
                self.write(o, &n, verb, None)
            }
            Kind::Pod => self.admit_pod(o),
            Kind::Service => self.admit_service(o),
            Kind::EndpointSlice => self.admit_slice(o),
            Kind::NetworkPolicy => {
                let mut p: NetworkPolicy = decode(o)?;
                p.metadata.namespace = Some(o.namespace.clone());
                validate::network_policy(&p)?;
                let old: Option<NetworkPolicy> = self.existing(o);
                keep_identity(&mut p.metadata, old.as_ref().map(|x| &x.metadata));
                let verb = verb(old.as_ref(), &p);
                self.write(o, &p, verb, None)
            }
            Kind::WasmNetworkPolicy => {
                let mut v = o.doc.value.clone();
                let meta: ObjectMeta = v
                    .get("metadata")
                    .cloned()
                    .map(serde_yaml::from_value)
                    .transpose()
                    .map_err(|e| {
                        format!("WasmNetworkPolicy {:?} is invalid: metadata: {e}", o.name)
                    })?
                    .unwrap_or_default();
                let spec: WasmNetworkPolicySpec = v
                    .get("spec")
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "WasmNetworkPolicy {:?} is invalid: spec: Required value",
                            o.name
                        )
                    })
                    .and_then(|s| {
                        serde_yaml::from_value(s).map_err(|e| {
                            format!("WasmNetworkPolicy {:?} is invalid: spec: {e}", o.name)
                        })
                    })?;
                let mut policy = crd::WasmNetworkPolicy::new(&o.name, spec);
                policy.metadata = meta;
                policy.metadata.namespace = Some(o.namespace.clone());
                validate::wasm_network_policy(&policy.metadata, &policy.spec)?;
                crd::check_cel(&policy)?;
                if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
                    m.insert("namespace".into(), o.namespace.clone().into());
                }
                let old: Option<serde_yaml::Value> = self.existing(o);
                let verb = verb(old.as_ref(), &v);
                self.write(o, &v, verb, None)
            }
            Kind::NetworkModule => {
                let spec: NetworkModuleSpec = o
                    .doc
                    .value
                    .get("spec")
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "NetworkModule {:?} is invalid: spec: Required value",
                            o.name
                        )
                    })
                    .and_then(|s| {
                        serde_yaml::from_value(s).map_err(|e| {
                            format!("NetworkModule {:?} is invalid: spec: {e}", o.name)
                        })
                    })?;
                crd::check_cel(&crd::NetworkModule::new(&o.name, spec.clone()))?;
                spec.to_module_spec(&o.name, 1)
                    .map_err(|e| format!("NetworkModule {:?} is invalid: {e}", o.name))?;
                let old: Option<serde_yaml::Value> = self.existing(o);
                let verb = verb(old.as_ref(), &o.doc.value);
                self.write(o, &o.doc.value, verb, None)
            }
            Kind::ClusterNetwork => {
                let spec: ClusterNetworkSpec = match o.doc.value.get("spec") {
                    None => ClusterNetworkSpec::default(),
                    Some(s) => serde_yaml::from_value(s.clone()).map_err(|e| {
                        format!("ClusterNetwork {:?} is invalid: spec: {e}", o.name)
                    })?,
                };
                crd::check_cel(&crd::ClusterNetwork::new(&o.name, spec.clone()))?;
                if o.name == "default" {
                    let c = &self.lab.config;
                    if spec.model != c.model {
                        return Err(format!(
                            "ClusterNetwork \"default\" is invalid: spec.model: Forbidden: this lab was built for the {} model; bring a new lab up with `--model {}` to change it",
                            c.model, spec.model
                        ));
                    }
                    let want: Vec<String> =
                        c.cluster_pod_cidrs.iter().map(|c| c.to_string()).collect();
                    if spec.pod_cidrs != want {
                        return Err(format!(
                            "ClusterNetwork \"default\" is invalid: spec.podCIDRs: Forbidden: the lab's pod CIDRs are {want:?} and cannot change"
                        ));
                    }
                }
                let old: Option<serde_yaml::Value> = self.existing(o);
                let verb = verb(old.as_ref(), &o.doc.value);
                self.write(o, &o.doc.value, verb, None)
            }
        }
    }

    fn admit_pod(&mut self, o: &Object) -> Result<Write, String> {
        let mut pod: Pod = decode(o)?;
        pod.metadata.namespace = Some(o.namespace.clone());
        validate::pod(&pod)?;
        let old: Option<Pod> = self.existing(o);
        if let Some(old) = &old {
            // A pod's spec is immutable but for a few fields; the lab allows
            // none of them to change, and says so as the API server would.
            let mut a = old.spec.clone().unwrap_or_default();
            let mut b = pod.spec.clone().unwrap_or_default();
            if b.node_name.is_none() {
                a.node_name = None;
            }
            a.containers.iter_mut().for_each(|c| c.image = None);
            b.containers.iter_mut().for_each(|c| c.image = None);
            if a != b {
                return Err(format!(
                    "The Pod {:?} is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative); delete the pod and apply it again",
                    o.name
                ));
            }
            let mut p = old.clone();
            p.metadata.labels = pod.metadata.labels.clone();
            p.metadata.annotations = pod.metadata.annotations.clone();
            if let (Some(ps), Some(new)) = (p.spec.as_mut(), pod.spec.as_ref()) {
                for (c, n) in ps.containers.iter_mut().zip(&new.containers) {
                    c.image = n.image.clone();
                }
            }
            let verb = verb(Some(old), &p);
            return self.write(o, &p, verb, None);
        }
        pod.metadata.uid = Some(new_uid());
        pod.metadata.creation_timestamp = Some(now());
        pod.status = None;
        let spec = pod.spec.as_mut().expect("validated");
        let mut pending = None;
        match spec.node_name.clone() {
            Some(n) if !self.load.contains_key(&n) => {
                pending = Some(pending_status(
                    "NodeNotFound",
                    &format!(
                        "node {n:?} does not exist in this lab (its nodes are {}); the pod stays Pending",
                        self.lab
                            .config
                            .nodes
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None,
                ));
            }
            Some(n) => *self.load.get_mut(&n).expect("checked") += 1,
            None => {
                let selector = spec.node_selector.clone().unwrap_or_default();
                let fits: Vec<&String> = self
                    .load
                    .keys()
                    .filter(|n| {
                        let labels = node_labels(self.lab, n);
                        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
                    .collect();
                match fits
                    .iter()
                    .min_by_key(|n| (self.load[n.as_str()], n.as_str()))
                {
                    Some(n) => {
                        let n = n.to_string();
                        *self.load.get_mut(&n).expect("a node") += 1;
                        spec.node_name = Some(n);
                    }
                    None => {
                        let total = self.load.len();
                        pending = Some(pending_status(
                            "Unschedulable",
                            &format!(
                                "0/{total} nodes are available: {total} node(s) didn't match Pod's node affinity/selector."
                            ),
                            Some("Unschedulable"),
                        ));
                    }
                }
            }
        }
        self.write(o, &pod, "created", pending)
    }

    fn admit_service(&mut self, o: &Object) -> Result<Write, String> {
        let mut svc: Service = decode(o)?;
        svc.metadata.namespace = Some(o.namespace.clone());
        validate::service(&svc)?;
        let old: Option<Service> = self.existing(o);
        let c = &self.lab.config;
        let families: Vec<bool> = c.service_cidrs.iter().map(|c| c.addr().is_ipv4()).collect();
        let fam_name = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
        let spec = svc.spec.as_mut().expect("validated");
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        spec.type_ = Some(ty.clone());
        let invalid = |m: String| format!("Service {:?} is invalid: {m}", o.name);
        if ty != "ExternalName" {
            // Families: from ipFamilies, else the policy and the lab's families.
            let policy = spec
                .ip_family_policy
                .clone()
                .unwrap_or_else(|| "SingleStack".into());
            let mut want: Vec<bool> = match &spec.ip_families {
                Some(f) if !f.is_empty() => {
                    let mut v = vec![];
                    for (i, x) in f.iter().enumerate() {
                        let v4 = match x.as_str() {
                            "IPv4" => true,
                            "IPv6" => false,
                            _ => {
                                return Err(invalid(format!(
                                    "spec.ipFamilies[{i}]: Unsupported value: {x:?}: supported values: \"IPv4\", \"IPv6\""
                                )));
                            }
                        };
                        if !families.contains(&v4) {
                            return Err(invalid(format!(
                                "spec.ipFamilies[{i}]: Invalid value: {x:?}: not configured on this cluster"
                            )));
                        }
                        v.push(v4);
                    }
                    v
                }
                _ => families.clone(),
            };
            match policy.as_str() {
                "SingleStack" => want.truncate(1),
                "PreferDualStack" => {}
                "RequireDualStack" => {
                    if want.len() < 2 {
                        return Err(invalid(
                            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into(),
                        ));
                    }
                }
                other => {
                    return Err(invalid(format!(
                        "spec.ipFamilyPolicy: Unsupported value: {other:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
                    )));
                }
            }
            spec.ip_family_policy = Some(policy);
            spec.ip_families = Some(want.iter().map(|v| fam_name(*v).to_string()).collect());
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if headless {
                spec.cluster_ips = Some(vec!["None".into()]);
            } else if let Some(prev) = old
                .as_ref()
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.cluster_ips.clone())
            {
                // ClusterIPs are immutable.
                if let Some(asked) = &spec.cluster_ip
                    && !prev.contains(asked)
                {
                    return Err(invalid(format!(
                        "spec.clusterIPs[0]: Invalid value: {asked:?}: may not change once set"
                    )));
                }
                spec.cluster_ip = prev.first().cloned();
                spec.cluster_ips = Some(prev);
            } else {
                let mut ips = vec![];
                let asked: Vec<String> = spec
                    .cluster_ips
                    .clone()
                    .or_else(|| spec.cluster_ip.clone().map(|x| vec![x]))
                    .unwrap_or_default();
                for (i, v4) in want.iter().enumerate() {
                    let cidr = c
                        .service_cidrs
                        .iter()
                        .find(|c| c.addr().is_ipv4() == *v4)
                        .expect("families come from the service CIDRs");
                    let ip = match asked.get(i).filter(|s| !s.is_empty()) {
                        Some(a) => {
                            let ip: IpAddr = a.parse().map_err(|_| {
                                invalid(format!(
                                    "spec.clusterIPs[{i}]: Invalid value: {a:?}: must be a valid IP address"
                                ))
                            })?;
                            if !cidr.contains(&ip) {
                                return Err(invalid(format!(
                                    "spec.clusterIPs[{i}]: Invalid value: {a:?}: provided IP is not in the valid range. The range of valid IPs is {cidr}"
                                )));
                            }
                            if self.service_ips.contains(&ip) {
                                return Err(invalid(format!(
                                    "spec.clusterIPs[{i}]: Invalid value: {a:?}: provided IP is already allocated"
                                )));
                            }
                            ip
                        }
                        None => next_free(cidr, &self.service_ips).ok_or_else(|| {
                            invalid(format!(
                                "spec.clusterIPs[{i}]: Internal error: range {cidr} is full"
                            ))
                        })?,
                    };
                    self.service_ips.insert(ip);
                    ips.push(ip.to_string());
                }
                spec.cluster_ip = ips.first().cloned();
                spec.cluster_ips = Some(ips);
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                let prev: BTreeMap<(i32, String), i32> = old
                    .as_ref()
                    .and_then(|s| s.spec.as_ref())
                    .and_then(|s| s.ports.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        Some((
                            (p.port, p.protocol.unwrap_or_else(|| "TCP".into())),
                            p.node_port?,
                        ))
                    })
                    .collect();
                let own: HashSet<i32> = prev.values().copied().collect();
                for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
                    let key = (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into()));
                    if let Some(n) = p.node_port {
                        if self.node_ports.contains(&n) && !own.contains(&n) {
                            return Err(invalid(format!(
                                "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is already allocated"
                            )));
                        }
                        self.node_ports.insert(n);
                    } else {
                        p.node_port = match prev.get(&key) {
                            Some(n) => Some(*n),
                            None => {
                                let n = (30000..=32767)
                                    .find(|n| !self.node_ports.contains(n))
                                    .ok_or_else(|| {
                                        invalid("spec.ports: node ports are exhausted".into())
                                    })?;
                                self.node_ports.insert(n);
                                Some(n)
                            }
                        };
                    }
                }
            }
        }
        let lb = ty == "LoadBalancer";
        let families = spec.ip_families.clone().unwrap_or_default();
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            if p.target_port.is_none() {
                p.target_port =
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p.port));
            }
        }
        // The lab's load-balancer controller: ingress IPs from the applied
        // status, else the ones assigned before, else the next free ones.
        if lb {
            let ingress = |s: &Option<k8s_openapi::api::core::v1::ServiceStatus>| {
                s.as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|l| l.ingress.clone())
                    .filter(|i| !i.is_empty())
            };
            let ips = match ingress(&svc.status)
                .or_else(|| ingress(&old.as_ref().and_then(|o| o.status.clone())))
            {
                Some(i) => i,
                None => {
                    let mut v = vec![];
                    for f in &families {
                        let pool = self
                            .lab
                            .config
                            .load_balancer_pools()
                            .into_iter()
                            .find(|p| p.addr().is_ipv4() == (f == "IPv4"))
                            .expect("a pool per family");
                        // Not the subnet's own address (IPv6 hosts() has it).
                        let ip = pool
                            .hosts()
                            .find(|ip| *ip != pool.network() && !self.lb_ips.contains(ip))
                            .ok_or_else(|| {
                                invalid(format!(
                                    "status.loadBalancer: the lab's pool {pool} is exhausted"
                                ))
                            })?;
                        self.lb_ips.insert(ip);
                        v.push(k8s_openapi::api::core::v1::LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ip_mode: Some("VIP".into()),
                            ..Default::default()
                        });
                    }
                    v
                }
            };
            svc.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
                load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                    ingress: Some(ips),
                }),
                ..Default::default()
            });
        } else {
            svc.status = None;
        }
        keep_identity(&mut svc.metadata, old.as_ref().map(|x| &x.metadata));
        let verb = verb(old.as_ref(), &svc);
        self.write(o, &svc, verb, None)
    }

    /// An EndpointSlice written by hand, for a Service without a selector
    /// (the lab's controller writes those of Services with one).
    fn admit_slice(&mut self, o: &Object) -> Result<Write, String> {
        let mut s: EndpointSlice = decode(o)?;
        s.metadata.namespace = Some(o.namespace.clone());
        let mut e = vec![];
        if o.name.is_empty() {
            e.push("metadata.name: Required value".to_string());
        }
        let v4 = match s.address_type.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            other => {
                e.push(format!(
                    "addressType: Unsupported value: {other:?}: supported values: \"IPv4\", \"IPv6\""
                ));
                true
            }
        };
        if s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(super::endpoints::SERVICE_NAME))
            .is_none()
        {
            e.push(format!(
                "metadata.labels: Required value: {} must name the Service the slice is for",
                super::endpoints::SERVICE_NAME
            ));
        }
        for (i, ep) in s.endpoints.iter().enumerate() {
            if ep.addresses.is_empty() {
                e.push(format!("endpoints[{i}].addresses: Required value"));
            }
            for (j, a) in ep.addresses.iter().enumerate() {
                if a.parse::<IpAddr>().map(|ip| ip.is_ipv4()) != Ok(v4) {
                    e.push(format!(
                        "endpoints[{i}].addresses[{j}]: Invalid value: {a:?}: must be a valid {} address",
                        s.address_type
                    ));
                }
            }
        }
        for (i, p) in s.ports.iter().flatten().enumerate() {
            if let Some(n) = p.port
                && !(1..=65535).contains(&n)
            {
                e.push(format!(
                    "ports[{i}].port: Invalid value: {n}: must be between 1 and 65535, inclusive"
                ));
            }
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                e.push(format!(
                    "ports[{i}].protocol: Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ));
            }
        }
        if !e.is_empty() {
            return Err(format!(
                "EndpointSlice {:?} is invalid: {}",
                o.name,
                e.join(", ")
            ));
        }
        let old: Option<EndpointSlice> = self.existing(o);
        keep_identity(&mut s.metadata, old.as_ref().map(|x| &x.metadata));
        let verb = verb(old.as_ref(), &s);
        self.write(o, &s, verb, None)
    }

    fn write<T: serde::Serialize>(
        &self,
        o: &Object,
        obj: &T,
        verb: &'static str,
        pending: Option<LabPodStatus>,
    ) -> Result<Write, String> {
        let yaml = serde_yaml::to_string(obj).map_err(|e| e.to_string())?;
        Ok(Write {
            kind: o.kind,
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            yaml,
            verb,
            pending,
        })
    }
}

fn verb<T: serde::Serialize>(old: Option<&T>, new: &T) -> &'static str {
    match old {
        None => "created",
        Some(o) if serde_json::to_value(o).ok() == serde_json::to_value(new).ok() => "unchanged",
        Some(_) => "configured",
    }
}

fn next_free(cidr: &IpNet, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    // From the tenth address on: the first few are kept for well-known
    // Services (the API server's, DNS), as in kubeadm clusters.
    cidr.hosts().skip(9).find(|ip| !used.contains(ip))
}

fn node_labels(lab: &Lab, node: &str) -> BTreeMap<String, String> {
    lab.cluster()
        .ok()
        .and_then(|c| c.object("Node", "", node))
        .and_then(|t| serde_yaml::from_str::<k8s_openapi::api::core::v1::Node>(&t).ok())
        .and_then(|n| n.metadata.labels)
        .unwrap_or_default()
}

/// The status of a pod that no node will run.
pub fn pending_status(reason: &str, message: &str, scheduled: Option<&str>) -> LabPodStatus {
    LabPodStatus {
        status: PodStatus {
            phase: Some("Pending".into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            conditions: scheduled.map(|r| {
                vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some(r.into()),
                    message: Some(message.into()),
                    last_transition_time: Some(now()),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        netns: None,
        node: None,
        probes: vec![],
    }
}

/// Admit and write `docs`; the lines say what happened to each object. If
/// any document is invalid, nothing is written and the errors are returned.
pub fn apply(lab: &Lab, docs: Vec<Doc>) -> Result<Vec<String>, Vec<String>> {
    let mut errors = vec![];
    let mut objects = vec![];
    for d in docs {
        match identify(d) {
            Ok(o) => objects.push(o),
            Err(e) => errors.push(e),
        }
    }
    // Namespaces before what lives in them, pods last.
    objects.sort_by_key(|o| o.kind);
    let mut seen = HashSet::new();
    for o in &objects {
        if !seen.insert((o.kind, o.namespace.clone(), o.name.clone())) {
            errors.push(format!(
                "{}: {} {:?} appears twice in this apply",
                o.doc.origin,
                o.kind.name(),
                o.name
            ));
        }
    }
    let mut adm = match Admission::new(lab) {
        Ok(a) => a,
        Err(e) => return Err(vec![e.to_string()]),
    };
    let mut writes = vec![];
    for o in &objects {
        match adm.admit(o) {
            Ok(w) => writes.push(w),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        errors.push("nothing was applied".into());
        return Err(errors);
    }
    let mut lines = vec![];
    for w in writes {
        if w.verb != "unchanged"
            && let Err(e) = adm
                .cluster
                .put_object(w.kind.name(), &w.namespace, &w.name, &w.yaml)
        {
            return Err(vec![format!(
                "writing {} {}/{}: {e}",
                w.kind.name(),
                w.namespace,
                w.name
            )]);
        }
        if let Some(s) = &w.pending {
            let _ = adm.cluster.put_status("Pod", &w.namespace, &w.name, s);
        }
        lines.push(format!("{}/{} {}", w.kind.resource(), w.name, w.verb));
    }
    let _ = &adm.stored;
    Ok(lines)
}

/// Delete the objects `docs` name. Deleting a Namespace deletes what lives
/// in it. Returns what was deleted and what was not found.
pub fn delete(lab: &Lab, docs: Vec<Doc>) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let cluster = lab.cluster()?;
    let mut done = vec![];
    let mut errors = vec![];
    let mut objects = vec![];
    for d in docs {
        match identify(d) {
            Ok(o) => objects.push(o),
            Err(e) => errors.push(e),
        }
    }
    // Pods first: the reverse of apply.
    objects.sort_by_key(|o| std::cmp::Reverse(o.kind));
    for o in objects {
        if o.kind == Kind::Namespace && (o.name == "default" || o.name == "kube-system") {
            errors.push(format!(
                "Error from server (Forbidden): namespaces {:?} is forbidden: this namespace may not be deleted",
                o.name
            ));
            continue;
        }
        if o.kind == Kind::Namespace {
            let m = cluster
                .manifests()
                .map_err(|e| anyhow::anyhow!("the lab's stored objects: {e}"))?;
            for p in m
                .pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(&o.name))
            {
                delete_pod(lab, &cluster, p)?;
            }
            for (kind, items) in [
                (
                    Kind::Service,
                    m.services
                        .iter()
                        .filter(|s| s.metadata.namespace.as_deref() == Some(&o.name))
                        .filter_map(|s| s.metadata.name.clone())
                        .collect::<Vec<_>>(),
                ),
                (
                    Kind::NetworkPolicy,
                    m.network_policies
                        .iter()
                        .filter(|s| s.metadata.namespace.as_deref() == Some(&o.name))
                        .filter_map(|s| s.metadata.name.clone())
                        .collect(),
                ),
                (
                    Kind::WasmNetworkPolicy,
                    m.wasm_network_policies
                        .iter()
                        .filter(|w| w.namespace() == o.name)
                        .map(|w| w.name().to_string())
                        .collect(),
                ),
                (
                    Kind::EndpointSlice,
                    m.endpoint_slices
                        .iter()
                        .filter(|s| s.metadata.namespace.as_deref() == Some(&o.name))
                        .filter_map(|s| s.metadata.name.clone())
                        .collect(),
                ),
            ] {
                for name in items {
                    cluster.delete_object(kind.name(), &o.name, &name)?;
                }
            }
        }
        let existing = cluster.object(o.kind.name(), &o.namespace, &o.name);
        match existing {
            None => errors.push(format!(
                "Error from server (NotFound): {} {:?} not found",
                o.kind.plural(),
                o.name
            )),
            Some(text) => {
                if o.kind == Kind::Pod {
                    let p: Pod = serde_yaml::from_str(&text)?;
                    delete_pod(lab, &cluster, &p)?;
                } else {
                    cluster.delete_object(o.kind.name(), &o.namespace, &o.name)?;
                }
                done.push(format!("{} {:?} deleted", o.kind.resource(), o.name));
            }
        }
    }
    Ok((done, errors))
}

fn delete_pod(lab: &Lab, cluster: &ClusterDir, p: &Pod) -> anyhow::Result<()> {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let name = p.metadata.name.as_deref().unwrap_or_default();
    cluster.delete_object("Pod", ns, name)?;
    // The node's agent removes the status of a pod it ran; nobody runs a
    // pod bound to no node or to a node that does not exist.
    let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if node.is_none_or(|n| lab.config.node(n).is_none()) {
        cluster.delete_status("Pod", ns, name)?;
    }
    Ok(())
}
