//! The contract's vocabulary: the host bindings generated from `sdk/wit`
//! (the files the SDK generates the guest side from) and their conversions
//! to the host's types. A leaf: everyone may import it, it imports nothing
//! of the crate back.

pub mod bindings;
pub mod convert;

/// The contract's shared types (`switchyard:plugin/types`).
pub use bindings::imports::switchyard::plugin::types as wit;
pub use convert::{cidr as wit_to_net, ip as wit_to_ip, wit_cidr, wit_ip};
/// Linux interface names, checked as the CNI plugin checks them (one
/// definition, in the plugin's crate, which links neither wasmtime nor kube).
pub use switchyard_cni::check_ifname;
