//! Maintenance: readiness, metrics, snapshots (on a thread of their own, at a lower
//! priority), checksums, shutdown.

use super::*;

/// The priority a snapshot's threads run at (Linux keeps one per thread, and a thread a
/// snapshot spawns inherits it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SnapshotPriority {
    /// `SCHED_IDLE`: the snapshot runs on CPU time no request-path thread wants, and any of
    /// them that wakes up takes the core back at once. The usual case.
    Idle,
    /// Nice [`SNAPSHOT_THREAD_NICE`]: about a tenth of a request-path thread's share when both
    /// want a core, so that a shard whose snapshot is overdue (the node was saturated long
    /// enough for idle time not to come) catches up under full load, slowly rather than never.
    CatchingUp,
}

impl SnapshotPriority {
    /// The priority of a snapshot of a shard `behind` events past its newest snapshot, due
    /// after `due_after` events.
    pub(crate) fn for_tail(behind: u64, due_after: u64) -> SnapshotPriority {
        if behind >= due_after.saturating_mul(SNAPSHOT_OVERDUE_FACTOR) {
            SnapshotPriority::CatchingUp
        } else {
            SnapshotPriority::Idle
        }
    }

    /// Gives the calling thread this priority. Lowering a thread's priority needs no
    /// privilege, raising it does (`CAP_SYS_NICE`, or `RLIMIT_NICE`): returns whether it took.
    pub(crate) fn apply_to_this_thread(self) -> bool {
        // Nice 10 under either policy, so that a thread moved from idle to `SCHED_OTHER`
        // later lands at nice 10, not at the request path's priority.
        // SAFETY: plain system calls on the calling thread; `param` outlives the call.
        unsafe {
            let tid = libc::gettid();
            let nice =
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SNAPSHOT_THREAD_NICE);
            let policy = match self {
                SnapshotPriority::Idle => libc::SCHED_IDLE,
                SnapshotPriority::CatchingUp => libc::SCHED_OTHER,
            };
            let param = libc::sched_param { sched_priority: 0 };
            nice == 0 && libc::sched_setscheduler(0, policy, &param) == 0
        }
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
                let due_after =
                    snapshot_due_after_events(self.config.snapshot_every_events, entries);
                let due_by_count = self.config.snapshot_every_events > 0
                    && durable.saturating_sub(lsn) >= due_after;
                let due_by_time = self.config.snapshot_interval_ms > 0
                    && durable > lsn
                    && at_opt.is_none_or(|t| {
                        t.elapsed() >= Duration::from_millis(self.config.snapshot_interval_ms)
                    });
                if due_by_count || due_by_time {
                    let priority =
                        SnapshotPriority::for_tail(durable.saturating_sub(lsn), due_after);
                    match self
                        .clone()
                        .snapshot_on_own_thread(shard.clone(), priority)
                        .await
                    {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(shard = shard.id, error = %e, "snapshot failed; will retry")
                        }
                    }
                }
            }
        }
    }

    /// Runs [`Node::snapshot_shard`] on a thread of its own at `priority`: folding a shard's
    /// stream is CPU-bound, so it must neither hold one of the runtime's workers (with two
    /// cores, that would stall half the request path for the whole fold) nor compete with them
    /// as an equal. Its blocking work (reading the stream, writing the snapshot) runs on it
    /// too, at its priority. A snapshot that started idle and is still running after
    /// [`SNAPSHOT_IDLE_MS_MAX`] (the node has had no idle time) goes on at
    /// [`SnapshotPriority::CatchingUp`] if the process may raise a thread's priority.
    pub(super) async fn snapshot_on_own_thread(
        self: Arc<Self>,
        shard: Arc<ShardCore>,
        priority: SnapshotPriority,
    ) -> Result<(), String> {
        let handle = tokio::runtime::Handle::current();
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("snapshot-{}", shard.id))
            .spawn(move || {
                if !priority.apply_to_this_thread() {
                    tracing::debug!(?priority, "could not set the snapshot thread's priority");
                }
                saldo_persistence::blocking::do_blocking_work_here();
                let started = Instant::now();
                let mut raised = priority != SnapshotPriority::Idle;
                let mut progress = |_: crate::recovery::RestoreProgress| {
                    if !raised && started.elapsed() >= Duration::from_millis(SNAPSHOT_IDLE_MS_MAX) {
                        raised = true;
                        if SnapshotPriority::CatchingUp.apply_to_this_thread() {
                            tracing::info!(shard = shard.id, "a snapshot found no idle time; it goes on at a low priority");
                        } else {
                            tracing::warn!(shard = shard.id, "a snapshot found no idle time and may not raise its priority (CAP_SYS_NICE); it goes on when the node idles, and the next one of an overdue shard runs at a low priority");
                        }
                    }
                };
                let result = handle.block_on(self.snapshot_shard(&shard, &mut progress));
                let _ = done.send(result.map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("the snapshot thread did not start: {e}"))?;
        finished
            .await
            .map_err(|_| "the snapshot thread stopped".to_string())?
    }

    /// Writes a snapshot of a shard folded from its durable stream (never from live memory,
    /// so the hot path is not paused), keeps the newest ones and prunes the stream below them.
    /// `progress` is called as the fold goes ([`crate::recovery::write_snapshot_with_progress`]).
    pub(super) async fn snapshot_shard(
        &self,
        shard: &ShardCore,
        progress: &mut (dyn FnMut(crate::recovery::RestoreProgress) + Send),
    ) -> Result<(), EngineError> {
        let written = crate::recovery::write_snapshot_with_progress(
            &*self.wal,
            &*self.snapshots,
            shard.id,
            self.config.movements_window,
            self.config.snapshots_keep,
            progress,
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
            self.snapshot_shard(shard, &mut |_| {}).await?;
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

    #[test]
    fn a_snapshot_runs_on_idle_time_unless_its_shard_is_overdue() {
        let due = 1_000_000;
        assert_eq!(SnapshotPriority::for_tail(due, due), SnapshotPriority::Idle);
        let overdue = due * SNAPSHOT_OVERDUE_FACTOR;
        assert_eq!(
            SnapshotPriority::for_tail(overdue - 1, due),
            SnapshotPriority::Idle
        );
        assert_eq!(
            SnapshotPriority::for_tail(overdue, due),
            SnapshotPriority::CatchingUp
        );
        assert_eq!(
            SnapshotPriority::for_tail(u64::MAX, u64::MAX),
            SnapshotPriority::CatchingUp
        );
    }

    #[test]
    fn a_snapshot_thread_takes_its_priority() {
        let policy_and_nice = |priority: SnapshotPriority| {
            std::thread::spawn(move || {
                assert!(priority.apply_to_this_thread(), "{priority:?} was refused");
                // SAFETY: plain system calls on the calling thread.
                unsafe {
                    let tid = libc::gettid() as libc::id_t;
                    (
                        libc::sched_getscheduler(0),
                        libc::getpriority(libc::PRIO_PROCESS, tid),
                    )
                }
            })
            .join()
            .unwrap()
        };
        assert_eq!(policy_and_nice(SnapshotPriority::Idle).0, libc::SCHED_IDLE);
        assert_eq!(
            policy_and_nice(SnapshotPriority::CatchingUp),
            (libc::SCHED_OTHER, SNAPSHOT_THREAD_NICE)
        );
    }
}
