//! Where module bytes come from: a file, an http(s) URL (with a required
//! sha256), an OCI artifact pulled by digest, or the agent's built-in
//! modules. Fetched modules are cached on disk by digest, so a node
//! downloads a module once.

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
    /// An OCI artifact pulled by digest: `REGISTRY/REPOSITORY@sha256:<hex>`.
    /// Its manifest must have exactly one Wasm layer.
    Oci(String),
    /// A key of a ConfigMap's `binaryData` in the agents' namespace. The
    /// source of the cluster fills `bytes` in from its view of the
    /// ConfigMap (see `agent::desired_modules`); `None` when it has none.
    ConfigMap {
        name: String,
        key: String,
        #[serde(skip)]
        bytes: Option<Blob>,
    },
}

/// Module bytes carried in a spec; debug-printed by size only.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob(pub Arc<[u8]>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl std::fmt::Display for ModuleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleSource::File(p) => write!(f, "file {}", p.display()),
            ModuleSource::Url(u) => write!(f, "{u}"),
            ModuleSource::Builtin(n) => write!(f, "built-in module {n}"),
            ModuleSource::Oci(r) => write!(f, "OCI artifact {r}"),
            ModuleSource::ConfigMap { name, key, .. } => {
                write!(f, "ConfigMap {name} key {key}")
            }
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
            ModuleSource::Oci(reference) => {
                let r = OciReference::parse(reference).map_err(fetch_err)?;
                self.fetch_oci(&r).map_err(fetch_err)?.to_vec()
            }
            ModuleSource::ConfigMap { name, key, bytes } => match bytes.as_ref().map(|b| &b.0) {
                Some(b) if b.len() as u64 > self.max_bytes => {
                    return Err(fetch_err(format!(
                        "{} bytes, more than the {} a module may have",
                        b.len(),
                        self.max_bytes
                    )));
                }
                Some(b) => {
                    // Kept by digest too: the node has it if the ConfigMap goes.
                    let digest = sha256_hex(b);
                    if self.cached(&digest).is_none() {
                        self.store(&digest, b);
                    }
                    b.to_vec()
                }
                None => {
                    return Err(fetch_err(format!(
                        "no ConfigMap {name:?} with binaryData key {key:?} in the agents' namespace"
                    )));
                }
            },
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
        self.cache_file(digest, "wasm")
    }

    fn cache_file(&self, digest: &str, ext: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("sha256-{digest}.{ext}")))
    }

    /// A cached module, if present and intact.
    fn cached(&self, digest: &str) -> Option<Arc<[u8]>> {
        self.cached_at(self.cache_path(digest)?, digest)
    }

    /// A cached file, if present and hashing to `digest`.
    fn cached_at(&self, p: PathBuf, digest: &str) -> Option<Arc<[u8]>> {
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
        if let Some(p) = self.cache_path(digest) {
            self.store_at(p, digest, bytes);
        }
    }

    fn store_at(&self, p: PathBuf, digest: &str, bytes: &[u8]) {
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

    /// The Wasm layer of an OCI artifact: its manifest and the layer are
    /// verified against their digests and cached by digest, so a second
    /// load does not contact the registry.
    fn fetch_oci(&self, r: &OciReference) -> Result<Arc<[u8]>, String> {
        let deadline = std::time::Instant::now() + self.timeout;
        let manifest = match self
            .cache_file(&r.digest, "manifest.json")
            .and_then(|p| self.cached_at(p, &r.digest))
        {
            Some(m) => m,
            None => {
                let url = r.url(&format!("manifests/sha256:{}", r.digest));
                let m = oci_get(
                    &url,
                    Some(OCI_MANIFEST_ACCEPT),
                    OCI_MAX_MANIFEST_BYTES.min(self.max_bytes),
                    deadline,
                )
                .map_err(|e| format!("fetching manifest sha256:{}: {e}", r.digest))?;
                let got = sha256_hex(&m);
                if got != r.digest {
                    return Err(format!(
                        "the registry's manifest hashes to sha256:{got}, not to the referenced sha256:{}",
                        r.digest
                    ));
                }
                m.into()
            }
        };
        let layer = wasm_layer(&manifest)?;
        if let Some(b) = self.cached(&layer) {
            self.store_manifest(&r.digest, &manifest);
            return Ok(b);
        }
        let url = r.url(&format!("blobs/sha256:{layer}"));
        let b = oci_get(&url, None, self.max_bytes, deadline)
            .map_err(|e| format!("fetching the Wasm layer sha256:{layer}: {e}"))?;
        let got = sha256_hex(&b);
        if got != layer {
            return Err(format!(
                "the registry's Wasm layer hashes to sha256:{got}, not to the layer digest sha256:{layer}"
            ));
        }
        self.store(&layer, &b);
        self.store_manifest(&r.digest, &manifest);
        Ok(b.into())
    }

    fn store_manifest(&self, digest: &str, manifest: &[u8]) {
        if let Some(p) = self.cache_file(digest, "manifest.json")
            && !p.is_file()
        {
            self.store_at(p, digest, manifest);
        }
    }
}

