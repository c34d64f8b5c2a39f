//! # saldo-loadtest
//!
//! saldo's load generator. It talks to a running `saldo serve` over HTTP or HTTPS only, and is built to
//! be trusted: open-loop load is scheduled on a timetable and latency is measured from each
//! request's due time (no coordinated omission, as in wrk2); the client is a lean hand-written
//! HTTP/1.1 keep-alive client so that the generator is not the bottleneck (or, with `--http2`,
//! streams multiplexed on a few HTTP/2 connections); and after the run it
//! verifies that the server holds exactly the money its acknowledged history implies.
//!
//! # Layout
//! Following the data path of a run:
//! - `cli`: flags; `app`: the two commands end to end, and the exit codes;
//! - `workload`: operation `i` as a pure function of the seed (mix, account choice, amounts,
//!   request bodies); `schedule`: the open-loop timetable and the sweep's search;
//! - `http`: the HTTP/1.1 connection; `http2`: a shared HTTP/2 connection (`--http2`); `tls`:
//!   `https://` targets and `--ca-file`; `client`: timeouts, reconnection and a pool;
//! - `setup`: accounts, funding, and resolution of writes of unknown outcome;
//! - `runner`: phases and workers; `stats`: histograms and outcome counts; `progress`: the
//!   per-second line, samples and the HDR log;
//! - `model`: the expected balances (the oracle) and the saved state; `verify`: the checks;
//! - `report`: the printed report and the JSON schema; `plot`: the SVG;
//! - `limits`: every bound, with its reason.
//!
//! # Failure model
//! Business rejections (4xx) are expected outcomes and are counted by code. Transport failures
//! and 5xx are errors; a write that ends in one is *in doubt* and is resolved after the run by
//! sending it again with the same ID. Verification fails if any doubt stays unresolved.

pub mod app;
pub mod cli;
pub mod client;
pub mod http;
pub mod http2;
pub mod limits;
pub mod model;
pub mod plot;
pub mod progress;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod setup;
pub mod stats;
pub mod tls;
pub mod verify;
pub mod workload;
