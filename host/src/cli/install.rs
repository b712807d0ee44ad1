//! `switchyard install-cni`: put the `switchyard-cni` plugin and its network
//! configuration on a node.
//!
//! The DaemonSet's `install-cni` init container runs it with the node's
//! `/opt/cni/bin` and `/etc/cni/net.d` mounted. The container runtime may
//! read either directory at any moment (containerd watches the configuration
//! directory), so both files are written to a temporary name in the same
//! directory, synced, and renamed over the old one: a reader sees the old
//! file or the new one, never half of one. A file that already holds the
//! right bytes and mode is left alone, so running again (every agent restart)
//! changes nothing and wakes no watcher.

use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The network configuration's file name. Runtimes use the first file of the
/// directory in lexical order; `10-` puts it before the usual `99-loopback`.
pub const CONFLIST_NAME: &str = "10-switchyard.conflist";
/// The plugin's name in the binary directory: the `type` the configuration
/// names.
pub const PLUGIN_TYPE: &str = "switchyard-cni";

#[derive(Debug, Clone, clap::Args)]
pub struct InstallCniArgs {
    /// The node's CNI binary directory (the host's /opt/cni/bin, mounted).
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory (the host's /etc/cni/net.d, mounted).
    #[arg(long)]
    pub conf_dir: PathBuf,
    /// The plugin binary to install.
    #[arg(long, default_value = "/usr/local/bin/switchyard-cni")]
    pub plugin: PathBuf,
    /// The agent's CNI socket, as the plugin on the host sees it.
    #[arg(long, default_value = switchyard_cni::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The network's name in the configuration.
    #[arg(long, default_value = "switchyard")]
    pub name: String,
}

/// Install the plugin, then the configuration that names it (in that order:
/// a runtime that sees the configuration finds the plugin already there).
pub fn run(a: InstallCniArgs) -> anyhow::Result<ExitCode> {
    let conflist = conflist(&a.name, &a.socket)?;
    let plugin = fs::read(&a.plugin)
        .with_context(|| format!("reading the CNI plugin {}", a.plugin.display()))?;
    let plugin_path = a.bin_dir.join(PLUGIN_TYPE);
    let conf_path = a.conf_dir.join(CONFLIST_NAME);
    for (path, bytes, mode) in [
        (&plugin_path, plugin.as_slice(), 0o755),
        (&conf_path, conflist.as_slice(), 0o644),
    ] {
        let changed = write_atomic(path, bytes, mode)?;
        println!(
            "{} {}",
            if changed { "installed" } else { "unchanged" },
            path.display()
        );
    }
    warn_if_shadowed(&a.conf_dir);
    Ok(ExitCode::SUCCESS)
}

/// The network configuration list, checked with the plugin's own rules (as
/// a runtime hands each plugin its entry, with `cniVersion` and `name`) so a
/// bad `--name` or `--socket` fails here rather than at the first pod.
fn conflist(name: &str, socket: &Path) -> anyhow::Result<Vec<u8>> {
    let socket = socket
        .to_str()
        .ok_or_else(|| anyhow!("socket {}: not UTF-8", socket.display()))?;
    let list = json!({
        "cniVersion": "1.1.0",
        "name": name,
        "plugins": [{"type": PLUGIN_TYPE, "socket": socket}],
    });
    for plugin in list["plugins"].as_array().into_iter().flatten() {
        let mut conf = plugin.clone();
        if let Value::Object(o) = &mut conf {
            o.insert("cniVersion".into(), list["cniVersion"].clone());
            o.insert("name".into(), list["name"].clone());
        }
        let version = switchyard_cni::negotiate(&conf)
            .map_err(|e| anyhow!("the network configuration: {e}"))?;
        switchyard_cni::check_config(&conf, switchyard_cni::Command::Add, &version)
            .map_err(|e| anyhow!("the network configuration: {e}"))?;
    }
    let mut bytes = serde_json::to_vec_pretty(&list)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Make `path` hold `bytes` with permissions `mode`, atomically; false when
/// it already did (nothing is written then).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<bool> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{}: no parent directory", path.display()))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: no file name", path.display()))?
        .to_string_lossy();
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.is_file()
        && meta.permissions().mode() & 0o7777 == mode
        && fs::read(path).is_ok_and(|old| old == bytes)
    {
        return Ok(false);
    }
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    // Hidden, and ending in `.tmp`: no runtime loads it as a configuration
    // (they read *.conf, *.conflist and *.json) or runs it as a plugin. The
    // name is fixed, so a temporary file left by a run that crashed is
    // simply overwritten by the next.
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let written = (|| -> anyhow::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        // The mode given to open is reduced by the umask, and an old
        // temporary file keeps its own: set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {} to {mode:o}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(true)
}

/// Runtimes use the first configuration of the directory in lexical order:
/// say so when another network's sorts before ours and would be used.
fn warn_if_shadowed(conf_dir: &Path) {
    let Ok(entries) = fs::read_dir(conf_dir) else {
        return;
    };
    let mut before: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [".conf", ".conflist", ".json"]
                .iter()
                .any(|ext| n.ends_with(ext))
                && n.as_str() < CONFLIST_NAME
        })
        .collect();
    before.sort();
    if !before.is_empty() {
        tracing::warn!(
            dir = %conf_dir.display(),
            "the container runtime uses the first configuration in lexical order, and {} comes before {CONFLIST_NAME}: pods get that network, not Switchyard's; remove it",
            before.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const PLUGIN: &[u8] = b"#!/bin/sh\necho not really a CNI plugin\n";

    /// A node's two directories (not yet made: install-cni creates them) and
    /// a plugin binary to install.
    fn setup() -> (tempfile::TempDir, InstallCniArgs) {
        let t = tempfile::tempdir().unwrap();
        let plugin = t.path().join("image/switchyard-cni");
        fs::create_dir_all(plugin.parent().unwrap()).unwrap();
        fs::write(&plugin, PLUGIN).unwrap();
        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o700)).unwrap();
        let a = InstallCniArgs {
            bin_dir: t.path().join("host/opt/cni/bin"),
            conf_dir: t.path().join("host/etc/cni/net.d"),
            plugin,
            socket: PathBuf::from(switchyard_cni::DEFAULT_SOCKET),
            name: "switchyard".into(),
        };
        (t, a)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn installs_the_plugin_and_its_configuration() {
        let (_t, a) = setup();
        run(a.clone()).unwrap();

        let bin = a.bin_dir.join("switchyard-cni");
        assert_eq!(fs::read(&bin).unwrap(), PLUGIN);
        assert_eq!(fs::metadata(&bin).unwrap().mode() & 0o7777, 0o755);

        let conf = a.conf_dir.join("10-switchyard.conflist");
        assert_eq!(fs::metadata(&conf).unwrap().mode() & 0o7777, 0o644);
        let v: Value = serde_json::from_slice(&fs::read(&conf).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.1.0",
                "name": "switchyard",
                "plugins": [{"type": "switchyard-cni", "socket": "/run/switchyard/cni.sock"}],
            })
        );
        // Nothing else: no temporary file left behind.
        assert_eq!(names(&a.bin_dir), ["switchyard-cni"]);
        assert_eq!(names(&a.conf_dir), ["10-switchyard.conflist"]);
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let (_t, a) = setup();
        run(a.clone()).unwrap();
        let bin = a.bin_dir.join("switchyard-cni");
        let conf = a.conf_dir.join("10-switchyard.conflist");
        let before = [&bin, &conf].map(|p| {
            let m = fs::metadata(p).unwrap();
            (fs::read(p).unwrap(), m.ino(), m.mode())
        });
        run(a.clone()).unwrap();
        let after = [&bin, &conf].map(|p| {
            let m = fs::metadata(p).unwrap();
            (fs::read(p).unwrap(), m.ino(), m.mode())
        });
        // Same bytes, same mode, and the same inode: the files were not
        // even rewritten.
        assert_eq!(before, after);
        assert_eq!(names(&a.bin_dir), ["switchyard-cni"]);
        assert_eq!(names(&a.conf_dir), ["10-switchyard.conflist"]);
    }

    #[test]
    fn replaces_a_stale_plugin_and_a_left_over_temporary_file() {
        let (_t, a) = setup();
        fs::create_dir_all(&a.bin_dir).unwrap();
        let bin = a.bin_dir.join("switchyard-cni");
        fs::write(&bin, b"old").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(a.bin_dir.join(".switchyard-cni.tmp"), b"crashed half way").unwrap();
        run(a.clone()).unwrap();
        assert_eq!(fs::read(&bin).unwrap(), PLUGIN);
        assert_eq!(fs::metadata(&bin).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(names(&a.bin_dir), ["switchyard-cni"]);
    }

    #[test]
    fn a_missing_plugin_is_named() {
        let (t, mut a) = setup();
        a.plugin = t.path().join("image/no-such-plugin");
        let e = format!("{:#}", run(a.clone()).unwrap_err());
        assert!(e.contains(&a.plugin.display().to_string()), "{e}");
        assert!(e.contains("No such file"), "{e}");
        // Nothing was installed.
        assert!(!a.bin_dir.exists() && !a.conf_dir.exists());
    }

    #[test]
    fn the_plugin_would_refuse_a_bad_name_or_socket() {
        let (_t, mut a) = setup();
        a.name = "my network".into();
        let e = format!("{:#}", run(a.clone()).unwrap_err());
        assert!(e.contains("name"), "{e}");
        a.name = "switchyard".into();
        a.socket = PathBuf::from("run/cni.sock");
        let e = format!("{:#}", run(a.clone()).unwrap_err());
        assert!(e.contains("socket") && e.contains("absolute"), "{e}");
        assert!(!a.conf_dir.exists());
    }
}
