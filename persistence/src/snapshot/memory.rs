//! An in-memory snapshot store for tests and simulation, shared by its clones.

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{verify, SnapshotError, SnapshotMeta, SnapshotStore};

/// Each snapshot's manifest and blob, keyed by (shard, lsn).
type Blobs = BTreeMap<(u32, u64), (SnapshotMeta, Vec<u8>)>;

/// Snapshots in memory, keyed by (shard, lsn).
#[derive(Clone, Default)]
pub struct MemorySnapshotStore {
    inner: Arc<Mutex<Blobs>>,
}

impl MemorySnapshotStore {
    /// Returns an empty store.
    pub fn new() -> MemorySnapshotStore {
        MemorySnapshotStore::default()
    }
}

#[async_trait]
impl SnapshotStore for MemorySnapshotStore {
    async fn put(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), SnapshotError> {
        verify(&meta, &data)?;
        self.inner
            .lock()
            .insert((meta.shard, meta.lsn), (meta, data));
        Ok(())
    }

    async fn list(&self, shard: u32) -> Result<Vec<SnapshotMeta>, SnapshotError> {
        let inner = self.inner.lock();
        Ok(inner
            .range((shard, 0)..=(shard, u64::MAX))
            .rev()
            .map(|(_, (m, _))| m.clone())
            .collect())
    }

    async fn get(&self, meta: &SnapshotMeta) -> Result<Vec<u8>, SnapshotError> {
        let inner = self.inner.lock();
        let (_, data) = inner
            .get(&(meta.shard, meta.lsn))
            .ok_or(SnapshotError::NotFound {
                shard: meta.shard,
                lsn: meta.lsn,
            })?;
        verify(meta, data)?;
        Ok(data.clone())
    }

    async fn retain(&self, shard: u32, keep: usize) -> Result<(), SnapshotError> {
        let old: Vec<_> = self.list(shard).await?.into_iter().skip(keep).collect();
        let mut inner = self.inner.lock();
        for meta in old {
            inner.remove(&(shard, meta.lsn));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
