//! Validation of what a module returns. A fragment is accepted whole or not at
//! all, and the error says which item and what is wrong with it.
//!
//! Checked: sizes and names; that every value fits the field or set type it
//! is compared with or added to; that every chain, set, map and counter a
//! fragment references exists in the fragment or the role's skeleton (a
//! fragment is self-contained, which is what lets the host replace one
//! object's fragment without looking at the others); and the module's grants.

use super::grants::Grants;
use super::scope::Scope;
use super::skeleton::{self, Skeleton};
use crate::contract::bindings::imports::switchyard::plugin::types::*;
use crate::contract::check_ifname;
use crate::model::Role;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// Size limits of one fragment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PlanLimits {
    pub max_items: usize,
    pub max_rules_per_chain: usize,
    pub max_set_values: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_items: 100_000,
            max_rules_per_chain: 10_000,
            max_set_values: 65_536,
        }
    }
}

/// Why a fragment was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", item.map(|i| format!("item {i}{}: ", rule_id.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())).unwrap_or_default())]
pub struct PlanError {
    pub item: Option<usize>,
    pub rule_id: Option<String>,
    pub message: String,
}

const MAX_NAME: usize = 64;
const MAX_RULE_ID: usize = 128;
const MAX_COMMENT: usize = 128;
const MAX_LOG_PREFIX: usize = 64;
const MAX_MATCHES: usize = 16;
const MAX_STATEMENTS: usize = 8;
const MAX_MODULUS: u32 = 65_536;
const IPVS_SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos",
];

#[derive(Debug, Clone)]
struct SetSig {
    key: Vec<NftType>,
    /// `None` for sets.
    data: Option<NftMapData>,
    interval: bool,
    timeout: bool,
}

struct Checker<'a> {
    skeleton: &'a Skeleton,
    grants: &'a Grants,
    scope: &'a Scope,
    limits: &'a PlanLimits,
    chains: HashSet<String>,
    sets: HashMap<String, SetSig>,
    counters: HashSet<String>,
}

type R = Result<(), String>;

fn printable(s: &str, what: &str, max: usize) -> R {
    if s.len() > max {
        return Err(format!(
            "{what} is {} bytes long; at most {max} are allowed",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || *c == '"' || *c == '\\')
    {
        return Err(format!("{what} {s:?} contains {c:?}, which is not allowed"));
    }
    Ok(())
}

/// nftables object names: a letter, then letters, digits, `-`, `_` or `.`.
fn object_name(name: &str, what: &str) -> R {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "{what} name must be 1 to {MAX_NAME} bytes long, not {}",
            name.len()
        ));
    }
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        return Err(format!(
            "{what} name {name:?} must start with a letter and contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn family_of(a: &IpAddress) -> IpFamily {
    match a {
        IpAddress::Ipv4(_) => IpFamily::Ipv4,
        IpAddress::Ipv6(_) => IpFamily::Ipv6,
    }
}

fn ip(a: &IpAddress) -> IpAddr {
    crate::contract::wit_to_ip(a)
}

fn prefix(c: &IpCidr) -> R {
    let n = crate::contract::wit_to_net(c)?;
    if n.trunc() != n {
        return Err(format!(
            "prefix {n} has host bits set (did you mean {}?)",
            n.trunc()
        ));
    }
    Ok(())
}

pub fn type_name(t: NftType) -> &'static str {
    match t {
        NftType::Ipv4Addr => "ipv4_addr",
        NftType::Ipv6Addr => "ipv6_addr",
        NftType::InetProto => "inet_proto",
        NftType::InetService => "inet_service",
        NftType::Ifname => "ifname",
        NftType::Mark => "mark",
        NftType::Nfproto => "nf_proto",
    }
}

fn type_names(t: &[NftType]) -> String {
    t.iter()
        .map(|t| type_name(*t))
        .collect::<Vec<_>>()
        .join(" . ")
}

/// A field as nftables writes it.
pub fn field_name(f: NftField) -> &'static str {
    match f {
        NftField::MetaNfproto => "meta nfproto",
        NftField::MetaL4proto => "meta l4proto",
        NftField::IpSaddr => "ip saddr",
        NftField::IpDaddr => "ip daddr",
        NftField::Ip6Saddr => "ip6 saddr",
        NftField::Ip6Daddr => "ip6 daddr",
        NftField::ThSport => "th sport",
        NftField::ThDport => "th dport",
        NftField::Iifname => "iifname",
        NftField::Oifname => "oifname",
        NftField::MetaMark => "meta mark",
        NftField::CtMark => "ct mark",
        NftField::CtState => "ct state",
        NftField::CtStatus => "ct status",
        NftField::FibDaddrType => "fib daddr type",
    }
}

fn field_names(f: &[NftField]) -> String {
    f.iter()
        .map(|f| field_name(*f))
        .collect::<Vec<_>>()
        .join(" . ")
}

fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::Ipv4 => "IPv4",
        IpFamily::Ipv6 => "IPv6",
    }
}

/// The set type a field's values have, or `None` for fields only usable with
/// inline values (ct state, ct status, fib type).
fn field_type(f: NftField) -> Option<NftType> {
    Some(match f {
        NftField::MetaNfproto => NftType::Nfproto,
        NftField::MetaL4proto => NftType::InetProto,
        NftField::IpSaddr | NftField::IpDaddr => NftType::Ipv4Addr,
        NftField::Ip6Saddr | NftField::Ip6Daddr => NftType::Ipv6Addr,
        NftField::ThSport | NftField::ThDport => NftType::InetService,
        NftField::Iifname | NftField::Oifname => NftType::Ifname,
        NftField::MetaMark | NftField::CtMark => NftType::Mark,
        NftField::CtState | NftField::CtStatus | NftField::FibDaddrType => return None,
    })
}

