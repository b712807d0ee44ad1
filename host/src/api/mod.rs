//! The agent's admin API and the web console it serves.
//!
//! Read-only for now (GET only), so it needs no authentication yet; it
//! listens on the node's address, which in the lab only the machine reaches
//! (through the host link) besides the lab's own namespaces.
//!
//! | path | what |
//! |---|---|
//! | `/healthz` | `ok` while the agent serves |
//! | `/api/v1/node` | this node: model, CIDRs, node networking, problems |
//! | `/api/v1/modules` | every module binding: digest, version, condition, calls, errors, latency p50/p99 |
//! | `/api/v1/ipam` | pools and the addresses held, per attachment |
//! | `/api/v1/cluster` | the cluster as this node's source sees it (nodes, pods, Services, policies) |
//! | `/api/v1/pods/{namespace}/{name}` | one pod of that view, with its probes' status |
//! | `/api/v1/probes` | endpoint health as modules read it (the `probes` host interface) |
//! | `/api/v1/drops` | the latest packets NetworkPolicy dropped (or would drop, in monitor mode), with their policies |
//! | `/api/v1/dns` | the node's DNS: cluster domain, upstreams, whether a forwarding loop was found, and the last queries with what answered each (the zone, the cache or an upstream) |
//! | `/metrics` | Prometheus text: each module binding's readiness, calls, errors (in a row too) and latency; NetworkPolicy drops per policy, direction and mode; DNS queries, answers by rcode and by source, cache hits, upstream latency |
//! | `/api/v1/explain?from=IP&to=IP&protocol=TCP&port=80` | which NetworkPolicies and rules decide that connection on this node |
//! | `/` | the console (`web/`, built into the binary) |

pub mod view;

/// The port of every agent's admin API and console.
pub const ADMIN_PORT: u16 = 9090;

use crate::datapath::ipam::Ipam;
use crate::datapath::ipam::{Ledger, PoolInfo};
use crate::datapath::probes::ProbeTable;
use crate::registry::Registry;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;

/// What the API asks of the agent it is part of.
pub trait NodeSource: Send + Sync + 'static {
    /// This node, as JSON.
    fn node(&self) -> Value;
    /// The cluster as the node's source sees it, if it has a view.
    fn cluster(&self) -> Option<Value>;
}

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<Registry>,
    pub ledger: Arc<Ledger>,
    pub source: Arc<dyn NodeSource>,
    /// What the `probes` host interface gives modules.
    pub probes: Arc<ProbeTable>,
    /// The policy engine's installed state, if this agent enforces policy.
    pub policy: Option<crate::policy::engine::SharedSnapshot>,
    /// The latest policy drops, if this agent reads them.
    pub drops: Option<Arc<crate::policy::droplog::DropLog>>,
    /// The node's DNS, if this agent serves it.
    pub dns: Option<Arc<crate::dns::Dns>>,
}

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const CONSOLE_JS: &str = include_str!("../../../web/dist/console.js");
const CONSOLE_CSS: &str = include_str!("../../../web/console.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The admin API and console routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/node", get(node))
        .route("/api/v1/modules", get(modules))
        .route("/api/v1/ipam", get(ipam))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/pods/{namespace}/{name}", get(pod))
        .route("/api/v1/probes", get(probes))
        .route("/api/v1/explain", get(explain))
        .route("/metrics", get(metrics))
        .route("/api/v1/drops", get(drops))
        .route("/api/v1/dns", get(dns))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "no such path; see /api/v1/node, /api/v1/modules, /api/v1/ipam, /api/v1/cluster, /api/v1/pods/NAMESPACE/NAME, /api/v1/probes, /api/v1/explain, /api/v1/drops, /api/v1/dns, /metrics"})),
            )
        })
        .with_state(state)
}

async fn node(State(s): State<ApiState>) -> axum::Json<Value> {
    axum::Json(s.source.node())
}

async fn modules(State(s): State<ApiState>) -> axum::Json<Value> {
    axum::Json(serde_json::to_value(s.registry.status()).unwrap_or(Value::Null))
}

async fn ipam(State(s): State<ApiState>) -> Response {
    let ledger = s.ledger.clone();
    let r = tokio::task::spawn_blocking(move || {
        let pools: Vec<PoolInfo> = ledger.pools();
        let held = ledger.all().map_err(|e| e.to_string())?;
        let reserved = ledger.reservations().map_err(|e| e.to_string())?;
        Ok::<_, String>(json!({
            "pools": pools,
            "allocations": held.iter().map(|(k, a)| json!({
                "containerId": k.container_id,
                "ifname": k.ifname,
                "pool": a.pool,
                "address": a.address,
            })).collect::<Vec<_>>(),
            "reservations": reserved.iter().map(|(owner, ip, pool, until)| json!({
                "owner": owner, "address": ip, "pool": pool, "until": until,
            })).collect::<Vec<_>>(),
        }))
    })
    .await;
    match r {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the address ledger: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, axum::Json(json!({"error": message.to_string()}))).into_response()
}

