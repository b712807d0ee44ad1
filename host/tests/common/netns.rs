//! Network namespaces for tests: created with `ip netns add`, removed when
//! dropped (also when the test fails), every command bounded by a timeout.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Fail loudly when not root: these tests create namespaces and links.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces; CI runs as root"
    );
}

/// Run a command with a timeout; returns its output.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let mut c = Command::new("timeout");
    c.arg("10").arg(cmd).args(args);
    c.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Run a command that must succeed; returns stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    /// A fresh namespace named `sy-<tag>-<pid>-<n>`, with lo up.
    pub fn new(tag: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sy-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
        }
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(cmd);
        run("ip", &a)
    }

    /// Whether one ping from this namespace to `addr` is answered within 2 s.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", addr])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Wait until `f` holds, for at most `timeout`.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
