//! Cluster DNS served by the node agent itself: the Kubernetes DNS
//! specification answered from the agent's model ([`zone`], [`answer`]),
//! every other name forwarded to the node's upstream resolvers with a TTL
//! cache ([`forward`], [`cache`]), over UDP and TCP ([`server`]).
//!
//! Why in the agent: it already holds a live view of every Service, slice
//! and pod, and runs on every node, so a pod's query is answered on its own
//! node (NodeLocal DNSCache's point, with nothing more to install) from the
//! same snapshot the proxy programs. Messages are parsed and written by
//! hickory-proto; a malformed one gets FORMERR and never a panic.
//!
//! May import: `model`, `k8s`. Not the runtime, the datapath or the lab.

pub mod answer;
pub mod cache;
pub mod forward;
pub mod server;
pub mod zone;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use zone::Zone;

/// How a query came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What answered a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The cluster's zone, from the model.
    Zone,
    Cache,
    Upstream,
    /// Nothing: the query was refused, malformed or failed.
    Error,
}

impl Source {
    const ALL: [Source; 4] = [Source::Zone, Source::Cache, Source::Upstream, Source::Error];
    fn as_str(self) -> &'static str {
        match self {
            Source::Zone => "zone",
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::Error => "error",
        }
    }
}

/// One query, as `/api/v1/dns/queries` shows it (the last few hundred).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryLog {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub client: SocketAddr,
    /// Kept as parsed and spelled only when served: a query's log costs no
    /// formatting.
    #[serde(serialize_with = "ser_name")]
    pub name: Option<hickory_proto::rr::Name>,
    #[serde(rename = "type", serialize_with = "ser_type")]
    pub qtype: Option<RecordType>,
    #[serde(serialize_with = "ser_rcode")]
    pub rcode: ResponseCode,
    pub source: Source,
    /// The upstream that answered, when one did.
    pub upstream: Option<SocketAddr>,
    pub answers: usize,
    pub micros: u64,
}

fn ser_name<S: serde::Serializer>(
    n: &Option<hickory_proto::rr::Name>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&n.as_ref().map(|n| n.to_ascii()).unwrap_or_default())
}

fn ser_type<S: serde::Serializer>(t: &Option<RecordType>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.map(|t| t.to_string()).unwrap_or_default())
}

fn ser_rcode<S: serde::Serializer>(r: &ResponseCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rcode_name(*r))
}

/// The rcodes counted one by one; any other is counted as `other`.
const RCODES: [ResponseCode; 6] = [
    ResponseCode::NoError,
    ResponseCode::FormErr,
    ResponseCode::ServFail,
    ResponseCode::NXDomain,
    ResponseCode::NotImp,
    ResponseCode::Refused,
];
/// An rcode as dig and CoreDNS's metrics spell it.
pub fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

/// Upstream latency buckets, in milliseconds.
const BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000];

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    queries_udp: AtomicU64,
    queries_tcp: AtomicU64,
    /// By [`RCODES`], then other.
    rcodes: [AtomicU64; 7],
    /// By [`Source::ALL`].
    sources: [AtomicU64; 4],
    cache_misses: AtomicU64,
    truncated: AtomicU64,
    malformed: AtomicU64,
    loops: AtomicU64,
    upstream_errors: AtomicU64,
    /// By [`BUCKETS_MS`], then +Inf.
    upstream_ms: [AtomicU64; 11],
    upstream_sum_us: AtomicU64,
}

