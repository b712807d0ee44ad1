//! The `switchyard` command line.

mod module;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A WebAssembly-extensible Kubernetes network controller"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and validate network modules.
    #[command(subcommand)]
    Module(module::ModuleCommand),
}

/// Run the CLI; the exit code is 0 on success, 1 when the command failed
/// (an invalid module, say) and 2 on a usage error.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let r = match cli.command {
        Command::Module(m) => module::run(m),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
