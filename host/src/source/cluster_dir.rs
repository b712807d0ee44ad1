//! A cluster's state in a directory, shared by the lab's agents: the lab's
//! stand-in for the API server.
//!
//! ```text
//! <root>/objects/<Kind>/<namespace or _>/<name>.yaml   desired state (lab apply, lab delete)
//! <root>/status/<Kind>/<namespace or _>/<name>.json    observed state, one writer each
//! ```
//!
//! Why a directory: every agent and the CLI run on one machine; a file per
//! object needs no server to stay up, survives any process's crash, and is
//! easy to read with `cat`. Every write is a rename of a complete file, so a
//! reader never sees half an object. Each status file has exactly one writer
//! (the agent of the node a pod runs on, the agent of a node for its Node),
//! so there are no write conflicts. Every change to an object also rewrites
//! `objects/.changed`, so readers notice it by polling one small file; a
//! slower full fingerprint (paths, sizes and modification times) catches
//! files edited by hand.

use super::local::{ManifestError, Manifests};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ClusterDir {
    root: PathBuf,
}

/// Write a file so that readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn ns_dir(namespace: &str) -> &str {
    if namespace.is_empty() { "_" } else { namespace }
}

impl ClusterDir {
    pub fn open(root: &Path) -> io::Result<ClusterDir> {
        std::fs::create_dir_all(root.join("objects"))?;
        std::fs::create_dir_all(root.join("status"))?;
        Ok(ClusterDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    fn object_path(&self, kind: &str, namespace: &str, name: &str) -> PathBuf {
        self.root
            .join("objects")
            .join(kind)
            .join(ns_dir(namespace))
            .join(format!("{name}.yaml"))
    }

    fn status_path(&self, kind: &str, namespace: &str, name: &str) -> PathBuf {
        self.root
            .join("status")
            .join(kind)
            .join(ns_dir(namespace))
            .join(format!("{name}.json"))
    }

    /// Store (create or replace) one object's manifest.
    pub fn put_object(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        yaml: &str,
    ) -> io::Result<()> {
        write_atomic(&self.object_path(kind, namespace, name), yaml.as_bytes())?;
        self.mark_changed()
    }

    fn marker(&self) -> PathBuf {
        self.root.join("objects").join(".changed")
    }

    /// Tell readers that objects changed (a new nanosecond timestamp).
    fn mark_changed(&self) -> io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        write_atomic(&self.marker(), now.to_string().as_bytes())
    }

    /// Cheap: changes whenever `put_object` or `delete_object` ran.
    pub fn change_marker(&self) -> Option<String> {
        std::fs::read_to_string(self.marker()).ok()
    }

    /// The stored manifest of an object.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.object_path(kind, namespace, name)).ok()
    }

    /// Remove an object; `false` if it did not exist.
    pub fn delete_object(&self, kind: &str, namespace: &str, name: &str) -> io::Result<bool> {
        match std::fs::remove_file(self.object_path(kind, namespace, name)) {
            Ok(()) => self.mark_changed().map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every object, parsed.
    pub fn manifests(&self) -> Result<Manifests, ManifestError> {
        Manifests::load_dir(&self.objects_dir())
    }

    pub fn put_status<T: Serialize>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        status: &T,
    ) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(status).map_err(io::Error::other)?;
        write_atomic(&self.status_path(kind, namespace, name), &bytes)?;
        self.mark_status_changed(kind);
        Ok(())
    }

    fn status_marker_path(&self, kind: &str) -> PathBuf {
        self.root.join("status").join(kind).join(".changed")
    }

    /// Best effort: the marker only speeds readers up (they also resync
    /// periodically), and two threads of one process may race on it.
    fn mark_status_changed(&self, kind: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let _ = write_atomic(&self.status_marker_path(kind), now.to_string().as_bytes());
    }

    /// Cheap: changes whenever a status of `kind` is written or removed (the
    /// EndpointSlice controller watches pods' readiness with it).
    pub fn status_marker(&self, kind: &str) -> Option<String> {
        std::fs::read_to_string(self.status_marker_path(kind)).ok()
    }

    pub fn status<T: DeserializeOwned>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<T> {
        let text = std::fs::read(self.status_path(kind, namespace, name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn delete_status(&self, kind: &str, namespace: &str, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.status_path(kind, namespace, name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            Err(_) => Ok(()),
            Ok(()) => {
                self.mark_status_changed(kind);
                Ok(())
            }
        }
    }

    /// Every status of a kind: (namespace, name, status).
    pub fn statuses<T: DeserializeOwned>(&self, kind: &str) -> Vec<(String, String, T)> {
        let mut out = vec![];
        let Ok(namespaces) = std::fs::read_dir(self.root.join("status").join(kind)) else {
            return out;
        };
        for ns in namespaces.flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                let Some(name) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                if let Some(v) = std::fs::read(&p)
                    .ok()
                    .and_then(|t| serde_json::from_slice(&t).ok())
                {
                    out.push((
                        if ns_name == "_" {
                            String::new()
                        } else {
                            ns_name.clone()
                        },
                        name.to_string(),
                        v,
                    ));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Changes whenever any object or status is written or removed.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        walk(&self.root, &mut |p, m| {
            p.hash(&mut h);
            m.len().hash(&mut h);
            if let Ok(t) = m.modified() {
                t.hash(&mut h);
            }
        });
        h.finish()
    }

    /// Changes whenever an object (not a status) is written or removed.
    pub fn objects_fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        walk(&self.objects_dir(), &mut |p, m| {
            p.hash(&mut h);
            m.len().hash(&mut h);
            if let Ok(t) = m.modified() {
                t.hash(&mut h);
            }
        });
        h.finish()
    }
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path, &std::fs::Metadata)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            walk(&p, f);
        } else {
            f(&p, &m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_statuses_round_trip_and_change_the_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let c = ClusterDir::open(d.path()).unwrap();
        let f0 = c.fingerprint();
        c.put_object("Pod", "default", "web", "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default}\nspec: {containers: [{name: c}]}\n").unwrap();
        let f1 = c.fingerprint();
        assert_ne!(f0, f1);
        assert_eq!(c.manifests().unwrap().pods.len(), 1);
        c.put_status(
            "Pod",
            "default",
            "web",
            &serde_json::json!({"phase": "Running"}),
        )
        .unwrap();
        assert_ne!(c.fingerprint(), f1);
        assert_eq!(c.objects_fingerprint(), {
            let mut h = DefaultHasher::new();
            let _ = &mut h;
            c.objects_fingerprint()
        });
        let s: Vec<(String, String, serde_json::Value)> = c.statuses("Pod");
        assert_eq!(s[0].2["phase"], "Running");
        assert!(c.delete_object("Pod", "default", "web").unwrap());
        assert!(!c.delete_object("Pod", "default", "web").unwrap());
        c.put_object(
            "Node",
            "",
            "node-1",
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n",
        )
        .unwrap();
        assert!(d.path().join("objects/Node/_/node-1.yaml").is_file());
    }
}
