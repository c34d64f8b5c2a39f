//! Restore: the newest valid snapshot of a shard plus the stream after it, folded with the
//! pure apply. Used by a node at start, by the periodic snapshots, and by the `saldo shard`
//! tooling.

use saldo_persistence::{snapshot::meta_for_parts, Lsn, SnapshotMeta, SnapshotStore, Wal};

use crate::{
    limits::{RESTORE_READ_RECORDS, SNAPSHOT_MAP_PRESIZE_MAX},
    state::ShardState,
    EngineError,
};

/// Where a restore should stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Everything durable.
    Latest,
    /// The state right after this LSN (snapshots above it are not used).
    AtLsn(Lsn),
    /// The state after the last stream record whose events all happened at or before this
    /// instant (µs since the Unix epoch); only snapshots taken at or before it are used.
    AtTime(u64),
}

/// Where a restore stands, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreProgress {
    /// The snapshot it started from (0: none).
    pub snapshot_lsn: Lsn,
    /// Folded up to here.
    pub lsn: Lsn,
    /// The stream's tail when the restore began (the end of a `Latest` restore).
    pub tail_lsn: Lsn,
}

/// Returns the shard's state: newest valid snapshot (at or below the target) + stream tail.
/// A snapshot that fails its checksum or does not decode is skipped with a warning for an
/// older one; a stream that cannot be folded is an error (never skipped).
pub async fn restore_shard(
    wal: &dyn Wal,
    snapshots: &dyn SnapshotStore,
    shard: u32,
    movements_window: usize,
    target: RestoreTarget,
) -> Result<ShardState, EngineError> {
    restore_shard_with_progress(wal, snapshots, shard, movements_window, target, &mut |_| {}).await
}

/// [`restore_shard`], calling `progress` after the snapshot is loaded and after each batch of
/// records (for the operator tool's progress bar).
pub async fn restore_shard_with_progress(
    wal: &dyn Wal,
    snapshots: &dyn SnapshotStore,
    shard: u32,
    movements_window: usize,
    target: RestoreTarget,
    progress: &mut (dyn FnMut(RestoreProgress) + Send),
) -> Result<ShardState, EngineError> {
    let tail_lsn = wal.tail(shard).await?.map_or(0, |t| t.last_lsn);
    let (limit, time_limit) = match target {
        RestoreTarget::Latest => (Lsn::MAX, u64::MAX),
        RestoreTarget::AtLsn(lsn) => (lsn, u64::MAX),
        RestoreTarget::AtTime(us) => (Lsn::MAX, us),
    };
    // Candidates, newest first; the empty state last (usable while the stream is unpruned).
    let mut candidates: Vec<Option<SnapshotMeta>> = snapshots
        .list(shard)
        .await?
        .into_iter()
        .filter(|meta| meta.lsn <= limit && meta.taken_at_us <= time_limit)
        .map(Some)
        .collect();
    candidates.push(None);
    let mut first_error_opt = None;
    for meta_opt in candidates {
        let started = std::time::Instant::now();
        let state = match &meta_opt {
            None => ShardState::empty(shard, movements_window),
            Some(meta) => match load_snapshot(
                snapshots,
                meta,
                shard,
                movements_window,
                tail_movements_max(tail_lsn, limit, meta.lsn),
            )
            .await
            {
                Some(state) => state,
                None => continue,
            },
        };
        let loaded_ms = started.elapsed().as_millis() as u64;
        match fold_tail(wal, state, limit, time_limit, tail_lsn, progress).await? {
            Fold::Done(state) => {
                tracing::debug!(
                    shard,
                    snapshot_lsn = meta_opt.as_ref().map_or(0, |m| m.lsn),
                    lsn = state.lsn,
                    snapshot_ms = loaded_ms,
                    tail_ms = started.elapsed().as_millis() as u64 - loaded_ms,
                    "shard restored"
                );
                if let RestoreTarget::AtLsn(lsn) = target {
                    if state.lsn < lsn {
                        return Err(EngineError::Restore(format!(
                            "shard {shard}: stream ends at lsn {}, before {lsn}",
                            state.lsn
                        )));
                    }
                }
                return Ok(*state);
            }
            // The snapshot is not on the stream's chain (a newer owner epoch rewrote what it
            // covers, or it was written from another stream): an older one may be.
            Fold::NotOnChain(e) => {
                tracing::warn!(shard, snapshot_lsn = meta_opt.as_ref().map_or(0, |m| m.lsn),
                    error = %e, "snapshot is not on the stream's chain, trying an older one");
                first_error_opt.get_or_insert(e);
            }
        }
    }
    Err(EngineError::Restore(format!(
        "shard {shard}: no snapshot continues on the stream's chain, and the stream alone does \
         not start at lsn 1: {}",
        first_error_opt.map_or_else(String::new, |e| e.to_string())
    )))
}

