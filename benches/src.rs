//! Benchmarks of saldo's engine live in `benches/`: `core` (criterion, the pure state machine
//! and codecs), `ledger` (the engine in-process on the fsynced file stream, a table of curves)
//! and `inproc` (criterion, issue #14's in-process targets, each ending with a line that
//! `scripts/bench.sh` reads). Run them with `cargo bench -p saldo-benches`.
