//! Builders for the plan a module returns.
//!
//! A plan is data: nftables objects (chains, sets, maps, elements, counters)
//! that live in the table the host gives the module's role, IPVS services and
//! routes. Every item carries a rule id, which `switchyard explain` and the
//! drop counters report; keep it stable for the same input.
//!
//! ```
//! use switchyard_sdk::plan::{Plan, Rule};
//! use switchyard_sdk::types::{NftField, NftVerdict, Protocol};
//!
//! let backend = "10.244.1.7".parse().unwrap();
//! let mut plan = Plan::new();
//! plan.chain(
//!     "svc/web/http/ep-0",
//!     "ep-web-http-0",
//!     vec![Rule::new().dnat(backend, Some(8080))],
//! );
//! plan.element(
//!     "svc/web/http",
//!     "service-chains",
//!     vec!["10.96.0.10".parse::<switchyard_sdk::types::IpAddress>().unwrap().into(), Protocol::Tcp.into(), 80u16.into()],
//!     Some(NftVerdict::Goto("ep-web-http-0".into()).into()),
//! );
//! let fragment = plan.build();
//! assert_eq!(fragment.items.len(), 2);
//! ```

use crate::types::*;

/// Collects plan items for one object.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    items: Vec<PlanItem>,
    comment: Option<String>,
}

impl Plan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach this comment to the items added from now on (until changed).
    pub fn comment(&mut self, comment: impl Into<String>) -> &mut Self {
        self.comment = Some(comment.into());
        self
    }

    /// Add any item.
    pub fn push(&mut self, rule_id: impl Into<String>, body: PlanBody) -> &mut Self {
        self.items.push(PlanItem {
            rule_id: rule_id.into(),
            comment: self.comment.clone(),
            shared: false,
            body,
        });
        self
    }

    /// Add an item other objects may render identically (see `plan-item` in
    /// the WIT): a dispatch chain that depends only on a scheduler and an
    /// endpoint count, say. The host keeps one copy while any object has it.
    /// A shared item's id names its content, so adding the same id again
    /// (two ports of one Service with the same endpoint count) adds nothing.
    pub fn shared(&mut self, rule_id: impl Into<String>, body: PlanBody) -> &mut Self {
        let rule_id = rule_id.into();
        if self.items.iter().any(|i| i.shared && i.rule_id == rule_id) {
            return self;
        }
        self.items.push(PlanItem {
            rule_id,
            comment: self.comment.clone(),
            shared: true,
            body,
        });
        self
    }

    /// A regular chain of the module's table.
    pub fn chain(
        &mut self,
        rule_id: impl Into<String>,
        name: impl Into<String>,
        rules: Vec<NftRule>,
    ) -> &mut Self {
        self.push(
            rule_id,
            PlanBody::NftChain(NftChain {
                name: name.into(),
                rules,
            }),
        )
    }

    /// An element of a named set (`value` is `None`) or map.
    pub fn element(
        &mut self,
        rule_id: impl Into<String>,
        set: impl Into<String>,
        key: Vec<NftValue>,
        value: Option<NftMapValue>,
    ) -> &mut Self {
        self.push(
            rule_id,
            PlanBody::NftElement(NftElement {
                set: set.into(),
                key,
                value,
            }),
        )
    }

    /// A named set.
    pub fn set(
        &mut self,
        rule_id: impl Into<String>,
        name: impl Into<String>,
        key: Vec<NftType>,
        flags: NftSetFlags,
        timeout: Option<u32>,
    ) -> &mut Self {
        self.push(
            rule_id,
            PlanBody::NftSet(NftSet {
                name: name.into(),
                key,
                set_flags: flags,
                timeout,
            }),
        )
    }

    /// A named map.
    pub fn map(
        &mut self,
        rule_id: impl Into<String>,
        name: impl Into<String>,
        key: Vec<NftType>,
        data: NftMapData,
        flags: NftSetFlags,
    ) -> &mut Self {
        self.push(
            rule_id,
            PlanBody::NftMap(NftMap {
                name: name.into(),
                key,
                data,
                set_flags: flags,
            }),
        )
    }

    /// A named counter (for drop accounting).
    pub fn counter(&mut self, rule_id: impl Into<String>, name: impl Into<String>) -> &mut Self {
        self.push(
            rule_id,
            PlanBody::NftCounter(NftCounter { name: name.into() }),
        )
    }

    /// An IPVS virtual service with its destinations.
    pub fn ipvs_service(&mut self, rule_id: impl Into<String>, svc: IpvsService) -> &mut Self {
        self.push(rule_id, PlanBody::IpvsService(svc))
    }

    /// A route.
    pub fn route(&mut self, rule_id: impl Into<String>, route: Route) -> &mut Self {
        self.push(rule_id, PlanBody::Route(route))
    }

    /// Number of items so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The fragment to return from a render call.
    pub fn build(self) -> PlanFragment {
        PlanFragment { items: self.items }
    }
}

