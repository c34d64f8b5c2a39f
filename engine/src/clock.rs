//! Where the engine's business time comes from. A node reads it through the [`Clock`] in its
//! [`crate::EngineConfig`]: the wall clock in production, a clock that a test moves by hand
//! ([`Clock::manual`]) elsewhere, so that tests of days, reports and clocks going backwards
//! run on set time instead of real sleeps. Nothing in the node reads the system clock itself
//! for an event's time.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::types::Timestamp;

/// The source of the time stamped on events and movements. Cloning is cheap.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    /// The wall clock.
    pub fn system() -> Clock {
        Clock(Arc::new(Timestamp::now))
    }

    /// A clock that stands at `start` until its handle moves it.
    pub fn manual(start: Timestamp) -> (Clock, ManualClock) {
        let micros = Arc::new(AtomicU64::new(start.0));
        let read = micros.clone();
        (
            Clock(Arc::new(move || Timestamp(read.load(Ordering::Acquire)))),
            ManualClock(micros),
        )
    }

    /// The time now.
    pub fn now(&self) -> Timestamp {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// The handle of a [`Clock::manual`]: sets or moves its time, also backwards.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Sets the time.
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, Ordering::Release);
    }

    /// Moves the time on by `by`.
    pub fn advance(&self, by: Duration) {
        let micros = u64::try_from(by.as_micros()).expect("a test's step fits in u64 µs");
        self.0.fetch_add(micros, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_moved() {
        let (clock, hand) = Clock::manual(Timestamp(1_000));
        assert_eq!(clock.now(), Timestamp(1_000));
        assert_eq!(clock.clone().now(), Timestamp(1_000));
        hand.advance(Duration::from_millis(2));
        assert_eq!(clock.now(), Timestamp(3_000));
        hand.set(Timestamp(10));
        assert_eq!(clock.now(), Timestamp(10));
    }
}
