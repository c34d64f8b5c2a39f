//! Maintenance: readiness, metrics, snapshots (on a thread of their own, at a lower
//! priority), checksums, shutdown.

use super::*;

/// Sets the nice value of the calling thread (Linux keeps one per thread). Lowering a
/// thread's priority needs no privilege; a failure leaves it as it was, which is only slower.
pub(super) fn lower_this_threads_priority(nice: i32) {
    // SAFETY: plain system calls on the calling thread, no memory is shared with them.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0
    };
    if failed {
        tracing::debug!(nice, "could not lower the snapshot thread's priority");
    }
}

impl Node {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
            && !self.health.any_failed.is_cancelled()
    }

    /// Returns the shards whose stream failed, with the cause.
    pub(crate) fn failed_shards(&self) -> Vec<(u32, String)> {
        self.health.failed()
    }

    /// Returns a token cancelled once a failed shard's stream takes writes again (the
    /// process must then restart to recover it).
    pub(crate) fn restart_required(&self) -> CancellationToken {
        self.health.restart_required.clone()
    }

    pub(crate) fn stats(&self) -> LedgerStats {
        let mut s = LedgerStats {
            in_flight: (self.config.in_flight_max - self.in_flight.available_permits()) as u64,
            snapshots_total: self.snapshots_total.load(Ordering::Relaxed),
            failed_shards: self.health.failed(),
            backend: {
                let mut b = self.wal.metrics();
                b.extend(self.snapshots.metrics());
                b
            },
            ..LedgerStats::default()
        };
        let mut oldest_opt: Option<Instant> = None;
        let mut all_snapshotted = true;
        for shard in &self.shards {
            s.num_accounts += shard.slots.lock().len() as u64;
            s.wal_append_latency_us_sum += shard
                .log
                .append_latency_us
                .add_cumulative(&mut s.wal_append_latency_us);
            s.wal_batch_events_sum += shard
                .log
                .batch_events
                .add_cumulative(&mut s.wal_batch_events);
            match shard.last_snapshot.lock().at_opt {
                Some(t) => oldest_opt = Some(oldest_opt.map_or(t, |o| o.min(t))),
                None => all_snapshotted = false,
            }
        }
        s.wal_batches_total = s.wal_batch_events.last().map_or(0, |b| b.1);
        s.wal_events_total = s.wal_batch_events_sum;
        if all_snapshotted {
            s.snapshot_age_s_opt = oldest_opt.map(|t| t.elapsed().as_secs());
        }
        s
    }

    pub(super) async fn run_background(self: Arc<Self>) {
        let tick = Duration::from_millis(match self.config.snapshot_interval_ms {
            0 => SNAPSHOT_CHECK_MS_MAX,
            interval => (interval / 2).clamp(10, SNAPSHOT_CHECK_MS_MAX),
        });
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = self.stop_background.cancelled() => return,
            }
            for shard in &self.shards {
                let LastSnapshot {
                    lsn,
                    at_opt,
                    entries,
                } = *shard.last_snapshot.lock();
                let durable = shard.log.durable_lsn();
                // 0 turns a trigger off (both 0: a `saldo snapshotter` beside the node does it).
                let due_by_count = self.config.snapshot_every_events > 0
                    && durable.saturating_sub(lsn)
                        >= snapshot_due_after_events(self.config.snapshot_every_events, entries);
                let due_by_time = self.config.snapshot_interval_ms > 0
                    && durable > lsn
                    && at_opt.is_none_or(|t| {
                        t.elapsed() >= Duration::from_millis(self.config.snapshot_interval_ms)
                    });
                if due_by_count || due_by_time {
                    match self.clone().snapshot_on_own_thread(shard.clone()).await {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(shard = shard.id, error = %e, "snapshot failed; will retry")
                        }
                    }
                }
            }
        }
    }

    /// Runs [`Node::snapshot_shard`] on a thread of its own at [`SNAPSHOT_THREAD_NICE`]:
    /// folding a shard's stream is CPU-bound, so it must neither hold one of the runtime's
    /// workers (with two cores, that would stall half the request path for the whole fold) nor
    /// compete with them as an equal.
    pub(super) async fn snapshot_on_own_thread(
        self: Arc<Self>,
        shard: Arc<ShardCore>,
    ) -> Result<(), String> {
        let handle = tokio::runtime::Handle::current();
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("snapshot-{}", shard.id))
            .spawn(move || {
                lower_this_threads_priority(SNAPSHOT_THREAD_NICE);
                let result = handle.block_on(self.snapshot_shard(&shard));
                let _ = done.send(result.map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("the snapshot thread did not start: {e}"))?;
        finished
            .await
            .map_err(|_| "the snapshot thread stopped".to_string())?
    }

    /// Writes a snapshot of a shard folded from its durable stream (never from live memory,
    /// so the hot path is not paused), keeps the newest ones and prunes the stream below them.
    pub(super) async fn snapshot_shard(&self, shard: &ShardCore) -> Result<(), EngineError> {
        let written = crate::recovery::write_snapshot(
            &*self.wal,
            &*self.snapshots,
            shard.id,
            self.config.movements_window,
            self.config.snapshots_keep,
        )
        .await?;
        self.snapshots_total.fetch_add(1, Ordering::Relaxed);
        *shard.last_snapshot.lock() = LastSnapshot {
            lsn: written.meta.lsn,
            at_opt: Some(Instant::now()),
            entries: written.entries,
        };
        Ok(())
    }

    pub(crate) async fn snapshot_now(&self) -> Result<(), EngineError> {
        for shard in &self.shards {
            self.snapshot_shard(shard).await?;
        }
        Ok(())
    }

    pub(crate) async fn state_checksum(&self) -> Result<[u8; 32], EngineError> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let ids: Vec<AccountId> = shard.slots.lock().ids();
            for id in ids {
                all.push(
                    self.account_state(&id)
                        .map_err(|e| EngineError::Restore(e.to_string()))?
                        .0,
                );
            }
        }
        Ok(crate::state::digest(&all))
    }

    /// Returns `(lsn, digest)` of one shard's accounts at a quiet moment: nothing appended but
    /// not yet durable, and nothing appended while the states were read, so the digest is the
    /// fold of the stream up to `lsn` (what `saldo shard verify` rebuilds). `None` when the
    /// shard never went quiet within the attempts.
    pub(crate) async fn shard_checksum(
        &self,
        shard: u32,
    ) -> Result<Option<(Lsn, [u8; 32])>, EngineError> {
        let Some(s) = self.shards.get(shard as usize) else {
            return Err(EngineError::Restore(format!(
                "shard {shard} is not on this node ({} shards)",
                self.shards.len()
            )));
        };
        for _ in 0..SHARD_CHECKSUM_ATTEMPTS {
            let before = s.log.durable_lsn();
            if s.log.assigned_lsn() != before {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let ids: Vec<AccountId> = s.slots.lock().ids();
            let mut all = Vec::with_capacity(ids.len());
            for id in ids {
                all.push(
                    self.account_state(&id)
                        .map_err(|e| EngineError::Restore(e.to_string()))?
                        .0,
                );
            }
            if s.log.assigned_lsn() == before && s.log.durable_lsn() == before {
                return Ok(Some((before, crate::state::digest(&all))));
            }
        }
        Ok(None)
    }

    pub(crate) async fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wait for in-flight calls (bounded), then flush and stop the writers.
        let all = u32::try_from(self.config.in_flight_max).unwrap_or(u32::MAX);
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.in_flight.acquire_many(all)).await;
        self.stop_background.cancel();
        self.stop_writers.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!("ledger stopped; stream flushed");
    }
}