/// The source's cluster view (built off the async runtime), or the answer
/// that says why there is none.
async fn cluster_view(s: &ApiState) -> Result<Value, Response> {
    let source = s.source.clone();
    match tokio::task::spawn_blocking(move || source.cluster()).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "this agent has no cluster view (it runs from a local manifest directory)",
        )),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

async fn cluster(State(s): State<ApiState>) -> Response {
    match cluster_view(&s).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

async fn pod(
    State(s): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let view = match cluster_view(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let found = view["pods"].as_array().and_then(|pods| {
        pods.iter()
            .find(|p| p["namespace"] == namespace.as_str() && p["name"] == name.as_str())
    });
    match found {
        Some(p) => axum::Json(p.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("pods \"{name}\" not found in namespace \"{namespace}\""),
        ),
    }
}

/// The latest policy drops, oldest first.
async fn drops(State(s): State<ApiState>) -> Response {
    match &s.drops {
        Some(d) => axum::Json(json!({ "drops": d.recent() })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this agent does not read policy drop logs",
        ),
    }
}

/// Prometheus metrics: the module bindings, and the policy table's drop
/// counters. Counters that cannot be read are said in a comment; the rest
/// is still served.
async fn metrics(State(s): State<ApiState>) -> Response {
    let mut text = crate::registry::metrics::text(&s.registry.status());
    match tokio::task::spawn_blocking(crate::policy::engine::read_counters).await {
        Ok(Ok(c)) => text.push_str(&crate::policy::engine::metrics_text(&c)),
        Ok(Err(e)) => text.push_str(&format!(
            "# the policy drop counters could not be read: {}\n",
            e.replace('\n', " ")
        )),
        Err(e) => text.push_str(&format!(
            "# the policy drop counters could not be read: {e}\n"
        )),
    }
    if let Some(d) = &s.dns {
        d.metrics.render(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The node's DNS and its last queries.
async fn dns(State(s): State<ApiState>) -> Response {
    match &s.dns {
        Some(d) => {
            let zone = d.zone();
            axum::Json(json!({
                "domain": zone.domain,
                "serial": zone.serial,
                "names": zone.names.len(),
                "upstreams": d.upstreams(),
                "forwardingLoop": d.looping(),
                "problems": zone.problems,
                "queries": d.recent(),
            }))
            .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "this agent does not serve DNS"})),
        )
            .into_response(),
    }
}

#[derive(Debug, Default)]
struct ExplainQuery {
    from: Option<String>,
    to: Option<String>,
    protocol: Option<String>,
    port: Option<String>,
}

impl ExplainQuery {
    /// `from=...&to=...&protocol=...&port=...`, URL-decoded.
    fn parse(q: Option<&str>) -> ExplainQuery {
        let mut out = ExplainQuery::default();
        for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
            let v = Some(v.into_owned());
            match k.as_ref() {
                "from" => out.from = v,
                "to" => out.to = v,
                "protocol" => out.protocol = v,
                "port" => out.port = v,
                _ => {}
            }
        }
        out
    }
}

/// Which policies and rules decide a connection on this node.
async fn explain(
    State(s): State<ApiState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let q = ExplainQuery::parse(raw.as_deref());
    use crate::contract::bindings::imports::switchyard::plugin::types::Protocol;
    let Some(snapshot) = &s.policy else {
        return error(
            StatusCode::NOT_FOUND,
            "this agent does not enforce NetworkPolicy",
        );
    };
    let addr = |name: &str, v: &Option<String>| -> Result<std::net::IpAddr, Response> {
        let v = v.as_deref().ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("{name}: Required value: an IP address"),
            )
        })?;
        v.parse().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("{name}: Invalid value: {v:?}: must be an IPv4 or IPv6 address"),
            )
        })
    };
    let (from, to) = match (addr("from", &q.from), addr("to", &q.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if from.is_ipv4() != to.is_ipv4() {
        return error(
            StatusCode::BAD_REQUEST,
            "from and to must be of one address family",
        );
    }
    let protocol = match q
        .protocol
        .as_deref()
        .unwrap_or("TCP")
        .to_ascii_uppercase()
        .as_str()
    {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "protocol: Unsupported value: {other:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                ),
            );
        }
    };
    let port = match q.port.as_deref().map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => p,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "port: Required value: a port from 1 to 65535",
            );
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "port: Invalid value: {:?}: must be between 1 and 65535, inclusive",
                    q.port.as_deref().unwrap_or_default()
                ),
            );
        }
    };
    let snap = snapshot.read().clone();
    axum::Json(snap.explain(from, to, Some((protocol, port)))).into_response()
}

async fn probes(State(s): State<ApiState>) -> axum::Json<Value> {
    let entries: Vec<Value> = s
        .probes
        .entries()
        .into_iter()
        .map(|((address, port), h)| {
            let mut e = crate::datapath::probes::entry_json(address, port, &h);
            // Port 0 is an address-level entry, read from Pod status.
            e["port"] = json!((port != 0).then_some(port));
            e["source"] = json!(if port == 0 { "pod-status" } else { "probe" });
            e
        })
        .collect();
    axum::Json(json!({ "endpoints": entries }))
}

/// Serve the API on `addr` until `shutdown` completes.
pub async fn serve(
    addr: std::net::SocketAddr,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin API and console listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
