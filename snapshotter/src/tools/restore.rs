//! `saldo shard restore`: rebuilds a shard from its newest (or chosen) snapshot plus the
//! stream after it, then exports its balances or stores it as a snapshot; and the progress
//! shown while a shard is rebuilt.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use saldo_engine::{
    format::format_minor,
    recovery::{restore_shard_with_progress, RestoreProgress, RestoreTarget},
    state::{digest, ShardState},
};
use saldo_persistence::{snapshot::meta_for, SnapshotStore};

use crate::storage::Storage;

/// What `saldo shard restore` was asked for.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The shard.
    pub shard: u32,
    /// Stop at this stream position (an LSN) or time (RFC 3339); `None` = everything durable.
    pub at: Option<String>,
    /// Write the accounts' balances to this file (JSON or CSV, by `format` or extension).
    pub export: Option<PathBuf>,
    /// Format of `export`; `None` = from the extension, else JSON.
    pub format: Option<ExportFormat>,
    /// Store the rebuilt state as a snapshot in the configured snapshot store.
    pub write_snapshot: bool,
    /// Store the rebuilt state as a snapshot in this directory instead.
    pub into_dir: Option<PathBuf>,
}

/// Format of a balances export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ExportFormat {
    /// One JSON document.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// A progress bar on a terminal, plain lines every few seconds otherwise.
pub(super) struct Progress {
    bar_opt: Option<indicatif::ProgressBar>,
    last_line: std::time::Instant,
    label: String,
}

impl Progress {
    pub(super) fn new(label: String) -> Progress {
        let bar_opt = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(label.clone());
            bar
        });
        Progress {
            bar_opt,
            last_line: std::time::Instant::now(),
            label,
        }
    }

    pub(super) fn update(&mut self, p: RestoreProgress) {
        let total = p.tail_lsn.saturating_sub(p.snapshot_lsn);
        let done = p.lsn.saturating_sub(p.snapshot_lsn).min(total);
        match &self.bar_opt {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                self.last_line = std::time::Instant::now();
                eprintln!("{}: {done}/{total} events after the snapshot", self.label);
            }
            None => {}
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar_opt {
            bar.finish_and_clear();
        }
    }
}

/// Rebuilds `shard` at `target` from the newest snapshot at or below it plus the stream,
/// showing progress.
pub(super) async fn rebuild(
    storage: &Storage,
    shard: u32,
    window: usize,
    target: RestoreTarget,
) -> anyhow::Result<ShardState> {
    let mut progress = Progress::new(format!("restoring shard {shard}"));
    let state = restore_shard_with_progress(
        &*storage.wal,
        &*storage.snapshots,
        shard,
        window,
        target,
        &mut |p| progress.update(p),
    )
    .await;
    progress.finish();
    state.with_context(|| format!("failed to rebuild shard {shard}"))
}

/// `saldo shard restore`.
pub(super) async fn restore(
    storage: &Storage,
    r: &RestoreOptions,
    window: usize,
) -> anyhow::Result<i32> {
    let target = match &r.at {
        Some(at) => super::parse_at(at)?,
        None => RestoreTarget::Latest,
    };
    let started = std::time::Instant::now();
    let state = rebuild(storage, r.shard, window, target).await?;
    let checksum = hex::encode(digest(state.accounts.values()));
    eprintln!(
        "shard {} rebuilt at lsn {} ({} accounts) in {:.2} s; checksum {checksum}",
        state.shard,
        state.lsn,
        state.accounts.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &r.export {
        let format = r
            .format
            .unwrap_or_else(|| match path.extension().and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("csv") => ExportFormat::Csv,
                _ => ExportFormat::Json,
            });
        export(&state, path, format)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("balances written to {}", path.display());
    }
    let snapshot_data = (r.write_snapshot || r.into_dir.is_some()).then(|| {
        let data = state.encode();
        let meta = meta_for(
            state.shard,
            state.lsn,
            state.record_hash,
            saldo_engine::Timestamp::now().0,
            &data,
        );
        (meta, data)
    });
    if let Some((meta, data)) = &snapshot_data {
        if r.write_snapshot {
            storage
                .snapshots
                .put(meta.clone(), data.clone())
                .await
                .context("failed to store the snapshot")?;
            eprintln!(
                "snapshot at lsn {} stored in {}",
                meta.lsn,
                storage.snapshots.describe()
            );
        }
        if let Some(dir) = &r.into_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            let store =
                saldo_persistence::snapshot::local_dir::LocalDirSnapshotStore::open(dir.clone())
                    .with_context(|| format!("failed to open {}", dir.display()))?;
            store
                .put(meta.clone(), data.clone())
                .await
                .context("failed to store the snapshot")?;
            eprintln!("snapshot at lsn {} stored in {}", meta.lsn, dir.display());
        }
    }
    if r.export.is_none() && snapshot_data.is_none() {
        println!(
            "{}",
            serde_json::json!({
                "shard": state.shard,
                "lsn": state.lsn,
                "accounts": state.accounts.len(),
                "checksum": checksum,
            })
        );
    }
    Ok(0)
}

fn export(state: &ShardState, path: &Path, format: ExportFormat) -> anyhow::Result<()> {
    let mut accounts: Vec<_> = state.accounts.values().collect();
    accounts.sort_unstable_by(|a, b| a.id().cmp(b.id()));
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    match format {
        ExportFormat::Csv => {
            writeln!(
                out,
                "account,currency,balance,held,available,overdraft_limit"
            )?;
            for a in accounts {
                let v = a.view();
                let scale = v.currency.scale();
                writeln!(
                    out,
                    "{},{},{},{},{},{}",
                    csv_field(v.account_id.as_str()),
                    v.currency.code(),
                    format_minor(v.balance_minor, scale),
                    format_minor(v.held_minor, scale),
                    format_minor(v.available_minor, scale),
                    format_minor(v.overdraft_limit_minor, scale),
                )?;
            }
        }
        ExportFormat::Json => {
            let rows: Vec<_> = accounts
                .iter()
                .map(|a| {
                    let v = a.view();
                    let scale = v.currency.scale();
                    serde_json::json!({
                        "account": v.account_id.as_str(),
                        "currency": v.currency.code(),
                        "balance": format_minor(v.balance_minor, scale),
                        "held": format_minor(v.held_minor, scale),
                        "available": format_minor(v.available_minor, scale),
                        "overdraft_limit": format_minor(v.overdraft_limit_minor, scale),
                    })
                })
                .collect();
            serde_json::to_writer_pretty(
                &mut out,
                &serde_json::json!({
                    "shard": state.shard,
                    "lsn": state.lsn,
                    "checksum": hex::encode(digest(state.accounts.values())),
                    "accounts": rows,
                }),
            )?;
            writeln!(out)?;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn csv_field(s: &str) -> String {
    // Account IDs are [A-Za-z0-9._:-]: nothing to quote, but stay safe if that ever widens.
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
