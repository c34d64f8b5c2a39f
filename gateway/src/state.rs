//! Shared state of the gateway: the ledger handle, the authenticator, the rate limiter, the
//! limits and a few counters. One `Arc`, cloned into every request (no lock around it).

use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use parking_lot::Mutex;
use saldo_engine::{
    types::{AccountId, Currency},
    Ledger,
};

use crate::{
    auth::Authenticator, config::LimitsConfig, error::ApiError, limits::CURRENCY_CACHE_ENTRIES_MAX,
    ratelimit::RateLimiter,
};

/// Handle to the shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What every request shares.
pub struct Shared {
    /// The ledger, set once it is restored; until then `/v1` answers 503 and `/readyz` too.
    ledger: OnceLock<Ledger>,
    /// Checks bearer tokens (or lets everything through under `--auth none`).
    pub(crate) auth: Authenticator,
    /// Per-client token buckets, when a rate is configured.
    pub(crate) rate_limiter_opt: Option<RateLimiter>,
    /// Body, time and concurrency bounds.
    pub(crate) limits: LimitsConfig,
    /// `limits.request_timeout_ms` as a duration.
    pub(crate) request_timeout: Duration,
    /// Set under `--behind-tls-proxy`: the proxies whose `X-Forwarded-Proto: https` a `/v1` or
    /// token-carrying request must have (see [`crate::forwarded`]).
    pub(crate) tls_proxies_opt: Option<Vec<crate::forwarded::TrustedProxy>>,
    /// Requests being handled now (bounded by `limits.concurrency_max`).
    in_flight: AtomicUsize,
    /// Currency of each account seen (immutable once opened): entries and histories need the
    /// scale without asking the engine each time.
    currencies: CurrencyCache,
}

impl AppState {
    /// Returns a state without a ledger yet (see [`AppState::set_ledger`]).
    pub fn new(auth: Authenticator, limits: LimitsConfig) -> AppState {
        let rate_limiter_opt = (limits.rate_limit_per_s > 0).then(|| {
            let burst = if limits.rate_limit_burst == 0 {
                limits.rate_limit_per_s
            } else {
                limits.rate_limit_burst
            };
            RateLimiter::new(limits.rate_limit_per_s, burst)
        });
        AppState(Arc::new(Shared {
            ledger: OnceLock::new(),
            auth,
            rate_limiter_opt,
            request_timeout: Duration::from_millis(limits.request_timeout_ms),
            limits,
            tls_proxies_opt: None,
            in_flight: AtomicUsize::new(0),
            currencies: CurrencyCache::new(),
        }))
    }

    /// Returns this state requiring requests to arrive through one of `trusted` over HTTPS
    /// (`--behind-tls-proxy`).
    pub fn behind_tls_proxy(mut self, trusted: Vec<crate::forwarded::TrustedProxy>) -> AppState {
        let shared = Arc::get_mut(&mut self.0).expect("configured before the state is shared");
        shared.tls_proxies_opt = Some(trusted);
        self
    }

    /// Hands the restored ledger to the gateway; from now on `/v1` routes serve.
    pub fn set_ledger(&self, ledger: Ledger) {
        assert!(self.0.ledger.set(ledger).is_ok(), "the ledger is set once");
    }

    /// Returns the ledger, or 503 while it is being restored or not ready.
    pub fn ledger(&self) -> Result<&Ledger, ApiError> {
        match self.0.ledger.get() {
            Some(ledger) => Ok(ledger),
            None => Err(ApiError::Unavailable {
                detail: "the ledger is starting".into(),
            }),
        }
    }

    /// Returns the ledger if it has been set.
    pub fn ledger_opt(&self) -> Option<&Ledger> {
        self.0.ledger.get()
    }

    /// Returns the currency of an account, from the cache or the ledger (404 when the account
    /// does not exist).
    pub async fn currency_of(&self, account_id: &AccountId) -> Result<Currency, ApiError> {
        if let Some(c) = self.0.currencies.get(account_id) {
            return Ok(c);
        }
        let view = self.ledger()?.account(account_id).await?;
        self.remember_currency(account_id, view.currency);
        Ok(view.currency)
    }

    /// Remembers the currency of an account.
    pub fn remember_currency(&self, account_id: &AccountId, currency: Currency) {
        self.0.currencies.insert(account_id, currency);
    }

    /// Counts a request in; `None` when `concurrency_max` requests are already in (shed it).
    pub fn enter(&self) -> Option<InFlightGuard> {
        let before = self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard(self.clone());
        (before < self.0.limits.concurrency_max).then_some(guard)
    }

    /// Returns the number of requests being handled.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.0
    }
}

/// Counts one request in flight until dropped.
pub struct InFlightGuard(AppState);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Shards of the currency cache.
const CURRENCY_SHARDS: usize = 64;

/// Account → currency, sharded and bounded.
struct CurrencyCache {
    /// The maps.
    shards: [Mutex<HashMap<AccountId, Currency>>; CURRENCY_SHARDS],
    /// Picks a shard.
    hasher: RandomState,
}

impl CurrencyCache {
    fn new() -> CurrencyCache {
        CurrencyCache {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, account_id: &AccountId) -> &Mutex<HashMap<AccountId, Currency>> {
        &self.shards[(self.hasher.hash_one(account_id) as usize) % CURRENCY_SHARDS]
    }

    fn get(&self, account_id: &AccountId) -> Option<Currency> {
        self.shard(account_id).lock().get(account_id).copied()
    }

    fn insert(&self, account_id: &AccountId, currency: Currency) {
        let mut shard = self.shard(account_id).lock();
        if shard.len() >= CURRENCY_CACHE_ENTRIES_MAX / CURRENCY_SHARDS {
            shard.clear();
        }
        shard.insert(account_id.clone(), currency);
    }
}
