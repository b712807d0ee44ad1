//! Conntrack entries deleted through the `conntrack` tool
//! (conntrack-tools), behind a trait the proxy calls and tests record.

use std::net::IpAddr;

/// Entries to delete: UDP to `orig_dst` (any local address for a NodePort)
/// and `port`, answered by `reply_src` (any, for entries that were never
/// NATed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    pub orig_dst: Option<IpAddr>,
    pub port: u16,
    pub reply_src: Option<IpAddr>,
    pub ipv6: bool,
}

/// Deletes conntrack entries.
pub trait Conntrack: Send + Sync {
    /// Delete the entries matching `flow`; how many there were.
    fn delete(&self, flow: &Flow) -> Result<usize, String>;
}

/// The `conntrack` tool (conntrack-tools), in the agent's namespace or in
/// the named one.
#[derive(Debug, Default)]
pub struct ConntrackTool {
    pub netns: Option<String>,
}

impl Conntrack for ConntrackTool {
    fn delete(&self, flow: &Flow) -> Result<usize, String> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "conntrack"]);
                c
            }
            None => std::process::Command::new("conntrack"),
        };
        cmd.args([
            "-D",
            "-f",
            if flow.ipv6 { "ipv6" } else { "ipv4" },
            "-p",
            "udp",
        ]);
        if let Some(d) = flow.orig_dst {
            cmd.args(["--orig-dst", &d.to_string()]);
        }
        cmd.args(["--orig-port-dst", &flow.port.to_string()]);
        if let Some(s) = flow.reply_src {
            cmd.args(["--reply-src", &s.to_string()]);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("running conntrack: {e} (is the conntrack package installed?)"))?;
        // "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted."
        // (exit status 1 when there were none).
        let text = String::from_utf8_lossy(&out.stderr);
        text.split(':')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("conntrack: {}", text.trim()))
    }
}
