//! nftables: the text of a role's table and of the transactions that change
//! it, and the one place that hands them to the kernel.
//!
//! A full sync replaces the table in one transaction (`add table; delete
//! table; table { ... }`), so there is never a moment without rules and
//! established connections keep their NAT state (it lives in conntrack, not
//! in the table). An incremental sync is one transaction with the delta of
//! the changed objects, ordered so that nothing is deleted while referenced
//! and nothing is referenced before it exists.
//!
//! Transactions go through libnftables in-process when it can be loaded (the
//! `nft` binary costs a process start and a ruleset read per call, which is
//! most of a small change), else through `nft -f -`.

use super::nft_elements::ElementOp;
use crate::contract::bindings::imports::switchyard::plugin::types::*;
use crate::contract::wit_to_ip as ip;
use crate::plan::skeleton::{Skeleton, SkeletonData};
use crate::plan::validate::{field_name, type_name};
use crate::plan::{Change, Claim, store::claim};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::plan::skeleton::MASQUERADE_MARK;

fn value(v: &NftValue) -> String {
    match v {
        NftValue::Address(a) => ip(a).to_string(),
        NftValue::Prefix(c) => format!("{}/{}", ip(&c.address), c.prefix_len),
        NftValue::AddressRange((a, b)) => format!("{}-{}", ip(a), ip(b)),
        NftValue::Port(p) => p.to_string(),
        NftValue::PortRange((a, b)) => format!("{a}-{b}"),
        NftValue::Protocol(p) => match p {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
        .into(),
        NftValue::Family(f) => match f {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
        }
        .into(),
        NftValue::InterfaceName(n) => format!("\"{}\"", n.replace('"', "")),
        NftValue::Number(n) => n.to_string(),
        NftValue::NumberRange((a, b)) => format!("{a}-{b}"),
        NftValue::CtState(s) => {
            let mut v = vec![];
            for (f, n) in [
                (CtState::NEW, "new"),
                (CtState::ESTABLISHED, "established"),
                (CtState::RELATED, "related"),
                (CtState::INVALID, "invalid"),
                (CtState::UNTRACKED, "untracked"),
            ] {
                if s.contains(f) {
                    v.push(n);
                }
            }
            v.join(",")
        }
        NftValue::CtStatus(s) => {
            let mut v = vec![];
            for (f, n) in [
                (CtStatus::DNAT, "dnat"),
                (CtStatus::SNAT, "snat"),
                (CtStatus::CONFIRMED, "confirmed"),
            ] {
                if s.contains(f) {
                    v.push(n);
                }
            }
            v.join(",")
        }
        NftValue::FibType(t) => match t {
            FibAddressType::Local => "local",
            FibAddressType::Unicast => "unicast",
            FibAddressType::Broadcast => "broadcast",
            FibAddressType::Multicast => "multicast",
        }
        .into(),
    }
}

fn concat(values: &[NftValue]) -> String {
    values.iter().map(value).collect::<Vec<_>>().join(" . ")
}

fn fields(f: &[NftField]) -> String {
    f.iter()
        .map(|f| field_name(*f))
        .collect::<Vec<_>>()
        .join(" . ")
}

fn hash(h: &NftHash) -> String {
    format!(
        "jhash {} mod {} seed 0x{:x}",
        fields(&h.fields),
        h.modulus,
        h.seed
    )
}

fn key(k: &NftKey) -> String {
    match k {
        NftKey::Fields(f) => fields(f),
        NftKey::NumgenRandom(n) => format!("numgen random mod {n}"),
        NftKey::NumgenInc(n) => format!("numgen inc mod {n}"),
        NftKey::Jhash(h) => hash(h),
        NftKey::Slotted(s) => {
            let slot = match &s.slot {
                NftSlot::NumgenRandom(n) => format!("numgen random mod {n}"),
                NftSlot::NumgenInc(n) => format!("numgen inc mod {n}"),
                NftSlot::Jhash(h) => hash(h),
            };
            format!("{} . {slot}", fields(&s.fields))
        }
    }
}

fn verdict(v: &NftVerdict) -> String {
    match v {
        NftVerdict::Accept => "accept".into(),
        NftVerdict::Drop => "drop".into(),
        NftVerdict::Reject => "reject".into(),
        NftVerdict::Return => "return".into(),
        NftVerdict::Jump(c) => format!("jump {c}"),
        NftVerdict::Goto(c) => format!("goto {c}"),
    }
}

/// Reject is a statement, not a verdict: in a map it goes to a chain that
/// rejects.
pub const REJECT_CHAIN: &str = "reject-traffic";

fn map_value(v: &NftMapValue) -> String {
    match v {
        NftMapValue::Verdict(NftVerdict::Reject) => format!("goto {REJECT_CHAIN}"),
        NftMapValue::Verdict(v) => verdict(v),
        NftMapValue::Data(d) => concat(d),
    }
}

fn map_ref(m: &NftMapRef) -> String {
    match m {
        NftMapRef::Named(n) => format!("@{n}"),
        NftMapRef::Inline(entries) => format!(
            "{{ {} }}",
            entries
                .iter()
                .map(|e| format!("{} : {}", concat(&e.key), map_value(&e.value)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn family_kw(f: IpFamily) -> &'static str {
    match f {
        IpFamily::Ipv4 => "ip",
        IpFamily::Ipv6 => "ip6",
    }
}

fn statement(s: &NftStatement) -> String {
    match s {
        NftStatement::Counter => "counter".into(),
        NftStatement::NamedCounter(c) => format!("counter name \"{c}\""),
        NftStatement::Log(p) => format!("log prefix \"{}\"", p.replace('"', "'")),
        NftStatement::LogGroup((g, p)) => {
            format!("log prefix \"{}\" group {g}", p.replace('"', "'"))
        }
        NftStatement::MarkOr(bits) => format!("meta mark set meta mark | 0x{bits:x}"),
        NftStatement::Dnat(nat) => {
            let fk = family_kw(nat.family);
            match &nat.target {
                NftNatTarget::Address((a, port)) => {
                    let a = ip(a);
                    match (a.is_ipv6(), port) {
                        (false, Some(p)) => format!("dnat {fk} to {a}:{p}"),
                        (true, Some(p)) => format!("dnat {fk} to [{a}]:{p}"),
                        (_, None) => format!("dnat {fk} to {a}"),
                    }
                }
                NftNatTarget::Lookup((k, m)) => {
                    format!("dnat {fk} to {} map {}", key(k), map_ref(m))
                }
            }
        }
        NftStatement::Masquerade => "masquerade".into(),
        NftStatement::SetUpdate(u) => match u.timeout {
            Some(t) => format!("update @{} {{ {} timeout {t}s }}", u.set, fields(&u.key)),
            None => format!("update @{} {{ {} }}", u.set, fields(&u.key)),
        },
        NftStatement::VerdictMap((k, m)) => format!("{} vmap {}", key(k), map_ref(m)),
        NftStatement::Verdict(v) => verdict(v),
    }
}

fn matcher(m: &NftMatch) -> String {
    let neg = if m.negate { "!= " } else { "" };
    let operand = match &m.operand {
        NftOperand::Value(v) => value(v),
        NftOperand::Values(vs) => format!(
            "{{ {} }}",
            vs.iter().map(|v| concat(v)).collect::<Vec<_>>().join(", ")
        ),
        NftOperand::Set(s) => format!("@{s}"),
    };
    format!("{} {neg}{operand}", fields(&m.key))
}

/// One rule in nftables syntax.
pub fn rule(r: &NftRule) -> String {
    r.matches
        .iter()
        .map(matcher)
        .chain(r.statements.iter().map(statement))
        .collect::<Vec<_>>()
        .join(" ")
}

fn flags(f: NftSetFlags) -> Option<String> {
    let mut v = vec![];
    if f.contains(NftSetFlags::CONSTANT) {
        v.push("constant");
    }
    if f.contains(NftSetFlags::INTERVAL) {
        v.push("interval");
    }
    if f.contains(NftSetFlags::TIMEOUT) {
        v.push("timeout");
    }
    (!v.is_empty()).then(|| v.join(","))
}

fn types(t: &[NftType]) -> String {
    t.iter()
        .map(|t| type_name(*t))
        .collect::<Vec<_>>()
        .join(" . ")
}

/// The body of a set or map declaration.
fn set_body(item: &PlanBody) -> Option<(&'static str, &str, String)> {
    match item {
        PlanBody::NftSet(s) => {
            let mut b = format!("type {};", types(&s.key));
            if let Some(f) = flags(s.set_flags) {
                let _ = write!(b, " flags {f};");
            }
            if let Some(t) = s.timeout {
                let _ = write!(b, " timeout {t}s;");
            }
            Some(("set", &s.name, b))
        }
        PlanBody::NftMap(m) => {
            let data = match &m.data {
                NftMapData::Verdict => "verdict".to_string(),
                NftMapData::Data(d) => types(d),
            };
            let mut b = format!("type {} : {data};", types(&m.key));
            if let Some(f) = flags(m.set_flags) {
                let _ = write!(b, " flags {f};");
            }
            Some(("map", &m.name, b))
        }
        _ => None,
    }
}

/// The host's part of a role's table, as the body of `table inet NAME { }`.
pub fn skeleton_body(sk: &Skeleton) -> String {
    let mut t = String::new();
    for m in sk.maps {
        let kind = if m.data == SkeletonData::Set {
            "set"
        } else {
            "map"
        };
        let _ = writeln!(t, "  {kind} {} {{ {}; }}", m.name, m.declaration);
    }
    t.push_str(&(sk.host_chains)());
    t
}

/// Commands that change a table, sorted into the phases of one transaction.
#[derive(Debug, Default)]
pub struct Script {
    table: String,
    del_elements: BTreeMap<String, Vec<String>>,
    flush_chains: BTreeSet<String>,
    del_chains: BTreeSet<String>,
    del_objects: Vec<String>,
    add_objects: Vec<String>,
    add_chains: BTreeSet<String>,
    add_rules: Vec<(String, String)>,
    add_elements: BTreeMap<String, Vec<String>>,
}

impl Script {
    pub fn new(table: &str) -> Self {
        Script {
            table: table.to_string(),
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.del_elements.is_empty()
            && self.flush_chains.is_empty()
            && self.del_objects.is_empty()
            && self.add_objects.is_empty()
            && self.add_chains.is_empty()
            && self.add_rules.is_empty()
            && self.add_elements.is_empty()
    }

    /// Remove an installed item.
    pub fn remove(&mut self, item: &PlanItem) {
        let t = &self.table;
        match &item.body {
            PlanBody::NftElement(e) => self
                .del_elements
                .entry(e.set.clone())
                .or_default()
                .push(concat(&e.key)),
            PlanBody::NftChain(c) => {
                self.flush_chains.insert(c.name.clone());
                self.del_chains.insert(c.name.clone());
            }
            PlanBody::NftSet(s) => self
                .del_objects
                .push(format!("delete set inet {t} {}", s.name)),
            PlanBody::NftMap(m) => self
                .del_objects
                .push(format!("delete map inet {t} {}", m.name)),
            PlanBody::NftCounter(c) => self
                .del_objects
                .push(format!("delete counter inet {t} {}", c.name)),
            // Other roles' items are not nftables.
            _ => {}
        }
    }

    /// Add an item.
    pub fn add(&mut self, item: &PlanItem) {
        let t = &self.table;
        match &item.body {
            PlanBody::NftElement(e) => {
                let el = match &e.value {
                    Some(v) => format!("{} : {}", concat(&e.key), map_value(v)),
                    None => concat(&e.key),
                };
                self.add_elements.entry(e.set.clone()).or_default().push(el);
            }
            PlanBody::NftChain(c) => {
                self.add_chains.insert(c.name.clone());
                for r in &c.rules {
                    self.add_rules.push((c.name.clone(), rule(r)));
                }
            }
            PlanBody::NftCounter(c) => self
                .add_objects
                .push(format!("add counter inet {t} {}", c.name)),
            body => {
                if let Some((kind, name, b)) = set_body(body) {
                    self.add_objects
                        .push(format!("add {kind} inet {t} {name} {{ {b} }}"));
                }
            }
        }
    }

    /// The transaction's text.
    pub fn text(&self) -> String {
        let t = &self.table;
        let mut s = String::new();
        for (set, keys) in &self.del_elements {
            for chunk in keys.chunks(4096) {
                let _ = writeln!(
                    s,
                    "delete element inet {t} {set} {{ {} }}",
                    chunk.join(", ")
                );
            }
        }
        for c in &self.flush_chains {
            let _ = writeln!(s, "flush chain inet {t} {c}");
        }
        // A chain that is both removed and added is only flushed and refilled:
        // elements that still go to it would keep it from being deleted.
        for c in self.del_chains.difference(&self.add_chains) {
            let _ = writeln!(s, "delete chain inet {t} {c}");
        }
        for o in &self.del_objects {
            let _ = writeln!(s, "{o}");
        }
        for o in &self.add_objects {
            let _ = writeln!(s, "{o}");
        }
        for c in &self.add_chains {
            let _ = writeln!(s, "add chain inet {t} {c}");
        }
        for (c, r) in &self.add_rules {
            let _ = writeln!(s, "add rule inet {t} {c} {r}");
        }
        for (set, els) in &self.add_elements {
            for chunk in els.chunks(4096) {
                let _ = writeln!(s, "add element inet {t} {set} {{ {} }}", chunk.join(", "));
            }
        }
        s
    }
}

/// The transaction that applies `changes` (in order) to the table.
pub fn delta_script(table: &str, changes: &[Change]) -> Script {
    let mut script = Script::new(table);
    // Across objects, an item one change removes and a later one adds again
    // (a shared chain changing hands) is removed and added: the phases keep
    // that correct.
    for c in changes {
        for i in &c.evicted {
            script.remove(i);
        }
        let d = c.delta();
        for i in d.removed {
            script.remove(i);
        }
        for i in d.added {
            script.add(i);
        }
    }
    script
}

/// The whole table: the skeleton and every installed item, replacing what
/// the kernel has in one transaction.
pub fn full_script<'a>(sk: &Skeleton, items: impl Iterator<Item = &'a PlanItem>) -> String {
    let t = sk.table;
    let mut s = format!("add table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
    s.push_str(&skeleton_body(sk));
    s.push_str("}\n");
    let mut script = Script::new(t);
    let mut seen: HashSet<Claim> = HashSet::new();
    for i in items {
        // Shared items come once per holder; install them once.
        if seen.insert(claim(i)) {
            script.add(i);
        }
    }
    s.push_str(&script.text());
    s
}

/// Replace a role's whole table with the skeleton and everything `store`
/// holds, in one transaction. Returns the script's size and the outcome.
pub fn load_store(
    runner: &dyn NftRunner,
    sk: &Skeleton,
    store: &crate::plan::PlanStore,
) -> (usize, Result<(), String>) {
    let items = store
        .installed()
        .flat_map(|f| f.items.iter())
        .chain(store.retained());
    let text = full_script(sk, items);
    (text.len(), runner.run(&text))
}

/// Hands transactions to the kernel.
pub trait NftRunner: Send + Sync {
    /// Run one nftables script as one transaction.
    fn run(&self, script: &str) -> Result<(), String>;

    /// Whether the kernel would take `script`, without applying it (a dry
    /// run: parsed, checked and sent, then aborted). A runner that cannot
    /// says so, and nothing is isolated through it.
    fn check(&self, script: &str) -> Result<(), String> {
        let _ = script;
        Err("this runner cannot check a script without applying it".into())
    }

    /// Apply element changes of `inet table` as one transaction without a
    /// script ([`super::nft_elements`]), returning the batch's size; `None`
    /// if this runner has no such path (the delta goes as a script).
    fn elements(&self, table: &str, ops: &[ElementOp]) -> Option<Result<usize, String>> {
        let _ = (table, ops);
        None
    }
}

/// The element changes of `changes` in the order the script would make
/// them, if that is all they are and every set's types are known (a set
/// of the skeleton or the host's own, not an interval set).
pub fn element_ops(sk: &Skeleton, changes: &[Change]) -> Option<Vec<ElementOp>> {
    let mut ops = vec![];
    let mut op = |item: &PlanItem, delete: bool| -> Option<()> {
        let PlanBody::NftElement(e) = &item.body else {
            return None;
        };
        let (key, data) = sk.element_types(&e.set)?;
        let datum = match (&e.value, delete, data) {
            (_, true, _) | (None, false, SkeletonData::Set) => None,
            (Some(v), false, SkeletonData::Verdict | SkeletonData::Data(_)) => {
                Some(super::nft_elements::datum(&data, v, REJECT_CHAIN)?)
            }
            _ => return None,
        };
        ops.push(ElementOp {
            set: e.set.clone(),
            delete,
            key: super::nft_elements::encode(key, &e.key)?,
            datum,
        });
        Some(())
    };
    for c in changes {
        for i in &c.evicted {
            op(i, true)?;
        }
        let d = c.delta();
        for i in d.removed {
            op(i, true)?;
        }
        for i in d.added {
            op(i, false)?;
        }
    }
    Some(ops)
}

/// The real one: libnftables in-process if it loads, else `nft -f -`; in the
/// agent's own network namespace or the one at `netns`.
pub struct Nft {
    netns: Option<PathBuf>,
    lib: Option<Arc<libnft::Lib>>,
    /// The netlink socket element-only deltas go through, kept open.
    socket: parking_lot::Mutex<Option<netlink_sys::Socket>>,
}

impl Nft {
    pub fn new(netns: Option<PathBuf>) -> Self {
        let lib = libnft::Lib::load().map(Arc::new);
        Nft {
            netns,
            lib,
            socket: parking_lot::Mutex::new(None),
        }
    }

    /// Whether transactions go through libnftables.
    pub fn in_process(&self) -> bool {
        self.lib.is_some()
    }

    fn run_here(&self, script: &str, fresh: bool) -> Result<(), String> {
        match &self.lib {
            Some(lib) if fresh => lib.run_fresh(script, false),
            Some(lib) => lib.run(script),
            None => run_binary(script, false),
        }
    }

    fn check_here(&self, script: &str) -> Result<(), String> {
        match &self.lib {
            Some(lib) => lib.run_fresh(script, true),
            None => run_binary(script, true),
        }
    }
}

impl NftRunner for Nft {
    fn run(&self, script: &str) -> Result<(), String> {
        match &self.netns {
            // A netlink socket belongs to the namespace it was opened in: a
            // context opened on a thread inside the namespace, used once.
            Some(p) => crate::datapath::netlink::in_netns(p, || Ok(self.run_here(script, true)))
                .map_err(|e| e.to_string())?,
            None => self.run_here(script, false),
        }
    }

    fn check(&self, script: &str) -> Result<(), String> {
        match &self.netns {
            Some(p) => crate::datapath::netlink::in_netns(p, || Ok(self.check_here(script)))
                .map_err(|e| e.to_string())?,
            None => self.check_here(script),
        }
    }

    fn elements(&self, table: &str, ops: &[ElementOp]) -> Option<Result<usize, String>> {
        use super::nft_elements::{BatchError, apply, open};
        let mut socket = self.socket.lock();
        if socket.is_none() {
            // Opened in the runner's namespace, where it stays.
            let opened = match &self.netns {
                Some(p) => crate::datapath::netlink::in_netns(p, || Ok(open()))
                    .unwrap_or_else(|e| Err(e.to_string())),
                None => open(),
            };
            match opened {
                Ok(s) => *socket = Some(s),
                Err(e) => return Some(Err(e)),
            }
        }
        let r = apply(socket.as_ref()?, table, ops)?;
        Some(r.map_err(|e| {
            // Answers of a refused batch may still be queued, and a failed
            // socket is no use: the next batch opens a new one.
            *socket = None;
            match e {
                BatchError::Refused(e) | BatchError::Socket(e) => e,
            }
        }))
    }
}

fn run_binary(script: &str, dry_run: bool) -> Result<(), String> {
    use std::io::Write;
    let args: &[&str] = if dry_run {
        &["-c", "-f", "-"]
    } else {
        &["-f", "-"]
    };
    let mut child = std::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e} (is the nftables package installed?)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing to nft: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// libnftables, loaded at run time: the library ships with the nftables
/// package (it is what `nft` itself uses), and loading it rather than
/// linking keeps the build free of a -dev package.
#[allow(unsafe_code)]
mod libnft {
    use nix::libc::{RTLD_LOCAL, RTLD_NOW, c_char, c_int, c_void, dlopen, dlsym};
    use parking_lot::Mutex;
    use std::ffi::{CStr, CString};

    type New = unsafe extern "C" fn(u32) -> *mut c_void;
    type Free = unsafe extern "C" fn(*mut c_void);
    type BufferError = unsafe extern "C" fn(*mut c_void) -> c_int;
    type GetError = unsafe extern "C" fn(*mut c_void) -> *const c_char;
    type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
    type SetDryRun = unsafe extern "C" fn(*mut c_void, bool);

    struct Ctx(*mut c_void);
    // SAFETY: an nft_ctx is used by one thread at a time (behind the mutex).
    unsafe impl Send for Ctx {}

    pub struct Lib {
        new: New,
        free: Free,
        buffer_error: BufferError,
        get_error: GetError,
        run_cmd: RunCmd,
        set_dry_run: SetDryRun,
        ctx: Mutex<Option<Ctx>>,
    }

    impl Lib {
        pub fn load() -> Option<Lib> {
            // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is
            // cast to the signature libnftables(3) documents.
            unsafe {
                let h = dlopen(c"libnftables.so.1".as_ptr(), RTLD_NOW | RTLD_LOCAL);
                if h.is_null() {
                    return None;
                }
                let sym = |n: &CStr| {
                    let p = dlsym(h, n.as_ptr());
                    (!p.is_null()).then_some(p)
                };
                Some(Lib {
                    new: std::mem::transmute::<*mut c_void, New>(sym(c"nft_ctx_new")?),
                    free: std::mem::transmute::<*mut c_void, Free>(sym(c"nft_ctx_free")?),
                    buffer_error: std::mem::transmute::<*mut c_void, BufferError>(sym(
                        c"nft_ctx_buffer_error",
                    )?),
                    get_error: std::mem::transmute::<*mut c_void, GetError>(sym(
                        c"nft_ctx_get_error_buffer",
                    )?),
                    run_cmd: std::mem::transmute::<*mut c_void, RunCmd>(sym(
                        c"nft_run_cmd_from_buffer",
                    )?),
                    set_dry_run: std::mem::transmute::<*mut c_void, SetDryRun>(sym(
                        c"nft_ctx_set_dry_run",
                    )?),
                    ctx: Mutex::new(None),
                })
            }
        }

        fn open(&self) -> Result<Ctx, String> {
            // SAFETY: nft_ctx_new(0) returns an owned context or NULL.
            let ctx = unsafe { (self.new)(0) };
            if ctx.is_null() {
                return Err("libnftables: nft_ctx_new failed".into());
            }
            // SAFETY: ctx is a live context.
            unsafe { (self.buffer_error)(ctx) };
            Ok(Ctx(ctx))
        }

        fn exec(&self, ctx: &Ctx, script: &str) -> Result<(), String> {
            let text = CString::new(script).map_err(|_| "nft script holds a NUL byte")?;
            // SAFETY: ctx is live and used by this thread alone; text is
            // NUL-terminated and outlives the call; the error buffer is a
            // NUL-terminated string owned by ctx until its next command.
            unsafe {
                if (self.run_cmd)(ctx.0, text.as_ptr()) == 0 {
                    Ok(())
                } else {
                    let e = (self.get_error)(ctx.0);
                    Err(if e.is_null() {
                        "nft rejected the transaction".into()
                    } else {
                        CStr::from_ptr(e).to_string_lossy().trim().to_string()
                    })
                }
            }
        }

        /// Run on the cached context (opened in the caller's namespace).
        pub fn run(&self, script: &str) -> Result<(), String> {
            let mut g = self.ctx.lock();
            if g.is_none() {
                *g = Some(self.open()?);
            }
            self.exec(g.as_ref().expect("opened above"), script)
        }

        /// Run on a context of its own, freed afterwards; with `dry_run`,
        /// checked by the kernel and not applied.
        pub fn run_fresh(&self, script: &str, dry_run: bool) -> Result<(), String> {
            let ctx = self.open()?;
            if dry_run {
                // SAFETY: ctx is a live context of this thread.
                unsafe { (self.set_dry_run)(ctx.0, true) };
            }
            let r = self.exec(&ctx, script);
            // SAFETY: ctx came from nft_ctx_new and is not used again.
            unsafe { (self.free)(ctx.0) };
            r
        }
    }

    impl Drop for Lib {
        fn drop(&mut self) {
            if let Some(ctx) = self.ctx.get_mut().take() {
                // SAFETY: as in run_fresh.
                unsafe { (self.free)(ctx.0) };
            }
        }
    }
}

/// The counters of `table` (`nft -j list counters table inet TABLE`), as
/// nft's JSON; `None` when the table does not exist yet.
pub fn list_counters(table: &str) -> Result<Option<serde_json::Value>, String> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "counters", "table", "inet", table])
        .output()
        .map_err(|e| format!("running nft: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(format!("nft -j list counters: {}", err.trim()));
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .map_err(|e| format!("nft -j output: {e}"))
}

/// The plan's tables applied through an nftables runner: a delta as one
/// transaction, the whole table as one atomic replace.
pub struct NftApplier(pub Arc<dyn NftRunner>);

impl crate::plan::reconcile::Applier for NftApplier {
    fn delta(&self, table: &Skeleton, changes: &[Change]) -> Result<usize, String> {
        // Elements only: straight to the kernel, if the runner can.
        if let Some(ops) = element_ops(table, changes) {
            if ops.is_empty() {
                return Ok(0);
            }
            if let Some(r) = self.0.elements(table.table, &ops) {
                return r;
            }
        }
        let script = delta_script(table.table, changes);
        if script.is_empty() {
            return Ok(0);
        }
        let text = script.text();
        self.0.run(&text).map(|()| text.len())
    }

    fn full(
        &self,
        table: &Skeleton,
        store: &crate::plan::PlanStore,
    ) -> (usize, Result<(), String>) {
        load_store(&*self.0, table, store)
    }

    fn check(
        &self,
        table: &Skeleton,
        fragments: &[&crate::plan::Fragment],
        retained: &[&PlanItem],
    ) -> Result<(), String> {
        let items = fragments
            .iter()
            .flat_map(|f| f.items.iter())
            .chain(retained.iter().copied());
        self.0.check(&full_script(table, items))
    }
}
