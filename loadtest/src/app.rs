//! The two commands end to end: a load run (set-up, phases, resolution, verification, report)
//! and `verify --state`.
//!
//! Exit codes: 0 all good; 1 verification FAILED; 2 the latency objective was not met (only
//! when `--p99-max` was given); 3 the run could not be carried out (bad flags, server down,
//! set-up failed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{RunArgs, VerifyArgs};
use crate::client::Pool;
use crate::http::Endpoint;
use crate::model::{AccountExpectation, LedgerModel, State, STATE_SCHEMA_VERSION};
use crate::progress::{HdrLogSink, SecondSample};
use crate::report::{self, Objective, Report, SweepReport, SweepStep, REPORT_SCHEMA_VERSION};
use crate::runner::{run_phase, Acks, Context, Pacing, PhaseResult};
use crate::schedule::{Sweep, SweepPlan, Timetable};
use crate::stats::{LatencySummary, Recorder};
use crate::verify::{verify, Verification};
use crate::workload::{parse_minor, AccountChoice, Mix, ShardPlan, Workload};

/// Exit code when verification failed.
pub const EXIT_VERIFICATION_FAILED: u8 = 1;
/// Exit code when the latency objective was missed.
pub const EXIT_OBJECTIVE_MISSED: u8 = 2;
/// Exit code when the run could not be carried out.
pub const EXIT_ERROR: u8 = 3;

/// Concurrent requests of set-up, resolution and verification.
const HOUSEKEEPING_CONCURRENCY: usize = 32;

/// How long set-up waits for `/healthz`.
const HEALTHY_WAIT: Duration = Duration::from_secs(30);