/// Returns a snapshot's state if it loads, decodes and matches its manifest (else warns).
async fn load_snapshot(
    snapshots: &dyn SnapshotStore,
    meta: &SnapshotMeta,
    shard: u32,
    movements_window: usize,
    room: usize,
) -> Option<ShardState> {
    let decoded = match snapshots.get(meta).await {
        Ok(bytes) => ShardState::decode_with_room(bytes.into(), room),
        Err(e) => Err(e.to_string()),
    };
    match decoded {
        Ok(mut s) if s.shard == shard && s.lsn == meta.lsn => {
            s.movements_window = movements_window;
            Some(s)
        }
        Ok(_) => {
            tracing::warn!(
                shard,
                lsn = meta.lsn,
                "snapshot does not match its manifest, trying an older one"
            );
            None
        }
        Err(e) => {
            tracing::warn!(shard, lsn = meta.lsn, error = %e, "unusable snapshot, trying an older one");
            None
        }
    }
}

/// Movements a fold from `from_lsn` to the stream's tail (or `limit`) can add, at most one per
/// event, up to [`SNAPSHOT_MAP_PRESIZE_MAX`]: the room a restore makes for them up front.
fn tail_movements_max(tail_lsn: Lsn, limit: Lsn, from_lsn: Lsn) -> usize {
    let events = tail_lsn.min(limit).saturating_sub(from_lsn);
    usize::try_from(events)
        .unwrap_or(usize::MAX)
        .min(SNAPSHOT_MAP_PRESIZE_MAX)
}

/// How folding the stream onto a starting state ended.
enum Fold {
    /// Folded up to the target (boxed: the state is some 400 bytes).
    Done(Box<ShardState>),
    /// The first record after the starting state does not continue it.
    NotOnChain(crate::state::FoldError),
}

