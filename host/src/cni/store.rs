//! What the agent remembers about each attachment (redb, fsynced): enough to
//! undo it when its pod is gone, whatever the module does.

use crate::datapath::ipam::AttachmentKey;
use crate::runtime::Effect;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const RECORDS: TableDefinition<'static, &str, &str> = TableDefinition::new("attachments");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RecordState {
    /// ADD started; its effects are in the journal until it finishes.
    Adding,
    /// ADD succeeded.
    Ready,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    pub container_id: String,
    pub ifname: String,
    /// The network name of the configuration.
    pub network: String,
    pub netns: Option<String>,
    /// `namespace/name` of the pod, from CNI_ARGS.
    pub pod: Option<String>,
    /// The sticky owner, when the pod's address is kept across re-creation.
    pub owner: Option<String>,
    pub state: RecordState,
    /// What the host did for this attachment, in order.
    pub effects: Vec<Effect>,
    /// Our part of the ADD result (not chained after a previous plugin's),
    /// in the 1.1 form. Records of older agents hold the chained result.
    pub result: Option<serde_json::Value>,
    pub created_at: u64,
}

impl AttachmentRecord {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

fn k(key: &AttachmentKey) -> String {
    format!("{}\0{}", key.container_id, key.ifname)
}

pub struct AttachmentStore {
    db: Database,
}

impl std::fmt::Debug for AttachmentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachmentStore")
    }
}

type Result<T> = std::result::Result<T, String>;

/// The store's errors say which operation failed.
fn e<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |err| format!("attachment store: {what}: {err}")
}

impl AttachmentStore {
    pub fn open(path: &Path) -> Result<AttachmentStore> {
        let db = Database::create(path)
            .map_err(|err| format!("attachment store {}: {err}", path.display()))?;
        let txn = db.begin_write().map_err(e("open"))?;
        txn.open_table(RECORDS).map_err(e("open"))?;
        txn.commit().map_err(e("open"))?;
        Ok(AttachmentStore { db })
    }

    pub fn put(&self, r: &AttachmentRecord) -> Result<()> {
        let json = serde_json::to_string(r).map_err(e("encode"))?;
        let txn = self.db.begin_write().map_err(e("write"))?;
        {
            let mut t = txn.open_table(RECORDS).map_err(e("write"))?;
            t.insert(k(&r.key()).as_str(), json.as_str())
                .map_err(e("write"))?;
        }
        txn.commit().map_err(e("write"))
    }

    pub fn get(&self, key: &AttachmentKey) -> Result<Option<AttachmentRecord>> {
        let txn = self.db.begin_read().map_err(e("read"))?;
        let t = txn.open_table(RECORDS).map_err(e("read"))?;
        match t.get(k(key).as_str()).map_err(e("read"))? {
            Some(v) => serde_json::from_str(v.value())
                .map(Some)
                .map_err(e("decode")),
            None => Ok(None),
        }
    }

    pub fn remove(&self, key: &AttachmentKey) -> Result<()> {
        let txn = self.db.begin_write().map_err(e("delete"))?;
        {
            let mut t = txn.open_table(RECORDS).map_err(e("delete"))?;
            t.remove(k(key).as_str()).map_err(e("delete"))?;
        }
        txn.commit().map_err(e("delete"))
    }

    pub fn all(&self) -> Result<Vec<AttachmentRecord>> {
        let txn = self.db.begin_read().map_err(e("read"))?;
        let t = txn.open_table(RECORDS).map_err(e("read"))?;
        let mut out = vec![];
        for row in t.iter().map_err(e("read"))? {
            let (_, v) = row.map_err(e("read"))?;
            out.push(serde_json::from_str(v.value()).map_err(e("decode"))?);
        }
        Ok(out)
    }
}
