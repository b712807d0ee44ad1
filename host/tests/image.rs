//! The agent's container image, as `deploy/image/build.sh` builds it from the
//! binaries cargo built for this test: pushed to a registry of our own on
//! loopback (Debian's `docker-registry`), pulled back by digest through the
//! OCI distribution API with every blob checked against its digest, unpacked
//! layer by layer (whiteouts honoured) and run with chroot(8). The agent, the
//! CNI plugin and the tools the agent and its init containers run must work
//! from the image alone.
//!
//! Root: the script runs debootstrap and keeps the root file system's owners,
//! and chroot needs it. The first run debootstraps the root file system
//! (several minutes); the script caches it, and later runs take a minute or so.

mod common;

use common::registry::{LocalRegistry, http};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REPOSITORY: &str = "switchyard-dev/switchyard";
/// A first build runs debootstrap; a cached one takes well under a minute.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
const CHROOT_TIMEOUT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the repository")
        .to_path_buf()
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root: deploy/image/build.sh runs debootstrap and keeps the root \
         file system's owners, and the image is run with chroot(8); run it with sudo (CI runs as root)"
    );
}

/// Run `cmd` in a process group of its own with `input` on its stdin, and
/// collect what it prints where the caller asked for pipes. Past `timeout`
/// the whole group is terminated (killed 10 s later) and the test fails.
fn run(what: &str, cmd: &mut Command, input: Option<Vec<u8>>, timeout: Duration) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start it: {e}"));
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        std::thread::spawn(move || stdin.write_all(&input));
    }
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        pipe.map(|mut p| {
            std::thread::spawn(move || {
                let mut v = vec![];
                let _ = p.read_to_end(&mut v);
                v
            })
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            use nix::sys::signal::{Signal, killpg};
            let _ = killpg(group, Signal::SIGTERM);
            let grace = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}; it was stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap()).unwrap_or_default()
    };
    Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    }
}

/// Like [`run`], with stdout and stderr captured; fails unless it succeeds.
fn run_ok(what: &str, cmd: &mut Command, timeout: Duration) -> Output {
    let out = run(
        what,
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()),
        None,
        timeout,
    );
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Build the image into `out` (and push it to `push`); its manifest's digest.
fn build(bin_dir: &Path, out: &Path, push: Option<&str>) -> String {
    let started = Instant::now();
    let mut cmd = Command::new(repo().join("deploy/image/build.sh"));
    cmd.arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        // Its progress (and debootstrap's, the first time) shows as it goes.
        .stderr(Stdio::inherit());
    if let Some(target) = push {
        cmd.arg("--push").arg(target);
    }
    let done = run("deploy/image/build.sh", &mut cmd, None, BUILD_TIMEOUT);
    assert!(
        done.status.success(),
        "deploy/image/build.sh failed ({}); its messages are above",
        done.status
    );
    let stdout = String::from_utf8_lossy(&done.stdout);
    let digest = stdout.lines().last().unwrap_or_default().trim().to_string();
    assert!(
        is_digest(&digest),
        "build.sh should print the manifest's digest last, not {stdout:?}"
    );
    eprintln!(
        "built {digest} in {:.0?}{}",
        started.elapsed(),
        push.map(|p| format!(", pushed to {p}")).unwrap_or_default()
    );
    digest
}

/// Download the blob `descriptor` names into `to`, checking its size and
/// digest as it comes.
fn fetch_blob(api: &str, descriptor: &Value, to: &Path) {
    let digest = descriptor["digest"].as_str().unwrap_or_default();
    let size = descriptor["size"].as_u64();
    assert!(
        is_digest(digest) && size.is_some(),
        "a descriptor without a sha256 digest or size: {descriptor}"
    );
    let r = http()
        .get(&format!("{api}/blobs/{digest}"))
        .call()
        .unwrap_or_else(|e| panic!("GET blob {digest}: {e}"));
    assert_eq!(r.status(), 200, "GET blob {digest}");
    let mut body = r.into_body().into_reader();
    let mut file = std::fs::File::create(to).unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading blob {digest}: {e}"));
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        got += n as u64;
    }
    assert_eq!(Some(got), size, "blob {digest}: size");
    assert_eq!(
        format!("sha256:{}", hex::encode(hash.finalize())),
        digest,
        "the blob the registry served does not match its digest"
    );
}

