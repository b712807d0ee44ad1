//! The manifests we ship (`deploy/kubernetes/`, and `crds/` with its
//! examples) are Kubernetes objects the API server would take as written.
//!
//! Every document is parsed into its k8s-openapi type and serialized back,
//! and the result must equal the document: k8s-openapi drops fields it does
//! not know, so a misspelled or misplaced field (`securityContext` one level
//! too high, `mountpropagation`) shows up as a difference rather than being
//! silently ignored, as `kubectl apply` would ignore it too. The RBAC must
//! name everything it grants, the DaemonSet's privileges are pinned, every
//! image is named by digest (`deploy/image/build.sh --pin`), and the
//! kustomization must render (with the `kubectl` on this machine, or
//! `$KUBECTL`; where there is none, `./scripts/setup.sh` installs Debian 12's
//! 1.20, whose kustomize is old, so the kustomization avoids newer features).
//!
//! No root, no network, no cluster.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::{NamespaceResourceScope, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const NAMESPACE: &str = "switchyard-system";

/// switchyard.dev kinds: their own tests (against the CRDs' schemas) check
/// them; here they are only counted.
const OUR_KINDS: &[(&str, bool)] = &[
    ("NetworkModule", false),
    ("ClusterNetwork", false),
    ("WasmNetworkPolicy", true),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the repository")
        .to_path_buf()
}

/// One YAML document, and where it came from (for messages).
struct Doc {
    origin: String,
    value: Value,
}

impl Doc {
    fn str_at(&self, pointer: &str) -> &str {
        self.value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    fn kind(&self) -> &str {
        self.str_at("/kind")
    }
    fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }
}

/// The documents of a (multi-document) YAML text, empty ones left out.
fn documents(origin: &str, text: &str) -> Result<Vec<Doc>, String> {
    let mut docs = vec![];
    for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = <Value as serde::Deserialize>::deserialize(d)
            .map_err(|e| format!("{origin}, document {i}: not valid YAML: {e}"))?;
        match value {
            Value::Null => {}
            Value::Object(_) => docs.push(Doc {
                origin: format!("{origin}, document {i}"),
                value,
            }),
            other => return Err(format!("{origin}, document {i}: not an object: {other}")),
        }
    }
    Ok(docs)
}

/// Every `.yaml`/`.yml` file under `dir`, recursively and in order, except
/// kustomizations (kustomize's input, not objects).
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && !matches!(
                name.as_str(),
                "kustomization.yaml" | "kustomization.yml" | "Kustomization"
            )
        {
            out.push(p);
        }
    }
    out
}

fn file_documents(files: &[PathBuf]) -> Vec<Doc> {
    let root = repo();
    let mut docs = vec![];
    for f in files {
        let origin = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{origin}: {e}"));
        docs.extend(documents(&origin, &text).unwrap_or_else(|e| panic!("{e}")));
    }
    docs
}

fn deploy_documents() -> Vec<Doc> {
    let files = yaml_files(&repo().join("deploy/kubernetes"));
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    file_documents(&files)
}

/// The first place where `ours` (the document) and `back` (the typed object
/// serialized again) differ, as a JSON pointer and what differs there.
fn first_difference(ours: &Value, back: &Value, path: &str) -> Option<String> {
    match (ours, back) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}/{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => first_difference(x, y, &p),
                    (Some(x), None) => Some(format!(
                        "{p}: {x} is not a field of the type here (misspelled or misplaced?)"
                    )),
                    (None, Some(y)) => Some(format!("{p}: the type adds {y}")),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}/{i}"))),
        // JSON has one kind of number: kustomize writes a float field's
        // `9216.0` as `9216`, and the type reads it back as 9216.0.
        (Value::Number(a), Value::Number(b))
            if (a.is_f64() || b.is_f64()) && a.as_f64() == b.as_f64() =>
        {
            None
        }
        _ if ours == back => None,
        _ => Some(format!("{path}: {ours} became {back}")),
    }
}

