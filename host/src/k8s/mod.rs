//! Kubernetes syntax, once: names and labels, label selectors, Go's lenient
//! addresses and CIDRs, port names. The API server validates what it
//! stores; the agent checks with the same rules, in the same words, what it
//! is left to read (selectors, ipBlocks, named ports) and what it takes from
//! elsewhere (module names).

pub mod names;
pub mod net;
pub mod ports;
pub mod selector;

pub use ports::{iana_svc_name, port_name, protocol};
