//! Programs run in a pod's network namespace (an exec probe's command),
//! with a deadline.

use std::time::Duration;

/// Why a command could not be run to its end.
#[derive(Debug)]
pub enum ExecError {
    /// It could not be started.
    Start(std::io::Error),
    /// It did not end within its deadline (it was killed).
    TimedOut,
    /// Its end could not be waited for.
    Wait(std::io::Error),
}

/// Run `prog args` in the network namespace `netns` (a name under
/// /var/run/netns) through `ip netns exec`, killed after `timeout`.
pub async fn exec_in_netns(
    netns: &str,
    prog: &str,
    args: &[String],
    timeout: Duration,
) -> Result<std::process::Output, ExecError> {
    let child = tokio::process::Command::new("ip")
        .args(["netns", "exec", netns, prog])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(ExecError::Start)?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(ExecError::TimedOut),
        Ok(r) => r.map_err(ExecError::Wait),
    }
}
