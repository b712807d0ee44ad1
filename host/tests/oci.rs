//! Modules pulled from an OCI registry by digest, against a real registry
//! (Debian's `docker-registry`, the CNCF distribution) on loopback. No root
//! needed.

mod common;

use common::registry::{LocalRegistry, http as agent};
use common::*;
use std::path::Path;
use std::sync::Arc;
use switchyard::model::Role;
use switchyard::registry::Registry;
use switchyard::registry::source::{Fetcher, ModuleSource};
use switchyard::runtime::{HostServices, LoadError, sha256_hex};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

impl LocalRegistry {
    /// Upload a blob (POST, then a monolithic PUT); returns its digest.
    fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let r = agent()
            .post(&format!("{}/v2/{repo}/blobs/uploads/", self.base()))
            .send_empty()
            .unwrap();
        assert_eq!(r.status(), 202, "starting an upload");
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base())
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = agent()
            .put(&format!("{location}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap();
        assert_eq!(r.status(), 201, "finishing the upload of {digest}");
        digest
    }

    /// Push a manifest with the empty config and these layers (media type,
    /// bytes); returns the manifest's digest.
    fn push_artifact(&self, repo: &str, layers: &[(&str, &[u8])]) -> String {
        let config = self.push_blob(repo, b"{}");
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(media_type, bytes)| {
                serde_json::json!({
                    "mediaType": media_type,
                    "digest": self.push_blob(repo, bytes),
                    "size": bytes.len(),
                })
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": layers,
        }))
        .unwrap();
        let digest = format!("sha256:{}", sha256_hex(&manifest));
        let mut r = agent()
            .put(&format!("{}/v2/{repo}/manifests/{digest}", self.base()))
            .header("Content-Type", OCI_MANIFEST)
            .send(&manifest[..])
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "pushing the manifest: {}",
            r.body_mut().read_to_string().unwrap_or_default()
        );
        digest
    }
}

/// A registry of modules caching fetched modules in `cache`.
fn registry(cache: &Path) -> Arc<Registry> {
    let fetcher = Fetcher {
        cache_dir: Some(cache.to_path_buf()),
        ..Fetcher::default()
    };
    Registry::new(runtime(), fetcher, HostServices::default(), 2)
}

fn module_bytes(name: &str) -> Vec<u8> {
    let (_, path) = switchyard::modules::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{name} is not among the built modules"));
    std::fs::read(path).unwrap()
}

fn oci(reference: &str) -> switchyard::registry::ModuleSpec {
    let mut spec = builtin("sched", "-", Role::Scheduler);
    spec.source = ModuleSource::Oci(reference.into());
    spec
}

#[test]
fn a_module_is_pulled_by_digest_verified_and_cached() {
    let reg = LocalRegistry::start();
    let wasm = module_bytes("example-scheduler");
    let layer = sha256_hex(&wasm);
    let repo = "switchyard/example-scheduler";
    let digest = reg.push_artifact(repo, &[("application/wasm", &wasm)]);
    let reference = format!("{}/{repo}@{digest}", reg.addr);
    let cache = tempfile::tempdir().unwrap();

    let modules = registry(cache.path());
    let active = modules.apply(oci(&reference)).unwrap();
    assert_eq!(active.info.name, "least-latency");
    assert_eq!(active.digest(), layer);
    assert!(cache.path().join(format!("sha256-{layer}.wasm")).is_file());

    // A manifest that does not exist: a fetch error naming the reference.
    let missing = format!("{}/{repo}@sha256:{}", reg.addr, "0".repeat(64));
    let e = registry(cache.path()).apply(oci(&missing)).unwrap_err();
    assert!(matches!(e, LoadError::Fetch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("OCI artifact {missing}")) && msg.contains("404"),
        "{msg}"
    );

    // A manifest without a Wasm layer is refused, naming what it has.
    let tar = "application/vnd.oci.image.layer.v1.tar+gzip";
    let no_wasm = reg.push_artifact(repo, &[(tar, b"not wasm")]);
    let e = registry(cache.path())
        .apply(oci(&format!("{}/{repo}@{no_wasm}", reg.addr)))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("exactly one Wasm layer") && msg.contains(tar) && msg.contains(&no_wasm),
        "{msg}"
    );

    // Two Wasm layers are ambiguous.
    let two = reg.push_artifact(
        repo,
        &[
            ("application/wasm", &wasm),
            ("application/vnd.wasm.content.layer.v1+wasm", &wasm),
        ],
    );
    let e = registry(cache.path())
        .apply(oci(&format!("{}/{repo}@{two}", reg.addr)))
        .unwrap_err();
    assert!(e.to_string().contains("but it has 2"), "{e}");

    // The registry is gone: a fresh registry of modules sharing the cache
    // loads the module without it, and still checks a sha256 given too.
    drop(reg);
    let modules = registry(cache.path());
    let mut spec = oci(&reference);
    spec.sha256 = Some(format!("sha256:{layer}"));
    let active = modules.apply(spec.clone()).unwrap();
    assert_eq!(active.info.name, "least-latency");
    spec.sha256 = Some("1".repeat(64));
    spec.generation = 2;
    let e = modules.apply(spec).unwrap_err();
    assert!(matches!(e, LoadError::DigestMismatch { .. }), "{e}");
}
