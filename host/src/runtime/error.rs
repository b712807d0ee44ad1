//! Errors of loading and calling modules. Every message names the module and
//! says what happened and what to do about it.

use std::time::Duration;

/// A module could not be loaded or bound to a role.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "module {module}: {origin} is not a WebAssembly component: {reason}; build it for wasm32-wasip2 (a core module or another format cannot be loaded)"
    )]
    NotAComponent {
        module: String,
        origin: String,
        reason: String,
    },
    #[error(
        "module {module}: its sha256 is {actual}, but {expected} was required; the file changed or the digest in the NetworkModule is wrong"
    )]
    DigestMismatch {
        module: String,
        expected: String,
        actual: String,
    },
    #[error("module {module}: {reason}")]
    InvalidDigest { module: String, reason: String },
    #[error("module {module}: cannot read {origin}: {reason}")]
    Fetch {
        module: String,
        origin: String,
        reason: String,
    },
    #[error(
        "module {module} imports {import}, which the {role} role does not provide; a {role} module may import only {allowed} and WASI"
    )]
    ForbiddenImport {
        module: String,
        role: String,
        import: String,
        allowed: String,
    },
    #[error(
        "module {module} was built for contract version {theirs} ({import}); this agent speaks switchyard:plugin@{ours}: build it with a switchyard-sdk of contract {ours}, or upgrade the agent"
    )]
    ContractVersion {
        module: String,
        import: String,
        theirs: String,
        ours: String,
    },
    #[error(
        "module {module} does not export the {role} world: {reason}; build it with the switchyard-sdk `{role}` feature"
    )]
    WrongWorld {
        module: String,
        role: String,
        reason: String,
    },
    #[error(
        "module {module}: compiling {origin} ({size} bytes) did not finish within the compile deadline of {deadline_ms} ms{busy}; the agent goes on with the modules it has (raise --compile-deadline-ms for a module this big)"
    )]
    CompileDeadline {
        module: String,
        origin: String,
        size: usize,
        deadline_ms: u64,
        /// Why, when it never started: the compile slots were taken.
        busy: String,
    },
    #[error("module {module}: describe() failed: {source}")]
    Describe {
        module: String,
        #[source]
        source: Box<CallError>,
    },
    #[error("module {module} describes itself as role {described}, but it is bound to role {role}")]
    RoleMismatch {
        module: String,
        described: String,
        role: String,
    },
    #[error("module {module}: describe() returned {field} {value:?}: {reason}")]
    BadDescription {
        module: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("module {module}: its config schema is not a valid JSON Schema: {reason}")]
    BadSchema { module: String, reason: String },
    #[error("module {module}: config does not fit the module's schema: {reason}")]
    BadConfig { module: String, reason: String },
    #[error("module {module}: limits: {reason}")]
    BadLimits { module: String, reason: String },
    #[error("module {module}: {reason}")]
    Engine { module: String, reason: String },
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum CallErrorKind {
    /// The call ran past its wall-clock deadline and was interrupted.
    Deadline { limit_ms: u64 },
    /// The module tried to grow its memory past the cap.
    Memory { limit: usize, requested: usize },
    /// The module used up its instruction budget.
    Fuel { limit: u64 },
    /// The module recursed too deep.
    StackOverflow,
    /// The module trapped (a panic, an abort, an out-of-bounds access...).
    Trap { trap: String },
    /// The module returned more data than the host accepts from one call.
    Output { limit: usize },
    /// The module logged more than one call's budget.
    LogBudget {
        max_bytes: usize,
        max_records: usize,
    },
    /// A host function refused the module's arguments (an invalid CIDR, an
    /// unknown pool, an interface outside the grant).
    HostCall { message: String },
    /// The module returned an error on purpose.
    Module { message: String },
    /// The module returned a result the host rejects (a plan outside its
    /// grants, an invalid value).
    InvalidResult { message: String },
    /// The module could not be instantiated.
    Instantiate { message: String },
    /// Anything else the runtime reported.
    Internal { message: String },
}

impl std::fmt::Display for CallErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallErrorKind::Deadline { limit_ms } => write!(
                f,
                "deadline of {limit_ms} ms exceeded; the call was interrupted"
            ),
            CallErrorKind::Memory { limit, requested } => {
                write!(
                    f,
                    "memory limit of {} exceeded (asked for {})",
                    bytes(*limit),
                    bytes(*requested)
                )
            }
            CallErrorKind::Fuel { limit } => write!(f, "fuel of {limit} instructions used up"),
            CallErrorKind::StackOverflow => write!(f, "call stack exhausted (recursion too deep)"),
            CallErrorKind::Trap { trap } => write!(f, "trapped: {trap}"),
            CallErrorKind::Output { limit } => write!(
                f,
                "returned more than {} of data in one call",
                bytes(*limit)
            ),
            CallErrorKind::LogBudget {
                max_bytes,
                max_records,
            } => {
                write!(
                    f,
                    "logged more than {} or {max_records} records in one call",
                    bytes(*max_bytes)
                )
            }
            CallErrorKind::HostCall { message } => write!(f, "{message}"),
            CallErrorKind::Module { message } => write!(f, "returned an error: {message}"),
            CallErrorKind::InvalidResult { message } => {
                write!(f, "returned an invalid result: {message}")
            }
            CallErrorKind::Instantiate { message } => {
                write!(f, "could not be instantiated: {message}")
            }
            CallErrorKind::Internal { message } => write!(f, "{message}"),
        }
    }
}

fn bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// A failed call into a module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
pub struct CallError {
    pub module: String,
    pub function: String,
    /// The object the call was about, if any (`Service default/web`).
    pub object: Option<String>,
    pub kind: CallErrorKind,
    #[serde(with = "duration_us")]
    pub elapsed: Duration,
    /// The end of what the module wrote to stderr (a panic message, usually).
    pub stderr: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "module {}: {}", self.module, self.function)?;
        if let Some(o) = &self.object {
            write!(f, " for {o}")?;
        }
        write!(
            f,
            " {} (after {:.1} ms)",
            self.kind,
            self.elapsed.as_secs_f64() * 1e3
        )?;
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            let tail: String = stderr
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            write!(f, "; stderr: {tail}")?;
        }
        Ok(())
    }
}

mod duration_us {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }
}
