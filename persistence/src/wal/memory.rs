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
    /// The recorded shard count (see [`Wal::claim_shard_count`]).
    shard_count: Arc<Mutex<Option<u32>>>,
    /// Set by [`MemoryWal::with_retention_ms`]: records may expire ([`MemoryWal::expire`]), so
    /// an empty shard takes any first record, as a Kinesis stream does.
    retention_ms_opt: Option<u64>,
}

impl MemoryWal {
    /// Returns an empty stream.
    pub fn new() -> MemoryWal {
        MemoryWal::default()
    }

    /// Returns an empty stream whose records expire after `retention_ms`, as a Kinesis stream's
    /// do; a test makes them expire with [`MemoryWal::expire`].
    pub fn with_retention_ms(retention_ms: u64) -> MemoryWal {
        MemoryWal {
            retention_ms_opt: Some(retention_ms),
            ..MemoryWal::default()
        }
    }

    /// Drops every record of a shard, as the retention of a stream does to a shard that had no
    /// write for that long. Only for a stream made by [`MemoryWal::with_retention_ms`].
    pub fn expire(&self, shard: u32) {
        assert!(
            self.retention_ms_opt.is_some(),
            "records of a stream without retention never expire"
        );
        self.shards.lock().remove(&shard);
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
        let expected_opt = match log.last() {
            Some(r) => Some((r.last_lsn + 1, r.hash)),
            // Records may have expired: the first record continues a snapshot.
            None if self.retention_ms_opt.is_some() => None,
            None => Some((1, [0; 32])),
        };
        let (expected_first, expected_prev) =
            expected_opt.unwrap_or((record.first_lsn, record.prev_hash));
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

    async fn claim_shard_count(&self, num_shards: u32) -> Result<(), WalError> {
        let mut recorded = self.shard_count.lock();
        match *recorded {
            Some(n) if n == num_shards => Ok(()),
            Some(n) => Err(WalError::ShardCountMismatch {
                location: self.describe(),
                recorded: n,
                configured: num_shards,
            }),
            None => {
                let with_records: Vec<u32> = self
                    .shards
                    .lock()
                    .iter()
                    .filter(|(_, log)| !log.is_empty())
                    .map(|(&shard, _)| shard)
                    .collect();
                super::check_unrecorded_shard_count(self.describe(), with_records, num_shards)?;
                *recorded = Some(num_shards);
                Ok(())
            }
        }
    }

    async fn recorded_shard_count(&self) -> Result<Option<u32>, WalError> {
        Ok(*self.shard_count.lock())
    }

    async fn retention_ms(&self) -> Result<Option<u64>, WalError> {
        Ok(self.retention_ms_opt)
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
