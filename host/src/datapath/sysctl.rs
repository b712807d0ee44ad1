//! Sysctls the datapath needs, written through `/proc/sys` of the calling
//! thread's network namespace.

/// Turn on br_netfilter's hooks for IPv4 and IPv6 in this network
/// namespace: traffic between pods of one node crosses the node's bridge,
/// and without them it never reaches the policy table.
pub fn enable_bridge_netfilter() -> Result<(), String> {
    for f in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let path = format!("/proc/sys/net/bridge/{f}");
        std::fs::write(&path, "1").map_err(|e| {
            format!(
                "writing {path}: {e} (is the br_netfilter module loaded? NetworkPolicy between pods of one node needs it)"
            )
        })?;
    }
    Ok(())
}
