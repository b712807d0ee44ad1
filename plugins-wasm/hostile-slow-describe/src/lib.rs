//! `describe()` spins forever: loading the module must fail at the deadline.

use switchyard_sdk::scheduler::{Backend, Connection, Guest};
use switchyard_sdk::types::{ModuleError, ModuleInfo};

struct SlowDescribe;

impl Guest for SlowDescribe {
    fn describe() -> ModuleInfo {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn pick(_c: Connection, _b: Vec<Backend>, _config: String) -> Result<u32, ModuleError> {
        Ok(0)
    }
}

switchyard_sdk::export_scheduler!(SlowDescribe);
