//! `lab apply` and `lab delete`: thin wrappers over the lab's API server, as
//! `kubectl apply --server-side --force-conflicts` and `kubectl delete` are.
//! The API server validates, defaults and stores; what it refuses is
//! printed with its own message.
//!
//! An apply is all or nothing where the API server can tell: every
//! document is first applied as a server-side dry run, and nothing is
//! written unless every one passes (a document in a namespace the same
//! apply creates is checked when it is written).

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How many requests `lab apply` has in flight at once.
const CONCURRENCY: usize = 8;

/// The field manager of `lab apply`.
pub const FIELD_MANAGER: &str = "switchyard-lab";

/// One YAML document and where it came from.
#[derive(Debug, Clone)]
pub struct Doc {
    /// `file` or `file (document N)`.
    pub origin: String,
    pub value: serde_yaml::Value,
}

/// Read documents from files, directories (every `.yaml`, `.yml` and
/// `.json`, in name order) or `-` (standard input).
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut files = vec![];
    for p in paths {
        if p.as_os_str() == "-" {
            files.push(p.clone());
        } else if p.is_dir() {
            let found = crate::source::local::manifest_files(p)
                .with_context(|| format!("reading {}", p.display()))?;
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

/// A document resolved to its API resource.
struct Target {
    origin: String,
    /// `pod/web`, `networkpolicy.networking.k8s.io/deny`: as kubectl prints.
    display: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    api: Api<DynamicObject>,
    value: serde_json::Value,
}

/// Resolves kinds to resources, once per kind.
struct Resolver {
    client: kube::Client,
    known: BTreeMap<(String, String), (ApiResource, ApiCapabilities)>,
}

impl Resolver {
    async fn resolve(&mut self, doc: &Doc) -> Result<Target, String> {
        let value: serde_json::Value = serde_json::to_value(&doc.value)
            .map_err(|e| format!("error parsing {}: {e}", doc.origin))?;
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        if api_version.is_empty() || kind.is_empty() {
            return Err(format!(
                "error validating {}: apiVersion and kind are required",
                doc.origin
            ));
        }
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(format!(
                "error validating {}: metadata.name is required (generateName is not supported by apply)",
                doc.origin
            ));
        }
        let key = (api_version.clone(), kind.clone());
        if !self.known.contains_key(&key) {
            let (group, version) = match api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), api_version.clone()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, &kind);
            let found = kube::discovery::pinned_kind(&self.client, &gvk)
                .await
                .map_err(|e| {
                    format!(
                        "error: resource mapping not found for name: {name:?} kind: {kind:?} from {:?}: no matches for kind {kind:?} in version {api_version:?} ({e})",
                        doc.origin
                    )
                })?;
            self.known.insert(key.clone(), found);
        }
        let (ar, caps) = self.known[&key].clone();
        let namespace = match caps.scope {
            Scope::Namespaced => Some(
                value["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
            ),
            Scope::Cluster => None,
        };
        let api = match &namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let resource = if ar.group.is_empty() {
            kind.to_ascii_lowercase()
        } else {
            format!("{}.{}", kind.to_ascii_lowercase(), ar.group)
        };
        Ok(Target {
            origin: doc.origin.clone(),
            display: format!("{resource}/{name}"),
            kind,
            namespace,
            name,
            api,
            value,
        })
    }
}

/// The API server's message for a refused request, else the error.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("Error from server ({}): {}", s.reason, s.message),
        e => e.to_string(),
    }
}

/// A pod refused only because its namespace's `default` ServiceAccount is
/// not made yet (kube-controller-manager makes it moments after the
/// namespace): worth trying again.
fn service_account_not_ready(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("serviceaccount") && s.message.contains("not found"))
}

fn namespace_missing(e: &kube::Error, created: &BTreeSet<String>) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404
        && s.details.as_ref().is_some_and(|d| d.kind == "namespaces" && created.contains(&d.name)))
}