/// One nftables rule: matches, then statements, ending in at most one verdict.
#[derive(Debug, Default, Clone)]
pub struct Rule {
    matches: Vec<NftMatch>,
    statements: Vec<NftStatement>,
}

impl Rule {
    /// A rule that matches every packet, so far.
    pub fn new() -> Self {
        Self::default()
    }

    /// `field == value`.
    pub fn eq(self, field: NftField, value: impl Into<NftValue>) -> Self {
        self.matching(
            vec![field],
            false,
            NftOperand::Values(vec![vec![value.into()]]),
        )
    }

    /// `field != value`.
    pub fn ne(self, field: NftField, value: impl Into<NftValue>) -> Self {
        self.matching(
            vec![field],
            true,
            NftOperand::Values(vec![vec![value.into()]]),
        )
    }

    /// `field` is one of `values` (an anonymous set).
    pub fn any_of(self, field: NftField, values: impl IntoIterator<Item = NftValue>) -> Self {
        let values = values.into_iter().map(|v| vec![v]).collect();
        self.matching(vec![field], false, NftOperand::Values(values))
    }

    /// The concatenation of `key` fields is in the named set.
    pub fn in_set(self, key: Vec<NftField>, set: impl Into<String>) -> Self {
        self.matching(key, false, NftOperand::Set(set.into()))
    }

    /// The concatenation of `key` fields is not in the named set.
    pub fn not_in_set(self, key: Vec<NftField>, set: impl Into<String>) -> Self {
        self.matching(key, true, NftOperand::Set(set.into()))
    }

    /// Any match.
    pub fn matching(mut self, key: Vec<NftField>, negate: bool, operand: NftOperand) -> Self {
        self.matches.push(NftMatch {
            key,
            negate,
            operand,
        });
        self
    }

    /// Add a statement.
    pub fn then(mut self, s: NftStatement) -> Self {
        self.statements.push(s);
        self
    }

    /// Count packets on this rule.
    pub fn counter(self) -> Self {
        self.then(NftStatement::Counter)
    }

    /// Count into a named counter.
    pub fn count_into(self, counter: impl Into<String>) -> Self {
        self.then(NftStatement::NamedCounter(counter.into()))
    }

    /// Log with a prefix.
    pub fn log(self, prefix: impl Into<String>) -> Self {
        self.then(NftStatement::Log(prefix.into()))
    }

    /// Set mark bits (`meta mark set meta mark | bits`).
    pub fn mark(self, bits: u32) -> Self {
        self.then(NftStatement::MarkOr(bits))
    }

    /// Remember the source in an affinity set for `timeout` seconds.
    pub fn remember(self, set: impl Into<String>, key: Vec<NftField>, timeout: u32) -> Self {
        self.then(NftStatement::SetUpdate(NftSetUpdate {
            set: set.into(),
            key,
            timeout: Some(timeout),
        }))
    }

    /// DNAT to one address (and port). Ends the rule.
    pub fn dnat(self, to: IpAddress, port: Option<u16>) -> NftRule {
        let family = to.family();
        self.then(NftStatement::Dnat(NftNat {
            family,
            target: NftNatTarget::Address((to, port)),
        }))
        .build()
    }

