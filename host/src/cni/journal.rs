//! The effect journal of ADDs in progress: one file per attachment, one JSON
//! line per effect, appended by the host functions as they act. A crash in the
//! middle of an ADD leaves the file behind, and start-up undoes what it lists.

use crate::datapath::ipam::AttachmentKey;
use crate::runtime::{Effect, EffectJournal};
use std::path::{Path, PathBuf};

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
    /// so they make safe file names.
    pub fn path(&self, key: &AttachmentKey) -> PathBuf {
        self.dir
            .join(format!("{}__{}.jsonl", key.container_id, key.ifname))
    }

    /// Start a journal for an ADD, empty.
    pub fn start(&self, key: &AttachmentKey) -> std::io::Result<std::sync::Arc<JournalFile>> {
        let p = self.path(key);
        std::fs::write(&p, b"")?;
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
                let (container_id, ifname) = stem.split_once("__")?;
                Some((
                    AttachmentKey {
                        container_id: container_id.to_string(),
                        ifname: ifname.to_string(),
                    },
                    Journal::read(&p),
                ))
            })
            .collect()
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