/// Manifest media types asked for: OCI, then Docker v2 schema 2.
const OCI_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Registries refuse manifests larger than 4 MiB; so does the agent.
const OCI_MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Layer media types that hold a Wasm module.
pub const WASM_LAYER_MEDIA_TYPES: [&str; 3] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.module.wasm.content.layer.v1+wasm",
];

/// A parsed `REGISTRY/REPOSITORY[:TAG]@sha256:<hex>` reference (a tag, if
/// present, is ignored: artifacts are pulled by digest only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    /// The manifest's sha256, 64 lowercase hex digits.
    pub digest: String,
}

impl OciReference {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |problem: &str| {
            format!(
                "invalid OCI reference {s:?}: {problem} (expected REGISTRY/REPOSITORY@sha256:<64 hex digits>)"
            )
        };
        let Some((name, digest)) = s.split_once('@') else {
            return Err(bad(
                "it has no digest; modules are pulled by digest only, a tag alone is refused",
            ));
        };
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return Err(bad("the digest must start with \"sha256:\""));
        };
        if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(bad("the digest must be 64 lowercase hexadecimal digits"));
        }
        let Some((registry, path)) = name.split_once('/') else {
            return Err(bad("it names no registry"));
        };
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(&format!(
                "{registry:?} is not a registry host (a registry has a dot or a port, or is localhost)"
            )));
        }
        let host_ok = |h: &str| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        };
        if !host_ok(registry) {
            return Err(bad(&format!("{registry:?} is not a valid registry host")));
        }
        // A tag before the digest is allowed and ignored.
        let repository = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => path,
        };
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| {
                    x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-')
                })
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(&format!(
                "repository {repository:?} must be lowercase letters, digits and . _ - separated by /"
            )));
        }
        Ok(OciReference {
            registry: registry.into(),
            repository: repository.into(),
            digest: hex.into(),
        })
    }

    /// Loopback registries are spoken to over http, others over https.
    pub fn scheme(&self) -> &'static str {
        let host = match self.registry.rsplit_once(':') {
            Some((h, port)) if !port.contains(']') => h,
            _ => &self.registry,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback { "http" } else { "https" }
    }

    /// `<scheme>://<registry>/v2/<repository>/<rest>`.
    pub fn url(&self, rest: &str) -> String {
        format!(
            "{}://{}/v2/{}/{rest}",
            self.scheme(),
            self.registry,
            self.repository
        )
    }
}

/// The digest (hex) of the one Wasm layer of an image manifest.
fn wasm_layer(manifest: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Descriptor {
        media_type: String,
        digest: String,
    }
    let m: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the manifest is not an image manifest: {e}"))?;
    if m.manifests.is_some() {
        return Err(format!(
            "the digest names an image index ({}), not an image manifest; reference the manifest of the Wasm artifact",
            m.media_type.as_deref().unwrap_or("no mediaType")
        ));
    }
    let wasm: Vec<&Descriptor> = m
        .layers
        .iter()
        .filter(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
        .collect();
    let [layer] = wasm.as_slice() else {
        let found: Vec<&str> = m.layers.iter().map(|l| l.media_type.as_str()).collect();
        return Err(format!(
            "the manifest must have exactly one Wasm layer ({}), but it has {} (layer media types: {})",
            WASM_LAYER_MEDIA_TYPES.join(", "),
            wasm.len(),
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        ));
    };
    match layer.digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) => {
            Ok(hex.into())
        }
        _ => Err(format!(
            "the Wasm layer's digest {:?} is not a sha256 digest",
            layer.digest
        )),
    }
}