/// Runs load as the flags say; returns the exit code.
pub async fn run_load(args: RunArgs) -> anyhow::Result<u8> {
    args.validate()?;
    let endpoint = Endpoint::parse(
        &args.target,
        args.token.clone(),
        args.ca_file.as_deref(),
        args.http2,
    )?;
    let workload = build_workload(&args)?;
    let needs_accounts = workload.mix.needs_accounts();
    let funding_minor = minor(&args.funding, args.scale, "--funding")?;
    let overdraft_minor = minor(&args.overdraft_limit, args.scale, "--overdraft-limit")?;
    let mut account_ids_all = workload.account_ids.clone();
    account_ids_all.push(format!("{}-treasury", workload.run_id));
    let ctx = Arc::new(Context {
        endpoint: endpoint.clone(),
        model: LedgerModel::new(account_ids_all.len()),
        account_ids_all,
        workload,
        timeout: args.timeout,
        threads: args.threads,
        h2_connections: args.connections,
        server_pid_opt: args.server_pid,
    });
    let pool = Pool::new(endpoint, args.timeout);
    crate::setup::wait_healthy(&pool, HEALTHY_WAIT).await?;
    if needs_accounts {
        crate::setup::setup(
            &ctx,
            &pool,
            HOUSEKEEPING_CONCURRENCY,
            funding_minor,
            overdraft_minor,
        )
        .await
        .context("set-up failed")?;
    }
    let hdr_log = args
        .hdr_log
        .as_deref()
        .map(HdrLogSink::create)
        .transpose()?;
    let started_at = report::now_rfc3339();
    let (outcome, acks) = run_mode(&args, &ctx, hdr_log.as_ref()).await;
    if let Some(sink) = hdr_log {
        let dropped = sink.finish()?;
        if dropped > 0 {
            eprintln!("warning: {dropped} intervals missing from the HDR log (writer fell behind)");
        }
    }
    let unresolved =
        crate::setup::resolve(&ctx, &pool, HOUSEKEEPING_CONCURRENCY, acks.in_doubt.clone()).await;
    let mut state = build_state(&ctx, &acks, unresolved, overdraft_minor);
    sample_lookups(&mut state, args.lookups_max, args.seed);
    if let Some(path) = &args.save_state {
        std::fs::write(path, serde_json::to_vec(&state)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let verification = if args.no_verify || !needs_accounts {
        Verification::skipped()
    } else {
        verify(&pool, &state, HOUSEKEEPING_CONCURRENCY).await
    };
    let overall = outcome.recorder.overall_latency();
    let report = build_report(&args, &ctx, started_at, outcome, verification);
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!("saldo-loadtest {} · {}", report.mode, report.target);
        std::fs::write(path, crate::plot::render(&title, &overall, &report.seconds))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(exit_code(&report))
}

fn exit_code(report: &Report) -> u8 {
    if report.verification.passed == Some(false) {
        return EXIT_VERIFICATION_FAILED;
    }
    let objective_missed = report.objective.is_some_and(|o| !o.met)
        || report
            .sweep
            .as_ref()
            .is_some_and(|s| s.best_rate_per_s.is_none());
    if objective_missed {
        return EXIT_OBJECTIVE_MISSED;
    }
    0
}

/// The measured outcome of the load, whatever the mode.
struct Outcome {
    /// Statistics of the phase the report's top level describes (the best sweep step).
    recorder: Recorder,
    /// The measured window of that phase, s.
    measured_s: f64,
    /// Its scheduled rate (open loop, sweep).
    target_opt: Option<u64>,
    /// Operations left unsent in that phase.
    num_unsent: u64,
    /// CPU time of the generator during that phase, s.
    generator_cpu_s_opt: Option<f64>,
    /// CPU time of the server (`--server-pid`) during that phase, s.
    server_cpu_s_opt: Option<f64>,
    /// Length of that phase, warm-up included, s.
    elapsed_s: f64,
    /// Requests of that phase, warm-up included (the CPU time covers them all).
    num_requests_all: u64,
    /// Per-second samples of every phase.
    seconds: Vec<SecondSample>,
    /// The sweep's steps.
    sweep_opt: Option<SweepReport>,
    /// `open`, `closed` or `sweep`.
    mode: &'static str,
    /// Workers: requests in flight at most.
    workers: usize,
}

async fn run_mode(
    args: &RunArgs,
    ctx: &Arc<Context>,
    hdr_log: Option<&HdrLogSink>,
) -> (Outcome, Acks) {
    if args.sweep {
        return run_sweep(args, ctx, hdr_log).await;
    }
    let workers = args.workers();
    let (pacing, mode, target_opt) = match args.concurrency {
        Some(_) => {
            let pacing = Pacing::Closed {
                duration: args.warmup + args.duration,
                warmup: args.warmup,
            };
            (pacing, "closed", None)
        }
        None => {
            let rate = args.rate.unwrap_or(1_000);
            let timetable = Timetable::new(rate, args.warmup + args.duration);
            (
                Pacing::Open {
                    timetable,
                    warmup: args.warmup,
                },
                "open",
                Some(rate),
            )
        }
    };
    let (phase, acks) = run_phase(ctx.clone(), pacing, workers, 0, "run", hdr_log).await;
    let outcome = Outcome {
        measured_s: phase.measured.as_secs_f64(),
        num_unsent: phase.num_unsent,
        generator_cpu_s_opt: phase.generator_cpu_s_opt,
        server_cpu_s_opt: phase.server_cpu_s_opt,
        elapsed_s: phase.elapsed.as_secs_f64(),
        num_requests_all: phase.num_requests_all,
        seconds: phase.seconds,
        recorder: phase.recorder,
        target_opt,
        sweep_opt: None,
        mode,
        workers,
    };
    (outcome, acks)
}

async fn run_sweep(
    args: &RunArgs,
    ctx: &Arc<Context>,
    hdr_log: Option<&HdrLogSink>,
) -> (Outcome, Acks) {
    // Validated: a sweep has an objective.
    let p99_max_ms = args.p99_max.map_or(10.0, |d| d.as_secs_f64() * 1e3);
    let mut sweep = Sweep::new(SweepPlan {
        rate_start_per_s: args.sweep_start,
        growth_factor: args.sweep_growth,
        num_refine_steps: args.sweep_refine,
        rate_max_per_s: args.sweep_rate_max,
        num_steps_max: args.sweep_steps_max,
    });
    let mut all_acks = Acks::default();
    let mut steps = Vec::new();
    let mut seconds = Vec::new();
    let mut best_opt: Option<(u64, PhaseResult)> = None;
    let mut last_opt: Option<(u64, PhaseResult)> = None;
    let mut index_base = 0;
    while let Some(rate) = sweep.next_rate() {
        let timetable = Timetable::new(rate, args.warmup + args.sweep_step);
        let label = format!("sweep {rate}/s");
        let pacing = Pacing::Open {
            timetable,
            warmup: args.warmup,
        };
        let (phase, acks) = run_phase(
            ctx.clone(),
            pacing,
            args.workers(),
            index_base,
            &label,
            hdr_log,
        )
        .await;
        index_base += phase.num_issued;
        all_acks.absorb_acks(acks);
        let step = sweep_step(rate, &phase, p99_max_ms, args.threads);
        eprintln!(
            "sweep step {rate}/s: achieved {:.1}/s p99 {:.3} ms errors {} -> {}",
            step.achieved_rate_per_s,
            step.latency_ms.p99,
            step.counts.errors,
            if step.passed { "pass" } else { "FAIL" }
        );
        sweep.record(rate, step.passed);
        seconds.extend(phase.seconds.iter().cloned());
        if step.passed && best_opt.as_ref().is_none_or(|(best, _)| rate > *best) {
            best_opt = Some((rate, phase));
        } else {
            last_opt = Some((rate, phase));
        }
        steps.push(step);
    }
    let (rate, phase) = best_opt
        .or(last_opt)
        .expect("a sweep runs at least one step");
    let best_rate_per_s = sweep.best_rate();
    let outcome = Outcome {
        measured_s: phase.measured.as_secs_f64(),
        num_unsent: phase.num_unsent,
        generator_cpu_s_opt: phase.generator_cpu_s_opt,
        server_cpu_s_opt: phase.server_cpu_s_opt,
        elapsed_s: phase.elapsed.as_secs_f64(),
        num_requests_all: phase.num_requests_all,
        recorder: phase.recorder,
        target_opt: Some(rate),
        seconds,
        sweep_opt: Some(SweepReport {
            p99_max_ms,
            best_rate_per_s,
            steps,
        }),
        mode: "sweep",
        workers: args.workers(),
    };
    (outcome, all_acks)
}

fn sweep_step(rate: u64, phase: &PhaseResult, p99_max_ms: f64, threads: usize) -> SweepStep {
    let seconds = phase.measured.as_secs_f64();
    let counts = report::counts_of(&phase.recorder);
    let latency_ms = LatencySummary::of(&phase.recorder.overall_latency());
    let achieved = report::per_s(phase.recorder.num_ops, seconds);
    #[allow(clippy::cast_precision_loss)]
    let target = rate as f64;
    let passed = report::objective_met(
        latency_ms.p99,
        p99_max_ms,
        &counts,
        Some(target),
        achieved,
        phase.num_unsent,
    );
    SweepStep {
        target_rate_per_s: rate,
        achieved_rate_per_s: achieved,
        transfers_committed_per_s: report::per_s(phase.recorder.num_transfers_committed, seconds),
        latency_ms,
        counts,
        generator_utilisation: report::utilisation(
            phase.generator_cpu_s_opt,
            phase.elapsed.as_secs_f64(),
            threads,
        ),
        server_cpu_us_per_request: per_request_us(phase.server_cpu_s_opt, phase.num_requests_all),
        passed,
    }
}

fn build_report(
    args: &RunArgs,
    ctx: &Context,
    started_at: String,
    outcome: Outcome,
    verification: Verification,
) -> Report {
    let recorder = &outcome.recorder;
    let seconds = outcome.measured_s;
    let requests = report::counts_of(recorder);
    let latency_ms = LatencySummary::of(&recorder.overall_latency());
    let achieved = report::per_s(recorder.num_ops, seconds);
    #[allow(clippy::cast_precision_loss)]
    let target_opt = outcome.target_opt.map(|t| t as f64);
    let objective = match (&outcome.sweep_opt, args.p99_max) {
        (None, Some(bound)) => {
            let p99_max_ms = bound.as_secs_f64() * 1e3;
            let met = report::objective_met(
                latency_ms.p99,
                p99_max_ms,
                &requests,
                target_opt,
                achieved,
                outcome.num_unsent,
            );
            Some(Objective {
                p99_max_ms,
                p99_ms: latency_ms.p99,
                met,
            })
        }
        _ => None,
    };
    let send_lag_ms = (outcome.mode != "closed").then(|| LatencySummary::of(&recorder.send_lag));
    Report {
        schema_version: REPORT_SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        target: args.target.clone(),
        mode: outcome.mode.to_string(),
        seed: ctx.workload.seed,
        run_id: ctx.workload.run_id.clone(),
        connections: args.connections_open(),
        protocol: if args.http2 { "h2" } else { "http/1.1" }.to_string(),
        workers: outcome.workers,
        num_responses_http1: recorder.num_responses_http1,
        num_responses_http2: recorder.num_responses_http2,
        threads: args.threads,
        duration_s: crate::stats::round3(seconds),
        warmup_s: args.warmup.as_secs_f64(),
        target_rate_per_s: target_opt,
        achieved_rate_per_s: achieved,
        transfers_committed_per_s: report::per_s(recorder.num_transfers_committed, seconds),
        num_ops: recorder.num_ops,
        num_unsent: outcome.num_unsent,
        requests,
        latency_ms,
        send_lag_ms,
        operations: report::operations_of(recorder, seconds),
        outcomes: report::to_map(&recorder.overall_outcomes()),
        objective,
        sweep: outcome.sweep_opt,
        seconds: outcome.seconds,
        generator_cpu_s: outcome.generator_cpu_s_opt.map(crate::stats::round3),
        generator_utilisation: report::utilisation(
            outcome.generator_cpu_s_opt,
            outcome.elapsed_s,
            args.threads,
        ),
        generator_cpu_us_per_request: per_request_us(
            outcome.generator_cpu_s_opt,
            outcome.num_requests_all,
        ),
        server_cpu_s: outcome.server_cpu_s_opt.map(crate::stats::round3),
        server_cpu_us_per_request: per_request_us(
            outcome.server_cpu_s_opt,
            outcome.num_requests_all,
        ),
        verification,
    }
}

/// Returns CPU time per request in µs, when both are known.
fn per_request_us(cpu_s_opt: Option<f64>, num_requests: u64) -> Option<f64> {
    cpu_s_opt.filter(|_| num_requests > 0).map(|cpu_s| {
        #[allow(clippy::cast_precision_loss)]
        let requests = num_requests as f64;
        crate::stats::round3(cpu_s * 1e6 / requests)
    })
}

fn build_workload(args: &RunArgs) -> anyhow::Result<Workload> {
    let mix = Mix::parse(&args.mix)?;
    let num_accounts = if mix.needs_accounts() {
        args.accounts
    } else {
        0
    };
    if mix.needs_accounts() {
        anyhow::ensure!(num_accounts >= 2, "--accounts must be at least 2");
    }
    let run_id = args.run_id.clone().unwrap_or_else(default_run_id);
    let account_ids: Vec<String> = (0..num_accounts)
        .map(|k| format!("{run_id}-a{k}"))
        .collect();
    let account_ids_for_shards = account_ids.clone();
    let amount_min_minor = minor(&args.amount_min, args.scale, "--amount-min")?;
    let amount_max_minor = minor(&args.amount_max, args.scale, "--amount-max")?;
    anyhow::ensure!(
        amount_min_minor > 0 && amount_min_minor <= amount_max_minor,
        "amounts must satisfy 0 < --amount-min <= --amount-max"
    );
    Ok(Workload {
        seed: args.seed,
        choice: AccountChoice::parse(&args.distribution, num_accounts.max(1))?,
        run_id,
        currency: args.currency.clone(),
        scale: args.scale,
        account_ids,
        mix,
        amount_min_minor,
        amount_max_minor,
        batch_size: args.batch_size,
        batch_atomic: args.batch_atomic,
        retry_fraction: args.retry_fraction,
        invalid_fraction: args.invalid_fraction,
        daily_range: (report::utc_date(1), report::utc_date(0)),
        shards_opt: args
            .cross_shard_fraction
            .filter(|_| num_accounts >= 2)
            .map(|fraction| ShardPlan::new(&account_ids_for_shards, args.shards, fraction)),
    })
}

fn minor(text: &str, scale: u32, flag: &str) -> anyhow::Result<i64> {
    let value = parse_minor(text, scale).ok_or_else(|| {
        anyhow::anyhow!("{flag} {text:?} is not an amount with at most {scale} decimals")
    })?;
    anyhow::ensure!(value >= 0, "{flag} must not be negative");
    Ok(value)
}

fn default_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Eight base-36 digits of the clock: unique per run on one machine, short in every ID.
    let mut value = (nanos / 1_000) as u64;
    let mut id = String::from("lt");
    for _ in 0..8 {
        let digit = u32::try_from(value % 36).unwrap_or(0);
        id.push(char::from_digit(digit, 36).unwrap_or('0'));
        value /= 36;
    }
    id
}

/// Keeps at most `lookups_max` transfers and entries for lookup, chosen uniformly (seeded).
fn sample_lookups(state: &mut State, lookups_max: usize, seed: u64) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    if state.transfers.len() > lookups_max {
        state.transfers.shuffle(&mut rng);
        state.transfers.truncate(lookups_max);
    }
    if state.entries.len() > lookups_max {
        state.entries.shuffle(&mut rng);
        state.entries.truncate(lookups_max);
    }
}

