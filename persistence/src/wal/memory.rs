//! An in-memory stream for tests and simulation: appends are "durable" once they return, and
//! a clone of the handle shares the same records (so a test can drop a ledger and reopen it
//! on the same stream, as after a crash).

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Tail, Wal, WalError};
use crate::record::{self, EncodedRecord, Lsn, Record};

/// An in-memory stream shared by its clones.
#[derive(Clone, Default)]
pub struct MemoryWal {
    shards: Arc<Mutex<HashMap<u32, Vec<EncodedRecord>>>>,
}

impl MemoryWal {
    /// Returns an empty stream.
    pub fn new() -> MemoryWal {
        MemoryWal::default()
    }

    /// Returns the number of records of a shard.
    pub fn num_records(&self, shard: u32) -> usize {
        self.shards.lock().get(&shard).map_or(0, Vec::len)
    }

    /// Replaces the bytes of a stored record (to test that readers detect tampering).
    pub fn tamper(&self, shard: u32, index: usize, f: impl FnOnce(&mut Vec<u8>)) {
        let mut shards = self.shards.lock();
        f(&mut shards.get_mut(&shard).expect("shard exists")[index].bytes);
    }
}

#[async_trait]
impl Wal for MemoryWal {
    async fn append(&self, shard: u32, record: EncodedRecord) -> Result<(), WalError> {
        let mut shards = self.shards.lock();
        let log = shards.entry(shard).or_default();
        let (expected_first, expected_prev) = log
            .last()
            .map_or((1, [0; 32]), |r| (r.last_lsn + 1, r.hash));
        if record.first_lsn != expected_first || record.prev_hash != expected_prev {
            return Err(WalError::OutOfOrder {
                shard,
                reason: "record does not follow the tail",
            });
        }
        log.push(record);
        Ok(())
    }

    async fn tail(&self, shard: u32) -> Result<Option<Tail>, WalError> {
        Ok(self
            .shards
            .lock()
            .get(&shard)
            .and_then(|l| l.last())
            .map(|r| Tail {
                last_lsn: r.last_lsn,
                hash: r.hash,
            }))
    }

    async fn read(
        &self,
        shard: u32,
        after_lsn: Lsn,
        max_records: usize,
    ) -> Result<Vec<Record>, WalError> {
        let shards = self.shards.lock();
        let Some(log) = shards.get(&shard) else {
            return Ok(Vec::new());
        };
        let start = log.partition_point(|r| r.last_lsn <= after_lsn);
        let mut out: Vec<Record> = Vec::new();
        for (i, enc) in log[start..].iter().take(max_records.max(1)).enumerate() {
            let corrupted = |reason: String| WalError::Corrupted {
                shard,
                location: format!("memory record {}", start + i),
                reason,
            };
            let (rec, _) = record::decode(&enc.bytes).map_err(|e| corrupted(e.to_string()))?;
            if let Some(prev) = out.last() {
                record::check_follows(Some((prev.last_lsn, prev.hash)), &rec)
                    .map_err(|r| corrupted(r.into()))?;
            }
            out.push(rec);
        }
        Ok(out)
    }

    async fn prune(&self, shard: u32, lsn: Lsn) -> Result<(), WalError> {
        if let Some(log) = self.shards.lock().get_mut(&shard) {
            // Keep the last record so the tail stays known.
            let n = log
                .partition_point(|r| r.last_lsn <= lsn)
                .min(log.len().saturating_sub(1));
            log.drain(..n);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