/// Whether a value fits a set type; `interval` says whether ranges and
/// prefixes are allowed.
fn value_fits(v: &NftValue, t: NftType, interval: bool) -> R {
    let fam = |a: &IpAddress| family_of(a);
    let want_v4 = t == NftType::Ipv4Addr;
    let ok = match (v, t) {
        (NftValue::Address(a), NftType::Ipv4Addr | NftType::Ipv6Addr) => {
            (fam(a) == IpFamily::Ipv4) == want_v4
        }
        (NftValue::Prefix(c), NftType::Ipv4Addr | NftType::Ipv6Addr) => {
            prefix(c)?;
            if !interval {
                return Err("a prefix needs an interval set".into());
            }
            (fam(&c.address) == IpFamily::Ipv4) == want_v4
        }
        (NftValue::AddressRange((a, b)), NftType::Ipv4Addr | NftType::Ipv6Addr) => {
            if !interval {
                return Err("an address range needs an interval set".into());
            }
            if fam(a) != fam(b) || ip(a) > ip(b) {
                return Err(format!(
                    "address range {}-{} is empty or mixes families",
                    ip(a),
                    ip(b)
                ));
            }
            (fam(a) == IpFamily::Ipv4) == want_v4
        }
        (NftValue::Port(_), NftType::InetService) => true,
        (NftValue::PortRange((a, b)), NftType::InetService) => {
            if !interval {
                return Err("a port range needs an interval set".into());
            }
            if a > b {
                return Err(format!("port range {a}-{b} is empty"));
            }
            true
        }
        (NftValue::Protocol(_), NftType::InetProto) => true,
        (NftValue::Family(_), NftType::Nfproto) => true,
        (NftValue::InterfaceName(n), NftType::Ifname) => {
            check_ifname(n)?;
            // Linux allows them, but an nft string cannot hold them.
            if n.contains(['"', '\\']) {
                return Err(format!(
                    "interface name {n:?} cannot be written in nftables (it holds a quote or a backslash)"
                ));
            }
            true
        }
        (NftValue::Number(_), NftType::Mark) => true,
        (NftValue::NumberRange((a, b)), NftType::Mark) => {
            if !interval || a > b {
                return Err(format!(
                    "number range {a}-{b} needs an interval set and must not be empty"
                ));
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "value {} does not fit type {}",
            describe_value(v),
            type_name(t)
        ))
    }
}

fn describe_value(v: &NftValue) -> String {
    match v {
        NftValue::Address(a) => ip(a).to_string(),
        NftValue::Prefix(c) => format!("{}/{}", ip(&c.address), c.prefix_len),
        NftValue::AddressRange((a, b)) => format!("{}-{}", ip(a), ip(b)),
        NftValue::Port(p) => format!("port {p}"),
        NftValue::PortRange((a, b)) => format!("ports {a}-{b}"),
        NftValue::Protocol(p) => format!(
            "protocol {}",
            match p {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            }
        ),
        NftValue::Family(f) => family_name(*f).to_string(),
        NftValue::InterfaceName(n) => format!("interface {n:?}"),
        NftValue::Number(n) => n.to_string(),
        NftValue::NumberRange((a, b)) => format!("{a}-{b}"),
        NftValue::CtState(_) => "ct state".into(),
        NftValue::CtStatus(_) => "ct status".into(),
        NftValue::FibType(_) => "fib type".into(),
    }
}

/// Whether a value fits a field in an inline match.
fn value_fits_field(v: &NftValue, f: NftField) -> R {
    match (f, v) {
        (NftField::CtState, NftValue::CtState(_))
        | (NftField::CtStatus, NftValue::CtStatus(_))
        | (NftField::FibDaddrType, NftValue::FibType(_)) => Ok(()),
        (NftField::CtState | NftField::CtStatus | NftField::FibDaddrType, _) => Err(format!(
            "value {} cannot be compared with {}",
            describe_value(v),
            field_name(f)
        )),
        _ => value_fits(v, field_type(f).expect("handled above"), true)
            .map_err(|e| format!("{}: {e}", field_name(f))),
    }
}