/// GET from a registry, at most `limit` bytes, before `deadline`.
fn oci_get(
    url: &str,
    accept: Option<&str>,
    limit: u64,
    deadline: std::time::Instant,
) -> Result<Vec<u8>, String> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err("the fetch timed out".into());
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(left))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call().map_err(|e| format!("GET {url} failed: {e}"))?;
    let status = resp.status();
    if status != 200 {
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        let detail = registry_error(&body);
        let hint = match status.as_u16() {
            401 | 403 => "; the registry requires authentication, which is not supported",
            404 => "; no such manifest or blob in this repository",
            _ => "",
        };
        return Err(format!(
            "GET {url}: the registry answered {status}{detail}{hint}"
        ));
    }
    resp.body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| format!("reading {url} failed (limit {limit} bytes): {e}"))
}

/// The first error of a registry's error body, as ` (CODE: message)`.
fn registry_error(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let e = &v["errors"][0];
    match (e["code"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => format!(" ({c}: {m})"),
        (Some(c), None) => format!(" ({c})"),
        _ => String::new(),
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

    #[test]
    fn oci_references_are_pulled_by_digest_only() {
        let d = "ab".repeat(32);
        let r =
            OciReference::parse(&format!("127.0.0.1:5000/switchyard/sched@sha256:{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "switchyard/sched");
        assert_eq!(r.digest, d);
        assert_eq!(
            r.url("manifests/x"),
            "http://127.0.0.1:5000/v2/switchyard/sched/manifests/x"
        );
        let r = OciReference::parse(&format!("ghcr.io/o/m:v1@sha256:{d}")).unwrap();
        assert_eq!(r.repository, "o/m");
        assert_eq!(r.scheme(), "https");
        assert_eq!(
            OciReference::parse(&format!("localhost/m@sha256:{d}"))
                .unwrap()
                .scheme(),
            "http"
        );
        for (bad, problem) in [
            ("ghcr.io/o/m:v1", "a tag alone is refused"),
            ("ghcr.io/o/m@sha256:abc", "64 lowercase hexadecimal"),
            (&format!("ghcr.io/o/m@sha512:{d}") as &str, "\"sha256:\""),
            (&format!("o/m@sha256:{d}"), "not a registry host"),
            (&format!("m@sha256:{d}"), "names no registry"),
            (&format!("ghcr.io/O/m@sha256:{d}"), "lowercase letters"),
        ] {
            let e = OciReference::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains(problem), "{bad}: {e}");
        }
        let e = Fetcher::default()
            .fetch("m", &ModuleSource::Oci("ghcr.io/o/m:v1".into()), None)
            .unwrap_err();
        assert!(matches!(e, LoadError::Fetch { .. }), "{e}");
        assert!(e.to_string().contains("OCI artifact ghcr.io/o/m:v1"), "{e}");
    }

    #[test]
    fn a_manifest_needs_exactly_one_wasm_layer() {
        let layer =
            |t: &str, d: &str| format!(r#"{{"mediaType":"{t}","digest":"sha256:{d}","size":1}}"#);
        let manifest =
            |layers: &[String]| format!(r#"{{"schemaVersion":2,"layers":[{}]}}"#, layers.join(","));
        let d = "0".repeat(64);
        assert_eq!(
            wasm_layer(
                manifest(&[
                    layer("text/plain", &"1".repeat(64)),
                    layer("application/wasm", &d)
                ])
                .as_bytes()
            ),
            Ok(d.clone())
        );
        let e = wasm_layer(
            manifest(&[layer("application/vnd.oci.image.layer.v1.tar+gzip", &d)]).as_bytes(),
        )
        .unwrap_err();
        assert!(
            e.contains("has 0") && e.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
            "{e}"
        );
        let two = [
            layer("application/wasm", &d),
            layer("application/vnd.wasm.content.layer.v1+wasm", &d),
        ];
        assert!(
            wasm_layer(manifest(&two).as_bytes())
                .unwrap_err()
                .contains("has 2")
        );
        let e = wasm_layer(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#).unwrap_err();
        assert!(e.contains("image index"), "{e}");
    }
}