/// What a document was checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// Parsed into its k8s-openapi type and back, unchanged.
    Typed { namespaced: bool },
    /// A switchyard.dev kind, left to the CRD tests.
    Ours { namespaced: bool },
}

impl Checked {
    fn namespaced(self) -> bool {
        match self {
            Checked::Typed { namespaced } | Checked::Ours { namespaced } => namespaced,
        }
    }
}

fn round_trip<K>(doc: &Doc) -> Result<Checked, String>
where
    K: Resource + Serialize + DeserializeOwned,
    K::Scope: 'static,
{
    let typed: K = serde_json::from_value(doc.value.clone())
        .map_err(|e| format!("{}: not a valid {}: {e}", doc.origin, K::KIND))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("{}: {e}", doc.origin))?;
    if let Some(d) = first_difference(&doc.value, &back, "") {
        return Err(format!("{}: {} {:?}: {d}", doc.origin, K::KIND, doc.name()));
    }
    Ok(Checked::Typed {
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
    })
}

/// Check a document as its apiVersion and kind say; an unknown kind fails.
fn check(doc: &Doc) -> Result<Checked, String> {
    let api_version = doc.str_at("/apiVersion");
    match (api_version, doc.kind()) {
        ("v1", "Namespace") => round_trip::<Namespace>(doc),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(doc),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(doc)
        }
        ("switchyard.dev/v1alpha1", kind) if OUR_KINDS.iter().any(|(k, _)| *k == kind) => {
            Ok(Checked::Ours {
                namespaced: OUR_KINDS.iter().any(|(k, ns)| *k == kind && *ns),
            })
        }
        (api_version, kind) => Err(format!(
            "{}: unknown kind {kind:?} of apiVersion {api_version:?} (add its type to this test)",
            doc.origin
        )),
    }
}

/// Check every document; all failures are reported together. The count of
/// documents per kind comes back.
fn check_all(docs: &[Doc]) -> BTreeMap<String, usize> {
    let mut errors = vec![];
    let mut kinds = BTreeMap::new();
    for d in docs {
        match check(d) {
            Ok(_) => *kinds.entry(d.kind().to_string()).or_insert(0) += 1,
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "invalid manifests:\n{}",
        errors.join("\n")
    );
    kinds
}

#[test]
fn every_manifest_is_a_kubernetes_object_as_written() {
    let mut files = yaml_files(&repo().join("deploy/kubernetes"));
    files.extend(yaml_files(&repo().join("crds")));
    let docs = file_documents(&files);
    let kinds = check_all(&docs);
    eprintln!(
        "{} documents in {} files: {kinds:?}",
        docs.len(),
        files.len()
    );
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
    ] {
        assert!(kinds.contains_key(kind), "deploy/kubernetes has no {kind}");
    }
}

/// The checker itself: a field in the wrong place, a misspelled one and an
/// unknown kind are each caught, and say where.
#[test]
fn the_check_catches_what_kubectl_would_ignore() {
    let misplaced = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  namespace: x\nnamespace: x\n";
    let misspelled = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: a}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      hostNetwork: true\n      containers:\n      - name: c\n        image: i\n        volumeMounts:\n        - {name: v, mountPath: /v, mountpropagation: HostToContainer}\n";
    let unknown = "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n";
    for (text, want) in [
        (misplaced, "document 0: ServiceAccount \"a\": /namespace:"),
        (
            misspelled,
            "/spec/template/spec/containers/0/volumeMounts/0/mountpropagation:",
        ),
        (unknown, "unknown kind \"Secret\""),
    ] {
        let docs = documents("t.yaml", text).unwrap();
        let e = check(&docs[0]).unwrap_err();
        assert!(e.contains(want), "{e}\nshould contain {want}");
    }
    // Numbers are compared as JSON numbers; other values exactly.
    assert_eq!(first_difference(&json!(9216), &json!(9216.0), ""), None);
    assert!(first_difference(&json!(1), &json!(2), "").is_some());
    assert!(first_difference(&json!("1"), &json!(1), "").is_some());
    let ok = "---\n# nothing\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    let docs = documents("t.yaml", ok).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(
        check(&docs[0]).unwrap(),
        Checked::Typed { namespaced: false }
    );
}

