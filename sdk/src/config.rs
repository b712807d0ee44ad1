//! Module configuration.
//!
//! The host validates a module's config against the JSON Schema the module
//! returns from `describe()` before it binds the module, and passes the config
//! as JSON text to every call. [`parse`] turns it into the module's own type.
//!
//! ```
//! use serde::Deserialize;
//!
//! #[derive(Deserialize, Default)]
//! #[serde(rename_all = "camelCase", default)]
//! struct Config { max_latency_ms: Option<u32> }
//!
//! let c: Config = switchyard_sdk::config::parse(r#"{"maxLatencyMs": 20}"#).unwrap();
//! assert_eq!(c.max_latency_ms, Some(20));
//! let c: Config = switchyard_sdk::config::parse("").unwrap();
//! assert_eq!(c.max_latency_ms, None);
//! ```

use crate::types::ModuleError;
use serde::de::DeserializeOwned;

/// Parse the config text; an empty string is read as `{}`.
pub fn parse<T: DeserializeOwned>(config: &str) -> Result<T, ModuleError> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(text)
        .map_err(|e| ModuleError::InvalidConfig(format!("config does not fit this module: {e}")))
}

/// A JSON Schema that accepts only the empty object, for modules without config.
pub const NO_CONFIG_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","additionalProperties":false}"#;
