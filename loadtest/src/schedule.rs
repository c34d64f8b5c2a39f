//! When each request is due (open loop) and which rate a sweep tries next.
//!
//! Open loop follows wrk2: request `i` of a run at `rate_per_s` is *due* at
//! `start + i / rate_per_s`, whatever happened to the requests before it. Latency is measured
//! from that due time, not from when the request finally left, so a server that stalls for a
//! second is charged for every request that should have been sent during that second
//! (no coordinated omission). Everything here is pure arithmetic on integers: no clock, no IO.

use std::time::Duration;

/// The timetable of one open-loop run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timetable {
    /// Requests per second the run is scheduled at; at least 1.
    pub rate_per_s: u64,
    /// Length of the run; no request is due at or after it.
    pub duration: Duration,
}

impl Timetable {
    /// Returns a timetable; panics on a zero rate, which the CLI rejects.
    pub fn new(rate_per_s: u64, duration: Duration) -> Timetable {
        assert!(rate_per_s > 0, "rate must be positive");
        Timetable {
            rate_per_s,
            duration,
        }
    }

    /// Returns how long after the start request `index` is due.
    pub fn due_offset(&self, index: u64) -> Duration {
        let nanos = u128::from(index) * 1_000_000_000 / u128::from(self.rate_per_s);
        // A run of u64::MAX nanoseconds is 584 years; the CLI bounds durations far below.
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Returns the number of requests due within the run: those with offset < duration.
    pub fn num_requests(&self) -> u64 {
        let nanos = self.duration.as_nanos() * u128::from(self.rate_per_s);
        let count = nanos.div_ceil(1_000_000_000);
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// Returns the index of the first request due at or after `offset` (to split warm-up).
    pub fn first_index_at(&self, offset: Duration) -> u64 {
        let count = (offset.as_nanos() * u128::from(self.rate_per_s)).div_ceil(1_000_000_000);
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

/// How a sweep looks for the highest rate that meets the objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepPlan {
    /// First rate tried.
    pub rate_start_per_s: u64,
    /// Each passing step multiplies the rate by this (> 1).
    pub growth_factor: f64,
    /// Refinement steps (bisection) after the first failing step.
    pub num_refine_steps: u32,
    /// Highest rate ever tried.
    pub rate_max_per_s: u64,
    /// Total steps allowed, including refinement.
    pub num_steps_max: u32,
}

/// The search state of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    plan: SweepPlan,
    /// Highest rate that met the objective so far.
    best_pass_opt: Option<u64>,
    /// Lowest rate that failed the objective so far.
    lowest_fail_opt: Option<u64>,
    /// Refinement steps taken after the first failure.
    num_refine_steps_done: u32,
    /// Steps taken.
    num_steps_done: u32,
}

impl Sweep {
    /// Returns a fresh search.
    pub fn new(plan: SweepPlan) -> Sweep {
        assert!(plan.growth_factor > 1.0, "the sweep must grow");
        assert!(plan.rate_start_per_s > 0 && plan.rate_start_per_s <= plan.rate_max_per_s);
        Sweep {
            plan,
            best_pass_opt: None,
            lowest_fail_opt: None,
            num_refine_steps_done: 0,
            num_steps_done: 0,
        }
    }

    /// Returns the rate of the next step, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<u64> {
        if self.num_steps_done >= self.plan.num_steps_max {
            return None;
        }
        match (self.best_pass_opt, self.lowest_fail_opt) {
            (None, None) => Some(self.plan.rate_start_per_s),
            (Some(pass), None) => {
                if pass >= self.plan.rate_max_per_s {
                    return None;
                }
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let grown = ((pass as f64) * self.plan.growth_factor).ceil() as u64;
                Some(grown.clamp(pass + 1, self.plan.rate_max_per_s))
            }
            // Even the first rate failed: nothing below it is tried.
            (None, Some(_)) => None,
            (Some(pass), Some(fail)) => {
                let mid = pass + (fail - pass) / 2;
                let refine = self.num_refine_steps_done < self.plan.num_refine_steps;
                (refine && mid > pass && mid < fail).then_some(mid)
            }
        }
    }

    /// Records whether the step at `rate_per_s` met the objective.
    pub fn record(&mut self, rate_per_s: u64, passed: bool) {
        if self.lowest_fail_opt.is_some() {
            self.num_refine_steps_done += 1;
        }
        self.num_steps_done += 1;
        if passed {
            self.best_pass_opt = Some(self.best_pass_opt.map_or(rate_per_s, |b| b.max(rate_per_s)));
        } else {
            let fail = self
                .lowest_fail_opt
                .map_or(rate_per_s, |f| f.min(rate_per_s));
            self.lowest_fail_opt = Some(fail);
        }
    }

    /// Returns the highest rate that met the objective.
    pub fn best_rate(&self) -> Option<u64> {
        self.best_pass_opt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_even_intervals_from_the_start() {
        let timetable = Timetable::new(4, Duration::from_secs(1));
        let offsets: Vec<_> = (0..5).map(|i| timetable.due_offset(i)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(offsets, vec![ms(0), ms(250), ms(500), ms(750), ms(1000)]);
    }

    #[test]
    fn the_count_of_requests_covers_exactly_the_duration() {
        assert_eq!(
            Timetable::new(6_000, Duration::from_secs(60)).num_requests(),
            360_000
        );
        assert_eq!(
            Timetable::new(3, Duration::from_millis(500)).num_requests(),
            2
        );
        assert_eq!(
            Timetable::new(1, Duration::from_millis(1)).num_requests(),
            1
        );
        let timetable = Timetable::new(7, Duration::from_millis(1_300));
        let last = timetable.num_requests() - 1;
        assert!(timetable.due_offset(last) < timetable.duration);
        assert!(timetable.due_offset(last + 1) >= timetable.duration);
    }

    #[test]
    fn warmup_splits_at_the_first_request_due_after_it() {
        let timetable = Timetable::new(1_000, Duration::from_secs(10));
        assert_eq!(timetable.first_index_at(Duration::from_secs(2)), 2_000);
        assert_eq!(timetable.first_index_at(Duration::ZERO), 0);
        let timetable = Timetable::new(3, Duration::from_secs(10));
        let first = timetable.first_index_at(Duration::from_millis(500));
        assert!(timetable.due_offset(first) >= Duration::from_millis(500));
        assert!(timetable.due_offset(first - 1) < Duration::from_millis(500));
    }

    #[test]
    fn high_rates_do_not_overflow() {
        let timetable = Timetable::new(10_000_000, Duration::from_secs(3_600));
        assert_eq!(timetable.num_requests(), 36_000_000_000);
        assert_eq!(
            timetable.due_offset(36_000_000_000),
            Duration::from_secs(3_600)
        );
    }

    fn plan() -> SweepPlan {
        SweepPlan {
            rate_start_per_s: 1_000,
            growth_factor: 2.0,
            num_refine_steps: 2,
            rate_max_per_s: 1_000_000,
            num_steps_max: 20,
        }
    }

    #[test]
    fn a_sweep_grows_until_a_failure_then_bisects() {
        let mut sweep = Sweep::new(plan());
        let mut tried = Vec::new();
        // The server meets the objective up to 5,000/s.
        while let Some(rate) = sweep.next_rate() {
            tried.push(rate);
            sweep.record(rate, rate <= 5_000);
        }
        assert_eq!(tried, vec![1_000, 2_000, 4_000, 8_000, 6_000, 5_000]);
        assert_eq!(sweep.best_rate(), Some(5_000));
    }

    #[test]
    fn a_sweep_whose_first_step_fails_has_no_best_rate() {
        let mut sweep = Sweep::new(plan());
        assert_eq!(sweep.next_rate(), Some(1_000));
        sweep.record(1_000, false);
        assert_eq!(sweep.next_rate(), None);
        assert_eq!(sweep.best_rate(), None);
    }

    #[test]
    fn a_sweep_stops_at_its_rate_and_step_bounds() {
        let mut sweep = Sweep::new(SweepPlan {
            rate_max_per_s: 3_000,
            ..plan()
        });
        let mut tried = Vec::new();
        while let Some(rate) = sweep.next_rate() {
            tried.push(rate);
            sweep.record(rate, true);
        }
        assert_eq!(tried, vec![1_000, 2_000, 3_000]);
        let mut sweep = Sweep::new(SweepPlan {
            num_steps_max: 2,
            ..plan()
        });
        let mut num_steps = 0;
        while let Some(rate) = sweep.next_rate() {
            num_steps += 1;
            sweep.record(rate, true);
        }
        assert_eq!(num_steps, 2);
    }
}