/// Folds the stream after `state` up to the target. An error at the junction (the first
/// record after the starting state) is `NotOnChain`; any later one is an error of the stream.
async fn fold_tail(
    wal: &dyn Wal,
    mut state: ShardState,
    limit: Lsn,
    time_limit: u64,
    tail_lsn: Lsn,
    progress: &mut (dyn FnMut(RestoreProgress) + Send),
) -> Result<Fold, EngineError> {
    let shard = state.shard;
    let snapshot_lsn = state.lsn;
    let mut report = |state: &ShardState| {
        progress(RestoreProgress {
            snapshot_lsn,
            lsn: state.lsn,
            tail_lsn,
        })
    };
    report(&state);
    // Each event of the tail adds at most one movement: room for all of them at once (up to
    // the presize bound), instead of rehashing a map of millions on the way (a decoded
    // snapshot has the room already, see `load_snapshot`). Each rehash faulted in a new
    // table: a sixth of the CPU of a node under a batch load went there. The slots get
    // the same room for the packed accounts the tail takes out (`AccountTable::reserve_slots`).
    let tail_max = tail_movements_max(tail_lsn, limit, state.lsn);
    state.movements.reserve(tail_max);
    state.accounts.reserve_slots(tail_max);
    let mut at_junction = true;
    loop {
        let records = wal.read(shard, state.lsn, RESTORE_READ_RECORDS).await?;
        if records.is_empty() {
            break;
        }
        // The records to fold: up to the position or time the restore stops at.
        let mut end = records.len();
        let mut stop = false;
        for (i, rec) in records.iter().enumerate() {
            if time_limit != u64::MAX && rec.last_lsn > state.lsn {
                let events = crate::event::decode_all(&rec.payload)
                    .map_err(|e| EngineError::Restore(format!("shard {shard}: {e}")))?;
                if events.iter().any(|e| e.at().0 > time_limit) {
                    (end, stop) = (i, true);
                    break;
                }
            }
            if rec.last_lsn > limit {
                if rec.first_lsn <= limit {
                    return Err(EngineError::Restore(format!(
                        "shard {shard}: lsn {limit} is inside record {}..={}; pick a record boundary",
                        rec.first_lsn, rec.last_lsn
                    )));
                }
                (end, stop) = (i, true);
                break;
            }
        }
        let records = &records[..end];
        // The first record past the state's position: where a snapshot that is not on the
        // stream's chain shows.
        let junction_opt = at_junction
            .then(|| records.iter().find(|r| r.last_lsn > state.lsn))
            .flatten()
            .map(|r| r.first_lsn);
        match state.fold_verifying(records) {
            Ok(()) => {}
            Err(e) if e.chain && Some(e.lsn) == junction_opt => return Ok(Fold::NotOnChain(e)),
            Err(e) => return Err(EngineError::Restore(e.to_string())),
        }
        if junction_opt.is_some() {
            at_junction = false;
        }
        if stop {
            return Ok(Fold::Done(Box::new(state)));
        }
        report(&state);
    }
    Ok(Fold::Done(Box::new(state)))
}

/// Writes a snapshot of a shard folded from its durable stream — never from live memory, so
/// the hot path is not paused — then keeps the newest `keep` snapshots and prunes the stream
/// segments the oldest kept one covers. Returns the new snapshot's manifest and size.
pub async fn write_snapshot(
    wal: &dyn Wal,
    snapshots: &dyn SnapshotStore,
    shard: u32,
    movements_window: usize,
    keep: usize,
) -> Result<WrittenSnapshot, EngineError> {
    write_snapshot_with_progress(wal, snapshots, shard, movements_window, keep, &mut |_| {}).await
}

/// [`write_snapshot`], calling `progress` as the fold goes ([`restore_shard_with_progress`]).
pub async fn write_snapshot_with_progress(
    wal: &dyn Wal,
    snapshots: &dyn SnapshotStore,
    shard: u32,
    movements_window: usize,
    keep: usize,
    progress: &mut (dyn FnMut(RestoreProgress) + Send),
) -> Result<WrittenSnapshot, EngineError> {
    // The cut is the stream's tail as the snapshot starts. A fold to `Latest` would chase the
    // writers: under a sustained load it folded every event since the previous snapshot and
    // more (4 million events in one snapshot of a minute-long bench, on a map growing as it
    // went), and the tail a crash would have to replay grew with it.
    let target = match wal.tail(shard).await? {
        Some(tail) => RestoreTarget::AtLsn(tail.last_lsn),
        None => RestoreTarget::Latest,
    };
    let state =
        restore_shard_with_progress(wal, snapshots, shard, movements_window, target, progress)
            .await?;
    let parts = state.encode_parts();
    let entries = state.accounts.len() + state.movements.len();
    let meta = meta_for_parts(
        shard,
        state.lsn,
        state.record_hash,
        crate::types::Timestamp::now().0,
        &parts,
    );
    drop(state);
    snapshots.put_parts(meta.clone(), parts).await?;
    snapshots.retain(shard, keep.max(1)).await?;
    if let Some(oldest) = snapshots.list(shard).await?.last() {
        wal.prune(shard, oldest.lsn).await?;
    }
    tracing::info!(
        shard,
        lsn = meta.lsn,
        size_bytes = meta.size_bytes,
        "snapshot written"
    );
    Ok(WrittenSnapshot { meta, entries })
}

/// A snapshot [`write_snapshot`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenSnapshot {
    /// Its manifest.
    pub meta: SnapshotMeta,
    /// Accounts and movements it holds.
    pub entries: usize,
}
