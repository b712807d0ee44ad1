//! Plans: what modules return, checked and owned by the host.
//!
//! A module returns a `plan-fragment` for one object. The host validates it
//! (every value from a guest is untrusted), checks it against the module's
//! grants, and keeps it per object so that a change re-renders and re-applies
//! only what changed.

pub mod grants;
pub mod key;
pub mod reconcile;
pub mod refusals;
pub mod scope;
pub mod skeleton;
pub mod store;
pub mod validate;

pub use scope::Scope;
pub use store::{Change, Claim, Conflict, Delta, Entry, PlanStore};
pub use validate::{PlanError, PlanLimits, validate};

use crate::contract::bindings::imports::switchyard::plugin::types::PlanItem;
use crate::model::ObjectRef;

/// A validated fragment for one object, with the provenance `explain` reports:
/// which binding rendered it and the digest of the module version.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub object: ObjectRef,
    /// The binding (NetworkModule) name.
    pub module: String,
    pub digest: String,
    pub items: Vec<PlanItem>,
}

/// The first item of `items` that no datapath of this agent applies, and
/// what kind of item it is. The contract has IPVS services, routes and
/// interface addresses, and validation checks them, but today only the
/// nftables tables are applied: a plan holding the others is refused, not
/// applied in part with the rest silently ignored.
pub fn unapplied(items: &[PlanItem]) -> Option<(usize, &'static str)> {
    use crate::contract::bindings::imports::switchyard::plugin::types::PlanBody;
    items.iter().enumerate().find_map(|(i, item)| {
        let what = match item.body {
            PlanBody::IpvsService(_) => "IPVS services",
            PlanBody::Route(_) => "routes",
            PlanBody::InterfaceAddress(_) => "interface addresses",
            _ => return None,
        };
        Some((i, what))
    })
}
