//! `switchyard-cni`: the plugin binary a container runtime execs (from
//! `/opt/cni/bin`) for every pod. It answers VERSION itself, checks the
//! request, forwards it to the agent on this node and prints the spec's
//! result or error JSON. Exit status 0 on success, 1 on an error.

use std::io::{Read, Write};
use std::process::ExitCode;
use switchyard_cni::{AGENT_TIMEOUT, Command, Error, LATEST, code};

fn main() -> ExitCode {
    let mut stdin = vec![];
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Err(e) => Err((
            LATEST.to_string(),
            Error::new(
                code::IO,
                format!("reading the network configuration from stdin: {e}"),
            ),
        )),
        Ok(_) => run(&stdin),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err((version, e)) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            ExitCode::from(1)
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<serde_json::Value>, (String, Error)> {
    let env =
        switchyard_cni::read_env(|k| std::env::var(k).ok()).map_err(|e| (LATEST.to_string(), e))?;
    if env.command == Command::Version {
        let config = switchyard_cni::parse_config(stdin).ok();
        return Ok(Some(switchyard_cni::version_output(config.as_ref())));
    }
    let req = switchyard_cni::validate(env, stdin)?;
    let socket = switchyard_cni::socket_path(&req.config);
    let version = req.cni_version.clone();
    switchyard_cni::call_agent(&socket, &req, AGENT_TIMEOUT).map_err(|e| (version, e))
}
