//! `switchyard module inspect|validate`.

use crate::model::Role;
use crate::registry::source::{Fetcher, ModuleSource};
use crate::registry::{ModuleSpec, Registry, check_description};
use crate::runtime::{HostServices, Limits, Runtime};
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Print a module's describe(), digest, size, imports and exports.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a module against a role and a config; exit 0 if it would load.
    Validate {
        /// The component (.wasm).
        file: PathBuf,
        /// The role it is to be bound to.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The config, as JSON text or @FILE.
        #[arg(long)]
        config: Option<String>,
        /// Require this sha256.
        #[arg(long)]
        sha256: Option<String>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

pub fn run(cmd: ModuleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModuleCommand::Inspect { file, json } => inspect(file, json),
        ModuleCommand::Validate {
            file,
            role,
            config,
            sha256,
        } => validate(file, role, config, sha256),
    }
}

fn inspect(file: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new()?;
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module".into());
    let bytes = Fetcher::default()
        .fetch(&name, &ModuleSource::File(file.clone()), None)
        .map_err(anyhow::Error::from)?;
    let compiled = runtime.compile(&name, &file.display().to_string(), &bytes)?;
    let roles = runtime.detect_roles(&compiled);
    let mut described = None;
    let mut describe_error = None;
    if let Some(role) = roles.first().copied() {
        let bound = runtime.bind(&name, &compiled, role)?;
        let mut s = runtime.session(
            &name,
            &bound,
            &Limits::default(),
            HostServices::default(),
            Arc::new(crate::plan::grants::Grants::for_role(role)),
        );
        match s
            .describe()
            .map_err(|e| e.to_string())
            .and_then(|i| check_description(&name, role, i).map_err(|e| e.to_string()))
        {
            Ok(info) => described = Some(info),
            Err(e) => describe_error = Some(e),
        }
    }
    if json {
        let v = serde_json::json!({
            "file": file,
            "size": compiled.size,
            "sha256": compiled.digest,
            "roles": roles,
            "describe": described,
            "describeError": describe_error,
            "imports": compiled.imports,
            "exports": compiled.exports,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("file:     {}", file.display());
        println!("size:     {} bytes", compiled.size);
        println!("sha256:   {}", compiled.digest);
        match roles.as_slice() {
            [] => println!(
                "world:    none of switchyard:plugin@0.1.0 (cni, service-proxy, scheduler, network-policy)"
            ),
            r => println!(
                "world:    {}",
                r.iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        if let Some(i) = &described {
            println!("describe:");
            println!("  name:        {}", i.name);
            println!("  version:     {}", i.version);
            println!("  role:        {}", i.role);
            println!("  description: {}", i.description);
            let schema = serde_json::to_string_pretty(&i.config_schema)?;
            println!(
                "  config schema:\n{}",
                schema
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        if let Some(e) = &describe_error {
            println!("describe: failed: {e}");
        }
        println!("imports:");
        for i in &compiled.imports {
            println!("  {i}");
        }
        println!("exports:");
        for e in &compiled.exports {
            println!("  {e}");
        }
    }
    Ok(if roles.is_empty() || describe_error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn validate(
    file: PathBuf,
    role: Role,
    config: Option<String>,
    sha256: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = match config.as_deref() {
        None => serde_json::json!({}),
        Some(c) => {
            let text = match c.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {path}"))?,
                None => c.to_string(),
            };
            serde_json::from_str(&text).context("--config is not valid JSON")?
        }
    };
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module".into());
    let registry = Registry::new(
        Runtime::new()?,
        Fetcher::default(),
        HostServices::default(),
        1,
    );
    let mut spec = ModuleSpec::new(&name, role, ModuleSource::File(file));
    spec.config = config;
    spec.sha256 = sha256;
    match registry.prepare(&spec) {
        Ok(active) => {
            println!(
                "ok: {} {} is a valid {role} module (sha256 {}), and the config fits its schema",
                active.info.name,
                active.info.version,
                active.digest()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