    /// DNAT to the address and port looked up in a map. Ends the rule.
    pub fn dnat_lookup(self, family: IpFamily, key: NftKey, map: NftMapRef) -> NftRule {
        self.then(NftStatement::Dnat(NftNat {
            family,
            target: NftNatTarget::Lookup((key, map)),
        }))
        .build()
    }

    /// Masquerade. Ends the rule.
    pub fn masquerade(self) -> NftRule {
        self.then(NftStatement::Masquerade).build()
    }

    /// Jump to the verdict found in a map. Ends the rule.
    pub fn vmap(self, key: NftKey, map: NftMapRef) -> NftRule {
        self.then(NftStatement::VerdictMap((key, map))).build()
    }

    /// End with a verdict.
    pub fn verdict(self, v: NftVerdict) -> NftRule {
        self.then(NftStatement::Verdict(v)).build()
    }

    /// End with `accept`.
    pub fn accept(self) -> NftRule {
        self.verdict(NftVerdict::Accept)
    }

    /// End with `drop`.
    pub fn drop(self) -> NftRule {
        self.verdict(NftVerdict::Drop)
    }

    /// End with `reject`.
    pub fn reject(self) -> NftRule {
        self.verdict(NftVerdict::Reject)
    }

    /// End with `jump chain`.
    pub fn jump(self, chain: impl Into<String>) -> NftRule {
        self.verdict(NftVerdict::Jump(chain.into()))
    }

    /// End with `goto chain`.
    pub fn goto(self, chain: impl Into<String>) -> NftRule {
        self.verdict(NftVerdict::Goto(chain.into()))
    }

    /// The rule as it stands, without a verdict (the packet continues).
    pub fn build(self) -> NftRule {
        NftRule {
            matches: self.matches,
            statements: self.statements,
        }
    }
}

impl From<IpAddress> for NftValue {
    fn from(a: IpAddress) -> Self {
        NftValue::Address(a)
    }
}

impl From<IpCidr> for NftValue {
    fn from(c: IpCidr) -> Self {
        NftValue::Prefix(c)
    }
}

impl From<u16> for NftValue {
    fn from(p: u16) -> Self {
        NftValue::Port(p)
    }
}

impl From<Protocol> for NftValue {
    fn from(p: Protocol) -> Self {
        NftValue::Protocol(p)
    }
}

impl From<IpFamily> for NftValue {
    fn from(f: IpFamily) -> Self {
        NftValue::Family(f)
    }
}

impl From<NftVerdict> for NftMapValue {
    fn from(v: NftVerdict) -> Self {
        NftMapValue::Verdict(v)
    }
}

impl IpFamily {
    /// The source-address field of this family.
    pub fn saddr(self) -> NftField {
        match self {
            IpFamily::Ipv4 => NftField::IpSaddr,
            IpFamily::Ipv6 => NftField::Ip6Saddr,
        }
    }

    /// The destination-address field of this family.
    pub fn daddr(self) -> NftField {
        match self {
            IpFamily::Ipv4 => NftField::IpDaddr,
            IpFamily::Ipv6 => NftField::Ip6Daddr,
        }
    }

    /// The nftables address type of this family.
    pub fn addr_type(self) -> NftType {
        match self {
            IpFamily::Ipv4 => NftType::Ipv4Addr,
            IpFamily::Ipv6 => NftType::Ipv6Addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_builder_keeps_order_and_ends_with_verdict() {
        let r = Rule::new()
            .eq(NftField::MetaL4proto, Protocol::Tcp)
            .ne(NftField::IpSaddr, "10.0.0.0/8".parse::<IpCidr>().unwrap())
            .counter()
            .jump("mark-for-masquerade");
        assert_eq!(r.matches.len(), 2);
        assert!(r.matches[1].negate);
        assert_eq!(
            r.statements,
            vec![
                NftStatement::Counter,
                NftStatement::Verdict(NftVerdict::Jump("mark-for-masquerade".into()))
            ]
        );
    }

    #[test]
    fn plan_comment_applies_to_following_items() {
        let mut p = Plan::new();
        p.counter("a", "c1").comment("why").counter("b", "c2");
        let f = p.build();
        assert_eq!(f.items[0].comment, None);
        assert_eq!(f.items[1].comment.as_deref(), Some("why"));
    }
}
