//! The local source: Kubernetes manifests read from a directory into the
//! model's [`Manifests`], for an agent that runs without Kubernetes. The same
//! YAML goes to a cluster.

use crate::model::crd::{API_VERSION, ClusterNetworkSpec, NetworkModuleSpec};
use crate::model::snapshot::{ClusterNetwork, Manifests, NetworkModule};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A manifest that could not be read, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), document.map(|d| format!(" (document {d})")).unwrap_or_default())]
pub struct ManifestError {
    pub file: PathBuf,
    pub document: Option<usize>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
struct ModuleDoc {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: NetworkModuleSpec,
}

#[derive(Deserialize)]
struct ClusterNetworkDoc {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default)]
    spec: ClusterNetworkSpec,
}

impl Manifests {
    /// Read every `.yaml`, `.yml` and `.json` file under `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<Manifests, ManifestError> {
        let mut files = vec![];
        collect(dir, &mut files).map_err(|e| ManifestError {
            file: dir.to_path_buf(),
            document: None,
            message: e.to_string(),
        })?;
        files.sort();
        let mut m = Manifests::default();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| ManifestError {
                file: f.clone(),
                document: None,
                message: e.to_string(),
            })?;
            m.add_text(&f, &text)?;
        }
        Ok(m)
    }

    /// Add the documents of one YAML (or JSON) text.
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), ManifestError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let err = |message: String| ManifestError {
                file: file.to_path_buf(),
                document: Some(i + 1),
                message,
            };
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let h: Header =
                serde_yaml::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
            match (h.api_version.as_str(), h.kind.as_str()) {
                ("v1", "Node") => self
                    .nodes
                    .push(serde_yaml::from_value(value).map_err(|e| err(format!("Node: {e}")))?),
                ("v1", "Pod") => self.pods.push(Arc::new(
                    serde_yaml::from_value(value).map_err(|e| err(format!("Pod: {e}")))?,
                )),
                ("v1", "Namespace") => self.namespaces.push(
                    serde_yaml::from_value(value).map_err(|e| err(format!("Namespace: {e}")))?,
                ),
                ("v1", "ConfigMap") => self.config_maps.push(
                    serde_yaml::from_value(value).map_err(|e| err(format!("ConfigMap: {e}")))?,
                ),
                ("v1", "Service") => self
                    .services
                    .push(serde_yaml::from_value(value).map_err(|e| err(format!("Service: {e}")))?),
                ("discovery.k8s.io/v1", "EndpointSlice") => self.endpoint_slices.push(
                    serde_yaml::from_value(value)
                        .map_err(|e| err(format!("EndpointSlice: {e}")))?,
                ),
                ("networking.k8s.io/v1", "NetworkPolicy") => self.network_policies.push(
                    serde_yaml::from_value(value)
                        .map_err(|e| err(format!("NetworkPolicy: {e}")))?,
                ),
                (API_VERSION, "WasmNetworkPolicy") => {
                    self.wasm_network_policies.push(
                        serde_yaml::from_value(value)
                            .map_err(|e| err(format!("WasmNetworkPolicy: {e}")))?,
                    );
                }
                (API_VERSION, "ClusterNetwork") => {
                    let d: ClusterNetworkDoc = serde_yaml::from_value(value)
                        .map_err(|e| err(format!("ClusterNetwork: {e}")))?;
                    let name = d.metadata.name.ok_or_else(|| {
                        err("ClusterNetwork: metadata.name: Required value".into())
                    })?;
                    self.cluster_networks.push(ClusterNetwork {
                        name,
                        generation: d.metadata.generation.unwrap_or(1),
                        spec: d.spec,
                    });
                }
                (API_VERSION, "NetworkModule") => {
                    let d: ModuleDoc = serde_yaml::from_value(value)
                        .map_err(|e| err(format!("NetworkModule: {e}")))?;
                    let name = d.metadata.name.clone().ok_or_else(|| {
                        err("NetworkModule: metadata.name: Required value".into())
                    })?;
                    self.modules.push(NetworkModule {
                        name,
                        generation: d.metadata.generation.unwrap_or(1),
                        spec: d.spec,
                    });
                }
                (_, "") => return Err(err("kind: Required value".into())),
                (_, kind) => {
                    let name = value
                        .get("metadata")
                        .and_then(|m| m.get("name"))
                        .and_then(|n| n.as_str())
                        .unwrap_or("?");
                    self.ignored.push(format!("{kind}/{name}"));
                }
            }
        }
        Ok(())
    }
}

/// Every `.yaml`, `.yml` and `.json` file under `dir`, in name order.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v = vec![];
    collect(dir, &mut v)?;
    v.sort();
    Ok(v)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{node_labels, sticky_owner};

    const DOCS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {zone: a}}
spec:
  podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: prod
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: u1}]
spec:
  containers: [{name: db, image: postgres}]
---
apiVersion: switchyard.dev/v1alpha1
kind: NetworkModule
metadata: {name: cni}
spec:
  role: cni
  source: {builtin: cni-bridge}
  config: {mtu: 1450}
---
apiVersion: v1
kind: Service
metadata: {name: web}
"#;

    #[test]
    fn reads_nodes_pods_modules_and_skips_other_kinds() {
        let mut m = Manifests::default();
        m.add_text(Path::new("x.yaml"), DOCS).unwrap();
        let node = m.node("node-1").unwrap();
        assert_eq!(
            node.spec
                .as_ref()
                .unwrap()
                .pod_cidrs
                .as_ref()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(sticky_owner(&m.pods[0]).as_deref(), Some("prod/db-0"));
        assert_eq!(m.modules[0].spec.role, crate::model::Role::Cni);
        let spec = crate::registry::ModuleSpec::from_crd("cni", 1, &m.modules[0].spec).unwrap();
        assert_eq!(spec.config["mtu"], 1450);
        assert_eq!(
            spec.limits.deadline,
            std::time::Duration::from_secs(10),
            "the cni role's default"
        );
        let mut with: NetworkModuleSpec = m.modules[0].spec.clone();
        with.limits = Some(crate::model::crd::LimitsSpec {
            deadline_ms: Some(100),
            ..Default::default()
        });
        assert_eq!(
            crate::registry::ModuleSpec::from_crd("cni", 1, &with)
                .unwrap()
                .limits
                .deadline,
            std::time::Duration::from_millis(100)
        );
        assert_eq!(m.services.len(), 1);
        assert!(m.ignored.is_empty());
        assert!(m.modules[0].spec.selects(&node_labels(Some(node))));
    }

    #[test]
    fn errors_name_the_file_and_document() {
        let mut m = Manifests::default();
        let e = m
            .add_text(Path::new("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: switchyard.dev/v1alpha1\nkind: NetworkModule\nmetadata: {name: m}\nspec: {role: router, source: {}}\n")
            .unwrap_err();
        assert_eq!(e.document, Some(2));
        assert!(
            e.to_string()
                .starts_with("bad.yaml (document 2): NetworkModule:"),
            "{e}"
        );
        let spec: NetworkModuleSpec = serde_json::from_value(
            serde_json::json!({"role": "cni", "source": {"builtin": "a", "url": "b"}}),
        )
        .unwrap();
        assert!(
            crate::registry::ModuleSpec::from_crd("m", 1, &spec)
                .unwrap_err()
                .contains("exactly one of builtin, url, file, oci and configMap")
        );
    }
}