/// Events after which a shard is due for a snapshot by count: `every_events`, or
/// [`SNAPSHOT_GROWTH_PERCENT`] of the entries its newest snapshot holds when that is more.
///
/// A snapshot reads and writes the whole shard, so taken every `every_events` its cost per
/// event grew with the shard: at five million movements, the snapshot thread took 45% of the
/// node's CPU under a sustained load. Waiting for the stream to grow by a share of the
/// snapshot's size (as Redis rewrites its append-only file once it doubled) keeps the cost
/// per event bounded; a restore then folds a tail of at most that share of the state.
pub(crate) fn snapshot_due_after_events(every_events: u64, entries: usize) -> u64 {
    let share = u64::try_from(entries)
        .unwrap_or(u64::MAX)
        .saturating_mul(SNAPSHOT_GROWTH_PERCENT)
        / 100;
    every_events.max(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_shard_waits_for_its_stream_to_grow_by_a_share_of_it() {
        // Small shards: the configured count.
        assert_eq!(snapshot_due_after_events(1_000_000, 0), 1_000_000);
        assert_eq!(snapshot_due_after_events(1_000_000, 1_000_000), 1_000_000);
        // Past it: the share of the newest snapshot.
        let entries = 10_000_000;
        assert_eq!(
            snapshot_due_after_events(1_000_000, entries),
            entries as u64 * SNAPSHOT_GROWTH_PERCENT / 100
        );
        assert_eq!(snapshot_due_after_events(1, usize::MAX), u64::MAX / 100);
    }
}