impl Checker<'_> {
    fn set(&self, name: &str) -> Option<SetSig> {
        if let Some(s) = self.sets.get(name) {
            return Some(s.clone());
        }
        self.skeleton.map(name).map(|m| SetSig {
            key: m.key.to_vec(),
            data: m.data(),
            interval: m.interval(),
            timeout: false,
        })
    }

    fn chain_exists(&self, name: &str) -> R {
        if self.chains.contains(name) || self.skeleton.chains.contains(&name) {
            Ok(())
        } else {
            Err(format!(
                "chain {name:?} is not defined in this fragment or by the host"
            ))
        }
    }

    fn define(&mut self, item: &PlanItem) -> R {
        let check_new = |name: &str, what: &str, sk: &Skeleton| -> R {
            object_name(name, what)?;
            if sk.is_reserved(name) {
                return Err(format!("{what} name {name:?} is reserved by the host"));
            }
            Ok(())
        };
        match &item.body {
            PlanBody::NftChain(c) => {
                check_new(&c.name, "chain", self.skeleton)?;
                if !self.chains.insert(c.name.clone()) {
                    return Err(format!("chain {:?} is defined twice", c.name));
                }
            }
            PlanBody::NftSet(s) => {
                check_new(&s.name, "set", self.skeleton)?;
                self.new_set(&s.name, &s.key, None, s.set_flags)?;
            }
            PlanBody::NftMap(m) => {
                check_new(&m.name, "map", self.skeleton)?;
                self.new_set(&m.name, &m.key, Some(m.data.clone()), m.set_flags)?;
            }
            PlanBody::NftCounter(c) => {
                check_new(&c.name, "counter", self.skeleton)?;
                if !self.counters.insert(c.name.clone()) {
                    return Err(format!("counter {:?} is defined twice", c.name));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn new_set(
        &mut self,
        name: &str,
        key: &[NftType],
        data: Option<NftMapData>,
        flags: NftSetFlags,
    ) -> R {
        if key.is_empty() || key.len() > 8 {
            return Err(format!("{name}: a key has 1 to 8 fields"));
        }
        if let Some(NftMapData::Data(d)) = &data
            && (d.is_empty() || d.len() > 4)
        {
            return Err(format!("{name}: map data has 1 to 4 fields"));
        }
        let sig = SetSig {
            key: key.to_vec(),
            data,
            interval: flags.contains(NftSetFlags::INTERVAL),
            timeout: flags.contains(NftSetFlags::TIMEOUT),
        };
        if self.sets.insert(name.to_string(), sig).is_some() {
            return Err(format!("set or map {name:?} is defined twice"));
        }
        Ok(())
    }

    fn grant(&self, body: &PlanBody) -> R {
        let (granted, what) = match body {
            PlanBody::NftChain(_)
            | PlanBody::NftSet(_)
            | PlanBody::NftMap(_)
            | PlanBody::NftElement(_)
            | PlanBody::NftCounter(_) => (self.grants.nft, "nftables objects"),
            PlanBody::IpvsService(_) => (self.grants.ipvs, "IPVS services"),
            PlanBody::Route(_) => (self.grants.routes, "routes"),
            PlanBody::InterfaceAddress(_) => {
                (self.grants.interface_addresses, "interface addresses")
            }
        };
        if granted {
            Ok(())
        } else {
            Err(format!("the module is not granted {what}"))
        }
    }

    fn check(&self, item: &PlanItem) -> R {
        self.grant(&item.body)?;
        match &item.body {
            PlanBody::NftChain(c) => {
                if c.rules.len() > self.limits.max_rules_per_chain {
                    return Err(format!(
                        "chain {} has {} rules; at most {} are allowed",
                        c.name,
                        c.rules.len(),
                        self.limits.max_rules_per_chain
                    ));
                }
                for (i, r) in c.rules.iter().enumerate() {
                    self.rule(r)
                        .map_err(|e| format!("chain {} rule {i}: {e}", c.name))?;
                }
                Ok(())
            }
            PlanBody::NftSet(s) => match s.timeout {
                Some(t) if !s.set_flags.contains(NftSetFlags::TIMEOUT) || t == 0 => Err(format!(
                    "set {}: a timeout needs the timeout flag and must be positive",
                    s.name
                )),
                _ => Ok(()),
            },
            PlanBody::NftMap(_) | PlanBody::NftCounter(_) => Ok(()),
            PlanBody::NftElement(e) => self.element(e),
            PlanBody::IpvsService(s) => {
                ipvs(s)?;
                self.scope.ipvs(s)
            }
            PlanBody::Route(r) => route(r),
            PlanBody::InterfaceAddress(a) => {
                check_ifname(&a.device)?;
                if !self.grants.allows_node_interface(&a.device) {
                    return Err(format!(
                        "interface {:?} is outside the module's grant",
                        a.device
                    ));
                }
                crate::contract::wit_to_net(&a.address)?;
                self.scope.interface_address(&a.address)
            }
        }
    }

    fn element(&self, e: &NftElement) -> R {
        let Some(sig) = self.set(&e.set) else {
            return Err(format!(
                "element for {:?}, which is not defined in this fragment or by the host",
                e.set
            ));
        };
        if e.key.len() != sig.key.len() {
            return Err(format!(
                "element key has {} values but {} has {} key fields",
                e.key.len(),
                e.set,
                sig.key.len()
            ));
        }
        for (v, t) in e.key.iter().zip(&sig.key) {
            value_fits(v, *t, sig.interval).map_err(|m| format!("element of {}: {m}", e.set))?;
        }
        match (&sig.data, &e.value) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(format!("{} is a set; its elements have no value", e.set)),
            (Some(_), None) => Err(format!("{} is a map; its elements need a value", e.set)),
            (Some(d), Some(v)) => {
                let reject_ok =
                    !self.skeleton.nat || self.skeleton.map(&e.set).is_some_and(|m| m.filter);
                self.map_value(d, v, reject_ok)
                    .map_err(|m| format!("element of {}: {m}", e.set))
            }
        }?;
        // Bound to the object: the host's maps by what each position
        // means, the module's own data maps by the DNAT targets they hold.
        match (self.skeleton.map(&e.set), &e.value) {
            (Some(m), _) => self.scope.element(&e.set, m.bind, e),
            (None, Some(NftMapValue::Data(d))) => self
                .scope
                .own_map_data(d)
                .map_err(|m| format!("element of {}: {m}", e.set)),
            (None, _) => Ok(()),
        }
    }

    fn map_value(&self, data: &NftMapData, v: &NftMapValue, reject_ok: bool) -> R {
        match (data, v) {
            (NftMapData::Verdict, NftMapValue::Verdict(v)) => self.verdict(v, reject_ok),
            (NftMapData::Data(types), NftMapValue::Data(values)) => {
                if types.len() != values.len() {
                    return Err(format!(
                        "map data has {} values, {} expected",
                        values.len(),
                        types.len()
                    ));
                }
                for (v, t) in values.iter().zip(types) {
                    value_fits(v, *t, false)?;
                }
                Ok(())
            }
            (NftMapData::Verdict, NftMapValue::Data(_)) => {
                Err("a verdict map needs verdicts".into())
            }
            (NftMapData::Data(_), NftMapValue::Verdict(_)) => {
                Err("a data map cannot hold verdicts".into())
            }
        }
    }

    fn verdict(&self, v: &NftVerdict, reject_ok: bool) -> R {
        match v {
            NftVerdict::Reject if !reject_ok => Err(
                "reject cannot be used here: these chains run in NAT hooks (use the host's no-endpoints maps, or drop)"
                    .into(),
            ),
            NftVerdict::Jump(c) | NftVerdict::Goto(c) => self.chain_exists(c),
            _ => Ok(()),
        }
    }

    fn key(&self, k: &NftKey) -> Result<usize, String> {
        let modulus = |m: u32| {
            if m == 0 || m > MAX_MODULUS {
                Err(format!("modulus {m} must be 1 to {MAX_MODULUS}"))
            } else {
                Ok(())
            }
        };
        match k {
            NftKey::Fields(f) => {
                if f.is_empty() || f.len() > 8 {
                    return Err("a key has 1 to 8 fields".into());
                }
                Ok(f.len())
            }
            NftKey::NumgenRandom(m) | NftKey::NumgenInc(m) => modulus(*m).map(|()| 1),
            NftKey::Jhash(h) => {
                modulus(h.modulus)?;
                if h.fields.is_empty() || h.fields.len() > 8 {
                    return Err("a hash covers 1 to 8 fields".into());
                }
                Ok(1)
            }
            NftKey::Slotted(s) => {
                if s.fields.is_empty() || s.fields.len() > 7 {
                    return Err("a slotted key has 1 to 7 fields before its slot".into());
                }
                self.key(&slot_key(&s.slot))?;
                Ok(s.fields.len() + 1)
            }
        }
    }

    /// Check a lookup: key arity against the map, inline entries' keys.
    fn lookup(&self, key: &NftKey, map: &NftMapRef, verdicts: bool) -> R {
        let arity = self.key(key)?;
        let hashed = matches!(
            key,
            NftKey::NumgenRandom(_) | NftKey::NumgenInc(_) | NftKey::Jhash(_)
        );
        // The packet fields of the key, and the modulus of its slot if any.
        let (fields, slot_modulus): (&[NftField], Option<u32>) = match key {
            NftKey::Fields(f) => (f, None),
            NftKey::Slotted(s) => (&s.fields, Some(slot_modulus(&s.slot))),
            NftKey::NumgenRandom(m) | NftKey::NumgenInc(m) => (&[], Some(*m)),
            NftKey::Jhash(h) => (&[], Some(h.modulus)),
        };
        match map {
            NftMapRef::Named(name) => {
                let Some(sig) = self.set(name) else {
                    return Err(format!(
                        "map {name:?} is not defined in this fragment or by the host"
                    ));
                };
                match (&sig.data, verdicts) {
                    (Some(NftMapData::Verdict), true) | (Some(NftMapData::Data(_)), false) => {}
                    _ => {
                        return Err(format!(
                            "{name} is not a {} map",
                            if verdicts { "verdict" } else { "data" }
                        ));
                    }
                }
                if sig.key.len() != arity {
                    return Err(format!(
                        "the lookup key has {arity} fields but {name} has {}",
                        sig.key.len()
                    ));
                }
                for (f, t) in fields.iter().zip(&sig.key) {
                    if field_type(*f) != Some(*t) {
                        return Err(format!(
                            "field {} does not fit {name}'s key type {}",
                            field_name(*f),
                            type_name(*t)
                        ));
                    }
                }
                if slot_modulus.is_some() && sig.key[fields.len()] != NftType::Mark {
                    return Err(format!(
                        "a numgen or hash slot needs a number (mark) in the key, {name} has {}",
                        type_name(sig.key[fields.len()])
                    ));
                }
                Ok(())
            }
            NftMapRef::Inline(entries) => {
                if entries.is_empty() || entries.len() > self.limits.max_set_values {
                    return Err(format!(
                        "an inline map has 1 to {} entries",
                        self.limits.max_set_values
                    ));
                }
                for e in entries {
                    if e.key.len() != arity {
                        return Err(format!(
                            "an inline map entry has {} key values, {arity} expected",
                            e.key.len()
                        ));
                    }
                    for (v, f) in e.key.iter().zip(fields) {
                        value_fits_field(v, *f)?;
                    }
                    if let Some(m) = slot_modulus {
                        match e.key.get(fields.len()) {
                            Some(NftValue::Number(n)) if *n < m => {}
                            _ => {
                                return Err(format!(
                                    "a {}map's slots are numbers below the modulus {m}",
                                    if hashed {
                                        "numgen or hash "
                                    } else {
                                        "slotted "
                                    }
                                ));
                            }
                        }
                    }
                    match (&e.value, verdicts) {
                        (NftMapValue::Verdict(v), true) => self.verdict(v, !self.skeleton.nat)?,
                        (NftMapValue::Data(d), false) => {
                            if d.is_empty() || d.len() > 2 {
                                return Err(
                                    "DNAT map data is an address and optionally a port".into()
                                );
                            }
                            self.scope.own_map_data(d)?;
                        }
                        _ => {
                            return Err(format!(
                                "an inline {} map has the wrong kind of value",
                                if verdicts { "verdict" } else { "data" }
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn rule(&self, r: &NftRule) -> R {
        if r.matches.len() > MAX_MATCHES || r.statements.len() > MAX_STATEMENTS {
            return Err(format!(
                "at most {MAX_MATCHES} matches and {MAX_STATEMENTS} statements per rule"
            ));
        }
        for m in &r.matches {
            if m.key.is_empty() || m.key.len() > 8 {
                return Err("a match has 1 to 8 key fields".into());
            }
            match &m.operand {
                NftOperand::Value(v) => {
                    if m.key.len() != 1 {
                        return Err(format!(
                            "a single value cannot match the {}-field key {}",
                            m.key.len(),
                            field_names(&m.key)
                        ));
                    }
                    value_fits_field(v, m.key[0])?;
                }
                NftOperand::Values(vals) => {
                    if vals.is_empty() || vals.len() > self.limits.max_set_values {
                        return Err(format!(
                            "an anonymous set has 1 to {} values",
                            self.limits.max_set_values
                        ));
                    }
                    for v in vals {
                        if v.len() != m.key.len() {
                            return Err(format!(
                                "a value has {} parts but the key has {} fields",
                                v.len(),
                                m.key.len()
                            ));
                        }
                        for (x, f) in v.iter().zip(&m.key) {
                            value_fits_field(x, *f)?;
                        }
                    }
                }
                NftOperand::Set(name) => {
                    let Some(sig) = self.set(name) else {
                        return Err(format!(
                            "set {name:?} is not defined in this fragment or by the host"
                        ));
                    };
                    if sig.data.is_some() {
                        return Err(format!("{name} is a map, not a set"));
                    }
                    let types: Vec<Option<NftType>> =
                        m.key.iter().map(|f| field_type(*f)).collect();
                    if types.len() != sig.key.len()
                        || types.iter().zip(&sig.key).any(|(a, b)| *a != Some(*b))
                    {
                        return Err(format!(
                            "the match key {} does not fit {name}'s key {}",
                            field_names(&m.key),
                            type_names(&sig.key)
                        ));
                    }
                }
            }
        }
        let n = r.statements.len();
        for (i, s) in r.statements.iter().enumerate() {
            let terminal = matches!(
                s,
                NftStatement::Dnat(_)
                    | NftStatement::Masquerade
                    | NftStatement::VerdictMap(_)
                    | NftStatement::Verdict(_)
            );
            if terminal && i + 1 != n {
                return Err(format!(
                    "statement {i} ends the rule, so it must be the last"
                ));
            }
            match s {
                NftStatement::Counter | NftStatement::Masquerade | NftStatement::MarkOr(_) => {}
                NftStatement::NamedCounter(c) => {
                    if !self.counters.contains(c) {
                        return Err(format!("counter {c:?} is not defined in this fragment"));
                    }
                }
                NftStatement::Log(p) | NftStatement::LogGroup((_, p)) => {
                    printable(p, "log prefix", MAX_LOG_PREFIX)?;
                    // nft reads `$name` in a string as a variable.
                    if p.contains(['$', '\\']) {
                        return Err(format!(
                            "log prefix {p:?} holds '$' or '\\', which nftables does not take literally"
                        ));
                    }
                }
                NftStatement::Dnat(NftNat {
                    target: NftNatTarget::Address((_, Some(port))),
                    ..
                }) if !r.matches.iter().any(|m| m.key == [NftField::MetaL4proto]) => {
                    return Err(format!(
                        "a DNAT to port {port} needs the transport protocol matched in the same rule (meta l4proto), or nftables refuses it"
                    ));
                }
                NftStatement::Dnat(nat) => match &nat.target {
                    NftNatTarget::Address((a, port)) => {
                        if family_of(a) != nat.family {
                            return Err(format!(
                                "DNAT to {} in an {} rule",
                                ip(a),
                                family_name(nat.family)
                            ));
                        }
                        // The protocol the rule matches, if it names one
                        // (`meta l4proto tcp` or `meta l4proto { tcp }`).
                        let protocol = r
                            .matches
                            .iter()
                            .filter(|m| m.key == [NftField::MetaL4proto] && !m.negate)
                            .find_map(|m| match &m.operand {
                                NftOperand::Value(NftValue::Protocol(p)) => Some(*p),
                                NftOperand::Values(v) => match v.as_slice() {
                                    [one] => match one.as_slice() {
                                        [NftValue::Protocol(p)] => Some(*p),
                                        _ => None,
                                    },
                                    _ => None,
                                },
                                _ => None,
                            })
                            .map(super::scope::proto);
                        self.scope.dnat(ip(a), port.map(|n| (protocol, n)))?;
                    }
                    NftNatTarget::Lookup((k, m)) => self.lookup(k, m, false)?,
                },
                NftStatement::SetUpdate(u) => {
                    let Some(sig) = self.sets.get(&u.set) else {
                        return Err(format!(
                            "set {:?} to update is not defined in this fragment",
                            u.set
                        ));
                    };
                    if sig.data.is_some() || (u.timeout.is_some() && !sig.timeout) {
                        return Err(format!(
                            "{} must be a set with the timeout flag to be updated with a timeout",
                            u.set
                        ));
                    }
                    let types: Vec<Option<NftType>> =
                        u.key.iter().map(|f| field_type(*f)).collect();
                    if types.len() != sig.key.len()
                        || types.iter().zip(&sig.key).any(|(a, b)| *a != Some(*b))
                    {
                        return Err(format!(
                            "the update key {} does not fit {}'s key {}",
                            field_names(&u.key),
                            u.set,
                            type_names(&sig.key)
                        ));
                    }
                }
                NftStatement::VerdictMap((k, m)) => self.lookup(k, m, true)?,
                NftStatement::Verdict(v) => self.verdict(v, !self.skeleton.nat)?,
            }
        }
        Ok(())
    }
}

/// A slot as the key it is on its own, for the same checks.
fn slot_key(s: &NftSlot) -> NftKey {
    match s {
        NftSlot::NumgenRandom(m) => NftKey::NumgenRandom(*m),
        NftSlot::NumgenInc(m) => NftKey::NumgenInc(*m),
        NftSlot::Jhash(h) => NftKey::Jhash(h.clone()),
    }
}

fn slot_modulus(s: &NftSlot) -> u32 {
    match s {
        NftSlot::NumgenRandom(m) | NftSlot::NumgenInc(m) => *m,
        NftSlot::Jhash(h) => h.modulus,
    }
}

fn ipvs(s: &IpvsService) -> R {
    if !IPVS_SCHEDULERS.contains(&s.scheduler.as_str()) {
        return Err(format!(
            "IPVS scheduler {:?} is unknown (known: {})",
            s.scheduler,
            IPVS_SCHEDULERS.join(", ")
        ));
    }
    if s.port == 0 {
        return Err("an IPVS service needs a port".into());
    }
    let vip = ip(&s.address);
    if vip.is_unspecified() || vip.is_multicast() {
        return Err(format!("{vip} cannot be an IPVS service address"));
    }
    if s.persistence_timeout
        .is_some_and(|t| t == 0 || t > 2_678_400)
    {
        return Err("persistence timeout must be 1 to 2678400 seconds".into());
    }
    if s.destinations.len() > 10_000 {
        return Err("an IPVS service has at most 10000 destinations".into());
    }
    for d in &s.destinations {
        if family_of(&d.address) != family_of(&s.address) {
            return Err(format!(
                "destination {} is not of the family of {vip}",
                ip(&d.address)
            ));
        }
        if d.weight > 65_535 {
            return Err(format!(
                "destination {} has weight {}; at most 65535",
                ip(&d.address),
                d.weight
            ));
        }
    }
    Ok(())
}

fn route(r: &Route) -> R {
    prefix(&r.destination)?;
    let fam = family_of(&r.destination.address);
    for a in [&r.gateway, &r.source].into_iter().flatten() {
        if family_of(a) != fam {
            return Err(format!("{} is not of the family of the destination", ip(a)));
        }
    }
    if let Some(d) = &r.device {
        check_ifname(d)?;
    }
    if r.gateway.is_none() && r.device.is_none() {
        return Err("a route needs a gateway or a device".into());
    }
    if r.table.is_some_and(|t| t == 0 || t == 253 || t == 255) {
        return Err("routes may not go into the unspec, default or local tables".into());
    }
    Ok(())
}

/// Validate a fragment a `role` module returned and check it against
/// `grants` and the `scope` of the object it was rendered for.
pub fn validate(
    fragment: PlanFragment,
    role: Role,
    grants: &Grants,
    limits: &PlanLimits,
    scope: &Scope,
) -> Result<Vec<PlanItem>, PlanError> {
    let items = fragment.items;
    if items.len() > limits.max_items {
        return Err(PlanError {
            item: None,
            rule_id: None,
            message: format!(
                "the fragment has {} items; at most {} are allowed",
                items.len(),
                limits.max_items
            ),
        });
    }
    let at = |i: usize, item: &PlanItem, message: String| PlanError {
        item: Some(i),
        rule_id: Some(item.rule_id.chars().take(MAX_RULE_ID).collect()),
        message,
    };
    let mut c = Checker {
        skeleton: skeleton::for_role(role),
        grants,
        scope,
        limits,
        chains: HashSet::new(),
        sets: HashMap::new(),
        counters: HashSet::new(),
    };
    for (i, item) in items.iter().enumerate() {
        if item.rule_id.is_empty() {
            return Err(at(i, item, "rule id is empty".into()));
        }
        printable(&item.rule_id, "rule id", MAX_RULE_ID).map_err(|m| at(i, item, m))?;
        if let Some(comment) = &item.comment {
            printable(comment, "comment", MAX_COMMENT).map_err(|m| at(i, item, m))?;
        }
        c.define(item).map_err(|m| at(i, item, m))?;
    }
    for (i, item) in items.iter().enumerate() {
        c.check(item).map_err(|m| at(i, item, m))?;
    }
    if role == Role::ServiceProxy {
        classes(&items).map_err(|(i, m)| at(i, &items[i], m))?;
    }
    super::refusals::loops(&items).map_err(|(i, m)| at(i, &items[i], m))?;
    super::refusals::overlaps(&items).map_err(|(i, m)| at(i, &items[i], m))?;
    Ok(items)
}

/// The proxy's class contract (see `skeleton::PROXY`): a class a dispatch
/// element names is in `service-classes` in the same fragment and within
/// range, its chain starts with `jump restore-mark`, and nothing else
/// jumps there (it would clear or overwrite a mark that is not borrowed).
fn classes(items: &[PlanItem]) -> Result<(), (usize, String)> {
    use skeleton::{CLASS_DISPATCH, CLASS_MAX, RESTORE_MARK, SERVICE_CLASSES};
    let restore = |r: &NftRule| {
        r.statements
            .iter()
            .any(|s| matches!(s, NftStatement::Verdict(NftVerdict::Jump(c) | NftVerdict::Goto(c)) if c == RESTORE_MARK))
    };
    let mut defined = HashMap::new();
    let mut targets = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if let PlanBody::NftElement(e) = &item.body
            && e.set == SERVICE_CLASSES
        {
            if let ([NftValue::Number(v)], Some(NftMapValue::Verdict(NftVerdict::Goto(c)))) =
                (e.key.as_slice(), &e.value)
            {
                defined.insert(*v, i);
                targets.insert(c.as_str());
            } else {
                return Err((
                    i,
                    format!(
                        "an element of {SERVICE_CLASSES} is a class number that goes to a chain"
                    ),
                ));
            }
        }
    }
    for (i, item) in items.iter().enumerate() {
        match &item.body {
            PlanBody::NftElement(e) if CLASS_DISPATCH.contains(&e.set.as_str()) => {
                let Some(NftMapValue::Data(d)) = &e.value else {
                    continue;
                };
                let Some(NftValue::Number(v)) = d.first() else {
                    continue;
                };
                if *v == 0 || *v > CLASS_MAX {
                    return Err((
                        i,
                        format!(
                            "class {v} of an element of {} is not 1 to {CLASS_MAX:#x}",
                            e.set
                        ),
                    ));
                }
                if !defined.contains_key(v) {
                    return Err((
                        i,
                        format!(
                            "class {v} of an element of {} has no element in {SERVICE_CLASSES} in this fragment",
                            e.set
                        ),
                    ));
                }
            }
            PlanBody::NftChain(c) => {
                let target = targets.contains(c.name.as_str());
                if target
                    && !c.rules.first().is_some_and(|r| {
                        r.matches.is_empty()
                            && r.statements
                                == [NftStatement::Verdict(NftVerdict::Jump(RESTORE_MARK.into()))]
                    })
                {
                    return Err((
                        i,
                        format!(
                            "chain {} is a class's chain: its first rule must be `jump {RESTORE_MARK}` alone",
                            c.name
                        ),
                    ));
                }
                let skip = usize::from(target);
                if let Some(k) = c.rules.iter().skip(skip).position(restore) {
                    return Err((
                        i,
                        format!(
                            "chain {} rule {}: only a class's chain may go to {RESTORE_MARK}, as its first rule",
                            c.name,
                            k + skip
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddress {
        IpAddress::Ipv4((a, b, c, d))
    }

    fn item(id: &str, body: PlanBody) -> PlanItem {
        PlanItem {
            rule_id: id.into(),
            comment: None,
            shared: false,
            body,
        }
    }

    fn proxy(items: Vec<PlanItem>) -> Result<Vec<PlanItem>, PlanError> {
        validate(
            PlanFragment { items },
            Role::ServiceProxy,
            &Grants::for_role(Role::ServiceProxy),
            &PlanLimits::default(),
            &Scope::Unbound,
        )
    }

    fn chain(name: &str, rules: Vec<NftRule>) -> PlanBody {
        PlanBody::NftChain(NftChain {
            name: name.into(),
            rules,
        })
    }

    fn dnat(a: IpAddress, port: u16) -> NftRule {
        NftRule {
            // A port mapping needs the transport protocol matched first.
            matches: vec![NftMatch {
                key: vec![NftField::MetaL4proto],
                negate: false,
                operand: NftOperand::Value(NftValue::Protocol(Protocol::Tcp)),
            }],
            statements: vec![NftStatement::Dnat(NftNat {
                family: IpFamily::Ipv4,
                target: NftNatTarget::Address((a, Some(port))),
            })],
        }
    }

    fn svc_element(vip: IpAddress, port: u16, to: &str) -> PlanBody {
        PlanBody::NftElement(NftElement {
            set: "service-chains".into(),
            key: vec![
                NftValue::Address(vip),
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(port),
            ],
            value: Some(NftMapValue::Verdict(NftVerdict::Goto(to.into()))),
        })
    }

    #[test]
    fn what_nftables_would_refuse_is_refused_here() {
        // DNAT to a port without the protocol matched.
        let mut r = dnat(v4(10, 244, 1, 2), 8080);
        r.matches.clear();
        let e = proxy(vec![item("c", chain("c", vec![r]))]).unwrap_err();
        assert!(e.message.contains("needs the transport protocol"), "{e}");
        // A log prefix nft reads as a variable.
        let log = |p: &str| NftRule {
            matches: vec![],
            statements: vec![NftStatement::Log(p.into())],
        };
        assert!(proxy(vec![item("c", chain("c", vec![log("svc drop: ")]))]).is_ok());
        let e = proxy(vec![item("c", chain("c", vec![log("$pwn")]))]).unwrap_err();
        assert!(e.message.contains("does not take literally"), "{e}");
        // A chain that jumps to itself.
        let me = NftRule {
            matches: vec![],
            statements: vec![NftStatement::Verdict(NftVerdict::Jump("c".into()))],
        };
        let e = proxy(vec![item("c", chain("c", vec![me]))]).unwrap_err();
        assert!(e.message.contains("chains loop: c -> c"), "{e}");
    }

    #[test]
    fn an_interface_name_nft_cannot_quote_is_refused() {
        let by_name = |n: &str| NftRule {
            matches: vec![NftMatch {
                key: vec![NftField::Iifname],
                negate: false,
                operand: NftOperand::Value(NftValue::InterfaceName(n.into())),
            }],
            statements: vec![NftStatement::Verdict(NftVerdict::Accept)],
        };
        assert!(proxy(vec![item("c", chain("c", vec![by_name("eth0")]))]).is_ok());
        for bad in ["et\"h0", "et\\h0"] {
            let e = proxy(vec![item("c", chain("c", vec![by_name(bad)]))]).unwrap_err();
            assert!(
                e.message.contains("cannot be written in nftables"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_typical_service_fragment_is_accepted() {
        let items = vec![
            item(
                "ep0",
                chain("ep-web-0", vec![dnat(v4(10, 244, 1, 2), 8080)]),
            ),
            item(
                "svc",
                chain(
                    "svc-web",
                    vec![NftRule {
                        matches: vec![],
                        statements: vec![NftStatement::VerdictMap((
                            NftKey::NumgenRandom(1),
                            NftMapRef::Inline(vec![NftMapEntry {
                                key: vec![NftValue::Number(0)],
                                value: NftMapValue::Verdict(NftVerdict::Goto("ep-web-0".into())),
                            }]),
                        ))],
                    }],
                ),
            ),
            item("vip", svc_element(v4(10, 96, 0, 10), 80, "svc-web")),
        ];
        assert_eq!(proxy(items).unwrap().len(), 3);
    }

    #[test]
    fn references_must_resolve_inside_the_fragment() {
        let e = proxy(vec![item(
            "vip",
            svc_element(v4(10, 96, 0, 10), 80, "svc-elsewhere"),
        )])
        .unwrap_err();
        assert_eq!(e.item, Some(0));
        assert!(
            e.message.contains("\"svc-elsewhere\" is not defined"),
            "{e}"
        );
    }

    #[test]
    fn classes_must_be_defined_in_range_and_restore_the_mark() {
        let class = |v: u32, to: &str| {
            PlanBody::NftElement(NftElement {
                set: "service-classes".into(),
                key: vec![NftValue::Number(v)],
                value: Some(NftMapValue::Verdict(NftVerdict::Goto(to.into()))),
            })
        };
        let dispatch = |v: u32| {
            PlanBody::NftElement(NftElement {
                set: "service-ips".into(),
                key: vec![
                    NftValue::Address(v4(10, 96, 0, 10)),
                    NftValue::Protocol(Protocol::Tcp),
                    NftValue::Port(80),
                ],
                value: Some(NftMapValue::Data(vec![NftValue::Number(v)])),
            })
        };
        let restore = NftRule {
            matches: vec![],
            statements: vec![NftStatement::Verdict(NftVerdict::Jump(
                "restore-mark".into(),
            ))],
        };
        let pick = |first: bool| {
            let mut rules = vec![dnat(v4(10, 244, 1, 2), 8080)];
            if first {
                rules.insert(0, restore.clone());
            } else {
                rules.push(restore.clone());
            }
            chain("pick-1", rules)
        };
        let good = vec![
            item("pick", pick(true)),
            item("class", class(7, "pick-1")),
            item("vip", dispatch(7)),
        ];
        assert_eq!(proxy(good).unwrap().len(), 3);
        let e = proxy(vec![
            item("pick", pick(true)),
            item("class", class(7, "pick-1")),
            item("vip", dispatch(8)),
        ])
        .unwrap_err();
        assert_eq!(e.item, Some(2));
        assert!(
            e.message
                .contains("class 8 of an element of service-ips has no element in service-classes"),
            "{e}"
        );
        let e = proxy(vec![item("vip", dispatch(0x8000_0001))]).unwrap_err();
        assert!(e.message.contains("is not 1 to 0x7fffffff"), "{e}");
        let e = proxy(vec![
            item("pick", pick(false)),
            item("class", class(7, "pick-1")),
            item("vip", dispatch(7)),
        ])
        .unwrap_err();
        assert!(
            e.message
                .contains("its first rule must be `jump restore-mark` alone"),
            "{e}"
        );
        // A chain that is not a class's must not touch the borrowed mark.
        let e = proxy(vec![item("svc", pick(true))]).unwrap_err();
        assert!(
            e.message
                .contains("only a class's chain may go to restore-mark"),
            "{e}"
        );
    }

    #[test]
    fn wrong_family_and_wrong_types_are_rejected() {
        let v6 = IpAddress::Ipv6((0xfd00, 0, 0, 0, 0, 0, 0, 1));
        let e = proxy(vec![item("c", chain("c", vec![NftRule::default_dnat(v6)]))]).unwrap_err();
        assert!(e.message.contains("DNAT to fd00::1 in an IPv4 rule"), "{e}");
        let bad = PlanBody::NftElement(NftElement {
            set: "service-chains".into(),
            key: vec![
                NftValue::Port(80),
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(80),
            ],
            value: Some(NftMapValue::Verdict(NftVerdict::Accept)),
        });
        let e = proxy(vec![item("x", bad)]).unwrap_err();
        assert!(
            e.message.contains("port 80 does not fit type ipv4_addr"),
            "{e}"
        );
    }

    #[test]
    fn grants_and_reserved_names_are_enforced() {
        let r = PlanBody::Route(Route {
            destination: IpCidr {
                address: v4(10, 0, 0, 0),
                prefix_len: 8,
            },
            gateway: Some(v4(192, 168, 0, 1)),
            device: None,
            source: None,
            table: None,
            mtu: None,
        });
        let e = proxy(vec![item("r", r)]).unwrap_err();
        assert!(e.message.contains("not granted routes"), "{e}");
        let e = proxy(vec![item("c", chain("services", vec![]))]).unwrap_err();
        assert!(e.message.contains("reserved by the host"), "{e}");
        let e = validate(
            PlanFragment {
                items: vec![item("c", chain("x", vec![]))],
            },
            Role::Scheduler,
            &Grants::for_role(Role::Scheduler),
            &PlanLimits::default(),
            &Scope::Unbound,
        )
        .unwrap_err();
        assert!(e.message.contains("not granted nftables"), "{e}");
    }

    #[test]
    fn sizes_and_strings_are_bounded() {
        let huge = "x".repeat(10_000);
        let e = proxy(vec![item(&huge, chain("c", vec![]))]).unwrap_err();
        assert!(e.message.contains("rule id is 10000 bytes long"), "{e}");
        let e = proxy(vec![item("c", chain(&huge, vec![]))]).unwrap_err();
        assert!(
            e.message.contains("chain name must be 1 to 64 bytes"),
            "{e}"
        );
        let mut it = item("c", chain("c", vec![]));
        it.comment = Some("a \"quoted\" comment".into());
        assert!(proxy(vec![it]).is_err());
        let many: Vec<PlanItem> = (0..100_001)
            .map(|i| item("c", chain(&format!("c{i}"), vec![])))
            .collect();
        let e = proxy(many).unwrap_err();
        assert!(e.message.contains("100001 items"), "{e}");
    }

    #[test]
    fn terminal_statements_come_last() {
        let r = NftRule {
            matches: vec![],
            statements: vec![
                NftStatement::Verdict(NftVerdict::Accept),
                NftStatement::Counter,
            ],
        };
        let e = proxy(vec![item("c", chain("c", vec![r]))]).unwrap_err();
        assert!(e.message.contains("must be the last"), "{e}");
    }

    #[test]
    fn ipvs_checks_scheduler_and_families() {
        let s = |sched: &str, dest: IpAddress| {
            PlanBody::IpvsService(IpvsService {
                address: v4(10, 96, 0, 1),
                port: 80,
                protocol: Protocol::Tcp,
                scheduler: sched.into(),
                persistence_timeout: None,
                destinations: vec![IpvsDestination {
                    address: dest,
                    port: 8080,
                    weight: 1,
                    forwarding: IpvsForwarding::Masquerade,
                }],
            })
        };
        assert!(proxy(vec![item("i", s("sed", v4(10, 244, 0, 2)))]).is_ok());
        assert!(
            proxy(vec![item("i", s("magic", v4(10, 244, 0, 2)))])
                .unwrap_err()
                .message
                .contains("unknown")
        );
        let v6 = IpAddress::Ipv6((0xfd00, 0, 0, 0, 0, 0, 0, 2));
        assert!(
            proxy(vec![item("i", s("rr", v6))])
                .unwrap_err()
                .message
                .contains("not of the family")
        );
    }

    impl NftRule {
        fn default_dnat(a: IpAddress) -> NftRule {
            NftRule {
                matches: vec![],
                statements: vec![NftStatement::Dnat(NftNat {
                    family: IpFamily::Ipv4,
                    target: NftNatTarget::Address((a, None)),
                })],
            }
        }
    }
}
