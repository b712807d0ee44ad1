//! Network namespaces for the datapath benchmarks: commands, entering one,
//! and removing what a killed earlier run left behind.

use anyhow::{Context, ensure};
use std::path::PathBuf;
use std::process::Command;

/// Run a command; its stdout, or an error with its stderr.
pub fn run(cmd: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("running {}", cmd[0]))?;
    ensure!(
        o.status.success(),
        "{}: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{name}"))
}

/// Move this thread into namespace `ns`.
pub fn enter(ns: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(path(ns)).with_context(|| format!("opening netns {ns}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering netns {ns}"))
}

/// Namespaces named `<prefix><pid>-...` whose process is gone (a run that
/// was killed), with the processes still in them (iperf3 servers).
pub fn remove_stale(prefix: &str) {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(o) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = p.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
}
