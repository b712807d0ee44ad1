//! A scripted Kubernetes API server on loopback, for testing the kube
//! source and the status writers against real HTTP as kube's client speaks
//! it: LIST returns a `*List` with a resourceVersion, `?watch=true` streams
//! newline-delimited watch events, PATCH on `/status` is recorded and
//! applied. The test drives it: add, change or delete objects (each a watch
//! event), change them silently (as if the events were missed), expire the
//! watches with `410 Gone`, or refuse a kind's LIST and status PATCH until
//! told otherwise. Every request is recorded.
//!
//! A server-side apply of a status tracks which field manager owns which
//! field (each top-level field of `status`, each `nodeResults` entry by
//! node): a field its manager stops applying is removed, unless another
//! manager owns it too; an applied field is taken over (every apply here is
//! forced).
//!
//! The real API server (the lab's) is where the agent is tested first: every
//! lab test, and `kube_cluster.rs` for watches, relists, field managers, the
//! Lease, Events and RBAC. This one stays for what only a scripted server
//! shows: the exact requests (an apply's body and query, an Event's path),
//! and one node's agent in a namespace of the test against a foreign
//! cluster's objects (`kube_agent.rs`), without a lab around it.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
}

#[derive(Default)]
struct Collection {
    /// `PodList`, `NetworkModuleList`, ...
    list_kind: String,
    api_version: String,
    objects: BTreeMap<(String, String), Value>,
    /// The status fields each field manager applied, by object.
    owners: BTreeMap<(String, String), BTreeMap<String, BTreeSet<String>>>,
    watchers: Vec<mpsc::UnboundedSender<Value>>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// Leases and Events, by object path (`.../leases/<name>`).
    singles: BTreeMap<String, Value>,
    /// By collection path (`/api/v1/pods`).
    collections: BTreeMap<String, Collection>,
    refused: BTreeSet<String>,
    seen: Vec<Seen>,
}

#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

/// The collection path, list kind and apiVersion of a kind.
fn collection_of(api_version: &str, kind: &str) -> (String, String) {
    let plural = match kind {
        "Pod" => "pods",
        "Namespace" => "namespaces",
        "Service" => "services",
        "Node" => "nodes",
        "EndpointSlice" => "endpointslices",
        "NetworkPolicy" => "networkpolicies",
        "NetworkModule" => "networkmodules",
        "ClusterNetwork" => "clusternetworks",
        "WasmNetworkPolicy" => "wasmnetworkpolicies",
        // Watched in the agents' namespace only.
        "ConfigMap" => {
            return (
                "/api/v1/namespaces/switchyard-system/configmaps".into(),
                "ConfigMapList".into(),
            );
        }
        other => panic!("the fake API server does not serve {other}"),
    };
    let base = if api_version == "v1" {
        "/api/v1".to_string()
    } else {
        format!("/apis/{api_version}")
    };
    (format!("{base}/{plural}"), format!("{kind}List"))
}

