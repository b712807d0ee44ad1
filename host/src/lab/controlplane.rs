//! The lab's Kubernetes control plane: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, the real programs (built from
//! the Go modules pinned in `host/controlplane` by
//! `scripts/controlplane.sh`), run in a control-plane namespace on the
//! underlay as on a control-plane node.
//!
//! - etcd listens on the namespace's loopback only (plain HTTP: nothing but
//!   the API server beside it can reach it), with `--unsafe-no-fsync`: the
//!   lab's state need not survive the machine's crash, and fsyncs would
//!   slow every write.
//! - kube-apiserver serves TLS on port 6443 of every address, with the
//!   lab's certificates ([`super::pki`]), the Service CIDRs of the lab's
//!   families, the Node and RBAC authorizers, and the default admission
//!   plugins plus NodeRestriction.
//! - kube-controller-manager runs its default controllers (among them node
//!   IPAM with `--allocate-node-cidrs`, the EndpointSlice controllers, the
//!   namespace and garbage collectors, ServiceAccounts and their tokens),
//!   each with its own ServiceAccount's credentials.
//! - kube-scheduler binds pods to nodes.
//!
//! Then the lab installs what a cluster operator would: our CRDs (the
//! YAML `switchyard crds` prints, which is what `crds/` holds), the agent's
//! namespace, ServiceAccount and RBAC from `deploy/kubernetes`, the
//! `default` ClusterNetwork, and the cluster DNS Service
//! `kube-system/kube-dns`.

use super::layout::{APISERVER_PORT, Lab};
use super::pki::{self, Authority, CertFiles, Identity, KubeconfigUser};
use crate::datapath::netlink::in_netns;
use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Kubernetes version the control plane is built at (host/controlplane/go.mod).
pub const KUBERNETES_VERSION: &str = env!("SWITCHYARD_KUBERNETES_VERSION");
/// The build's cache key: a hash of host/controlplane/go.mod and go.sum,
/// computed as scripts/controlplane.sh computes it.
pub const BUILD_KEY: &str = env!("SWITCHYARD_CONTROLPLANE_KEY");

/// The control plane's programs.
pub const PROGRAMS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// kube-controller-manager's controllers the lab turns off.
const LAB_DISABLED_CONTROLLERS: [&str; 17] = [
    "persistentvolume-attach-detach-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "ephemeral-volume-controller",
    "volumeattributesclass-protection-controller",
    "storage-version-migrator-controller",
    "resourceclaim-controller",
    "device-taint-eviction-controller",
    "horizontal-pod-autoscaler-controller",
    "certificatesigningrequest-signing-controller",
    "certificatesigningrequest-approving-controller",
    "certificatesigningrequest-cleaner-controller",
    "podcertificaterequest-cleaner-controller",
    "kube-apiserver-serving-clustertrustbundle-publisher-controller",
    "validatingadmissionpolicy-status-controller",
];

/// The agents' namespace and ServiceAccount (deploy/kubernetes).
pub const AGENT_NAMESPACE: &str = "switchyard-system";
pub const AGENT_SERVICE_ACCOUNT: &str = "switchyard-agent";

/// The user the lab's cloud controller authenticates as.
pub const CLOUD_CONTROLLER_USER: &str = "switchyard-lab:cloud-controller";

const NAMESPACE_YAML: &str = include_str!("../../../deploy/kubernetes/namespace.yaml");
const RBAC_YAML: &str = include_str!("../../../deploy/kubernetes/rbac.yaml");

/// What the lab's cloud controller may do: read Services and write their
/// status (LoadBalancer ingress IPs), as a cloud provider's
/// service controller does.
const CLOUD_RBAC_YAML: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: switchyard-lab:cloud-controller
rules:
- apiGroups: ['']
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: ['']
  resources: [services/status]
  verbs: [patch, update]
- apiGroups: ['', events.k8s.io]
  resources: [events]
  verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: switchyard-lab:cloud-controller
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: switchyard-lab:cloud-controller
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: switchyard-lab:cloud-controller
";