impl Metrics {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP switchyard_dns_queries_total DNS queries received, by transport."
        );
        let _ = writeln!(out, "# TYPE switchyard_dns_queries_total counter");
        let _ = writeln!(
            out,
            "switchyard_dns_queries_total{{transport=\"udp\"}} {}",
            get(&self.queries_udp)
        );
        let _ = writeln!(
            out,
            "switchyard_dns_queries_total{{transport=\"tcp\"}} {}",
            get(&self.queries_tcp)
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_dns_responses_total DNS responses, by rcode."
        );
        let _ = writeln!(out, "# TYPE switchyard_dns_responses_total counter");
        for (i, r) in RCODES.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_dns_responses_total{{rcode=\"{}\"}} {}",
                rcode_name(*r),
                get(&self.rcodes[i])
            );
        }
        let _ = writeln!(
            out,
            "switchyard_dns_responses_total{{rcode=\"other\"}} {}",
            get(&self.rcodes[6])
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_dns_answered_total DNS responses, by what answered."
        );
        let _ = writeln!(out, "# TYPE switchyard_dns_answered_total counter");
        for (i, s) in Source::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_dns_answered_total{{source=\"{}\"}} {}",
                s.as_str(),
                get(&self.sources[i])
            );
        }
        for (name, help, c) in [
            (
                "cache_hits_total",
                "Forwarded names answered from the cache.",
                &self.sources[1],
            ),
            (
                "cache_misses_total",
                "Forwarded names not in the cache.",
                &self.cache_misses,
            ),
            (
                "truncated_total",
                "UDP answers truncated to the client's size.",
                &self.truncated,
            ),
            (
                "malformed_total",
                "Messages that could not be parsed (FORMERR or dropped).",
                &self.malformed,
            ),
            (
                "loops_total",
                "Forwarded queries that came back: a forwarding loop.",
                &self.loops,
            ),
            (
                "upstream_errors_total",
                "Forwarded queries no upstream answered.",
                &self.upstream_errors,
            ),
        ] {
            let _ = writeln!(out, "# HELP switchyard_dns_{name} {help}");
            let _ = writeln!(out, "# TYPE switchyard_dns_{name} counter");
            let _ = writeln!(out, "switchyard_dns_{name} {}", get(c));
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_dns_upstream_seconds Upstream exchange time."
        );
        let _ = writeln!(out, "# TYPE switchyard_dns_upstream_seconds histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cum += get(&self.upstream_ms[i]);
            let _ = writeln!(
                out,
                "switchyard_dns_upstream_seconds_bucket{{le=\"{}\"}} {cum}",
                *b as f64 / 1000.0
            );
        }
        cum += get(&self.upstream_ms[10]);
        let _ = writeln!(
            out,
            "switchyard_dns_upstream_seconds_bucket{{le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            out,
            "switchyard_dns_upstream_seconds_sum {}",
            get(&self.upstream_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "switchyard_dns_upstream_seconds_count {cum}");
    }

    fn upstream(&self, took: Duration) {
        let ms = took.as_millis() as u64;
        let i = BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(10);
        Self::inc(&self.upstream_ms[i]);
        self.upstream_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What to do with a packet.
pub enum Step {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Send nothing (a response, or too short to answer).
    Drop,
    /// Ask the upstreams ([`Dns::forward`]).
    Forward(Pending),
}

/// A query that needs the upstreams.
pub struct Pending {
    request: Message,
    key: cache::Key,
    client: SocketAddr,
    transport: Transport,
    started: Instant,
}

/// The node's DNS: the zone, the cache, the upstreams, what it counted.
pub struct Dns {
    zone: ArcSwap<Zone>,
    serial: AtomicU64,
    cache: cache::Cache,
    upstreams: ArcSwap<Vec<SocketAddr>>,
    /// Our own addresses: never an upstream.
    own: Mutex<Vec<SocketAddr>>,
    /// The name of the last loop probe ([`Dns::check_loop`]): a random
    /// name no client asks, so seeing it come in means the upstreams
    /// forward to us.
    probe: Mutex<Option<String>>,
    /// A loop was found: forwarding answers SERVFAIL at once until the
    /// upstreams change and a new probe passes.
    looping: std::sync::atomic::AtomicBool,
    recent: Mutex<VecDeque<QueryLog>>,
    pub metrics: Metrics,
}

/// How many queries `/api/v1/dns/queries` keeps.
pub const RECENT: usize = 512;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Dns {
    pub fn new(zone: Zone, upstreams: Vec<SocketAddr>, cache_entries: usize) -> Dns {
        Dns {
            zone: ArcSwap::from_pointee(zone),
            serial: AtomicU64::new(1),
            cache: cache::Cache::new(cache_entries),
            upstreams: ArcSwap::from_pointee(upstreams),
            own: Mutex::new(vec![]),
            probe: Mutex::new(None),
            looping: Default::default(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            metrics: Metrics::default(),
        }
    }

    /// Serve `zone` from now on (a new snapshot of the cluster).
    pub fn set_zone(&self, mut zone: Zone) {
        zone.serial = self.serial.fetch_add(1, Ordering::Relaxed) as u32 + 1;
        self.zone.store(Arc::new(zone));
    }

    pub fn zone(&self) -> Arc<Zone> {
        self.zone.load_full()
    }

    /// The upstream resolvers; our own addresses are left out (a loop),
    /// and said.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) -> Vec<String> {
        let own = self.own.lock().clone();
        let mut problems = vec![];
        let kept: Vec<SocketAddr> = upstreams
            .into_iter()
            .filter(|u| {
                let ours = own.iter().any(|o| o.ip() == u.ip() && o.port() == u.port());
                if ours {
                    problems.push(format!(
                        "upstream {u} is this server itself: a forwarding loop, left out"
                    ));
                }
                !ours
            })
            .collect();
        self.upstreams.store(Arc::new(kept));
        problems
    }

    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.load().as_ref().clone()
    }

    /// Whether a forwarding loop was found (and forwarding stopped).
    pub fn looping(&self) -> bool {
        self.looping.load(Ordering::Relaxed)
    }

    /// Send a probe (a random name under `.invalid`, HINFO) to the
    /// upstreams, as CoreDNS's `loop` plugin does: if it comes back to
    /// this server, they forward to us. Returns whether a loop was found.
    pub async fn check_loop(&self) -> bool {
        let name = format!(
            "{:016x}.loop-probe.switchyard.invalid.",
            rand::random::<u64>()
        );
        *self.probe.lock() = Some(name.clone());
        self.looping.store(false, Ordering::Relaxed);
        let Ok(n) = hickory_proto::rr::Name::from_ascii(&name) else {
            return false;
        };
        let q = Query::query(n, RecordType::HINFO);
        let _ = forward::exchange(&self.upstreams(), &forward::request(rand_id(), &q)).await;
        self.looping()
    }

    /// Where this server listens (set by [`server::serve`]).
    pub fn set_own(&self, own: Vec<SocketAddr>) {
        *self.own.lock() = own;
        let ups = self.upstreams();
        for p in self.set_upstreams(ups) {
            tracing::warn!("{p}");
        }
    }

    /// The last queries, newest last.
    pub fn recent(&self) -> Vec<QueryLog> {
        self.recent.lock().iter().cloned().collect()
    }

    fn count(&self, rcode: ResponseCode, source: Source) {
        let i = RCODES.iter().position(|r| *r == rcode).unwrap_or(6);
        Metrics::inc(&self.metrics.rcodes[i]);
        let s = Source::ALL.iter().position(|x| *x == source).unwrap_or(3);
        Metrics::inc(&self.metrics.sources[s]);
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        client: SocketAddr,
        query: Option<&Query>,
        rcode: ResponseCode,
        source: Source,
        upstream: Option<SocketAddr>,
        answers: usize,
        started: Instant,
    ) {
        self.count(rcode, source);
        let entry = QueryLog {
            at_ms: now_ms(),
            client,
            name: query.map(|q| q.name().clone()),
            qtype: query.map(|q| q.query_type()),
            rcode,
            source,
            upstream,
            answers,
            micros: started.elapsed().as_micros() as u64,
        };
        let mut r = self.recent.lock();
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back(entry);
    }

    /// The first step for one packet: an answer from the zone, an error, or
    /// a question for the upstreams.
    pub fn step(&self, packet: &[u8], client: SocketAddr, transport: Transport) -> Step {
        let started = Instant::now();
        Metrics::inc(match transport {
            Transport::Udp => &self.metrics.queries_udp,
            Transport::Tcp => &self.metrics.queries_tcp,
        });
        // Too short for a header, or a response (answering responses is how
        // reflection loops start): nothing to say.
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            Metrics::inc(&self.metrics.malformed);
            return Step::Drop;
        }
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        let op = OpCode::from_u8((packet[2] >> 3) & 0x0f);
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%client, error = %e, "a malformed DNS query");
                Metrics::inc(&self.metrics.malformed);
                self.log(
                    client,
                    None,
                    ResponseCode::FormErr,
                    Source::Error,
                    None,
                    0,
                    started,
                );
                return Step::Reply(error(
                    id,
                    op,
                    ResponseCode::FormErr,
                    None,
                    packet[2] & 1 != 0,
                ));
            }
        };
        let rd = request.metadata.recursion_desired;
        let fail = |code: ResponseCode, q: Option<&Query>| {
            self.log(client, q, code, Source::Error, None, 0, started);
            Step::Reply(error(id, request.metadata.op_code, code, q, rd))
        };
        if request.metadata.op_code != OpCode::Query {
            return fail(ResponseCode::NotImp, None);
        }
        if request.queries.len() != 1 {
            return fail(ResponseCode::FormErr, None);
        }
        let query = &request.queries[0];
        if let Some(e) = &request.edns
            && e.version() > 0
        {
            // RFC 6891: BADVERS, with our OPT.
            self.log(
                client,
                Some(query),
                ResponseCode::BADVERS,
                Source::Error,
                None,
                0,
                started,
            );
            let mut m = Message::response(id, OpCode::Query);
            m.metadata.response_code = ResponseCode::BADVERS;
            m.queries.push(query.clone());
            m.edns = Some(our_edns());
            return Step::Reply(m.to_vec().unwrap_or_default());
        }
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY)
            || matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return fail(ResponseCode::Refused, Some(query));
        }
        let name_key = zone::key(&query.name().to_ascii());
        if self.probe.lock().as_deref() == Some(name_key.as_str()) {
            Metrics::inc(&self.metrics.loops);
            if !self.looping.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    upstreams = ?self.upstreams(),
                    "a forwarding loop: the loop probe came back, so the upstreams send our questions back to this node's DNS; forwarding stops until they change"
                );
            }
            return fail(ResponseCode::ServFail, Some(query));
        }
        let zone = self.zone.load();
        if let Some(reply) = answer::resolve(&zone, query.name(), &name_key, query.query_type()) {
            let mut m = Message::response(id, OpCode::Query);
            m.metadata.authoritative = true;
            m.metadata.recursion_desired = rd;
            m.metadata.recursion_available = true;
            m.metadata.response_code = reply.rcode;
            m.queries.push(query.clone());
            m.answers = reply.answers;
            m.authorities = reply.authorities;
            m.additionals = reply.additionals;
            self.log(
                client,
                Some(query),
                reply.rcode,
                Source::Zone,
                None,
                m.answers.len(),
                started,
            );
            return Step::Reply(self.finish(m, &request, transport));
        }
        let key = (
            name_key,
            u16::from(query.query_type()),
            u16::from(query.query_class()),
        );
        if let Some(cached) = self.cache.get(&key, Instant::now()) {
            let m = self.respond(&request, cached);
            self.log(
                client,
                Some(query),
                m.metadata.response_code,
                Source::Cache,
                None,
                m.answers.len(),
                started,
            );
            return Step::Reply(self.finish(m, &request, transport));
        }
        Metrics::inc(&self.metrics.cache_misses);
        Step::Forward(Pending {
            request,
            key,
            client,
            transport,
            started,
        })
    }

    /// Ask the upstreams for a pending query; the bytes to send back.
    pub async fn forward(&self, p: Pending) -> Vec<u8> {
        let query = p.request.queries[0].clone();
        let upstreams = self.upstreams();
        let t = Instant::now();
        let got = if self.looping() {
            Err("a forwarding loop was found; not forwarding".to_string())
        } else {
            forward::exchange(&upstreams, &forward::request(rand_id(), &query)).await
        };
        match got {
            Ok((answer, from)) => {
                self.metrics.upstream(t.elapsed());
                self.cache.put(p.key, &answer, Instant::now());
                let m = self.respond(&p.request, answer);
                self.log(
                    p.client,
                    Some(&query),
                    m.metadata.response_code,
                    Source::Upstream,
                    Some(from),
                    m.answers.len(),
                    p.started,
                );
                self.finish(m, &p.request, p.transport)
            }
            Err(e) => {
                tracing::debug!(name = %query.name(), error = %e, "no upstream answered");
                self.overloaded(p)
            }
        }
    }

    /// SERVFAIL for a pending query that no upstream answered, or that
    /// found no room to be forwarded.
    pub fn overloaded(&self, p: Pending) -> Vec<u8> {
        let query = &p.request.queries[0];
        Metrics::inc(&self.metrics.upstream_errors);
        self.log(
            p.client,
            Some(query),
            ResponseCode::ServFail,
            Source::Error,
            None,
            0,
            p.started,
        );
        error(
            p.request.metadata.id,
            OpCode::Query,
            ResponseCode::ServFail,
            Some(query),
            p.request.metadata.recursion_desired,
        )
    }

    /// An upstream's (or the cache's) answer, as our response to `request`.
    fn respond(&self, request: &Message, mut answer: Message) -> Message {
        let mut m = Message::response(request.metadata.id, OpCode::Query);
        m.metadata.recursion_desired = request.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.authentic_data = false;
        m.metadata.response_code = answer.metadata.response_code;
        m.queries = request.queries.clone();
        m.answers = std::mem::take(&mut answer.answers);
        m.authorities = std::mem::take(&mut answer.authorities);
        m.additionals = std::mem::take(&mut answer.additionals);
        m
    }

    /// Encode `m`, with an OPT if the request had one, truncated to what a
    /// UDP client can take (512 bytes, or its EDNS size up to 1232).
    fn finish(&self, mut m: Message, request: &Message, transport: Transport) -> Vec<u8> {
        let limit = match &request.edns {
            Some(e) => e.max_payload().clamp(512, forward::PAYLOAD) as usize,
            None => 512,
        };
        if request.edns.is_some() {
            m.edns = Some(our_edns());
        }
        let bytes = m.to_vec().unwrap_or_default();
        if transport == Transport::Udp && bytes.len() > limit {
            Metrics::inc(&self.metrics.truncated);
            return m.truncate().to_vec().unwrap_or_default();
        }
        bytes
    }
}

fn rand_id() -> u16 {
    rand::random()
}

fn our_edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(forward::PAYLOAD);
    e
}

/// An error response to query `id`.
fn error(id: u16, op: OpCode, code: ResponseCode, query: Option<&Query>, rd: bool) -> Vec<u8> {
    let mut m = Message::error_msg(id, op, code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = rd;
    m.metadata.recursion_available = true;
    if let Some(q) = query {
        m.queries.push(q.clone());
    }
    m.to_vec().unwrap_or_default()
}
