//! `saldo shard verify`: checks a shard's stream end to end (checksums, continuity, hash
//! chain), every snapshot against the stream folded to its position, and a live node's state
//! against the one rebuilt at the same position.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use saldo_engine::{
    recovery::{restore_shard_with_progress, RestoreProgress, RestoreTarget},
    state::{digest, ShardState},
};
use saldo_persistence::{record::RecordHash, Lsn, SnapshotStore, Wal};

use super::{
    restore::{rebuild, Progress},
    Output,
};
use crate::storage::Storage;

/// Records read per call while verifying a stream end to end.
const VERIFY_READ_RECORDS: usize = 1_000;

/// What `saldo shard verify` was asked for.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The shard.
    pub shard: u32,
    /// A live node's base URL (`http://127.0.0.1:8080`): compare its state checksum.
    pub node: Option<String>,
    /// Bearer token with the ledger:admin scope for `node`.
    pub token: Option<String>,
}

/// Reads the whole retained stream of `shard` and checks every record's checksum (the
/// backend does), LSN continuity and the hash chain. Returns `(first_lsn, last_lsn, records)`;
/// the first record is checked against the zero hash when the stream starts at LSN 1.
async fn verify_chain(wal: &dyn Wal, shard: u32) -> anyhow::Result<(Lsn, Lsn, u64)> {
    let mut prev_opt: Option<(Lsn, RecordHash)> = None;
    let (mut first, mut records) = (0, 0u64);
    let mut progress = Progress::new(format!("checking the stream of shard {shard}"));
    let tail = wal.tail(shard).await?.map_or(0, |t| t.last_lsn);
    loop {
        let after = prev_opt.map_or(0, |(lsn, _)| lsn);
        let batch = wal.read(shard, after, VERIFY_READ_RECORDS).await?;
        if batch.is_empty() {
            break;
        }
        for rec in &batch {
            match prev_opt {
                None if rec.first_lsn == 1 => {
                    saldo_persistence::record::check_follows(Some((0, [0; 32])), rec)
                        .map_err(|r| anyhow::anyhow!("shard {shard}: first record (lsn 1): {r}"))?;
                }
                None => {}
                Some(prev) => {
                    saldo_persistence::record::check_follows(Some(prev), rec).map_err(|r| {
                        anyhow::anyhow!(
                            "shard {shard}: record {}..={} does not follow lsn {}: {r}",
                            rec.first_lsn,
                            rec.last_lsn,
                            prev.0
                        )
                    })?;
                }
            }
            if prev_opt.is_none() {
                first = rec.first_lsn;
            }
            prev_opt = Some((rec.last_lsn, rec.hash));
            records += 1;
        }
        progress.update(RestoreProgress {
            snapshot_lsn: 0,
            lsn: prev_opt.map_or(0, |p| p.0),
            tail_lsn: tail,
        });
    }
    progress.finish();
    Ok((first, prev_opt.map_or(0, |p| p.0), records))
}