/// Pull `digest` from the registry by digest, checking every blob, and
/// unpack its layers in order into `root`; the image's config comes back.
fn pull(reg: &LocalRegistry, digest: &str, scratch: &Path, root: &Path) -> Value {
    let api = format!("{}/v2/{REPOSITORY}", reg.base());
    let mut r = http()
        .get(&format!("{api}/manifests/{digest}"))
        .header("Accept", MANIFEST)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200, "GET manifest {digest}: {}", reg.log());
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), MANIFEST);
    assert_eq!(header("docker-content-digest"), digest);
    let bytes = r.body_mut().read_to_vec().unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        digest,
        "the manifest the registry served does not match its digest"
    );
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], CONFIG);

    let config_file = scratch.join("config.json");
    fetch_blob(&api, &manifest["config"], &config_file);
    let config: Value = serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!layers.is_empty(), "the manifest has no layers: {manifest}");
    assert_eq!(
        layers.len(),
        diff_ids.len(),
        "as many layers as the config's diff_ids"
    );

    std::fs::create_dir_all(root).unwrap();
    for (i, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        assert_eq!(layer["mediaType"], LAYER, "layer {i}");
        let blob = scratch.join(format!("layer-{i}.tar.gz"));
        fetch_blob(&api, layer, &blob);
        let tar = scratch.join(format!("layer-{i}.tar"));
        let out = std::fs::File::create(&tar).unwrap();
        let done = run(
            &format!("gzip -dc layer {i}"),
            Command::new("gzip")
                .arg("-dc")
                .arg(&blob)
                .stdout(out)
                .stderr(Stdio::piped()),
            None,
            TOOL_TIMEOUT,
        );
        assert!(
            done.status.success(),
            "layer {i} ({}) is not gzip: {}",
            layer["digest"],
            String::from_utf8_lossy(&done.stderr)
        );
        std::fs::remove_file(&blob).unwrap();
        assert_eq!(
            Value::from(sha256_file(&tar)),
            *diff_id,
            "layer {i}: the uncompressed tar does not match the config's diff_id"
        );
        apply_layer(&tar, root);
        std::fs::remove_file(&tar).unwrap();
        eprintln!(
            "pulled and unpacked layer {i}: {} ({} bytes)",
            layer["digest"], layer["size"]
        );
    }
    config
}

/// `root.join(rel)`, refusing a path that leaves `root` or goes through a
/// symbolic link (which could point out of it).
fn inside(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut p = root.to_path_buf();
    let parts: Vec<Component<'_>> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        match c {
            Component::Normal(n) => p.push(n),
            Component::CurDir => continue,
            _ => return Err(format!("{} leaves the root", rel.display())),
        }
        if i + 1 < parts.len()
            && std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(format!(
                "{} goes through the symbolic link {}",
                rel.display(),
                p.display()
            ));
        }
    }
    Ok(p)
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// Apply one uncompressed layer to `root` as the OCI image spec says: its
/// whiteouts first remove what lower layers put there (`.wh.NAME` removes
/// NAME, `.wh..wh..opq` everything in its directory), then its entries, the
/// whiteouts themselves left out, are extracted with their numeric owners.
fn apply_layer(tar: &Path, root: &Path) {
    let list = run_ok(
        "tar -tf (a layer's entries)",
        Command::new("tar").arg("-tf").arg(tar),
        TOOL_TIMEOUT,
    );
    let whiteout = |rel: &Path| {
        inside(root, rel).unwrap_or_else(|e| panic!("a whiteout in {}: {e}", tar.display()))
    };
    for entry in String::from_utf8_lossy(&list.stdout).lines() {
        let entry = Path::new(entry);
        let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let dir = entry.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            let dir = whiteout(dir);
            if let Ok(children) = std::fs::read_dir(&dir) {
                for c in children {
                    remove_any(&c.unwrap().path());
                }
            }
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&whiteout(&dir.join(hidden)));
        }
    }
    run_ok(
        "tar -xf (a layer)",
        Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(root)
            .args(["--numeric-owner", "--exclude=.wh.*"]),
        TOOL_TIMEOUT,
    );
}