/// Verbs that change something. The agent writes status, events and its
/// Lease, nothing else.
const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

#[test]
fn rbac_is_least_privilege() {
    let docs = deploy_documents();
    let mut rules: Vec<(String, PolicyRule)> = vec![];
    for d in &docs {
        let rs = match d.kind() {
            "ClusterRole" => serde_json::from_value::<ClusterRole>(d.value.clone())
                .unwrap()
                .rules
                .unwrap_or_default(),
            "Role" => serde_json::from_value::<Role>(d.value.clone())
                .unwrap()
                .rules
                .unwrap_or_default(),
            _ => continue,
        };
        rules.extend(
            rs.into_iter()
                .map(|r| (format!("{} {}", d.kind(), d.name()), r)),
        );
    }
    assert!(!rules.is_empty(), "no RBAC rules in deploy/kubernetes");
    let mut problems = vec![];
    for (role, r) in &rules {
        let lists = [
            ("verbs", Some(&r.verbs)),
            ("resources", r.resources.as_ref()),
            ("apiGroups", r.api_groups.as_ref()),
            ("resourceNames", r.resource_names.as_ref()),
        ];
        for (field, list) in lists {
            if list.is_some_and(|l| l.iter().any(|v| v.contains('*'))) {
                problems.push(format!("{role}: a wildcard in {field}: {r:?}"));
            }
        }
        if r.non_resource_urls.is_some() {
            problems.push(format!("{role}: nonResourceURLs are not needed: {r:?}"));
        }
        for v in &r.verbs {
            if ["escalate", "bind", "impersonate"].contains(&v.as_str()) {
                problems.push(format!("{role}: grants {v}"));
            }
        }
        let writes = r.verbs.iter().any(|v| WRITE_VERBS.contains(&v.as_str()));
        for res in r.resources.iter().flatten() {
            if writes && !(res.ends_with("/status") || res == "events" || res == "leases") {
                problems.push(format!("{role}: writes {res}: {r:?}"));
            }
            if res == "secrets" {
                problems.push(format!("{role}: reads secrets: {r:?}"));
            }
        }
        // The Lease is named wherever a name can be given (not for create).
        if r.resources.iter().flatten().any(|res| res == "leases")
            && r.verbs.iter().any(|v| v != "create")
            && r.resource_names.is_none()
        {
            problems.push(format!("{role}: leases without resourceNames: {r:?}"));
        }
    }
    // Roles are bound to the agent's ServiceAccount, which exists.
    assert!(
        docs.iter()
            .any(|d| d.kind() == "ServiceAccount" && d.name() == "switchyard-agent")
    );
    for d in docs.iter().filter(|d| d.kind().ends_with("RoleBinding")) {
        let subjects = d.value["subjects"].as_array().cloned().unwrap_or_default();
        let want =
            json!([{"kind": "ServiceAccount", "name": "switchyard-agent", "namespace": NAMESPACE}]);
        if Value::Array(subjects) != want {
            problems.push(format!("{}: subjects should be {want}", d.origin));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn daemonset() -> DaemonSet {
    let docs = deploy_documents();
    let ds: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "DaemonSet").collect();
    assert_eq!(ds.len(), 1, "deploy/kubernetes has one DaemonSet");
    serde_json::from_value(ds[0].value.clone()).unwrap()
}

/// Every string `image` field in `value` (containers, init containers,
/// anything else that names an image), with its JSON pointer.
fn images(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{path}/{k}");
                match v {
                    Value::String(image) if k == "image" => out.push((p, image.clone())),
                    v => images(v, &p, out),
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                images(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// `NAME@sha256:<64 lowercase hex>` (a tag before the `@` is allowed, and
/// ignored by the runtime): an image named by its content, not by a tag
/// that can move.
fn by_digest(image: &str) -> bool {
    image.split_once("@sha256:").is_some_and(|(name, hex)| {
        !name.is_empty()
            && hex.len() == 64
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The images of `docs` that are not named by digest, as messages; fails
/// when there is no image at all.
fn images_not_by_digest(docs: &[Doc]) -> (BTreeSet<String>, Vec<String>) {
    let mut all = BTreeSet::new();
    let mut problems = vec![];
    for d in docs {
        let mut found = vec![];
        images(&d.value, "", &mut found);
        for (pointer, image) in found {
            if !by_digest(&image) {
                problems.push(format!(
                    "{} {} {pointer}: {image} is not by digest (NAME@sha256:<64 hex>); \
                     deploy/image/build.sh --pin writes the digest",
                    d.origin,
                    d.kind()
                ));
            }
            all.insert(image);
        }
    }
    assert!(!all.is_empty(), "no image in the manifests");
    (all, problems)
}

/// What a node runs is exactly the image `deploy/image/build.sh` built and
/// pinned, never whatever a tag points at today: every image in
/// deploy/kubernetes is a digest reference, and the agent's containers all
/// run the same one.
#[test]
fn every_image_is_pinned_by_digest() {
    let (all, problems) = images_not_by_digest(&deploy_documents());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(all.len(), 1, "one image for every container: {all:?}");

    // The check itself.
    let hex = "0123456789abcdef".repeat(4);
    assert!(by_digest(&format!(
        "ghcr.io/switchyard-dev/switchyard@sha256:{hex}"
    )));
    assert!(by_digest(&format!(
        "ghcr.io/switchyard-dev/switchyard:v0.1.0@sha256:{hex}"
    )));
    for bad in [
        "ghcr.io/switchyard-dev/switchyard:v0.1.0".to_string(),
        "ghcr.io/switchyard-dev/switchyard".to_string(),
        format!("ghcr.io/switchyard-dev/switchyard@sha256:{}", &hex[1..]),
        format!(
            "ghcr.io/switchyard-dev/switchyard@sha256:{}",
            hex.to_uppercase()
        ),
        format!("ghcr.io/switchyard-dev/switchyard@sha512:{hex}{hex}"),
        format!("@sha256:{hex}"),
    ] {
        assert!(!by_digest(&bad), "{bad} is not by digest");
    }
}

#[test]
fn the_daemonset_has_only_the_privileges_it_needs() {
    let ds = daemonset();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("switchyard-agent")
    );

    let agent = pod
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("a container named agent");
    let sc = agent
        .security_context
        .clone()
        .expect("agent securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("agent capabilities");
    assert_eq!(caps.drop.unwrap_or_default(), ["ALL"]);
    let added: BTreeSet<String> = caps.add.unwrap_or_default().into_iter().collect();
    assert_eq!(
        added,
        BTreeSet::from(["NET_ADMIN", "NET_RAW", "SYS_ADMIN"].map(String::from))
    );

    // The one privileged container is the init container that prepares
    // the node; every other drops every capability.
    let inits = pod.init_containers.clone().unwrap_or_default();
    let privileged = |c: &Container| {
        c.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    };
    let names: Vec<&str> = inits
        .iter()
        .chain(&pod.containers)
        .filter(|c| privileged(c))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["prepare-node"]);
    for c in inits
        .iter()
        .chain(&pod.containers)
        .filter(|c| !privileged(c))
    {
        let drop = c
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.clone())
            .unwrap_or_default();
        assert_eq!(drop, ["ALL"], "container {} drops ALL", c.name);
    }
}

/// The probes ask for paths the admin API serves, on its port.
#[test]
fn the_daemonset_probes_paths_the_agent_serves() {
    let ds = daemonset();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let agent = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    let routes = std::fs::read_to_string(repo().join("host/src/api/mod.rs")).unwrap();
    for (which, probe) in [
        ("readiness", &agent.readiness_probe),
        ("liveness", &agent.liveness_probe),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .unwrap_or_else(|| panic!("the agent has an httpGet {which} probe"));
        let path = get.path.unwrap_or_default();
        assert!(
            routes.contains(&format!(".route(\"{path}\"")),
            "{which} probe path {path} is not a route of host/src/api/mod.rs"
        );
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                switchyard::lab::layout::ADMIN_PORT.into()
            ),
            "{which} probe port"
        );
    }
}

/// The install-cni init container's command line is one `switchyard`
/// accepts: run it, with the host directories moved into a temporary one.
#[test]
fn the_install_cni_command_runs() {
    let ds = daemonset();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let init = pod
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "install-cni")
        .expect("an init container named install-cni");
    let command: Vec<String> = init
        .command
        .unwrap_or_default()
        .into_iter()
        .chain(init.args.unwrap_or_default())
        .collect();
    assert_eq!(command[0], "/usr/local/bin/switchyard");
    let t = tempfile::tempdir().unwrap();
    let plugin = t.path().join("switchyard-cni");
    std::fs::write(&plugin, b"plugin").unwrap();
    let args: Vec<String> = command[1..]
        .iter()
        .map(|a| match a.strip_prefix("/host/") {
            Some(rest) => t.path().join("host").join(rest).display().to_string(),
            None => a.clone(),
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(&args)
        .arg("--plugin")
        .arg(&plugin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "switchyard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(t.path().join("host/opt/cni/bin/switchyard-cni")).unwrap(),
        b"plugin"
    );
    assert!(
        t.path()
            .join("host/etc/cni/net.d/10-switchyard.conflist")
            .is_file()
    );
}

/// `kubectl kustomize deploy/kubernetes` renders, every object it renders is
/// typed as above, namespaced ones are in switchyard-system, all carry the
/// common label, and nothing in deploy/kubernetes is left out. `KUBECTL`
/// picks another kubectl (an old one, to check compatibility).
#[test]
fn the_kustomization_renders() {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let dir = repo().join("deploy/kubernetes");
    let out = match Command::new(&kubectl).arg("kustomize").arg(&dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{kubectl} is not installed: it renders deploy/kubernetes; ./scripts/setup.sh installs it (Debian's kubernetes-client)"
        ),
        Err(e) => panic!("running {kubectl}: {e}"),
    };
    assert!(
        out.status.success(),
        "{kubectl} kustomize {}: {}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rendered = documents("kubectl kustomize deploy/kubernetes", &text).unwrap();
    check_all(&rendered);

    let mut problems = vec![];
    for d in &rendered {
        let namespaced = check(d).unwrap().namespaced();
        let ns = d
            .value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        match (namespaced, ns) {
            (true, Some(NAMESPACE)) | (false, None) => {}
            (true, ns) => problems.push(format!(
                "{} {}: namespace {ns:?}, not {NAMESPACE}",
                d.kind(),
                d.name()
            )),
            (false, Some(ns)) => problems.push(format!(
                "{} {}: cluster-scoped but has namespace {ns}",
                d.kind(),
                d.name()
            )),
        }
        if d.str_at("/metadata/labels/app.kubernetes.io~1name") != "switchyard" {
            problems.push(format!(
                "{} {}: no label app.kubernetes.io/name: switchyard",
                d.kind(),
                d.name()
            ));
        }
    }
    // What kustomize renders is pinned too (an `images:` entry with a tag
    // would undo the pin).
    problems.extend(images_not_by_digest(&rendered).1);
    let key = |d: &Doc| (d.kind().to_string(), d.name().to_string());
    let rendered_keys: BTreeSet<_> = rendered.iter().map(key).collect();
    for d in deploy_documents() {
        if !rendered_keys.contains(&key(&d)) {
            problems.push(format!(
                "{}: {} {} is not in kustomization.yaml's resources",
                d.origin,
                d.kind(),
                d.name()
            ));
        }
    }
    // When crds/ is a kustomization, deploy/kubernetes includes it.
    if repo().join("crds/kustomization.yaml").exists()
        && !rendered
            .iter()
            .any(|d| d.kind() == "CustomResourceDefinition")
    {
        problems.push("crds/kustomization.yaml exists but no CRD is rendered".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