/// Every kind the kube source watches, with its apiVersion.
pub const KINDS: [(&str, &str); 10] = [
    ("v1", "Pod"),
    ("v1", "Namespace"),
    ("v1", "Service"),
    ("v1", "Node"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("switchyard.dev/v1alpha1", "NetworkModule"),
    ("switchyard.dev/v1alpha1", "ClusterNetwork"),
    ("switchyard.dev/v1alpha1", "WasmNetworkPolicy"),
    ("v1", "ConfigMap"),
];

fn key(o: &Value) -> (String, String) {
    let m = &o["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

impl FakeApiServer {
    /// Serve every kind of [`KINDS`], empty, on 127.0.0.1.
    pub async fn start() -> FakeApiServer {
        let mut inner = Inner {
            rv: 100,
            ..Default::default()
        };
        for (v, k) in KINDS {
            let (path, list_kind) = collection_of(v, k);
            inner.collections.insert(
                path,
                Collection {
                    list_kind,
                    api_version: v.to_string(),
                    ..Default::default()
                },
            );
        }
        let inner = Arc::new(Mutex::new(inner));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeApiServer { addr, inner }
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn put(&self, mut obj: Value, event: Option<&str>) {
        let mut g = self.inner.lock();
        g.rv += 1;
        let rv = g.rv.to_string();
        obj["metadata"]["resourceVersion"] = json!(rv);
        let (path, _) = collection_of(
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        let c = g.collections.get_mut(&path).unwrap();
        // The status is replaced with the object: nobody owns its fields.
        c.owners.remove(&key(&obj));
        let existed = c.objects.insert(key(&obj), obj.clone()).is_some();
        if let Some(ty) = event {
            let ty = if ty == "auto" {
                if existed { "MODIFIED" } else { "ADDED" }
            } else {
                ty
            };
            c.watchers
                .retain(|w| w.send(json!({"type": ty, "object": obj})).is_ok());
        }
    }

    /// Add or change an object: a watch event.
    pub fn apply(&self, obj: Value) {
        self.put(obj, Some("auto"));
    }

    /// Add or change an object without telling the watchers (a missed
    /// event: only a relist shows it).
    pub fn apply_silently(&self, obj: Value) {
        self.put(obj, None);
    }

    /// Delete an object: a watch event, unless `silently`.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        silently: bool,
    ) {
        let mut g = self.inner.lock();
        g.rv += 1;
        let rv = g.rv.to_string();
        let (path, _) = collection_of(api_version, kind);
        let c = g.collections.get_mut(&path).unwrap();
        c.owners.remove(&(namespace.to_string(), name.to_string()));
        if let Some(mut o) = c.objects.remove(&(namespace.to_string(), name.to_string()))
            && !silently
        {
            o["metadata"]["resourceVersion"] = json!(rv);
            c.watchers
                .retain(|w| w.send(json!({"type": "DELETED", "object": o})).is_ok());
        }
    }

    /// End every watch of a kind with `410 Gone` (its resourceVersion is
    /// too old), as the API server does after compaction.
    pub fn expire(&self, api_version: &str, kind: &str) {
        let mut g = self.inner.lock();
        let (path, _) = collection_of(api_version, kind);
        let c = g.collections.get_mut(&path).unwrap();
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 1 (200)", "reason": "Expired", "code": 410}});
        for w in c.watchers.drain(..) {
            let _ = w.send(gone.clone());
        }
    }

    /// Answer a kind's LIST and status PATCH with 500 until
    /// [`FakeApiServer::accept`].
    pub fn refuse(&self, api_version: &str, kind: &str) {
        self.inner
            .lock()
            .refused
            .insert(collection_of(api_version, kind).0);
    }

    pub fn accept(&self, api_version: &str, kind: &str) {
        self.inner
            .lock()
            .refused
            .remove(&collection_of(api_version, kind).0);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().seen.clone()
    }

    /// A Lease or Event by its path.
    pub fn single(&self, path: &str) -> Option<Value> {
        self.inner.lock().singles.get(path).cloned()
    }

    /// The stored object.
    pub fn object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let g = self.inner.lock();
        let (path, _) = collection_of(api_version, kind);
        g.collections[&path]
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A query parameter's value, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = raw.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The status fields a patch sets: top-level keys, and `nodeResults[<node>]`
/// for each entry of the list-map.
fn status_fields(patch: &Value) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    for (k, v) in patch["status"].as_object().into_iter().flatten() {
        if k == "nodeResults" {
            for e in v.as_array().into_iter().flatten() {
                fields.insert(format!(
                    "nodeResults[{}]",
                    e["node"].as_str().unwrap_or_default()
                ));
            }
        } else {
            fields.insert(k.clone());
        }
    }
    fields
}

fn ok_json(v: &Value) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).to_string();
    let mut g = inner.lock();
    g.seen.push(Seen {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
    });
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    if method == "GET" && g.collections.contains_key(&path) {
        if g.refused.contains(&path) && !watch {
            return status(500, "InternalError", "scripted: this LIST is refused");
        }
        let rv = g.rv.to_string();
        let c = g.collections.get_mut(&path).unwrap();
        if watch {
            let (tx, rx) = mpsc::unbounded_channel::<Value>();
            c.watchers.push(tx);
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                let v = rx.recv().await?;
                let line = format!("{v}\n");
                Some((Ok::<_, std::io::Error>(line), rx))
            });
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap();
        }
        let list = json!({
            "kind": c.list_kind, "apiVersion": c.api_version,
            "metadata": {"resourceVersion": rv},
            "items": c.objects.values().collect::<Vec<_>>(),
        });
        return ok_json(&list);
    }
    // PATCH <collection>/<name>/status (cluster-scoped) or
    // <group path>/namespaces/<ns>/<plural>/<name>/status.
    if method == "PATCH"
        && let Some(rest) = path.strip_suffix("/status")
    {
        let (coll, name) = rest.rsplit_once('/').unwrap_or_default();
        let (coll, ns) = match coll.split_once("/namespaces/") {
            Some((base, tail)) => {
                let (ns, plural) = tail.split_once('/').unwrap_or_default();
                (format!("{base}/{plural}"), ns.to_string())
            }
            None => (coll.to_string(), String::new()),
        };
        if g.refused.contains(&coll) {
            return status(500, "InternalError", "scripted: this PATCH is refused");
        }
        let Some(c) = g.collections.get_mut(&coll) else {
            return status(404, "NotFound", "no such collection");
        };
        let k = (ns, name.to_string());
        let Some(obj) = c.objects.get_mut(&k) else {
            return status(404, "NotFound", &format!("{name} not found"));
        };
        // Server-side apply, as far as status goes: `nodeResults` is a
        // list-map keyed by node (entries merge), other fields are set.
        let patch: Value = serde_json::from_str(&body)
            .or_else(|_| serde_yaml::from_str(&body))
            .unwrap_or(Value::Null);
        if !obj["status"].is_object() {
            obj["status"] = json!({});
        }
        if content_type.starts_with("application/apply-patch") {
            // The manager owns what it applies now (forced: taken from
            // other managers); what it applied before and not now goes,
            // unless another manager owns it as well.
            let manager = query_param(&query, "fieldManager").unwrap_or_default();
            let fields = status_fields(&patch);
            let owners = c.owners.entry(k.clone()).or_default();
            for (m, f) in owners.iter_mut() {
                if *m != manager {
                    f.retain(|x| !fields.contains(x));
                }
            }
            let before = owners.insert(manager, fields.clone()).unwrap_or_default();
            for field in before.difference(&fields) {
                if owners.values().any(|f| f.contains(field)) {
                    continue;
                }
                let Some(st) = obj["status"].as_object_mut() else {
                    continue;
                };
                match field
                    .strip_prefix("nodeResults[")
                    .and_then(|n| n.strip_suffix(']'))
                {
                    Some(node) => {
                        if let Some(list) = st.get_mut("nodeResults").and_then(Value::as_array_mut)
                        {
                            list.retain(|e| e["node"] != node);
                        }
                    }
                    None => {
                        st.remove(field);
                    }
                }
            }
        }
        for (k, v) in patch["status"].as_object().into_iter().flatten() {
            if k == "nodeResults" {
                let mut list: Vec<Value> = obj["status"][k].as_array().cloned().unwrap_or_default();
                for entry in v.as_array().into_iter().flatten() {
                    list.retain(|e| e["node"] != entry["node"]);
                    list.push(entry.clone());
                }
                obj["status"][k] = json!(list);
            } else {
                obj["status"][k] = v.clone();
            }
        }
        let obj = obj.clone();
        // Watchers see the status change, as they would.
        g.rv += 1;
        let c = g.collections.get_mut(&coll).unwrap();
        c.watchers
            .retain(|w| w.send(json!({"type": "MODIFIED", "object": obj})).is_ok());
        return ok_json(&obj);
    }
    // Leases (get, create, replace with a resourceVersion precondition) and
    // Events (create, patch).
    if path.contains("/leases") || path.contains("/events") {
        match method.as_str() {
            "GET" => {
                return match g.singles.get(&path) {
                    Some(o) => ok_json(o),
                    None => status(404, "NotFound", &format!("{path} not found")),
                };
            }
            "POST" => {
                let mut o: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or("generated")
                    .to_string();
                let at = format!("{path}/{name}");
                if g.singles.contains_key(&at) {
                    return status(409, "AlreadyExists", &format!("{name} already exists"));
                }
                g.rv += 1;
                o["metadata"]["resourceVersion"] = json!(g.rv.to_string());
                g.singles.insert(at, o.clone());
                return Response::builder()
                    .status(201)
                    .header("content-type", "application/json")
                    .body(Body::from(o.to_string()))
                    .unwrap();
            }
            "PUT" | "PATCH" => {
                let mut o: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let held = g.singles.get(&path).cloned();
                if method == "PUT"
                    && held.as_ref().map(|h| &h["metadata"]["resourceVersion"])
                        != Some(&o["metadata"]["resourceVersion"])
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                if method == "PATCH" {
                    o = held.unwrap_or(o);
                }
                g.rv += 1;
                o["metadata"]["resourceVersion"] = json!(g.rv.to_string());
                g.singles.insert(path.clone(), o.clone());
                return ok_json(&o);
            }
            _ => {}
        }
    }
    status(
        404,
        "NotFound",
        &format!("the fake API server does not serve {method} {path}"),
    )
}
