//! Verification: does the server hold exactly the money the acknowledged history implies?
//!
//! Input is a `State` (what the run created and had acknowledged). Checks, each PASS or FAIL:
//! - `accounts_readable`: every account answers `GET /v1/accounts/{id}` with the run's currency;
//! - `money_conserved`: the sum of balances equals funding + acknowledged credits − debits;
//! - `balances_match_history`: each balance equals the one implied by acknowledged writes;
//! - `no_account_below_allowance`: no balance is below minus its overdraft limit;
//! - `transfers_found`: every remembered acknowledged transfer is found by ID, committed, with
//!   the same accounts and amount;
//! - `entries_found`: every remembered acknowledged entry is found by ID, committed, same amount;
//! - `outcomes_known`, `invalid_requests_refused`, `retries_idempotent`: the run itself saw no
//!   unresolved doubt, no accepted invalid request and no retry that created twice.
//!
//! Reads are spread over a pool of connections; every read has the client's timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::client::Pool;
use crate::http::Method;
use crate::limits::FAILURE_EXAMPLES_MAX;
use crate::model::State;
use crate::progress::count_progress;
use crate::workload::{format_minor, parse_minor};

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable name of the check.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// One line saying what was compared.
    pub detail: String,
    /// A few of the failures, for a human to follow up.
    pub examples: Vec<String>,
}

