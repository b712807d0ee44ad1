//! The effect journal of ADDs in progress: one file per attachment, one JSON
//! line per effect, appended by the host functions as they act. What must be
//! undone after a crash (a veth) is journaled as an intent before the kernel
//! call and as done or refused after it, so a crash in between is covered
//! too. A crash in the middle of an ADD leaves the file behind, and start-up
//! undoes what it lists.

use crate::datapath::ipam::AttachmentKey;
use crate::runtime::{Effect, EffectJournal};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The longest file name Linux filesystems take.
const NAME_MAX: usize = 255;

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
        })
    }

    /// Container ids and interface names contain no `/` (both are checked),
    /// so they make safe file names, unless together they pass the 255
    /// bytes a file name may have (the spec sets no limit on container ids):
    /// then the name is a digest, and the key is read from the header line.
    pub fn path(&self, key: &AttachmentKey) -> PathBuf {
        let plain = format!("{}__{}.jsonl", key.container_id, key.ifname);
        if plain.len() <= NAME_MAX {
            return self.dir.join(plain);
        }
        let digest = Sha256::digest(format!("{}\0{}", key.container_id, key.ifname));
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("h-{hex}.jsonl"))
    }

    /// Start a journal for an ADD: a header naming the attachment, no effects.
    pub fn start(&self, key: &AttachmentKey) -> std::io::Result<std::sync::Arc<JournalFile>> {
        let p = self.path(key);
        let header = serde_json::json!({"attachment": key});
        std::fs::write(&p, format!("{header}\n"))?;
        Ok(std::sync::Arc::new(JournalFile { path: p }))
    }

    pub fn finish(&self, key: &AttachmentKey) {
        let _ = std::fs::remove_file(self.path(key));
    }

    /// Effects in a journal file; a torn last line (the crash) is skipped.
    pub fn read(path: &Path) -> Vec<Effect> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Journals left by ADDs that did not finish.
    pub fn pending(&self) -> Vec<(AttachmentKey, Vec<Effect>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let stem = p.file_name()?.to_str()?.strip_suffix(".jsonl")?.to_string();
                let key = Journal::header(&p).or_else(|| {
                    // Journals of older agents have no header.
                    let (container_id, ifname) = stem.split_once("__")?;
                    Some(AttachmentKey {
                        container_id: container_id.to_string(),
                        ifname: ifname.to_string(),
                    })
                })?;
                Some((key, Journal::read(&p)))
            })
            .collect()
    }

    /// The attachment a journal's header line names.
    fn header(path: &Path) -> Option<AttachmentKey> {
        let text = std::fs::read_to_string(path).ok()?;
        let first: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
        serde_json::from_value(first.get("attachment")?.clone()).ok()
    }
}

/// One ADD's journal file: the host functions append to it.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
}

impl EffectJournal for JournalFile {
    fn append(&self, effect: &Effect) -> std::io::Result<()> {
        // Not fsynced: it must survive the agent's crash, not the node's (a
        // node that restarts has lost every pod namespace anyway).
        let line = serde_json::to_string(effect).expect("effects serialize");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_container_ids_get_digest_names_and_come_back_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path()).unwrap();
        let long = AttachmentKey {
            container_id: "a".repeat(256),
            ifname: "eth0".into(),
        };
        let short = AttachmentKey {
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        for k in [&long, &short] {
            let f = j.start(k).unwrap();
            f.append(&Effect::Allocated {
                pool: "v4".into(),
                address: "10.0.0.2".parse().unwrap(),
            })
            .unwrap();
        }
        assert!(j.path(&long).file_name().unwrap().len() <= NAME_MAX);
        let mut pending = j.pending();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].0, long);
        assert_eq!(pending[1].0, short);
        assert_eq!(pending[0].1.len(), 1, "the header is not an effect");
        j.finish(&long);
        assert_eq!(j.pending().len(), 1);
    }
}