/// Where the build cache lives (`SWITCHYARD_CACHE`, else /var/cache/switchyard).
pub fn cache_root() -> PathBuf {
    std::env::var_os("SWITCHYARD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/switchyard"))
}

/// Where scripts/controlplane.sh puts the programs of this build's pins.
pub fn default_bin() -> PathBuf {
    cache_root()
        .join("controlplane")
        .join(format!("{KUBERNETES_VERSION}-{BUILD_KEY}"))
        .join("bin")
}

/// The directory holding the control plane's programs: `SWITCHYARD_K8S_BIN`,
/// else the build cache. Says what to run when they are missing.
pub fn locate() -> anyhow::Result<PathBuf> {
    let (dir, from_env) = match std::env::var_os("SWITCHYARD_K8S_BIN") {
        Some(d) => (PathBuf::from(d), true),
        None => (default_bin(), false),
    };
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| !dir.join(p).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(dir);
    }
    if from_env {
        bail!(
            "SWITCHYARD_K8S_BIN={} lacks {}: point it at a directory with {}",
            dir.display(),
            missing.join(", "),
            PROGRAMS.join(", ")
        );
    }
    bail!(
        "the lab's Kubernetes control plane ({KUBERNETES_VERSION}) is not built: {} is missing {}. \
         Build it with scripts/controlplane.sh (about 10 minutes the first time on 2 cores; \
         ./scripts/run.sh and ./scripts/test.sh run it for you)",
        dir.display(),
        missing.join(", ")
    )
}

fn first_service_ip(cidr: &ipnet::IpNet) -> Option<IpAddr> {
    match cidr {
        ipnet::IpNet::V4(n) => {
            Some(std::net::Ipv4Addr::from(u32::from(n.network()).checked_add(1)?).into())
        }
        ipnet::IpNet::V6(n) => {
            Some(std::net::Ipv6Addr::from(u128::from(n.network()).checked_add(1)?).into())
        }
    }
}

/// The files of a component's identity.
fn cert(lab: &Lab, file: &str) -> CertFiles {
    CertFiles {
        cert: lab.pki_dir().join(format!("{file}.crt")),
        key: lab.pki_dir().join(format!("{file}.key")),
    }
}

/// The kubeconfig a node's lab kubelet uses (`system:node:NODE`).
pub fn kubelet_kubeconfig(lab: &Lab, node: &str) -> PathBuf {
    lab.node_dir(node).join("kubelet.kubeconfig")
}

/// The kubeconfig a node's agent uses (its ServiceAccount's token).
pub fn agent_kubeconfig(lab: &Lab, node: &str) -> PathBuf {
    lab.node_dir(node).join("agent.kubeconfig")
}

/// The kubeconfig of the lab's cloud controller.
pub fn cloud_kubeconfig(lab: &Lab) -> PathBuf {
    lab.control_dir().join("cloud-controller.kubeconfig")
}