/// Run `argv` inside the unpacked image with the image's environment.
fn in_image(root: &Path, env: &[(String, String)], argv: &[&str], input: &[u8]) -> Output {
    let what = format!("chroot IMAGE {}", argv.join(" "));
    let out = run(
        &what,
        Command::new("chroot")
            .arg(root)
            .args(argv)
            .env_clear()
            .envs(env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Some(input.to_vec()),
        CHROOT_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_image_is_built_pushed_pulled_by_digest_and_runs() {
    require_root();
    let started = Instant::now();
    let t = tempfile::tempdir().unwrap();

    // The binaries this test was built with: the agent (this profile) and
    // the CNI plugin host/build.rs built.
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let agent = Path::new(env!("CARGO_BIN_EXE_switchyard"));
    let plugin = Path::new(switchyard::modules::CNI_PLUGIN);
    std::os::unix::fs::symlink(agent, bin.join("switchyard")).unwrap();
    std::os::unix::fs::symlink(plugin, bin.join("switchyard-cni")).unwrap();

    eprintln!(
        "building the image with deploy/image/build.sh (the first run on a machine debootstraps \
         its root file system: several minutes)"
    );
    let digest = build(&bin, &t.path().join("layout"), None);
    let index: Value = serde_json::from_slice(
        &std::fs::read(t.path().join("layout/index.json")).expect("the layout has index.json"),
    )
    .unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(index["manifests"][0]["mediaType"], MANIFEST);
    assert!(t.path().join("layout/oci-layout").is_file());

    // The same inputs again give the same digest; this time it is pushed.
    let reg = LocalRegistry::start();
    let target = format!("{}/{REPOSITORY}", reg.addr);
    let pushed = build(&bin, &t.path().join("layout-pushed"), Some(&target));
    assert_eq!(
        pushed, digest,
        "two builds from the same binaries and cached root file system differ"
    );
    // The tag names the same manifest.
    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    let r = http()
        .head(&format!("{}/v2/{REPOSITORY}/manifests/{tag}", reg.base()))
        .header("Accept", MANIFEST)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200, "HEAD manifest {tag}");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());

    let root = t.path().join("rootfs");
    let scratch = t.path().join("pull");
    std::fs::create_dir(&scratch).unwrap();
    let config = pull(&reg, &digest, &scratch, &root);
    drop(reg);

    // The config: how the image runs, and what it is.
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/switchyard"])
    );
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(config["os"], "linux");
    let env: Vec<(String, String)> = c["Env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        env.iter().any(|(k, _)| k == "PATH"),
        "the config sets PATH: {c}"
    );

    // The binaries in the image are the ones built, root's and executable.
    for (inside, built) in [("switchyard", agent), ("switchyard-cni", plugin)] {
        let path = root.join("usr/local/bin").join(inside);
        let m = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, 0o755),
            "{inside}"
        );
        assert_eq!(sha256_file(&path), sha256_file(built), "{inside}");
    }

    let version = in_image(
        &root,
        &env,
        &["/usr/local/bin/switchyard", "--version"],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("switchyard {}", env!("CARGO_PKG_VERSION"))
    );

    let mut cni_env = env.clone();
    cni_env.push(("CNI_COMMAND".into(), "VERSION".into()));
    let cni = in_image(
        &root,
        &cni_env,
        &["/usr/local/bin/switchyard-cni"],
        br#"{"cniVersion": "1.1.0"}"#,
    );
    let answer: Value = serde_json::from_slice(&cni.stdout).unwrap_or_else(|e| {
        panic!(
            "switchyard-cni VERSION printed no JSON ({e}): {}",
            String::from_utf8_lossy(&cni.stdout)
        )
    });
    assert_eq!(answer["cniVersion"], "1.1.0", "{answer}");
    assert_eq!(
        answer["supportedVersions"],
        serde_json::json!(switchyard_cni::SUPPORTED_VERSIONS),
        "{answer}"
    );

    // What the agent and its init containers run or load.
    for (argv, want) in [
        (&["nft", "--version"][..], "nftables v"),
        (&["ip", "-V"], "iproute2"),
        (&["conntrack", "--version"], "conntrack"),
        (&["modprobe", "--version"], "kmod"),
        (&["sysctl", "--version"], "procps"),
        (&["sh", "-c", "echo from sh"], "from sh"),
        // The agent dlopens libnftables.so.1.
        (&["ldconfig", "-p"], "libnftables.so.1 "),
    ] {
        let out = in_image(&root, &env, argv, b"");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(want),
            "{}: {text:?} should contain {want:?}",
            argv.join(" ")
        );
    }
    eprintln!(
        "the image {digest} ran the agent, the plugin and its tools; {:.0?} in all",
        started.elapsed()
    );
}

/// Whiteouts in an upper layer remove what the layers below put there: a
/// file by name, or a whole directory's contents with the opaque marker. No
/// root needed.
#[test]
fn layers_apply_in_order_with_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let make = |name: &str, files: &[&str]| -> PathBuf {
        let dir = t.path().join(name);
        for f in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, name).unwrap();
        }
        let tar = t.path().join(format!("{name}.tar"));
        run_ok(
            "tar -cf",
            Command::new("tar")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&dir)
                .arg("."),
            TOOL_TIMEOUT,
        );
        tar
    };
    let lower = make("lower", &["a/keep", "a/gone", "d/x", "d/sub/y", "e/f"]);
    let upper = make(
        "upper",
        &["a/.wh.gone", "d/.wh..wh..opq", "d/z", ".wh.e", "new"],
    );
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    apply_layer(&lower, &root);
    apply_layer(&upper, &root);
    let mut found = vec![];
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&root).unwrap().display().to_string();
                found.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    found.sort();
    let want: Vec<(String, String)> = [("a/keep", "lower"), ("d/z", "upper"), ("new", "upper")]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec();
    assert_eq!(found, want);
    assert!(!root.join("e").exists(), "the whiteout .wh.e removes e");
    assert!(!root.join("d/sub").exists(), "the opaque d/ hides d/sub");

    // A whiteout that would leave the root, or follow a link, is refused.
    assert!(inside(&root, Path::new("a/../../etc")).is_err());
    std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
    assert!(inside(&root, Path::new("link/.wh.passwd")).is_err());
    assert_eq!(
        inside(&root, Path::new("./a/.wh.keep")),
        Ok(root.join("a/.wh.keep"))
    );
}
