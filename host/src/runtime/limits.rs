//! Per-call sandbox limits and the memory limiter that enforces the cap.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Limits applied to every call into a module. Defaults suit a render call;
/// operators change them per module in the NetworkModule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Limits {
    /// Wall-clock deadline of one call (enforced by epoch interruption).
    #[serde(with = "millis", rename = "deadlineMs")]
    pub deadline: Duration,
    /// Cap on the module's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Instruction budget of one call, if the module is metered.
    pub fuel: Option<u64>,
    /// Bytes of data the host may copy out of the module in one call
    /// (results and host-call arguments).
    pub max_output_bytes: usize,
    /// Log bytes one call may write through the `log` import.
    pub max_log_bytes: usize,
    /// Log records one call may write.
    pub max_log_records: usize,
    /// Bytes of stdout and of stderr kept per call (the rest is dropped).
    pub max_stdio_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            fuel: None,
            max_output_bytes: 16 << 20,
            max_log_bytes: 1 << 20,
            max_log_records: 10_000,
            max_stdio_bytes: 16 << 10,
        }
    }
}

impl Limits {
    /// The defaults for a role. A CNI call waits on the kernel (links,
    /// addresses, an fsynced ledger) through its host calls, and runtimes
    /// give a CNI ADD minutes; render calls are pure computation.
    pub fn for_role(role: crate::model::Role) -> Limits {
        match role {
            crate::model::Role::Cni => Limits {
                deadline: Duration::from_secs(10),
                ..Limits::default()
            },
            _ => Limits::default(),
        }
    }

    /// The hard ceilings the host accepts for any module.
    pub fn validate(&self) -> Result<(), String> {
        if self.deadline.is_zero() || self.deadline > Duration::from_secs(30) {
            return Err(format!(
                "deadlineMs must be between 1 and 30000, not {}",
                self.deadline.as_millis()
            ));
        }
        if !(1 << 20..=4 << 30).contains(&self.memory_bytes) {
            return Err(format!(
                "memoryBytes must be between 1 MiB and 4 GiB, not {}",
                self.memory_bytes
            ));
        }
        if self.fuel == Some(0) {
            return Err("fuel must be positive when set".into());
        }
        if self.max_output_bytes < 4096 {
            return Err("maxOutputBytes must be at least 4096".into());
        }
        Ok(())
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// The memory cap was hit: raised from `memory.grow` so the call traps with
/// this as its cause.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (the module asked for {requested} bytes)")]
pub struct MemoryLimitExceeded {
    pub limit: usize,
    pub requested: usize,
}

/// Enforces [`Limits::memory_bytes`] on every memory and caps table growth.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub memory_cap: usize,
    pub peak: usize,
}

/// Tables hold function references; no honest module needs more.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            return Err(MemoryLimitExceeded {
                limit: self.memory_cap,
                requested: desired,
            }
            .into());
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
