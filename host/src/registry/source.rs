//! Where module bytes come from: a file, an http(s) URL (with a required
//! sha256), or the agent's built-in modules. Fetched modules are cached on
//! disk by digest, so a node downloads a module once.

use crate::runtime::{LoadError, sha256_hex};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ModuleSource {
    /// A file on the node.
    File(PathBuf),
    /// An http or https URL. A sha256 is required.
    Url(String),
    /// A module compiled into the agent (`plugins-wasm/<name>`).
    Builtin(String),
}

impl std::fmt::Display for ModuleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleSource::File(p) => write!(f, "file {}", p.display()),
            ModuleSource::Url(u) => write!(f, "{u}"),
            ModuleSource::Builtin(n) => write!(f, "built-in module {n}"),
        }
    }
}

/// Normalize a sha256 as given by a user: 64 hex digits, optionally after
/// `sha256:`, any case.
pub fn parse_sha256(module: &str, s: &str) -> Result<String, LoadError> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(LoadError::InvalidDigest {
            module: module.into(),
            reason: format!(
                "sha256 {s:?} must be 64 hexadecimal digits (optionally prefixed with \"sha256:\")"
            ),
        });
    }
    Ok(hex)
}

/// A built-in module: compiled into the agent, or (test modules) a file the
/// build produced.
#[derive(Debug, Clone)]
pub enum Builtin {
    Embedded(&'static [u8]),
    File(PathBuf),
}

/// Fetches and caches module bytes.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Where fetched modules are kept by digest (`sha256-<hex>.wasm`).
    pub cache_dir: Option<PathBuf>,
    /// Largest module accepted.
    pub max_bytes: u64,
    pub timeout: Duration,
    /// Built-in modules by name.
    pub builtins: Vec<(String, Builtin)>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher {
            cache_dir: None,
            max_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            builtins: crate::modules::ALL
                .iter()
                .map(|(name, path)| {
                    let b = match crate::modules::EMBEDDED.iter().find(|(n, _)| n == name) {
                        Some((_, bytes)) => Builtin::Embedded(bytes),
                        None => Builtin::File(PathBuf::from(path)),
                    };
                    (name.to_string(), b)
                })
                .collect(),
        }
    }
}

impl Fetcher {
    /// The bytes of a module, checked against `sha256` when given (and it
    /// must be given for a URL).
    pub fn fetch(
        &self,
        module: &str,
        source: &ModuleSource,
        sha256: Option<&str>,
    ) -> Result<Arc<[u8]>, LoadError> {
        let want = sha256.map(|s| parse_sha256(module, s)).transpose()?;
        let fetch_err = |reason: String| LoadError::Fetch {
            module: module.into(),
            origin: source.to_string(),
            reason,
        };
        let bytes: Vec<u8> = match source {
            ModuleSource::File(p) => read_limited(p, self.max_bytes).map_err(fetch_err)?,
            ModuleSource::Builtin(name) => {
                let Some((_, b)) = self.builtins.iter().find(|(n, _)| n == name) else {
                    let names: Vec<&str> = self.builtins.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(fetch_err(format!(
                        "no such built-in module (built-in: {})",
                        names.join(", ")
                    )));
                };
                match b {
                    Builtin::Embedded(bytes) => bytes.to_vec(),
                    Builtin::File(p) => read_limited(p, self.max_bytes).map_err(fetch_err)?,
                }
            }
            ModuleSource::Url(url) => {
                let Some(want) = &want else {
                    return Err(LoadError::InvalidDigest {
                        module: module.into(),
                        reason: format!("a sha256 is required to load a module from {url}"),
                    });
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(fetch_err(
                        "only http:// and https:// URLs are supported".into(),
                    ));
                }
                if let Some(b) = self.cached(want) {
                    return Ok(b);
                }
                let b = self.download(url).map_err(fetch_err)?;
                let got = sha256_hex(&b);
                if &got != want {
                    return Err(LoadError::DigestMismatch {
                        module: module.into(),
                        expected: want.clone(),
                        actual: got,
                    });
                }
                self.store(want, &b);
                b
            }
        };
        if let Some(want) = want {
            let got = sha256_hex(&bytes);
            if got != want {
                return Err(LoadError::DigestMismatch {
                    module: module.into(),
                    expected: want,
                    actual: got,
                });
            }
        }
        Ok(bytes.into())
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("sha256-{digest}.wasm")))
    }

    /// A cached module, if present and intact.
    fn cached(&self, digest: &str) -> Option<Arc<[u8]>> {
        let p = self.cache_path(digest)?;
        let b = std::fs::read(&p).ok()?;
        if sha256_hex(&b) == digest {
            Some(b.into())
        } else {
            // A torn or tampered cache entry: drop it and fetch again.
            let _ = std::fs::remove_file(&p);
            None
        }
    }

    fn store(&self, digest: &str, bytes: &[u8]) {
        let Some(p) = self.cache_path(digest) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(p.parent().expect("cache files live in a directory"))?;
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &p)
        };
        if let Err(e) = write() {
            tracing::warn!("could not cache module {digest} in {}: {e}", p.display());
        }
    }

    fn download(&self, url: &str) -> Result<Vec<u8>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(url)
            .call()
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        if status != 200 {
            return Err(format!("the server answered {status}"));
        }
        resp.body_mut()
            .with_config()
            .limit(self.max_bytes)
            .read_to_vec()
            .map_err(|e| {
                format!(
                    "reading the body failed (limit {} bytes): {e}",
                    self.max_bytes
                )
            })
    }
}

fn read_limited(p: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!(
            "{} bytes is more than the limit of {max}",
            meta.len()
        ));
    }
    std::fs::read(p).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_normalized_and_checked() {
        let d = "A".repeat(64);
        assert_eq!(
            parse_sha256("m", &format!("sha256:{d}")).unwrap(),
            "a".repeat(64)
        );
        let e = parse_sha256("m", "abc").unwrap_err().to_string();
        assert!(e.contains("64 hexadecimal digits"), "{e}");
    }

    #[test]
    fn a_file_with_the_wrong_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.wasm");
        std::fs::write(&p, b"not a module").unwrap();
        let f = Fetcher::default();
        let e = f
            .fetch("m", &ModuleSource::File(p.clone()), Some(&"0".repeat(64)))
            .unwrap_err();
        assert!(matches!(e, LoadError::DigestMismatch { .. }), "{e}");
        let ok = f
            .fetch(
                "m",
                &ModuleSource::File(p),
                Some(&sha256_hex(b"not a module")),
            )
            .unwrap();
        assert_eq!(&*ok, b"not a module");
    }

    #[test]
    fn urls_need_a_digest() {
        let e = Fetcher::default()
            .fetch(
                "m",
                &ModuleSource::Url("http://127.0.0.1:1/m.wasm".into()),
                None,
            )
            .unwrap_err();
        assert!(e.to_string().contains("a sha256 is required"), "{e}");
    }
}
