//! The datapath: everything that touches the kernel or persistent state.
//! Modules never reach it directly; the runtime's host functions and the plan
//! applier call it, after checking grants.
//!
//! Each piece is a small trait with a real implementation and a recording one
//! for tests, so the rest of the code never branches on "is this real".

pub mod conntrack;
pub mod ipam;
pub mod links;
pub mod netlink;
pub mod nflog;
pub mod nft;
pub mod nft_elements;
pub mod nodenet;
pub mod probes;
pub mod process;
pub mod sysctl;
