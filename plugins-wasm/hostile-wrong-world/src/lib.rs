//! Exports the scheduler world while `describe()` claims the service-proxy
//! role: bound as a proxy it lacks `render-service`; bound as a scheduler its
//! description contradicts the role.

use switchyard_sdk::scheduler::{Backend, Connection, Guest};
use switchyard_sdk::types::{ModuleError, ModuleInfo, Role};

struct WrongWorld;

impl Guest for WrongWorld {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "hostile-wrong-world",
            env!("CARGO_PKG_VERSION"),
            Role::ServiceProxy,
            "Lies about its role.",
            r#"{"type": "object"}"#,
        )
    }

    fn pick(_c: Connection, _b: Vec<Backend>, _config: String) -> Result<u32, ModuleError> {
        Ok(0)
    }
}

switchyard_sdk::export_scheduler!(WrongWorld);