/// Make every certificate and kubeconfig of the lab: the control plane's,
/// the admin's, and each node's kubelet's.
pub fn create_pki(lab: &Lab) -> anyhow::Result<()> {
    let pki = lab.pki_dir();
    let control = lab.control_dir();
    for d in [&pki, &control] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let c = &lab.config;
    let ca = Authority::create(&pki, "ca", "switchyard-lab-ca")?;
    let mut addresses: Vec<IpAddr> = vec!["127.0.0.1".parse()?, "::1".parse()?];
    addresses.extend(c.control.iter().copied());
    addresses.extend(c.service_cidrs.iter().filter_map(first_service_ip));
    ca.server(
        &pki,
        "apiserver",
        "kube-apiserver",
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ],
        &addresses,
    )?;
    // The aggregation layer's front proxy: its own authority, as kubeadm's.
    let front = Authority::create(&pki, "front-proxy-ca", "front-proxy-ca")?;
    front.client(
        &pki,
        "front-proxy-client",
        &Identity {
            user: "front-proxy-client".into(),
            groups: vec![],
        },
    )?;
    pki::service_account_key(&pki)?;
    let identity = |user: &str, groups: &[&str]| Identity {
        user: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let admin = ca.client(
        &pki,
        "admin",
        &identity("kubernetes-admin", &["system:masters"]),
    )?;
    pki::write_secret(
        &lab.kubeconfig(),
        &pki::kubeconfig(
            &c.apiserver_url(),
            &ca.files.cert,
            KubeconfigUser::Cert(&admin),
        ),
    )?;
    // The control plane's components reach the API server beside them.
    let local = format!("https://127.0.0.1:{APISERVER_PORT}");
    for (file, user) in [
        ("kube-controller-manager", "system:kube-controller-manager"),
        ("kube-scheduler", "system:kube-scheduler"),
        ("cloud-controller", CLOUD_CONTROLLER_USER),
    ] {
        let files = ca.client(&pki, file, &identity(user, &[]))?;
        pki::write_secret(
            &control.join(format!("{file}.kubeconfig")),
            &pki::kubeconfig(&local, &ca.files.cert, KubeconfigUser::Cert(&files)),
        )?;
    }
    for n in &c.nodes {
        add_node_identity(lab, &ca, &n.name)?;
    }
    Ok(())
}

/// A node's kubelet identity: `system:node:NODE` in `system:nodes`, which
/// the Node authorizer and NodeRestriction know.
fn add_node_identity(lab: &Lab, ca: &Authority, node: &str) -> anyhow::Result<()> {
    let dir = lab.node_dir(node);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = ca.client(
        &lab.pki_dir(),
        &format!("kubelet-{node}"),
        &Identity {
            user: format!("system:node:{node}"),
            groups: vec!["system:nodes".into()],
        },
    )?;
    pki::write_secret(
        &kubelet_kubeconfig(lab, node),
        &pki::kubeconfig(
            &lab.config.apiserver_url(),
            &ca.files.cert,
            KubeconfigUser::Cert(&files),
        ),
    )
}