/// `saldo shard verify`. Returns the exit code: 1 when a problem was found.
pub(super) async fn verify(
    storage: &Storage,
    v: &VerifyOptions,
    window: usize,
    output: Output,
) -> anyhow::Result<i32> {
    let shard = v.shard;
    let mut problems: Vec<String> = Vec::new();
    let mut report = serde_json::Map::new();
    report.insert("shard".into(), shard.into());

    // 1. The stream: checksums, continuity and the hash chain, end to end.
    let (first, last, records) = verify_chain(&*storage.wal, shard).await?;
    report.insert(
        "stream".into(),
        serde_json::json!({ "first_lsn": first, "last_lsn": last, "records": records }),
    );
    eprintln!("stream: {records} records, lsn {first}..={last}: checksums and hash chain OK");

    // 2. Every snapshot against the stream: a snapshot must equal the fold of the stream up to
    // its position (when the stream still starts at lsn 1; otherwise, against the older
    // snapshot + stream).
    let metas = storage.snapshots.list(shard).await?;
    let mut snap_rows = Vec::new();
    for meta in &metas {
        let stored = storage
            .snapshots
            .get(meta)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                ShardState::decode(&bytes).map_err(|e| anyhow::anyhow!("undecodable: {e}"))
            });
        let ok = match stored {
            Err(e) => {
                problems.push(format!("snapshot at lsn {} is corrupt: {e}", meta.lsn));
                false
            }
            Ok(stored) => {
                let rebuilt = if first == 1 {
                    fold_stream(&*storage.wal, shard, window, meta.lsn).await
                } else {
                    rebuild_below(storage, shard, window, meta.lsn).await
                };
                match rebuilt {
                    Ok(Some(rebuilt)) => {
                        let same = digest(rebuilt.accounts.values())
                            == digest(stored.accounts.values())
                            && rebuilt.record_hash == meta.record_hash;
                        if !same {
                            problems.push(format!(
                                "snapshot at lsn {} differs from the stream folded to that position",
                                meta.lsn
                            ));
                        }
                        same
                    }
                    Ok(None) => {
                        eprintln!(
                            "snapshot at lsn {}: nothing older to check it against (stream pruned below it)",
                            meta.lsn
                        );
                        true
                    }
                    Err(e) => {
                        problems.push(format!("snapshot at lsn {}: {e:#}", meta.lsn));
                        false
                    }
                }
            }
        };
        snap_rows.push(serde_json::json!({ "lsn": meta.lsn, "ok": ok }));
    }
    report.insert("snapshots".into(), snap_rows.into());

    // 3. The newest state: snapshot + stream.
    let state = rebuild(storage, shard, window, RestoreTarget::Latest).await?;
    let checksum = hex::encode(digest(state.accounts.values()));
    report.insert(
        "rebuilt".into(),
        serde_json::json!({ "lsn": state.lsn, "accounts": state.accounts.len(), "checksum": checksum }),
    );
    eprintln!(
        "rebuilt at lsn {} ({} accounts): checksum {checksum}",
        state.lsn,
        state.accounts.len()
    );

    // 4. A live node's state at its durable position, rebuilt at the same position.
    if let Some(node) = &v.node {
        let (lsn, live) = node_checksum(node, shard, v.token.as_deref()).await?;
        let at = rebuild(storage, shard, window, RestoreTarget::AtLsn(lsn)).await?;
        let rebuilt = hex::encode(digest(at.accounts.values()));
        let same = rebuilt == live;
        if !same {
            problems.push(format!(
                "the node's state at lsn {lsn} ({live}) differs from the rebuilt one ({rebuilt})"
            ));
        }
        eprintln!(
            "node {node}: lsn {lsn}, checksum {live}: {}",
            if same { "matches" } else { "DIFFERS" }
        );
        report.insert(
            "node".into(),
            serde_json::json!({ "url": node, "lsn": lsn, "checksum": live, "matches": same }),
        );
    }
    report.insert("ok".into(), problems.is_empty().into());
    report.insert("problems".into(), problems.clone().into());
    match output {
        Output::Json => println!("{}", serde_json::Value::Object(report)),
        Output::Text => {
            if problems.is_empty() {
                println!("shard {shard}: verified");
            } else {
                for p in &problems {
                    println!("shard {shard}: {p}");
                }
            }
        }
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

/// Folds the stream from lsn 1 up to `lsn` (no snapshot).
async fn fold_stream(
    wal: &dyn Wal,
    shard: u32,
    window: usize,
    lsn: Lsn,
) -> anyhow::Result<Option<ShardState>> {
    let mut state = ShardState::empty(shard, window);
    while state.lsn < lsn {
        let batch = wal.read(shard, state.lsn, VERIFY_READ_RECORDS).await?;
        if batch.is_empty() {
            bail!("the stream ends at lsn {}, before {lsn}", state.lsn);
        }
        for rec in &batch {
            if rec.last_lsn > lsn {
                bail!(
                    "lsn {lsn} is inside record {}..={}",
                    rec.first_lsn,
                    rec.last_lsn
                );
            }
            state.apply_record(rec)?;
            if state.lsn == lsn {
                break;
            }
        }
    }
    Ok(Some(state))
}

/// Rebuilds the state at `lsn` from an older snapshot + the stream; `None` if there is none.
async fn rebuild_below(
    storage: &Storage,
    shard: u32,
    window: usize,
    lsn: Lsn,
) -> anyhow::Result<Option<ShardState>> {
    let older = storage
        .snapshots
        .list(shard)
        .await?
        .into_iter()
        .any(|m| m.lsn < lsn);
    if !older {
        return Ok(None);
    }
    let only_older = OlderThan {
        inner: storage.snapshots.clone(),
        lsn,
    };
    let state = restore_shard_with_progress(
        &*storage.wal,
        &only_older,
        shard,
        window,
        RestoreTarget::AtLsn(lsn),
        &mut |_| {},
    )
    .await?;
    Ok(Some(state))
}

/// A view of a snapshot store that hides the snapshots at or above an LSN.
struct OlderThan {
    inner: Arc<dyn SnapshotStore>,
    lsn: Lsn,
}

#[async_trait::async_trait]
impl SnapshotStore for OlderThan {
    async fn put(
        &self,
        _meta: saldo_persistence::SnapshotMeta,
        _data: Vec<u8>,
    ) -> Result<(), saldo_persistence::SnapshotError> {
        unreachable!("verification never writes")
    }
    async fn list(
        &self,
        shard: u32,
    ) -> Result<Vec<saldo_persistence::SnapshotMeta>, saldo_persistence::SnapshotError> {
        let mut all = self.inner.list(shard).await?;
        all.retain(|m| m.lsn < self.lsn);
        Ok(all)
    }
    async fn get(
        &self,
        meta: &saldo_persistence::SnapshotMeta,
    ) -> Result<Vec<u8>, saldo_persistence::SnapshotError> {
        self.inner.get(meta).await
    }
    async fn retain(
        &self,
        _shard: u32,
        _keep: usize,
    ) -> Result<(), saldo_persistence::SnapshotError> {
        unreachable!("verification never deletes")
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

async fn node_checksum(
    node: &str,
    shard: u32,
    token_opt: Option<&str>,
) -> anyhow::Result<(Lsn, String)> {
    let url = format!(
        "{}/v1/admin/shards/{shard}/checksum",
        node.trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("http client")?;
    let mut req = client.get(&url);
    if let Some(token) = token_opt {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("GET {url} failed"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))?;
    if !status.is_success() {
        bail!(
            "GET {url}: {status}: {}",
            body.get("detail").and_then(|d| d.as_str()).unwrap_or("")
        );
    }
    let lsn = body["lsn"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("GET {url}: no lsn"))?;
    let checksum = body["checksum"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("GET {url}: no checksum"))?
        .to_owned();
    Ok((lsn, checksum))
}
