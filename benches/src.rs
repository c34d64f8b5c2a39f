//! Benchmarks of saldo's engine live in `benches/`: `core` (criterion, the pure state machine
//! and codecs) and `ledger` (the engine in-process on the fsynced file stream). Run them with
//! `cargo bench -p saldo-benches`.
