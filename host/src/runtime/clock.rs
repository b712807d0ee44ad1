//! The monotonic clock modules see, with every wait bounded by the call's
//! deadline.
//!
//! The epoch deadline interrupts guest code, but a guest that sleeps
//! (`std::thread::sleep` is `subscribe-duration` then `pollable.block`) runs
//! no code while it waits: WASI's own clock would hold the host thread for
//! as long as the guest asked, and the caller (a sync of every Service, a CNI
//! ADD) with it. Here a wait never outlasts the call: a timer is cut at the
//! deadline, the guest resumes, and the epoch check traps it at once. Sleeps
//! that end within the deadline behave as in WASI.

use super::state::HostState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

/// A timer that fires at `at` (a `tokio` instant: WASI's pollables are
/// driven by the tokio runtime wasmtime-wasi runs them on). A timer cut at
/// the deadline that fires says so in `overran`: the guest waited until its
/// call's end, and the call fails as over its deadline even if the epoch
/// check has not caught it yet.
struct Timer {
    at: Option<tokio::time::Instant>,
    cut: Option<Arc<AtomicBool>>,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Timer {
    async fn ready(&mut self) {
        if let Some(at) = self.at {
            tokio::time::sleep_until(at).await;
        }
        if let Some(overran) = &self.cut {
            overran.store(true, Ordering::Relaxed);
        }
    }
}

/// The clock's view of one store: its resources, when the running call
/// must end, and the origin of its instants.
pub(crate) struct BoundedClock<'a> {
    table: &'a mut ResourceTable,
    deadline: Option<Instant>,
    overran: Arc<AtomicBool>,
    origin: Instant,
}

impl BoundedClock<'_> {
    /// A pollable that is ready after `wait`, or at the call's deadline if
    /// that comes first.
    fn timer(&mut self, wait: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let now = Instant::now();
        let left = self.deadline.map(|d| d.saturating_duration_since(now));
        let cut = left.is_some_and(|left| left < wait);
        let wait = left.map_or(wait, |left| wait.min(left));
        let at = if wait.is_zero() {
            None
        } else {
            tokio::time::Instant::now().checked_add(wait)
        };
        let t = self.table.push(Timer {
            at,
            cut: cut.then(|| self.overran.clone()),
        })?;
        subscribe(self.table, t)
    }
}

impl monotonic_clock::Host for BoundedClock<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(self.origin.elapsed().as_nanos() as u64)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.origin.elapsed().as_nanos() as u64;
        self.timer(Duration::from_nanos(when.saturating_sub(now)))
    }

    fn subscribe_duration(
        &mut self,
        duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.timer(Duration::from_nanos(duration))
    }
}

struct HasClock;

impl HasData for HasClock {
    type Data<'a> = BoundedClock<'a>;
}

/// Replace WASI's monotonic clock in `linker` (after
/// `wasmtime_wasi::p2::add_to_linker_sync`) with the bounded one.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<HostState, HasClock>(linker, |s| s.clock())?;
    linker.allow_shadowing(false);
    Ok(())
}

impl HostState {
    fn clock(&mut self) -> BoundedClock<'_> {
        BoundedClock {
            deadline: self.call.deadline,
            overran: self.call.overran.clone(),
            origin: self.clock_origin,
            table: &mut self.table,
        }
    }
}
