//! Per-client rate limiting: a token bucket per client, implemented as GCRA (one `u64` of
//! state per client: the theoretical arrival time of the next request).
//!
//! The client is the token's subject when the request is authenticated, else the peer's IP
//! address. A request is admitted when the bucket holds a token; otherwise the answer is 429
//! `rate_limited` with `Retry-After`. The table is sharded (no global lock) and bounded by
//! [`RATE_LIMIT_CLIENTS_MAX`]: when a shard is full, idle clients are forgotten first, and if
//! that is not enough the shard is reset (the limiter fails open rather than grow).

use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher,
    net::IpAddr,
    sync::Arc,
    time::Instant,
};

use parking_lot::Mutex;

use crate::limits::RATE_LIMIT_CLIENTS_MAX;

/// Shards of the client table.
const SHARDS: usize = 32;

/// Who a request is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An authenticated subject.
    Subject(Arc<str>),
    /// An unauthenticated peer.
    Ip(IpAddr),
}

/// Token buckets of every client.
pub struct RateLimiter {
    /// Nanoseconds between two tokens (1e9 / rate).
    emission_ns: u64,
    /// How far ahead of now a client's arrival time may run: `(burst - 1) × emission_ns`.
    tolerance_ns: u64,
    /// Origin of the nanosecond clock.
    start: Instant,
    /// Theoretical arrival time of each client's next request, ns since `start`.
    shards: [Mutex<HashMap<ClientKey, u64>>; SHARDS],
    /// Picks a shard.
    hasher: RandomState,
}

impl RateLimiter {
    /// Returns a limiter admitting `rate_per_s` requests per second per client on average, with
    /// bursts of up to `burst` requests.
    pub fn new(rate_per_s: u32, burst: u32) -> RateLimiter {
        assert!(
            rate_per_s > 0 && burst > 0,
            "a limiter needs a positive rate and burst"
        );
        let emission_ns = 1_000_000_000 / u64::from(rate_per_s);
        RateLimiter {
            emission_ns,
            tolerance_ns: emission_ns * u64::from(burst - 1),
            start: Instant::now(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        }
    }

    /// Takes a token for `client`: `Ok` when admitted, else `Err(seconds until one is there)`.
    pub fn check(&self, client: &ClientKey) -> Result<(), u64> {
        let now = self.start.elapsed().as_nanos() as u64;
        self.check_at(client, now)
    }

    fn check_at(&self, client: &ClientKey, now: u64) -> Result<(), u64> {
        let shard = &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS];
        let mut table = shard.lock();
        // A known client is looked up once and updated in place (this runs on every request).
        if let Some(tat_slot) = table.get_mut(client) {
            let tat = self.admit_at(*tat_slot, now)?;
            *tat_slot = tat + self.emission_ns;
            return Ok(());
        }
        let tat = self.admit_at(now, now)?;
        if table.len() >= RATE_LIMIT_CLIENTS_MAX / SHARDS {
            table.retain(|_, t| *t > now);
            if table.len() >= RATE_LIMIT_CLIENTS_MAX / SHARDS {
                table.clear();
            }
        }
        table.insert(client.clone(), tat + self.emission_ns);
        Ok(())
    }

    /// Returns the arrival time a request at `now` takes, given the client's `tat`, or
    /// `Err(seconds until one is there)` when its bucket is empty.
    fn admit_at(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let tat = tat.max(now);
        let allowed_at = tat.saturating_sub(self.tolerance_ns);
        if now < allowed_at {
            let wait_ns = allowed_at - now;
            return Err(wait_ns.div_ceil(1_000_000_000).max(1));
        }
        Ok(tat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_for_tokens() {
        let limiter = RateLimiter::new(10, 3);
        let c = ClientKey::Ip("127.0.0.1".parse().expect("valid ip"));
        for _ in 0..3 {
            assert_eq!(limiter.check_at(&c, 0), Ok(()));
        }
        assert_eq!(limiter.check_at(&c, 0), Err(1));
        // One token comes back every 100 ms.
        assert_eq!(limiter.check_at(&c, 100_000_000), Ok(()));
        assert!(limiter.check_at(&c, 100_000_000).is_err());
    }

    #[test]
    fn clients_have_separate_buckets() {
        let limiter = RateLimiter::new(1, 1);
        let a = ClientKey::Subject(Arc::from("a"));
        let b = ClientKey::Subject(Arc::from("b"));
        assert_eq!(limiter.check_at(&a, 0), Ok(()));
        assert!(limiter.check_at(&a, 0).is_err());
        assert_eq!(limiter.check_at(&b, 0), Ok(()));
    }
}
