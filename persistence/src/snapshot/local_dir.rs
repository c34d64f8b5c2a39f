//! The default snapshot backend: files under a directory.
//!
//! ```text
//! <dir>/shard-00003/00000000000000001234.snap            data (written first)
//! <dir>/shard-00003/00000000000000001234.manifest.json   manifest (written last)
//! ```
//! Both are written to a temporary name, fsynced, renamed into place, and the directory
//! fsynced: a crash leaves either no manifest (the snapshot is ignored) or a complete one.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use async_trait::async_trait;

use super::{verify, verify_parts, SnapshotError, SnapshotMeta, SnapshotStore};

/// Snapshots as files under one directory.
pub struct LocalDirSnapshotStore {
    dir: PathBuf,
}

fn io_err(e: std::io::Error) -> SnapshotError {
    SnapshotError::Unavailable(Box::new(e))
}

fn write_durably(dir: &Path, name: &str, parts: &[impl AsRef<[u8]>]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    for part in parts {
        for chunk in part
            .as_ref()
            .chunks(crate::limits::SNAPSHOT_WRITE_CHUNK_BYTES)
        {
            file.write_all(chunk)?;
            file.sync_data()?;
        }
    }
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl LocalDirSnapshotStore {
    /// Opens (creating if needed) the snapshot directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalDirSnapshotStore, SnapshotError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err)?;
        Ok(LocalDirSnapshotStore { dir })
    }

    fn shard_dir(&self, shard: u32) -> PathBuf {
        self.dir.join(format!("shard-{shard:05}"))
    }

    fn list_sync(&self, shard: u32) -> Result<Vec<SnapshotMeta>, SnapshotError> {
        let dir = self.shard_dir(shard);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        let mut metas = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err)?.path();
            if !path.to_string_lossy().ends_with(".manifest.json") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err)?;
            match serde_json::from_slice::<SnapshotMeta>(&bytes) {
                Ok(meta) if meta.shard == shard => metas.push(meta),
                Ok(_) | Err(_) => {
                    tracing::warn!(file = %path.display(), "ignoring unreadable snapshot manifest");
                }
            }
        }
        metas.sort_unstable_by_key(|meta| std::cmp::Reverse(meta.lsn));
        Ok(metas)
    }
}

#[async_trait]
impl SnapshotStore for LocalDirSnapshotStore {
    async fn put(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), SnapshotError> {
        self.put_parts(meta, vec![data]).await
    }

    /// Writes the parts one after the other into the snapshot's file.
    async fn put_parts(
        &self,
        meta: SnapshotMeta,
        parts: Vec<Vec<u8>>,
    ) -> Result<(), SnapshotError> {
        verify_parts(&meta, &parts)?;
        let dir = self.shard_dir(meta.shard);
        crate::blocking::run(move || -> Result<(), SnapshotError> {
            fs::create_dir_all(&dir).map_err(io_err)?;
            write_durably(&dir, &format!("{:020}.snap", meta.lsn), &parts).map_err(io_err)?;
            let manifest = serde_json::to_vec_pretty(&meta).expect("a manifest serializes");
            write_durably(
                &dir,
                &format!("{:020}.manifest.json", meta.lsn),
                &[manifest],
            )
            .map_err(io_err)
        })
        .await
        .map_err(|e| SnapshotError::Unavailable(Box::new(e)))?
    }

    async fn list(&self, shard: u32) -> Result<Vec<SnapshotMeta>, SnapshotError> {
        self.list_sync(shard)
    }

    async fn get(&self, meta: &SnapshotMeta) -> Result<Vec<u8>, SnapshotError> {
        let path = self
            .shard_dir(meta.shard)
            .join(format!("{:020}.snap", meta.lsn));
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotFound {
                    shard: meta.shard,
                    lsn: meta.lsn,
                })
            }
            Err(e) => return Err(io_err(e)),
        };
        verify(meta, &data)?;
        Ok(data)
    }

    async fn retain(&self, shard: u32, keep: usize) -> Result<(), SnapshotError> {
        let dir = self.shard_dir(shard);
        for meta in self.list_sync(shard)?.into_iter().skip(keep) {
            fs::remove_file(dir.join(format!("{:020}.manifest.json", meta.lsn))).map_err(io_err)?;
            let _ = fs::remove_file(dir.join(format!("{:020}.snap", meta.lsn)));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }
}
