//! Labs for tests, driven through the `switchyard lab` CLI as a user would.
//!
//! A lab is a real cluster (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, the lab kubelets and our agents): bringing one up takes
//! about ten seconds. So a test binary starts each lab shape it needs once
//! ([`TestLab::shared`]), its tests give themselves namespaces of their own,
//! and the labs go down when the binary exits. Tests of the lab's own
//! bring-up and tear-down use [`TestLab::up`], a lab of their own.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

pub fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lab tests make network namespaces: run them as root (CI does)"
    );
}

/// A lab brought up for one test, taken down when dropped (also on panic).
pub struct TestLab {
    pub name: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    _one_at_a_time: Option<std::sync::MutexGuard<'static, ()>>,
    /// Shared labs go down when the test binary exits, not when dropped.
    shared: bool,
}

/// One test drives a lab at a time: the machine has two cores, and probes
/// that compete for them with other tests would time out.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The shared labs of this test binary, by name.
static SHARED: std::sync::Mutex<Vec<(String, String, &'static TestLab)>> =
    std::sync::Mutex::new(Vec::new());

/// Take every shared lab down as the test binary exits.
extern "C" fn take_shared_labs_down() {
    let labs = std::mem::take(&mut *SHARED.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, _, lab) in labs {
        let o = lab.run(&["down"]);
        if !o.status.success() {
            eprintln!("lab down {}: {}", lab.name, text(&o));
        }
        let _ = std::fs::remove_dir_all(&lab.dir);
    }
}

/// A test's hold on a shared lab: the lab, and the lock that keeps other
/// tests of the binary off it meanwhile.
pub struct SharedLab {
    lab: &'static TestLab,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for SharedLab {
    type Target = TestLab;
    fn deref(&self) -> &TestLab {
        self.lab
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl TestLab {
    /// A lab of its own for one test, taken down when dropped.
    pub fn up(name: &str, nodes: usize, model: &str, family: &str) -> TestLab {
        need_root();
        let guard = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().unwrap();
        let lab = TestLab {
            name: name.to_string(),
            dir: tmp.path().join("lab"),
            _tmp: Some(tmp),
            _one_at_a_time: Some(guard),
            shared: false,
        };
        lab.bring_up(nodes, model, family);
        lab
    }

    /// The lab `name` of this test binary (`nodes` nodes of `model` in
    /// `family`): brought up by the first test that asks, shared by the
    /// tests that ask after it (each in namespaces of its own), taken down
    /// when the binary exits. The test holds it alone until the returned
    /// hold is dropped.
    pub fn shared(name: &str, nodes: usize, model: &str, family: &str) -> SharedLab {
        need_root();
        let guard = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
        let shape = format!("{nodes} {model} {family}");
        let mut labs = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s, lab)) = labs.iter().find(|(n, _, _)| n == name) {
            assert_eq!(s, &shape, "shared lab {name} asked for in two shapes");
            return SharedLab {
                lab,
                _one_at_a_time: guard,
            };
        }
        if labs.is_empty() {
            // SAFETY: registering a plain `extern "C" fn` with the C library.
            #[allow(unsafe_code)]
            unsafe {
                libc::atexit(take_shared_labs_down);
            }
        }
        let lab: &'static TestLab = Box::leak(Box::new(TestLab {
            name: name.to_string(),
            dir: std::env::temp_dir().join(format!("switchyard-test-lab-{name}")),
            _tmp: None,
            _one_at_a_time: None,
            shared: true,
        }));
        labs.push((name.to_string(), shape, lab));
        drop(labs);
        lab.bring_up(nodes, model, family);
        SharedLab {
            lab,
            _one_at_a_time: guard,
        }
    }

    fn bring_up(&self, nodes: usize, model: &str, family: &str) {
        // Leftovers of an earlier, killed run of this very test.
        let _ = self.run(&["down", "--name", &self.name]);
        let o = self.run(&[
            "up",
            "--name",
            &self.name,
            "--nodes",
            &nodes.to_string(),
            "--model",
            model,
            "--ip-family",
            family,
            "--timeout",
            "90",
        ]);
        assert!(o.status.success(), "lab up failed: {}", text(&o));
    }

    /// kubectl (the one built with the control plane) against this lab.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let lab: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("lab.json")).unwrap()).unwrap();
        let kubectl = Path::new(lab["kubernetesBin"].as_str().unwrap()).join("kubectl");
        Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    /// kubectl that must succeed; its output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("lab")
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running switchyard")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "switchyard lab {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) -> Output {
        let f = self.dir.join(format!("apply-{}.yaml", rand_suffix()));
        std::fs::write(&f, yaml).unwrap();
        let o = self.run(&["apply", "-f", f.to_str().unwrap(), "--wait", "60"]);
        let _ = std::fs::remove_file(&f);
        o
    }

    /// (allowed, what the probe printed)
    pub fn probe(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
        family: &str,
    ) -> (bool, String) {
        let o = self.run(&[
            "probe",
            "--from",
            from,
            "--to",
            to,
            "--port",
            &port.to_string(),
            "--protocol",
            protocol,
            "--family",
            family,
            "--timeout",
            "2s",
            "-v",
        ]);
        let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
        match o.status.code() {
            Some(0) => {
                assert!(out.starts_with("allowed"), "{}", text(&o));
                (true, out)
            }
            Some(1) => {
                assert!(out.starts_with("denied"), "{}", text(&o));
                (false, out)
            }
            _ => panic!("probe {from} -> {to} could not be made: {}", text(&o)),
        }
    }

    /// Probe until allowed (a proxy programs a change within moments), for
    /// at most 20 s; what the server answered.
    pub fn probe_until_allowed(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
        family: &str,
    ) -> String {
        let start = std::time::Instant::now();
        loop {
            let (ok, answer) = self.probe(from, to, port, protocol, family);
            if ok {
                return answer;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{from} -> {to}:{port}/{protocol} ({family}) never allowed: {answer}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    pub fn pod_ips(&self, pod: &str) -> Vec<String> {
        pod_in(&self.status(), pod)
            .map(|p| {
                p["ips"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn node_address(&self, node: &str, v4: bool) -> String {
        let s = self.status();
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .unwrap()["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .find(|a| a.contains('.') == v4)
            .unwrap()
    }

    /// GET `path` from `node`'s admin API, or why it could not be made.
    pub fn api_raw_result(&self, node: &str, path: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let addr = self.node_address(node, true);
        (|| {
            let mut s = std::net::TcpStream::connect_timeout(
                &format!("{addr}:9090").parse().unwrap(),
                std::time::Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        })()
    }

    /// GET `path` from `node`'s admin API: the status code and the body.
    pub fn api_raw(&self, node: &str, path: &str) -> (u16, String) {
        let r = self
            .api_raw_result(node, path)
            .unwrap_or_else(|e| panic!("GET {path} from {node}'s admin API: {e}"));
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, body.to_string())
    }

    /// GET a JSON document from `node`'s admin API.
    pub fn api(&self, node: &str, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = self.api_raw(node, path);
        let v =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} on {node}: {e}: {body}"));
        (code, v)
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.shared {
            return;
        }
        let o = self.run(&["down"]);
        if !o.status.success() {
            eprintln!("lab down failed: {}", text(&o));
        }
    }
}

/// Pod `ns/name` of a `lab status --json` document.
pub fn pod_in<'a>(status: &'a Value, pod: &str) -> Option<&'a Value> {
    let (ns, name) = pod.split_once('/').unwrap();
    status["pods"]
        .as_array()?
        .iter()
        .find(|p| p["namespace"] == ns && p["name"] == name)
}

pub fn rand_suffix() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Nothing of lab `name` in `dir` is left: namespaces, host link, processes,
/// files.
pub fn assert_gone(name: &str, dir: &Path) {
    let prefix = format!("sy{name}-");
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let left: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "/etc/netns entries left behind: {left:?}");
    let link = Command::new("ip")
        .args(["link", "show", &format!("syh-{name}")])
        .output()
        .unwrap();
    assert!(!link.status.success(), "the host link is still there");
    let bin = dir.join("bin");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(exe) = std::fs::read_link(e.path().join("exe")) {
            assert!(
                !exe.starts_with(&bin),
                "process {:?} still runs {}",
                e.file_name(),
                exe.display()
            );
        }
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
}

pub fn client_of(answer: &str) -> String {
    // "allowed: pod=external node=external client=10.244.1.2:33034 path=/"
    let c = answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("client="))
        .unwrap_or_else(|| panic!("no client in {answer:?}"));
    let host = c.rsplit_once(':').map(|(h, _)| h).unwrap_or(c);
    host.trim_matches(['[', ']']).to_string()
}
