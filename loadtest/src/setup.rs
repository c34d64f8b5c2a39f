//! Set-up before the load and resolution of doubtful writes after it.
//!
//! Set-up creates the run's accounts plus a *treasury* account, brings money in with one credit
//! entry on the treasury, and funds every account from it through the batch endpoint (single
//! transfers if the server has no batch endpoint). So every unit of money in the run's accounts
//! is accounted for: the sum of their balances is the funding plus acknowledged credits minus
//! acknowledged debits. Set-up must fully succeed, or the run stops before any load.
//!
//! Resolution sends every write whose outcome was unknown again with the same ID (the API's
//! idempotency makes that safe) until it gets a definitive answer, at most
//! `RESOLVE_ATTEMPTS_MAX` times each.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures::StreamExt;

use crate::client::Pool;
use crate::http::Method;
use crate::limits::{RESOLVE_ATTEMPTS_MAX, SETUP_BATCH_SIZE};
use crate::progress::count_progress;
use crate::runner::{batch_fates, transfer_fate, Context, Fate, InDoubt};
use crate::workload::{format_minor, Plan};

/// Waits until `GET /healthz` answers 200, for at most `wait`.
pub async fn wait_healthy(pool: &Pool, wait: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        match pool.call(Method::Get, "/healthz", b"").await {
            Ok((200, _)) => return Ok(()),
            other if Instant::now() >= deadline => {
                bail!(
                    "server not healthy after {wait:?}: last answer {:?}",
                    other.map(|r| r.0)
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Creates and funds every account of the run.
pub async fn setup(
    ctx: &Context,
    pool: &Pool,
    concurrency: usize,
    funding_minor: i64,
    overdraft_limit_minor: i64,
) -> anyhow::Result<()> {
    let workload = &ctx.workload;
    let scale = workload.scale;
    let treasury = ctx.account_ids_all.len() - 1;
    let num_accounts = treasury;
    let created = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let create = async {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..=num_accounts)
            .map(|k| {
                let overdraft = if k == treasury {
                    0
                } else {
                    overdraft_limit_minor
                };
                let body = format!(
                    r#"{{"id":"{}","currency":"{}","overdraft_limit":"{}"}}"#,
                    ctx.account_ids_all[k],
                    workload.currency,
                    format_minor(overdraft, scale)
                );
                let created = &created;
                async move {
                    let (status, response) = pool
                        .call(Method::Post, "/v1/accounts", body.as_bytes())
                        .await
                        .map_err(|e| anyhow::anyhow!("creating an account: {e}"))?;
                    ensure!(
                        status == 201 || status == 200,
                        "creating account {}: HTTP {status}: {}",
                        ctx.account_ids_all[k],
                        String::from_utf8_lossy(&response)
                    );
                    created.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        finished.store(true, Ordering::Release);
        results
    };
    let total = num_accounts as u64 + 1;
    let (results, ()) = tokio::join!(
        create,
        count_progress("set-up: accounts", &created, total, &finished)
    );
    results.into_iter().collect::<anyhow::Result<()>>()?;

    let total_minor = funding_minor
        .checked_mul(i64::try_from(num_accounts)?)
        .context("funding times accounts overflows")?;
    if total_minor == 0 {
        return Ok(());
    }
    let body = format!(
        r#"{{"id":"{}-fund","type":"credit","amount":"{}"}}"#,
        workload.run_id,
        format_minor(total_minor, scale)
    );
    let path = format!("/v1/accounts/{}/entries", ctx.account_ids_all[treasury]);
    let (status, response) = pool
        .call(Method::Post, &path, body.as_bytes())
        .await
        .map_err(|e| anyhow::anyhow!("funding the treasury: {e}"))?;
    ensure!(
        status == 201 || status == 200,
        "funding the treasury: HTTP {status}: {}",
        String::from_utf8_lossy(&response)
    );
    ctx.model.apply_funding(treasury, total_minor);
    fund_accounts(ctx, pool, concurrency, funding_minor).await
}

async fn fund_accounts(
    ctx: &Context,
    pool: &Pool,
    concurrency: usize,
    funding_minor: i64,
) -> anyhow::Result<()> {
    let workload = &ctx.workload;
    let treasury = ctx.account_ids_all.len() - 1;
    let treasury_id = &ctx.account_ids_all[treasury];
    let funded = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let chunks: Vec<Vec<usize>> = (0..treasury)
        .collect::<Vec<_>>()
        .chunks(SETUP_BATCH_SIZE)
        .map(<[usize]>::to_vec)
        .collect();
    let fund = async {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(chunks)
            .map(|chunk| {
                let funded = &funded;
                async move {
                    let mut body = String::from(r#"{"transfers":["#);
                    for (n, &k) in chunk.iter().enumerate() {
                        if n > 0 {
                            body.push(',');
                        }
                        let id = format!("{}-f{k}", workload.run_id);
                        let to = &workload.account_ids[k];
                        workload.push_transfer(&mut body, &id, treasury_id, to, funding_minor);
                    }
                    body.push_str("]}");
                    let reply = pool
                        .call(Method::Post, "/v1/transfers/batch", body.as_bytes())
                        .await;
                    let fates = match &reply {
                        Ok((200, response)) => batch_fates(response, chunk.len()),
                        Ok((404 | 405, _)) => fund_singly(ctx, pool, &chunk, funding_minor).await?,
                        other => bail!("funding batch failed: {:?}", other.as_ref().map(|r| r.0)),
                    };
                    for (n, (fate, key)) in fates.into_iter().enumerate() {
                        let k = chunk[n];
                        ensure!(fate == Fate::Committed, "funding account {k} failed: {key}");
                        ctx.model.apply_transfer(treasury, k, funding_minor);
                        funded.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
            })
            .buffer_unordered(concurrency.min(8))
            .collect()
            .await;
        finished.store(true, Ordering::Release);
        results
    };
    let total = treasury as u64;
    let (results, ()) = tokio::join!(
        fund,
        count_progress("set-up: funding", &funded, total, &finished)
    );
    results.into_iter().collect()
}

async fn fund_singly(
    ctx: &Context,
    pool: &Pool,
    chunk: &[usize],
    funding_minor: i64,
) -> anyhow::Result<Vec<(Fate, Cow<'static, str>)>> {
    let workload = &ctx.workload;
    let treasury_id = &ctx.account_ids_all[ctx.account_ids_all.len() - 1];
    let mut fates = Vec::with_capacity(chunk.len());
    for &k in chunk {
        let mut body = String::new();
        let id = format!("{}-f{k}", workload.run_id);
        let to = &workload.account_ids[k];
        workload.push_transfer(&mut body, &id, treasury_id, to, funding_minor);
        let reply = pool
            .call(Method::Post, "/v1/transfers", body.as_bytes())
            .await;
        let fate = match &reply {
            Ok((status, response)) => transfer_fate(Ok(*status), response),
            Err(key) => transfer_fate(Err(key), b""),
        };
        fates.push((fate, Cow::Borrowed("single_transfer")));
    }
    Ok(fates)
}

/// Resolves writes of unknown outcome; returns how many stayed unknown.
pub async fn resolve(ctx: &Context, pool: &Pool, concurrency: usize, doubts: Vec<InDoubt>) -> u64 {
    if doubts.is_empty() {
        return 0;
    }
    eprintln!(
        "resolving {} writes of unknown outcome by retrying them with the same ID",
        doubts.len()
    );
    let unresolved: Vec<u64> = futures::stream::iter(doubts)
        .map(|doubt| resolve_one(ctx, pool, doubt))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    unresolved.into_iter().sum()
}

async fn resolve_one(ctx: &Context, pool: &Pool, doubt: InDoubt) -> u64 {
    let workload = &ctx.workload;
    let mut body = String::new();
    for attempt in 0..RESOLVE_ATTEMPTS_MAX {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        match workload.plan(doubt.index) {
            Plan::Transfer {
                from,
                to,
                amount_minor,
                ..
            } => {
                let id = workload.transfer_id(doubt.index);
                workload.render_transfer(&mut body, &id, from, to, amount_minor);
                let reply = pool
                    .call(Method::Post, "/v1/transfers", body.as_bytes())
                    .await;
                let fate = match &reply {
                    Ok((status, response)) => transfer_fate(Ok(*status), response),
                    Err(key) => transfer_fate(Err(key), b""),
                };
                match fate {
                    Fate::Committed => ctx.model.apply_transfer(from, to, amount_minor),
                    Fate::Refused => {}
                    Fate::InDoubt => continue,
                }
                return 0;
            }
            Plan::Entry {
                account,
                credit,
                amount_minor,
            } => {
                let id = workload.entry_id(doubt.index);
                workload.render_entry(&mut body, &id, credit, amount_minor);
                let path = format!("/v1/accounts/{}/entries", workload.account_ids[account]);
                let reply = pool.call(Method::Post, &path, body.as_bytes()).await;
                let fate = match &reply {
                    Ok((status, response)) => transfer_fate(Ok(*status), response),
                    Err(key) => transfer_fate(Err(key), b""),
                };
                match fate {
                    Fate::Committed => ctx.model.apply_entry(account, credit, amount_minor),
                    Fate::Refused => {}
                    Fate::InDoubt => continue,
                }
                return 0;
            }
            Plan::Batch { transfers } => {
                workload.render_batch(&mut body, doubt.index, &transfers);
                let reply = pool
                    .call(Method::Post, "/v1/transfers/batch", body.as_bytes())
                    .await;
                let Ok((200, response)) = reply else { continue };
                let fates = batch_fates(&response, transfers.len());
                let positions: Vec<usize> = doubt
                    .positions_opt
                    .clone()
                    .unwrap_or_else(|| (0..transfers.len()).collect());
                if positions.iter().any(|&p| fates[p].0 == Fate::InDoubt) {
                    continue;
                }
                for p in positions {
                    if fates[p].0 == Fate::Committed {
                        let (from, to, amount_minor) = transfers[p];
                        ctx.model.apply_transfer(from, to, amount_minor);
                    }
                }
                return 0;
            }
            other => unreachable!("only writes are in doubt, not {other:?}"),
        }
    }
    1
}