/// The result of verification, as it appears under `verification` in the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// True when every check passed; false when any failed; `null` when skipped.
    pub passed: Option<bool>,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Verification {
    /// Returns the verification of a run started with `--no-verify`.
    pub fn skipped() -> Verification {
        Verification {
            passed: None,
            checks: Vec::new(),
        }
    }

    /// Prints PASS/FAIL and every check to stdout.
    pub fn print(&self) {
        match self.passed {
            None => println!("verification: SKIPPED (--no-verify)"),
            Some(passed) => {
                println!("verification: {}", if passed { "PASS" } else { "FAIL" });
                for check in &self.checks {
                    let mark = if check.passed { "ok  " } else { "FAIL" };
                    println!("  {mark} {:<28} {}", check.name, check.detail);
                    for example in &check.examples {
                        println!("         - {example}");
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct AccountView {
    balance: String,
    currency: String,
    #[serde(default)]
    overdraft_limit: Option<String>,
}

/// Runs every check against the server.
pub async fn verify(pool: &Pool, state: &State, concurrency: usize) -> Verification {
    let mut checks = Vec::new();
    checks.extend(check_accounts(pool, state, concurrency).await);
    checks.push(check_transfers(pool, state, concurrency).await);
    checks.push(check_entries(pool, state, concurrency).await);
    checks.push(Check {
        name: "outcomes_known".into(),
        passed: state.num_in_doubt_unresolved == 0,
        detail: format!(
            "{} writes of unknown outcome after resolution",
            state.num_in_doubt_unresolved
        ),
        examples: Vec::new(),
    });
    checks.push(Check {
        name: "invalid_requests_refused".into(),
        passed: state.num_invalid_accepted == 0,
        detail: format!(
            "{} deliberately invalid requests were accepted",
            state.num_invalid_accepted
        ),
        examples: Vec::new(),
    });
    checks.push(Check {
        name: "retries_idempotent".into(),
        passed: state.num_idempotency_violations == 0,
        detail: format!(
            "{} same-ID retries answered 201 twice",
            state.num_idempotency_violations
        ),
        examples: Vec::new(),
    });
    let passed = checks.iter().all(|c| c.passed);
    Verification {
        passed: Some(passed),
        checks,
    }
}

async fn check_accounts(pool: &Pool, state: &State, concurrency: usize) -> Vec<Check> {
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let read = async {
        let views: Vec<Result<AccountView, String>> = futures::stream::iter(&state.accounts)
            .map(|account| {
                let done = &done;
                async move {
                    let path = format!("/v1/accounts/{}", account.id);
                    let result = match pool.call(Method::Get, &path, b"").await {
                        Ok((200, body)) => serde_json::from_slice::<AccountView>(&body)
                            .map_err(|e| format!("{}: unreadable account: {e}", account.id)),
                        Ok((status, _)) => Err(format!("{}: HTTP {status}", account.id)),
                        Err(key) => Err(format!("{}: {key}", account.id)),
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                    result
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        finished.store(true, Ordering::Release);
        views
    };
    let total = state.accounts.len() as u64;
    let (views, ()) = tokio::join!(
        read,
        count_progress("verify: accounts", &done, total, &finished)
    );

    let mut unreadable = Vec::new();
    let mut mismatched = Vec::new();
    let mut below = Vec::new();
    let mut total_minor: i64 = 0;
    for (account, view) in state.accounts.iter().zip(views) {
        let view = match view {
            Ok(view) if view.currency == state.currency => view,
            Ok(view) => {
                unreadable.push(format!("{}: currency {}", account.id, view.currency));
                continue;
            }
            Err(message) => {
                unreadable.push(message);
                continue;
            }
        };
        let Some(balance_minor) = parse_minor(&view.balance, state.scale) else {
            unreadable.push(format!("{}: balance {:?}", account.id, view.balance));
            continue;
        };
        total_minor = total_minor.saturating_add(balance_minor);
        if balance_minor != account.expected_balance_minor {
            mismatched.push(format!(
                "{}: balance {} but acknowledged history says {}",
                account.id,
                view.balance,
                format_minor(account.expected_balance_minor, state.scale)
            ));
        }
        let server_limit_opt = view
            .overdraft_limit
            .as_deref()
            .and_then(|l| parse_minor(l, state.scale));
        let allowance_minor = server_limit_opt
            .unwrap_or(0)
            .min(account.overdraft_limit_minor);
        if balance_minor < -allowance_minor {
            below.push(format!(
                "{}: balance {} below allowance -{}",
                account.id,
                view.balance,
                format_minor(allowance_minor, state.scale)
            ));
        }
    }
    let num_accounts = state.accounts.len();
    let expected_total = state.expected_total_minor();
    let scale = state.scale;
    vec![
        check(
            "accounts_readable",
            &unreadable,
            format!(
                "{} of {num_accounts} accounts read",
                num_accounts - unreadable.len()
            ),
        ),
        Check {
            name: "money_conserved".into(),
            passed: unreadable.is_empty() && total_minor == expected_total,
            detail: format!(
                "sum of balances {} vs funding {} + credits {} - debits {} = {}",
                format_minor(total_minor, scale),
                format_minor(state.funding_minor, scale),
                format_minor(state.credits_minor, scale),
                format_minor(state.debits_minor, scale),
                format_minor(expected_total, scale)
            ),
            examples: Vec::new(),
        },
        check(
            "balances_match_history",
            &mismatched,
            format!(
                "{} of {num_accounts} balances differ from the acknowledged history",
                mismatched.len()
            ),
        ),
        check(
            "no_account_below_allowance",
            &below,
            format!("{} accounts below their overdraft allowance", below.len()),
        ),
    ]
}

fn check(name: &str, failures: &[String], detail: String) -> Check {
    Check {
        name: name.into(),
        passed: failures.is_empty(),
        detail,
        examples: failures
            .iter()
            .take(FAILURE_EXAMPLES_MAX)
            .cloned()
            .collect(),
    }
}

#[derive(Debug, Deserialize)]
struct TransferView {
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    amount: Option<String>,
}

async fn check_transfers(pool: &Pool, state: &State, concurrency: usize) -> Check {
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let lookups = async {
        let failures: Vec<Option<String>> = futures::stream::iter(&state.transfers)
            .map(|ack| {
                let done = &done;
                async move {
                    let path = format!("/v1/transfers/{}", ack.id);
                    let failure = match pool.call(Method::Get, &path, b"").await {
                        Ok((200, body)) => match serde_json::from_slice::<TransferView>(&body) {
                            Ok(view) => transfer_mismatch(&view, ack, state.scale),
                            Err(e) => Some(format!("{}: unreadable: {e}", ack.id)),
                        },
                        Ok((status, _)) => Some(format!("{}: HTTP {status}", ack.id)),
                        Err(key) => Some(format!("{}: {key}", ack.id)),
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                    failure
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        finished.store(true, Ordering::Release);
        failures
    };
    let total = state.transfers.len() as u64;
    let (failures, ()) = tokio::join!(
        lookups,
        count_progress("verify: transfers", &done, total, &finished)
    );
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    check(
        "transfers_found",
        &failures,
        format!(
            "{} of {} looked-up transfers wrong or missing ({} committed in total)",
            failures.len(),
            state.transfers.len(),
            state.num_transfers_committed
        ),
    )
}

fn transfer_mismatch(
    view: &TransferView,
    ack: &crate::model::TransferAck,
    scale: u32,
) -> Option<String> {
    if view.status.as_deref() != Some("committed") {
        return Some(format!("{}: status {:?}", ack.id, view.status));
    }
    let amount_minor_opt = view.amount.as_deref().and_then(|a| parse_minor(a, scale));
    let same = view.from.as_deref() == Some(ack.from.as_str())
        && view.to.as_deref() == Some(ack.to.as_str())
        && amount_minor_opt == Some(ack.amount_minor);
    (!same).then(|| format!("{}: differs from what was acknowledged: {view:?}", ack.id))
}

#[derive(Debug, Deserialize)]
struct EntryView {
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    amount: Option<String>,
}

async fn check_entries(pool: &Pool, state: &State, concurrency: usize) -> Check {
    let failures: Vec<Option<String>> = futures::stream::iter(&state.entries)
        .map(|ack| async move {
            let path = format!("/v1/accounts/{}/entries/{}", ack.account, ack.id);
            match pool.call(Method::Get, &path, b"").await {
                Ok((200, body)) => match serde_json::from_slice::<EntryView>(&body) {
                    Ok(view) => {
                        let amount_minor_opt = view
                            .amount
                            .as_deref()
                            .and_then(|a| parse_minor(a, state.scale));
                        let same = view.status.as_deref() == Some("committed")
                            && view.kind.as_deref() == Some(ack.kind.as_str())
                            && amount_minor_opt == Some(ack.amount_minor);
                        (!same).then(|| {
                            format!("{}: differs from what was acknowledged: {view:?}", ack.id)
                        })
                    }
                    Err(e) => Some(format!("{}: unreadable: {e}", ack.id)),
                },
                Ok((status, _)) => Some(format!("{}: HTTP {status}", ack.id)),
                Err(key) => Some(format!("{}: {key}", ack.id)),
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let failures: Vec<String> = failures.into_iter().flatten().collect();
    check(
        "entries_found",
        &failures,
        format!(
            "{} of {} looked-up entries wrong or missing ({} acknowledged in total)",
            failures.len(),
            state.entries.len(),
            state.num_entries_acked
        ),
    )
}