/// Apply `docs` in order; the lines say what happened to each object. If
/// the dry run refuses any document, nothing is written and every refusal
/// is returned.
pub async fn apply(client: &kube::Client, docs: &[Doc]) -> Result<Vec<String>, Vec<String>> {
    let mut resolver = Resolver {
        client: client.clone(),
        known: BTreeMap::new(),
    };
    let mut targets = vec![];
    let mut errors = vec![];
    for d in docs {
        match resolver.resolve(d).await {
            Ok(t) => targets.push(t),
            Err(e) => errors.push(e),
        }
    }
    // Namespaces this apply creates: what lives in them cannot be dry-run
    // until they exist.
    let created: BTreeSet<String> = targets
        .iter()
        .filter(|t| t.kind == "Namespace" && t.namespace.is_none())
        .map(|t| t.name.clone())
        .collect();
    let dry = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    // Dry runs are independent of each other: a few at a time.
    let dried: Vec<Result<(), kube::Error>> = futures::stream::iter(targets.iter())
        .map(|t| async {
            t.api
                .patch(&t.name, &dry, &Patch::Apply(&t.value))
                .await
                .map(|_| ())
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut waiting = vec![];
    for (i, (t, r)) in targets.iter().zip(dried).enumerate() {
        match r {
            Ok(()) => {}
            Err(e) if namespace_missing(&e, &created) => waiting.push(i),
            Err(e) if service_account_not_ready(&e) => {}
            Err(e) => errors.push(format!(
                "{} (from {}): {}",
                t.display,
                t.origin,
                api_message(&e)
            )),
        }
    }
    if !errors.is_empty() {
        errors.push("nothing was applied".into());
        return Err(errors);
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut lines = vec![None; targets.len()];
    if !waiting.is_empty() {
        // Make the new namespaces, dry-run what goes in them, and take the
        // namespaces back if that is refused: still all or nothing.
        let mut made = vec![];
        for (i, t) in targets.iter().enumerate() {
            if t.kind != "Namespace" || !created.contains(&t.name) {
                continue;
            }
            match write(t, &params).await {
                Ok(verb) => {
                    if verb == "created" {
                        made.push(t);
                    }
                    lines[i] = Some(format!("{} {verb}", t.display));
                }
                Err(e) => {
                    errors.push(format!("{} (from {}): {e}", t.display, t.origin));
                    break;
                }
            }
        }
        if errors.is_empty() {
            for &i in &waiting {
                let t = &targets[i];
                match t.api.patch(&t.name, &dry, &Patch::Apply(&t.value)).await {
                    Ok(_) => {}
                    Err(e) if service_account_not_ready(&e) => {}
                    Err(e) => errors.push(format!(
                        "{} (from {}): {}",
                        t.display,
                        t.origin,
                        api_message(&e)
                    )),
                }
            }
        }
        if !errors.is_empty() {
            // Gone for good before saying so (an empty namespace goes in
            // moments), so that the same apply, fixed, can follow at once.
            for t in &made {
                let _ = t.api.delete(&t.name, &DeleteParams::background()).await;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            for t in &made {
                while matches!(t.api.get_opt(&t.name).await, Ok(Some(_)))
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            errors.push("nothing was applied".into());
            return Err(errors);
        }
    }
    // What other objects live in goes first (namespaces, CRDs), one by
    // one; the rest a few at a time, reported in the documents' order.
    let container =
        |t: &Target| matches!(t.kind.as_str(), "Namespace" | "CustomResourceDefinition");
    for first in [true, false] {
        let todo: Vec<usize> = (0..targets.len())
            .filter(|&i| lines[i].is_none() && container(&targets[i]) == first)
            .collect();
        let done: Vec<(usize, Result<&'static str, String>)> = futures::stream::iter(todo)
            .map(|i| {
                let t = &targets[i];
                let params = &params;
                async move { (i, write(t, params).await) }
            })
            .buffered(if first { 1 } else { CONCURRENCY })
            .collect()
            .await;
        let mut failed = vec![];
        for (i, r) in done {
            let t = &targets[i];
            match r {
                Ok(verb) => lines[i] = Some(format!("{} {verb}", t.display)),
                // The dry run passed, but the write did not (a node port
                // already taken, say: dry runs allocate nothing).
                Err(e) => failed.push(format!("{} (from {}): {e}", t.display, t.origin)),
            }
        }
        if !failed.is_empty() {
            let done: Vec<String> = lines.iter().flatten().cloned().collect();
            failed.push(if done.is_empty() {
                "nothing was applied".to_string()
            } else {
                format!("only these were applied: {}", done.join(", "))
            });
            return Err(failed);
        }
    }
    Ok(lines.into_iter().flatten().collect())
}

/// Server-side apply one object; what happened to it, as kubectl says it.
async fn write(t: &Target, params: &PatchParams) -> Result<&'static str, String> {
    let before = t.api.get_opt(&t.name).await.ok().flatten();
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        match t.api.patch(&t.name, params, &Patch::Apply(&t.value)).await {
            Ok(o) => break o,
            Err(e) if service_account_not_ready(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(api_message(&e)),
        }
    };
    Ok(match before {
        None => "created",
        Some(b) if b.metadata.resource_version == after.metadata.resource_version => "unchanged",
        Some(_) => "configured",
    })
}

/// Delete the objects `docs` name (in the background: a Namespace goes with
/// what lives in it). Returns what was deleted and what was not.
pub async fn delete(client: &kube::Client, docs: &[Doc]) -> (Vec<String>, Vec<String>) {
    let mut resolver = Resolver {
        client: client.clone(),
        known: BTreeMap::new(),
    };
    let mut done = vec![];
    let mut errors = vec![];
    for d in docs.iter().rev() {
        let t = match resolver.resolve(d).await {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match t.api.delete(&t.name, &DeleteParams::background()).await {
            // As kubectl says it.
            Ok(_) => done.push(format!(
                "{} {:?} deleted",
                t.display.split('/').next().unwrap_or_default(),
                t.name
            )),
            Err(e) => errors.push(api_message(&e)),
        }
    }
    (done, errors)
}

/// `(namespace, name)` of every Pod among `docs`.
pub fn pod_names(docs: &[Doc]) -> Vec<(String, String)> {
    docs.iter()
        .filter(|d| d.value.get("kind").and_then(|k| k.as_str()) == Some("Pod"))
        .filter_map(|d| {
            let m = d.value.get("metadata")?;
            Some((
                m.get("namespace")
                    .and_then(|n| n.as_str())
                    .unwrap_or("default")
                    .to_string(),
                m.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Why a pod will not run without someone changing something: unschedulable
/// (no node fits), or its container cannot be configured.
pub fn stuck(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
        {
            return Some(format!(
                "Unschedulable: {}",
                c.message.as_deref().unwrap_or_default()
            ));
        }
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref())
            && w.reason.as_deref() == Some("CreateContainerConfigError")
        {
            return Some(format!(
                "CreateContainerConfigError: {}",
                w.message.as_deref().unwrap_or_default()
            ));
        }
    }
    None
}

/// Why a pod is not running yet, as `kubectl get pods` would show it.
pub fn waiting_reason(p: Option<&Pod>) -> String {
    let Some(p) = p else {
        return "not found".into();
    };
    let Some(s) = &p.status else {
        return "no status yet".into();
    };
    if let Some(c) = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("Pending"),
            c.message.as_deref().unwrap_or_default()
        );
    }
    for cs in s.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            return format!(
                "{}: {}",
                w.reason.as_deref().unwrap_or("Waiting"),
                w.message.as_deref().unwrap_or_default()
            );
        }
    }
    match (&s.reason, &s.message) {
        (Some(r), m) => format!("{r}: {}", m.as_deref().unwrap_or_default()),
        (None, Some(m)) => m.clone(),
        (None, None) => s.phase.clone().unwrap_or_else(|| "Pending".into()),
    }
}

/// Wait until every pod named runs or is stuck for a reason no wait will
/// change; progress on stderr.
pub async fn wait_pods(
    client: &kube::Client,
    names: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let mut last = usize::MAX;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    loop {
        let node_names: BTreeSet<String> = nodes
            .list(&Default::default())
            .await
            .context("listing nodes")?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        let mut pods = vec![];
        for (ns, n) in names {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            pods.push(
                api.get_opt(n)
                    .await
                    .with_context(|| format!("reading pod {ns}/{n}"))?,
            );
        }
        let running = pods
            .iter()
            .flatten()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        let stuck: Vec<String> = names
            .iter()
            .zip(&pods)
            .filter_map(|((ns, n), p)| {
                let p = p.as_ref()?;
                let why = stuck(p).or_else(|| {
                    let node = p.spec.as_ref()?.node_name.as_ref()?;
                    (!node_names.contains(node))
                        .then(|| format!("NodeNotFound: node {node:?} does not exist"))
                })?;
                Some(format!("{ns}/{n}: {why}"))
            })
            .collect();
        if running != last {
            eprintln!("==> pods running: {running}/{}", names.len());
            last = running;
        }
        if running + stuck.len() == names.len() {
            for s in stuck {
                eprintln!("==> pending: {s}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let waiting: Vec<String> = names
                .iter()
                .zip(&pods)
                .filter(|(_, p)| {
                    p.as_ref()
                        .and_then(|p| p.status.as_ref())
                        .and_then(|s| s.phase.as_deref())
                        != Some("Running")
                })
                .map(|((ns, n), p)| format!("{ns}/{n} ({})", waiting_reason(p.as_ref())))
                .collect();
            anyhow::bail!(
                "pods not running after {} s: {}",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