/// Start `program` of the control plane in the control-plane namespace,
/// detached (it outlives the `lab` command), its output in `control/NAME.log`.
fn spawn(lab: &Lab, program: &str, args: &[String]) -> anyhow::Result<Child> {
    let log_path = lab.control_dir().join(format!("{program}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    Command::new("ip")
        .args(["netns", "exec", &lab.control_netns()])
        .arg(lab.config.kubernetes_bin.join(program))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {program}"))
}

/// The last lines of a component's log, to say why it stopped.
pub fn log_tail(lab: &Lab, program: &str, lines: usize) -> String {
    let path = lab.control_dir().join(format!("{program}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    format!(
        "the end of {}:\n{}",
        path.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

fn exited(lab: &Lab, program: &str, child: &mut Child) -> anyhow::Result<()> {
    if let Ok(Some(status)) = child.try_wait() {
        bail!(
            "{program} exited ({status}); {}",
            log_tail(lab, program, 15)
        );
    }
    Ok(())
}

fn comma(v: &[ipnet::IpNet]) -> String {
    v.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether etcd answers `/readyz` inside the control-plane namespace.
fn etcd_ready(lab: &Lab) -> bool {
    in_netns(&Lab::netns_path(&lab.control_netns()), || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:2379".parse().expect("literal"),
            Duration::from_millis(200),
        )?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"))
    })
    .unwrap_or(false)
}

/// The control plane's processes, as started.
pub struct Running {
    children: Vec<(&'static str, Child)>,
}

impl Running {
    /// Fails with the log of a component that exited.
    pub fn check(&mut self, lab: &Lab) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            exited(lab, name, child)?;
        }
        Ok(())
    }
}

/// Start etcd and the API server, and wait for both to be ready; then the
/// controller manager and the scheduler.
pub async fn start(lab: &Lab, timeout: Duration) -> anyhow::Result<(Running, kube::Client)> {
    let c = &lab.config;
    let control = lab.control_dir();
    let pki = lab.pki_dir();
    let p = |f: &str| pki.join(f).display().to_string();
    let deadline = Instant::now() + timeout;
    let mut running = Running { children: vec![] };

    let etcd_dir = control.join("etcd");
    let mut etcd = spawn(
        lab,
        "etcd",
        &[
            "--name=lab".into(),
            format!("--data-dir={}", etcd_dir.display()),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=lab=http://127.0.0.1:2380".into(),
            "--listen-metrics-urls=http://127.0.0.1:2381".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
    )?;
    while !etcd_ready(lab) {
        exited(lab, "etcd", &mut etcd)?;
        if Instant::now() >= deadline {
            bail!(
                "etcd did not become ready within {} s; {}",
                timeout.as_secs(),
                log_tail(lab, "etcd", 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.children.push(("etcd", etcd));

    let mut apiserver = spawn(
        lab,
        "kube-apiserver",
        &[
            "--etcd-servers=http://127.0.0.1:2379".into(),
            "--bind-address=::".into(),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--advertise-address={}", c.apiserver_address()),
            format!("--service-cluster-ip-range={}", comma(&c.service_cidrs)),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")),
            format!("--proxy-client-key-file={}", p("front-proxy-client.key")),
            "--profiling=false".into(),
        ],
    )?;
    let client = lab.client().await?;
    loop {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a valid request");
        match tokio::time::timeout(Duration::from_secs(2), client.request_text(req)).await {
            Ok(Ok(body)) if body.trim() == "ok" => break,
            _ => {}
        }
        exited(lab, "kube-apiserver", &mut apiserver)?;
        if Instant::now() >= deadline {
            bail!(
                "kube-apiserver did not become ready within {} s (asked {}/readyz); {}",
                timeout.as_secs(),
                c.apiserver_url(),
                log_tail(lab, "kube-apiserver", 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.children.push(("kube-apiserver", apiserver));

    let kubeconfig = |f: &str| control.join(f).display().to_string();
    let mut masks = vec![];
    if c.families.v4() {
        masks.push("--node-cidr-mask-size-ipv4=24".to_string());
    }
    if c.families.v6() {
        masks.push("--node-cidr-mask-size-ipv6=64".to_string());
    }
    let kcm_config = kubeconfig("kube-controller-manager.kubeconfig");
    let mut kcm_args = vec![
        format!("--kubeconfig={kcm_config}"),
        format!("--authentication-kubeconfig={kcm_config}"),
        format!("--authorization-kubeconfig={kcm_config}"),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--allocate-node-cidrs".into(),
        format!("--cluster-cidr={}", comma(&c.cluster_pod_cidrs)),
        format!("--service-cluster-ip-range={}", comma(&c.service_cidrs)),
        "--use-service-account-credentials".into(),
        // Every controller a pod network needs and users of the lab expect
        // (node IPAM and lifecycle, EndpointSlices, namespaces, garbage
        // collection, ServiceAccounts, the workload controllers); not those
        // of storage, dynamic resources, autoscaling or certificate
        // signing, which have nothing to act on here and would delay the
        // rest by seconds at start-up.
        format!(
            "--controllers=*,{}",
            LAB_DISABLED_CONTROLLERS.map(|c| format!("-{c}")).join(",")
        ),
        format!("--root-ca-file={}", p("ca.crt")),
        format!("--service-account-private-key-file={}", p("sa.key")),
        format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
        format!("--client-ca-file={}", p("ca.crt")),
        "--profiling=false".into(),
    ];
    kcm_args.extend(masks);
    let kcm = spawn(lab, "kube-controller-manager", &kcm_args)?;
    running.children.push(("kube-controller-manager", kcm));
    let sched_config = kubeconfig("kube-scheduler.kubeconfig");
    let scheduler = spawn(
        lab,
        "kube-scheduler",
        &[
            format!("--kubeconfig={sched_config}"),
            format!("--authentication-kubeconfig={sched_config}"),
            format!("--authorization-kubeconfig={sched_config}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--profiling=false".into(),
        ],
    )?;
    running.children.push(("kube-scheduler", scheduler));
    Ok((running, client))
}

/// Split multi-document YAML into JSON values.
fn documents(yaml: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let mut out = vec![];
    for d in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(d)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Apply documents as `manager`, server-side.
async fn apply_yaml(client: &kube::Client, yaml: &str) -> anyhow::Result<()> {
    let docs: Vec<super::apply::Doc> = documents(yaml)?
        .into_iter()
        .map(|v| {
            Ok(super::apply::Doc {
                origin: "the lab's bootstrap".into(),
                value: serde_yaml::to_value(v)?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    super::apply::apply(client, &docs)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.join("\n")))?;
    Ok(())
}

/// What an operator installs before the agents: the CRDs, the agents'
/// namespace, ServiceAccount and RBAC, the `default` ClusterNetwork; and the
/// cloud controller's RBAC.
pub async fn bootstrap(lab: &Lab, client: &kube::Client, timeout: Duration) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(super::apply::FIELD_MANAGER).force();
    let all = crate::model::crd::all_crds();
    for crd in &all {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(crd))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "the API server refused the CRD {name}: {}",
                    super::apply::api_message(&e)
                )
            })?;
    }
    let deadline = Instant::now() + timeout;
    for crd in &all {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let c = crds.get(&name).await?;
            let established = c
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the CRD {name} was not Established within {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    apply_yaml(client, NAMESPACE_YAML)
        .await
        .context("deploy/kubernetes/namespace.yaml")?;
    apply_yaml(client, RBAC_YAML)
        .await
        .context("deploy/kubernetes/rbac.yaml")?;
    apply_yaml(client, CLOUD_RBAC_YAML)
        .await
        .context("the cloud controller's RBAC")?;
    apply_yaml(client, &cluster_network_manifest(lab))
        .await
        .context("the default ClusterNetwork")?;
    // kube-system and the Service CIDRs' allocators are the API server's own
    // to make, moments after it is ready: until then the Service is refused.
    let dns = kube_dns_manifest(lab);
    let deadline = Instant::now() + timeout;
    loop {
        match apply_yaml(client, &dns).await {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("the cluster DNS Service kube-system/kube-dns"));
            }
            Err(e) => tracing::debug!("kube-system/kube-dns not created yet: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The cluster DNS Service, as kubeadm makes it for CoreDNS: `kube-dns` in
/// `kube-system`, DNS over UDP and TCP on port 53, at the 10th address of
/// each Service CIDR ([`super::layout::LabConfig::cluster_dns`], which the
/// kubelets are given as `--cluster-dns`). No pods back it: every node's
/// agent serves cluster DNS itself, so it has no selector (one matching no
/// pod would only say "no endpoints" in `lab status`).
pub fn kube_dns_manifest(lab: &Lab) -> String {
    let ips = lab.config.cluster_dns();
    let quoted = |v: Vec<String>| v.join(", ");
    let families = quoted(
        ips.iter()
            .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_string())
            .collect(),
    );
    let policy = if ips.len() > 1 {
        "PreferDualStack"
    } else {
        "SingleStack"
    };
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  type: ClusterIP
  ipFamilyPolicy: {policy}
  ipFamilies: [{families}]
  clusterIP: \"{}\"
  clusterIPs: [{}]
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}}
",
        ips.first().map(|ip| ip.to_string()).unwrap_or_default(),
        quoted(ips.iter().map(|ip| format!("\"{ip}\"")).collect()),
    )
}

fn cluster_network_manifest(lab: &Lab) -> String {
    let c = &lab.config;
    let q = |v: &[ipnet::IpNet]| -> String {
        v.iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "apiVersion: switchyard.dev/v1alpha1
kind: ClusterNetwork
metadata:
  name: default
spec:
  model: {}
  podCIDRs: [{}]
  serviceCIDRs: [{}]
  dns:
    clusterDomain: {}
",
        c.model,
        q(&c.cluster_pod_cidrs),
        q(&c.service_cidrs),
        c.cluster_domain
    )
}

/// A token of the agents' ServiceAccount for `node`'s agent (the
/// TokenRequest API, as the kubelet asks for a pod's projected token),
/// written into the agent's kubeconfig.
pub async fn agent_credentials(
    lab: &Lab,
    client: &kube::Client,
    node: &str,
) -> anyhow::Result<PathBuf> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            // A year: the lab outlives no token.
            expiration_seconds: Some(365 * 24 * 3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let r: TokenRequest = sa
        .create_subresource(
            "token",
            AGENT_SERVICE_ACCOUNT,
            &PostParams::default(),
            &request,
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "a token for {AGENT_NAMESPACE}/{AGENT_SERVICE_ACCOUNT}: {}",
                super::apply::api_message(&e)
            )
        })?;
    let token = r
        .status
        .map(|s| s.token)
        .context("the TokenRequest returned no token")?;
    let path = agent_kubeconfig(lab, node);
    pki::write_secret(
        &path,
        &pki::kubeconfig(
            &lab.config.apiserver_url(),
            &cert(lab, "ca").cert,
            KubeconfigUser::Token(&token),
        ),
    )?;
    Ok(path)
}

/// Wait for `what` to hold, checking the control plane's processes.
pub async fn wait_for<F, Fut>(
    lab: &Lab,
    running: &mut Running,
    timeout: Duration,
    what: &str,
    mut f: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await? {
            return Ok(());
        }
        running.check(lab)?;
        if Instant::now() >= deadline {
            bail!("{what}: not within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_service_ip_is_the_kubernetes_service() {
        assert_eq!(
            first_service_ip(&"10.96.0.0/16".parse().unwrap()),
            Some("10.96.0.1".parse().unwrap())
        );
        assert_eq!(
            first_service_ip(&"fd00:10:96::/112".parse().unwrap()),
            Some("fd00:10:96::1".parse().unwrap())
        );
    }

    #[test]
    fn kube_dns_has_the_tenth_address_of_each_family() {
        use super::super::layout::{Families, LabConfig};
        use crate::model::crd::NetworkModel;
        let svc = |f| -> k8s_openapi::api::core::v1::Service {
            let lab = Lab {
                dir: "/x".into(),
                config: LabConfig::new("lab", 1, NetworkModel::Flat, f, false, "/k8s".into()),
            };
            serde_yaml::from_str(&kube_dns_manifest(&lab)).unwrap()
        };
        let dual = svc(Families::Dual);
        assert_eq!(dual.metadata.name.as_deref(), Some("kube-dns"));
        assert_eq!(dual.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(
            dual.metadata.labels.unwrap()["k8s-app"],
            "kube-dns".to_string()
        );
        let spec = dual.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(
            spec.cluster_ips.unwrap(),
            ["10.96.0.10".to_string(), "fd00:10:96::a".to_string()]
        );
        assert_eq!(spec.ip_families.unwrap(), ["IPv4", "IPv6"]);
        assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
        assert!(spec.selector.is_none());
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                ("dns".to_string(), 53, "UDP".to_string()),
                ("dns-tcp".to_string(), 53, "TCP".to_string())
            ]
        );
        let v6 = svc(Families::Ipv6).spec.unwrap();
        assert_eq!(v6.cluster_ip.as_deref(), Some("fd00:10:96::a"));
        assert_eq!(v6.ip_families.unwrap(), ["IPv6"]);
        assert_eq!(v6.ip_family_policy.as_deref(), Some("SingleStack"));
    }

    #[test]
    fn the_build_key_names_a_cache_directory() {
        assert!(
            KUBERNETES_VERSION.starts_with("v1."),
            "{KUBERNETES_VERSION}"
        );
        assert_eq!(BUILD_KEY.len(), 12);
        assert!(default_bin().ends_with(format!("{KUBERNETES_VERSION}-{BUILD_KEY}/bin")));
    }
}