fn build_state(ctx: &Context, acks: &Acks, unresolved: u64, overdraft_minor: i64) -> State {
    let model = &ctx.model;
    let treasury = ctx.account_ids_all.len() - 1;
    let accounts = ctx
        .account_ids_all
        .iter()
        .enumerate()
        .map(|(k, id)| AccountExpectation {
            id: id.clone(),
            overdraft_limit_minor: if k == treasury { 0 } else { overdraft_minor },
            expected_balance_minor: model.expected_minor[k].load(Ordering::Relaxed),
        })
        .collect();
    State {
        schema_version: STATE_SCHEMA_VERSION,
        run_id: ctx.workload.run_id.clone(),
        currency: ctx.workload.currency.clone(),
        scale: ctx.workload.scale,
        accounts,
        funding_minor: model.funding_minor.load(Ordering::Relaxed),
        credits_minor: model.credits_minor.load(Ordering::Relaxed),
        debits_minor: model.debits_minor.load(Ordering::Relaxed),
        num_transfers_committed: model.num_transfers_committed.load(Ordering::Relaxed),
        num_entries_acked: model.num_entries_acked.load(Ordering::Relaxed),
        transfers: acks.transfers.clone(),
        entries: acks.entries.clone(),
        num_in_doubt_unresolved: unresolved + acks.num_in_doubt_dropped,
        num_invalid_accepted: model.num_invalid_accepted.load(Ordering::Relaxed),
        num_idempotency_violations: model.num_idempotency_violations.load(Ordering::Relaxed),
    }
}

/// Verifies a server against a saved state; returns the exit code.
pub async fn run_verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let text =
        std::fs::read(&args.state).with_context(|| format!("reading {}", args.state.display()))?;
    let state: State = serde_json::from_slice(&text).context("parsing the state file")?;
    anyhow::ensure!(
        state.schema_version == STATE_SCHEMA_VERSION,
        "state file has schema {} but this tool reads {STATE_SCHEMA_VERSION}",
        state.schema_version
    );
    let endpoint = Endpoint::parse(
        &args.target,
        args.token.clone(),
        args.ca_file.as_deref(),
        false,
    )?;
    let pool = Pool::new(endpoint, args.timeout);
    crate::setup::wait_healthy(&pool, HEALTHY_WAIT).await?;
    let verification = verify(&pool, &state, args.connections.clamp(1, 1_024)).await;
    verification.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&verification)?)?;
    }
    Ok(if verification.passed == Some(true) {
        0
    } else {
        EXIT_VERIFICATION_FAILED
    })
}
