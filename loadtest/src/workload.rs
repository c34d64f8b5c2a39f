//! The workload: what operation number `i` of a run is, as a pure function of the seed and `i`.
//!
//! Every operation draws from its own PRNG seeded with `(seed, i)`, so the sequence of
//! operations, accounts and amounts is the same on every run with the same seed, however the
//! operations are spread over connections and whatever order they complete in. IDs carry the
//! run's `run_id` so that two runs against the same server never collide; with the same
//! `--run-id` and seed, a run sends byte-for-byte the same requests.
//!
//! Layout: `OpKind` (the names used in reports), `Mix` (weights), `AccountChoice` (uniform,
//! Zipf, hot set), `Workload::plan` (the pure function) and the request-body renderers.

use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The operations of the workload, as named in reports and in `--mix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `POST /v1/transfers`.
    Transfer = 0,
    /// `POST /v1/transfers/batch` with `--batch-size` transfers.
    TransferBatch,
    /// `GET /v1/accounts/{id}`.
    Balance,
    /// `POST /v1/accounts/{id}/entries`, credit or debit with equal odds.
    Entry,
    /// `GET /v1/accounts/{id}/daily?from=&to=` over the last two days.
    Daily,
    /// `GET /v1/accounts/{id}/movements?limit=20`.
    Movements,
    /// A transfer sent again with the same ID and body right after its first answer.
    TransferRetry,
    /// A deliberately invalid request, which must be answered 4xx and change nothing.
    Invalid,
    /// `GET /healthz`: no ledger work, for measuring the generator's own ceiling.
    Healthz,
}

impl OpKind {
    /// Every operation, in report order.
    pub const ALL: [OpKind; 9] = [
        OpKind::Transfer,
        OpKind::TransferBatch,
        OpKind::Balance,
        OpKind::Entry,
        OpKind::Daily,
        OpKind::Movements,
        OpKind::TransferRetry,
        OpKind::Invalid,
        OpKind::Healthz,
    ];

    /// Returns the name used in reports and JSON (`operations.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Transfer => "transfer",
            OpKind::TransferBatch => "transfer_batch",
            OpKind::Balance => "balance",
            OpKind::Entry => "entry",
            OpKind::Daily => "daily",
            OpKind::Movements => "movements",
            OpKind::TransferRetry => "transfer_retry",
            OpKind::Invalid => "invalid",
            OpKind::Healthz => "healthz",
        }
    }
}

/// Weights of the operations a run draws from (`--mix transfer=90,balance=10`).
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// `(operation, weight)` for every operation with a positive weight.
    weights: Vec<(OpKind, u32)>,
    /// Sum of the weights, at least 1.
    weight_total: u32,
}

impl Mix {
    /// Parses `name=weight,…`; names are those of `OpKind::name` (`batch` is accepted for
    /// `transfer_batch`); retries and invalid requests have their own fractions instead.
    pub fn parse(text: &str) -> anyhow::Result<Mix> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let op = match name.trim() {
                "transfer" => OpKind::Transfer,
                "batch" | "transfer_batch" => OpKind::TransferBatch,
                "balance" => OpKind::Balance,
                "entry" => OpKind::Entry,
                "daily" => OpKind::Daily,
                "movements" => OpKind::Movements,
                "healthz" => OpKind::Healthz,
                other => anyhow::bail!(
                    "unknown operation {other:?} in --mix \
                     (transfer, batch, balance, entry, daily, movements, healthz)"
                ),
            };
            let weight: u32 = weight.trim().parse()?;
            anyhow::ensure!(weight <= 1_000_000, "weight {weight} too large in --mix");
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        let weight_total = weights.iter().map(|(_, w)| w).sum();
        anyhow::ensure!(weight_total > 0, "--mix needs at least one positive weight");
        Ok(Mix {
            weights,
            weight_total,
        })
    }

    fn pick(&self, rng: &mut SmallRng) -> OpKind {
        let mut roll = rng.gen_range(0..self.weight_total);
        for &(op, weight) in &self.weights {
            if roll < weight {
                return op;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total of the weights")
    }

    /// Returns true when the mix contains `op`.
    pub fn contains(&self, op: OpKind) -> bool {
        self.weights.iter().any(|(o, _)| *o == op)
    }

    /// Returns true when some operation of the mix needs the run's accounts.
    pub fn needs_accounts(&self) -> bool {
        self.weights.iter().any(|(o, _)| *o != OpKind::Healthz)
    }
}

/// How accounts are chosen for each operation.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountChoice {
    /// Every account is equally likely.
    Uniform,
    /// Account of rank `k` (index `k - 1`) has weight `1 / k^s`; `cdf` is cumulative.
    Zipf {
        /// The exponent `s`.
        exponent: f64,
        /// Cumulative probabilities, one per account, the last one 1.0.
        cdf: Vec<f64>,
    },
    /// The first `num_hot` accounts get `hot_probability` of the picks.
    HotSet {
        /// Accounts in the hot set, at least 1 and fewer than all.
        num_hot: usize,
        /// Probability that a pick falls in the hot set.
        hot_probability: f64,
    },
}

impl AccountChoice {
    /// Parses `uniform`, `zipf:S` or `hot:FRACTION:PROBABILITY` for `num_accounts` accounts.
    pub fn parse(text: &str, num_accounts: usize) -> anyhow::Result<AccountChoice> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["uniform"] => Ok(AccountChoice::Uniform),
            ["zipf", exponent] => {
                let exponent: f64 = exponent.parse()?;
                anyhow::ensure!(
                    exponent > 0.0 && exponent < 10.0,
                    "zipf exponent out of range"
                );
                Ok(AccountChoice::Zipf {
                    exponent,
                    cdf: zipf_cdf(num_accounts, exponent),
                })
            }
            ["hot", fraction, probability] => {
                let fraction: f64 = fraction.parse()?;
                let hot_probability: f64 = probability.parse()?;
                anyhow::ensure!(
                    fraction > 0.0 && fraction < 1.0,
                    "hot fraction out of (0, 1)"
                );
                anyhow::ensure!((0.0..=1.0).contains(&hot_probability), "hot probability");
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                #[allow(clippy::cast_precision_loss)]
                let num_hot = ((num_accounts as f64) * fraction).ceil() as usize;
                let num_hot = num_hot.clamp(1, num_accounts.saturating_sub(1).max(1));
                Ok(AccountChoice::HotSet {
                    num_hot,
                    hot_probability,
                })
            }
            _ => anyhow::bail!("--accounts-distribution is uniform, zipf:S or hot:FRACTION:PROB"),
        }
    }

    fn pick(&self, rng: &mut SmallRng, num_accounts: usize) -> usize {
        match self {
            AccountChoice::Uniform => rng.gen_range(0..num_accounts),
            AccountChoice::Zipf { cdf, .. } => {
                let roll: f64 = rng.gen();
                cdf.partition_point(|&c| c <= roll).min(num_accounts - 1)
            }
            AccountChoice::HotSet {
                num_hot,
                hot_probability,
            } => {
                if *num_hot >= num_accounts || rng.gen_bool(*hot_probability) {
                    rng.gen_range(0..(*num_hot).min(num_accounts))
                } else {
                    rng.gen_range(*num_hot..num_accounts)
                }
            }
        }
    }
}

fn zipf_cdf(num_accounts: usize, exponent: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(num_accounts);
    let mut total = 0.0;
    for rank in 1..=num_accounts {
        #[allow(clippy::cast_precision_loss)]
        let weight = 1.0 / (rank as f64).powf(exponent);
        total += weight;
        cdf.push(total);
    }
    for c in &mut cdf {
        *c /= total;
    }
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    cdf
}

/// Kinds of deliberately invalid requests, cycled by the workload's PRNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    /// A transfer body that is not JSON.
    MalformedJson,
    /// A transfer with a field the API does not know.
    UnknownField,
    /// A transfer of a negative amount.
    NegativeAmount,
    /// A transfer of zero.
    ZeroAmount,
    /// A transfer from an account to itself.
    SameAccount,
    /// A transfer whose ID is far longer than any limit.
    OverlongId,
    /// A transfer whose amount is a JSON number instead of a decimal string.
    AmountAsNumber,
    /// A transfer from an account that does not exist.
    UnknownAccount,
}

impl InvalidKind {
    const ALL: [InvalidKind; 8] = [
        InvalidKind::MalformedJson,
        InvalidKind::UnknownField,
        InvalidKind::NegativeAmount,
        InvalidKind::ZeroAmount,
        InvalidKind::SameAccount,
        InvalidKind::OverlongId,
        InvalidKind::AmountAsNumber,
        InvalidKind::UnknownAccount,
    ];
}

/// One planned operation; account fields are indices into the run's accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A single transfer; `retry` sends it again with the same ID after the first answer.
    Transfer {
        /// Debited account.
        from: usize,
        /// Credited account.
        to: usize,
        /// Amount in minor units.
        amount_minor: i64,
        /// Whether the transfer is retried with the same ID.
        retry: bool,
    },
    /// A batch of independent transfers `(from, to, amount_minor)`.
    Batch {
        /// The transfers, in order.
        transfers: Vec<(usize, usize, i64)>,
    },
    /// A balance read.
    Balance {
        /// The account read.
        account: usize,
    },
    /// A credit or debit entry.
    Entry {
        /// The account the entry is posted to.
        account: usize,
        /// Credit when true, debit otherwise.
        credit: bool,
        /// Amount in minor units.
        amount_minor: i64,
    },
    /// A daily report read.
    Daily {
        /// The account read.
        account: usize,
    },
    /// A movements page read.
    Movements {
        /// The account read.
        account: usize,
    },
    /// A health probe.
    Healthz,
    /// A deliberately invalid transfer request.
    Invalid {
        /// What is wrong with it.
        kind: InvalidKind,
        /// Debited account (where the kind needs one).
        from: usize,
        /// Credited account.
        to: usize,
    },
}

impl Plan {
    /// Returns the operation kind reported for the plan's first request.
    pub fn kind(&self) -> OpKind {
        match self {
            Plan::Transfer { .. } => OpKind::Transfer,
            Plan::Batch { .. } => OpKind::TransferBatch,
            Plan::Balance { .. } => OpKind::Balance,
            Plan::Entry { .. } => OpKind::Entry,
            Plan::Daily { .. } => OpKind::Daily,
            Plan::Movements { .. } => OpKind::Movements,
            Plan::Invalid { .. } => OpKind::Invalid,
            Plan::Healthz => OpKind::Healthz,
        }
    }
}

/// Everything that defines the workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Seed of every per-operation PRNG.
    pub seed: u64,
    /// Prefix of every ID the run creates.
    pub run_id: String,
    /// ISO 4217 code of every account and transfer.
    pub currency: String,
    /// Decimals of the currency's minor unit (2 for BRL).
    pub scale: u32,
    /// Account IDs, rendered once (index = account number).
    pub account_ids: Vec<String>,
    /// Operation weights.
    pub mix: Mix,
    /// How accounts are picked.
    pub choice: AccountChoice,
    /// Smallest transfer or entry amount, in minor units (> 0).
    pub amount_min_minor: i64,
    /// Largest transfer or entry amount, in minor units (≥ min).
    pub amount_max_minor: i64,
    /// Transfers per batch request.
    pub batch_size: usize,
    /// Whether batch requests ask for `"atomic": true` (all or none).
    pub batch_atomic: bool,
    /// Probability that a single transfer is retried with the same ID.
    pub retry_fraction: f64,
    /// Probability that an operation is replaced by an invalid request.
    pub invalid_fraction: f64,
    /// `from` and `to` of daily reports (`YYYY-MM-DD`), fixed when the run starts.
    pub daily_range: (String, String),
    /// Shard placement, when transfers must cross shards in a given proportion.
    pub shards_opt: Option<ShardPlan>,
}

/// How often transfers cross shards, and where each account lives.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPlan {
    /// Probability that a transfer's two accounts are on different shards.
    pub cross_fraction: f64,
    /// Shard of each account (index = account number).
    pub shard_of: Vec<u32>,
    /// Accounts of each shard.
    pub accounts_of: Vec<Vec<usize>>,
}

impl ShardPlan {
    /// Places accounts as saldo does: `fnv1a_64(id) & (num_shards - 1)` (engine::shard).
    pub fn new(account_ids: &[String], num_shards: u32, cross_fraction: f64) -> ShardPlan {
        assert!(
            num_shards.is_power_of_two(),
            "saldo's shard count is a power of two"
        );
        let shard_of: Vec<u32> = account_ids
            .iter()
            .map(|id| {
                // Masked to fewer bits than u32 holds, so the cast keeps the value.
                #[allow(clippy::cast_possible_truncation)]
                let shard = (fnv1a_64(id.as_bytes()) & u64::from(num_shards - 1)) as u32;
                shard
            })
            .collect();
        let mut accounts_of = vec![Vec::new(); num_shards as usize];
        for (account, &shard) in shard_of.iter().enumerate() {
            accounts_of[shard as usize].push(account);
        }
        ShardPlan {
            cross_fraction,
            shard_of,
            accounts_of,
        }
    }
}

/// Returns the FNV-1a 64-bit hash saldo routes accounts with (documented in engine::shard).
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Workload {
    /// Returns the plan of operation `index`: a pure function of the seed and the index.
    pub fn plan(&self, index: u64) -> Plan {
        let mut rng = SmallRng::seed_from_u64(mix_seed(self.seed, index));
        let num_accounts = self.account_ids.len();
        if self.invalid_fraction > 0.0 && num_accounts >= 2 && rng.gen_bool(self.invalid_fraction) {
            let kind = InvalidKind::ALL[rng.gen_range(0..InvalidKind::ALL.len())];
            let (from, to) = self.pick_pair(&mut rng);
            return Plan::Invalid { kind, from, to };
        }
        match self.mix.pick(&mut rng) {
            OpKind::Transfer => {
                let (from, to) = self.pick_pair(&mut rng);
                let amount_minor = self.pick_amount(&mut rng);
                let retry = self.retry_fraction > 0.0 && rng.gen_bool(self.retry_fraction);
                Plan::Transfer {
                    from,
                    to,
                    amount_minor,
                    retry,
                }
            }
            OpKind::TransferBatch => {
                let transfers = (0..self.batch_size)
                    .map(|_| {
                        let (from, to) = self.pick_pair(&mut rng);
                        (from, to, self.pick_amount(&mut rng))
                    })
                    .collect();
                Plan::Batch { transfers }
            }
            OpKind::Entry => Plan::Entry {
                account: self.choice.pick(&mut rng, num_accounts),
                credit: rng.gen_bool(0.5),
                amount_minor: self.pick_amount(&mut rng),
            },
            OpKind::Balance => Plan::Balance {
                account: self.choice.pick(&mut rng, num_accounts),
            },
            OpKind::Daily => Plan::Daily {
                account: self.choice.pick(&mut rng, num_accounts),
            },
            OpKind::Movements => Plan::Movements {
                account: self.choice.pick(&mut rng, num_accounts),
            },
            OpKind::Healthz => Plan::Healthz,
            OpKind::TransferRetry | OpKind::Invalid => unreachable!("not in a Mix"),
        }
    }

    fn pick_pair(&self, rng: &mut SmallRng) -> (usize, usize) {
        let num_accounts = self.account_ids.len();
        assert!(num_accounts >= 2, "a transfer needs two accounts");
        let from = self.choice.pick(rng, num_accounts);
        if let Some(plan) = &self.shards_opt {
            let cross = rng.gen_bool(plan.cross_fraction);
            return (from, pick_on_shard(self, plan, rng, from, cross));
        }
        // Bounded: under a very skewed distribution, fall back to the neighbour.
        for _ in 0..16 {
            let to = self.choice.pick(rng, num_accounts);
            if to != from {
                return (from, to);
            }
        }
        (from, (from + 1) % num_accounts)
    }

    fn pick_amount(&self, rng: &mut SmallRng) -> i64 {
        rng.gen_range(self.amount_min_minor..=self.amount_max_minor)
    }

    /// Returns the ID of the single transfer of operation `index`.
    pub fn transfer_id(&self, index: u64) -> String {
        format!("{}-t{index}", self.run_id)
    }

    /// Returns the ID of transfer `position` of the batch of operation `index`.
    pub fn batch_transfer_id(&self, index: u64, position: usize) -> String {
        let mut id = String::new();
        self.push_batch_transfer_id(&mut id, index, position);
        id
    }

    /// Appends the ID of transfer `position` of the batch of operation `index` to `out`.
    fn push_batch_transfer_id(&self, out: &mut String, index: u64, position: usize) {
        // Writing into a String cannot fail.
        let _ = write!(out, "{}-b{index}-{position}", self.run_id);
    }

    /// Returns the ID of the entry of operation `index`.
    pub fn entry_id(&self, index: u64) -> String {
        format!("{}-e{index}", self.run_id)
    }

    /// Renders a transfer body into `out` (cleared first).
    pub fn render_transfer(&self, out: &mut String, id: &str, from: usize, to: usize, minor: i64) {
        out.clear();
        self.push_transfer(
            out,
            id,
            &self.account_ids[from],
            &self.account_ids[to],
            minor,
        );
    }

    /// Appends one transfer object to `out`.
    pub fn push_transfer(&self, out: &mut String, id: &str, from: &str, to: &str, minor: i64) {
        out.push_str(r#"{"id":""#);
        out.push_str(id);
        self.push_transfer_rest(out, from, to, minor);
    }

    /// Appends the rest of a transfer object after its ID's text. IDs are generated and need
    /// no JSON escaping.
    fn push_transfer_rest(&self, out: &mut String, from: &str, to: &str, minor: i64) {
        out.push_str(r#"","from":""#);
        out.push_str(from);
        out.push_str(r#"","to":""#);
        out.push_str(to);
        out.push_str(r#"","amount":""#);
        push_minor(out, minor, self.scale);
        out.push_str(r#"","currency":""#);
        out.push_str(&self.currency);
        out.push_str(r#""}"#);
    }

    /// Renders a batch body of the given transfers into `out` (cleared first).
    pub fn render_batch(&self, out: &mut String, index: u64, transfers: &[(usize, usize, i64)]) {
        out.clear();
        out.push_str(r#"{"transfers":["#);
        for (position, &(from, to, minor)) in transfers.iter().enumerate() {
            if position > 0 {
                out.push(',');
            }
            out.push_str(r#"{"id":""#);
            self.push_batch_transfer_id(out, index, position);
            self.push_transfer_rest(out, &self.account_ids[from], &self.account_ids[to], minor);
        }
        out.push_str(if self.batch_atomic {
            r#"],"atomic":true}"#
        } else {
            "]}"
        });
    }

    /// Renders an entry body into `out` (cleared first).
    pub fn render_entry(&self, out: &mut String, id: &str, credit: bool, minor: i64) {
        out.clear();
        let kind = if credit { "credit" } else { "debit" };
        let amount = format_minor(minor, self.scale);
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            r#"{{"id":"{id}","type":"{kind}","amount":"{amount}"}}"#
        );
    }

    /// Renders a deliberately invalid transfer body into `out` (cleared first).
    pub fn render_invalid(
        &self,
        out: &mut String,
        index: u64,
        kind: InvalidKind,
        from: usize,
        to: usize,
    ) {
        out.clear();
        let id = format!("{}-x{index}", self.run_id);
        let (from_id, to_id) = (&self.account_ids[from], &self.account_ids[to]);
        let one = format_minor(self.amount_min_minor, self.scale);
        let currency = &self.currency;
        // Writing into a String cannot fail.
        let _ = match kind {
            InvalidKind::MalformedJson => write!(out, r#"{{"id":"{id}","from":"{from_id}","#),
            InvalidKind::UnknownField => write!(
                out,
                r#"{{"id":"{id}","from":"{from_id}","to":"{to_id}","amount":"{one}","currency":"{currency}","colour":"red"}}"#
            ),
            InvalidKind::NegativeAmount => write!(
                out,
                r#"{{"id":"{id}","from":"{from_id}","to":"{to_id}","amount":"-{one}","currency":"{currency}"}}"#
            ),
            InvalidKind::ZeroAmount => write!(
                out,
                r#"{{"id":"{id}","from":"{from_id}","to":"{to_id}","amount":"0","currency":"{currency}"}}"#
            ),
            InvalidKind::SameAccount => write!(
                out,
                r#"{{"id":"{id}","from":"{from_id}","to":"{from_id}","amount":"{one}","currency":"{currency}"}}"#
            ),
            InvalidKind::OverlongId => write!(
                out,
                r#"{{"id":"{id}{}","from":"{from_id}","to":"{to_id}","amount":"{one}","currency":"{currency}"}}"#,
                "x".repeat(4_096)
            ),
            InvalidKind::AmountAsNumber => write!(
                out,
                r#"{{"id":"{id}","from":"{from_id}","to":"{to_id}","amount":1,"currency":"{currency}"}}"#
            ),
            InvalidKind::UnknownAccount => write!(
                out,
                r#"{{"id":"{id}","from":"{}-nobody","to":"{to_id}","amount":"{one}","currency":"{currency}"}}"#,
                self.run_id
            ),
        };
    }
}

/// Returns a `to` account for `from`: on another shard when `cross`, else on the same one,
/// following the account distribution where it can (16 tries), uniformly otherwise.
fn pick_on_shard(
    workload: &Workload,
    plan: &ShardPlan,
    rng: &mut SmallRng,
    from: usize,
    cross: bool,
) -> usize {
    let num_accounts = workload.account_ids.len();
    let from_shard = plan.shard_of[from];
    let fits = |to: usize| to != from && ((plan.shard_of[to] != from_shard) == cross);
    for _ in 0..16 {
        let to = workload.choice.pick(rng, num_accounts);
        if fits(to) {
            return to;
        }
    }
    let candidates: Vec<usize> = if cross {
        (0..num_accounts)
            .filter(|&to| plan.shard_of[to] != from_shard)
            .collect()
    } else {
        plan.accounts_of[from_shard as usize]
            .iter()
            .copied()
            .filter(|&to| to != from)
            .collect()
    };
    // No account fits (one shard only, or a shard with one account): any other account.
    if candidates.is_empty() {
        return (from + 1) % num_accounts;
    }
    candidates[rng.gen_range(0..candidates.len())]
}

/// Returns a well-mixed seed for operation `index` (splitmix64 of the pair).
pub fn mix_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Formats an amount in minor units as a decimal string with `scale` decimals ("-12.30").
pub fn format_minor(minor: i64, scale: u32) -> String {
    let mut out = String::new();
    push_minor(&mut out, minor, scale);
    out
}

/// Appends `minor` units as a decimal string with `scale` decimals to `out`.
pub fn push_minor(out: &mut String, minor: i64, scale: u32) {
    // Writing into a String cannot fail.
    if scale == 0 {
        let _ = write!(out, "{minor}");
        return;
    }
    let divisor = 10u64.pow(scale);
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    let width = scale as usize;
    let _ = write!(
        out,
        "{sign}{}.{:0width$}",
        magnitude / divisor,
        magnitude % divisor
    );
}

/// Parses a decimal string into minor units; `None` when it has more decimals than `scale`,
/// is not a number, or overflows.
pub fn parse_minor(text: &str, scale: u32) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    // Trailing zeros beyond the scale are harmless ("1.500" for a scale of 2).
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > scale as usize {
        return None;
    }
    let mut value: i64 = whole.parse().ok()?;
    value = value.checked_mul(10i64.checked_pow(scale)?)?;
    if !fraction.is_empty() {
        let padding = 10i64.pow(scale - u32::try_from(fraction.len()).ok()?);
        value = value.checked_add(fraction.parse::<i64>().ok()?.checked_mul(padding)?)?;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(mix: &str, choice: &str) -> Workload {
        let account_ids: Vec<String> = (0..100).map(|i| format!("r-a{i}")).collect();
        Workload {
            seed: 42,
            run_id: "r".into(),
            currency: "BRL".into(),
            scale: 2,
            choice: AccountChoice::parse(choice, account_ids.len()).unwrap(),
            account_ids,
            mix: Mix::parse(mix).unwrap(),
            amount_min_minor: 1,
            amount_max_minor: 1_000,
            batch_size: 4,
            batch_atomic: false,
            retry_fraction: 0.1,
            invalid_fraction: 0.05,
            daily_range: ("2026-01-01".into(), "2026-01-02".into()),
            shards_opt: None,
        }
    }

    #[test]
    fn the_shard_hash_is_saldos_fnv1a() {
        // The same vectors as engine::shard's test of the documented FNV-1a 64.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn transfers_cross_shards_in_the_asked_proportion() {
        let mut w = workload("transfer=1", "zipf:0.8");
        w.invalid_fraction = 0.0;
        w.shards_opt = Some(ShardPlan::new(&w.account_ids, 8, 0.25));
        let plan = w.shards_opt.clone().unwrap();
        let mut num_cross = 0;
        for index in 0..8_000 {
            let Plan::Transfer { from, to, .. } = w.plan(index) else {
                panic!("transfers only")
            };
            assert_ne!(from, to);
            num_cross += usize::from(plan.shard_of[from] != plan.shard_of[to]);
        }
        assert!((1_800..2_200).contains(&num_cross), "{num_cross}");
    }

    #[test]
    fn the_same_seed_and_index_give_the_same_plan() {
        let a = workload("transfer=5,batch=1,balance=1,entry=1", "zipf:1.1");
        let b = workload("transfer=5,batch=1,balance=1,entry=1", "zipf:1.1");
        for index in 0..1_000 {
            assert_eq!(a.plan(index), b.plan(index));
        }
        let mut c = a.clone();
        c.seed = 43;
        assert!((0..100).any(|index| a.plan(index) != c.plan(index)));
    }

    #[test]
    fn the_mix_is_followed_in_proportion() {
        let mut w = workload("transfer=3,balance=1", "uniform");
        w.invalid_fraction = 0.0;
        let transfers = (0..40_000)
            .filter(|&i| matches!(w.plan(i), Plan::Transfer { .. }))
            .count();
        assert!((29_000..31_000).contains(&transfers), "{transfers}");
        let retries = (0..40_000)
            .filter(|&i| matches!(w.plan(i), Plan::Transfer { retry: true, .. }))
            .count();
        assert!((2_600..3_400).contains(&retries), "{retries}");
    }

    #[test]
    fn transfers_never_go_from_an_account_to_itself() {
        let w = workload("transfer=1,batch=1", "hot:0.01:0.99");
        for index in 0..5_000 {
            match w.plan(index) {
                Plan::Transfer {
                    from,
                    to,
                    amount_minor,
                    ..
                } => {
                    assert_ne!(from, to);
                    assert!((1..=1_000).contains(&amount_minor));
                }
                Plan::Batch { transfers } => {
                    assert_eq!(transfers.len(), 4);
                    assert!(transfers.iter().all(|(f, t, _)| f != t));
                }
                Plan::Invalid { .. } => {}
                other => panic!("unexpected plan {other:?}"),
            }
        }
    }

    #[test]
    fn zipf_and_hot_set_favour_the_first_accounts() {
        let mut rng = SmallRng::seed_from_u64(1);
        let zipf = AccountChoice::parse("zipf:1.2", 100).unwrap();
        let first = (0..10_000)
            .filter(|_| zipf.pick(&mut rng, 100) == 0)
            .count();
        assert!(first > 2_000, "{first}");
        let hot = AccountChoice::parse("hot:0.1:0.9", 100).unwrap();
        let in_hot = (0..10_000).filter(|_| hot.pick(&mut rng, 100) < 10).count();
        assert!((8_800..9_200).contains(&in_hot), "{in_hot}");
        let uniform = AccountChoice::Uniform;
        assert!((0..10_000).all(|_| uniform.pick(&mut rng, 100) < 100));
    }

    #[test]
    fn amounts_format_and_parse_back() {
        assert_eq!(format_minor(1_050, 2), "10.50");
        assert_eq!(format_minor(-5, 2), "-0.05");
        assert_eq!(format_minor(7, 0), "7");
        assert_eq!(format_minor(1_234, 3), "1.234");
        assert_eq!(parse_minor("10.50", 2), Some(1_050));
        assert_eq!(parse_minor("10.5", 2), Some(1_050));
        assert_eq!(parse_minor("10", 2), Some(1_000));
        assert_eq!(parse_minor("-0.05", 2), Some(-5));
        assert_eq!(parse_minor("1.500", 2), Some(150));
        assert_eq!(parse_minor("1.234", 2), None);
        assert_eq!(parse_minor("abc", 2), None);
        assert_eq!(parse_minor("", 2), None);
        assert_eq!(parse_minor("99999999999999999999", 2), None);
        for minor in [0, 1, -1, 99, 100, 123_456_789, -987_654_321] {
            assert_eq!(parse_minor(&format_minor(minor, 2), 2), Some(minor));
        }
    }

    #[test]
    fn bodies_are_valid_json_except_the_malformed_one() {
        let w = workload("transfer=1", "uniform");
        let mut out = String::new();
        w.render_transfer(&mut out, "r-t1", 0, 1, 1_050);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["amount"], "10.50");
        assert_eq!(value["from"], "r-a0");
        w.render_batch(&mut out, 7, &[(0, 1, 1), (2, 3, 2)]);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["transfers"][1]["id"], "r-b7-1");
        assert!(value.get("atomic").is_none());
        let atomic = Workload {
            batch_atomic: true,
            ..w.clone()
        };
        atomic.render_batch(&mut out, 7, &[(0, 1, 1)]);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["atomic"], true);
        w.render_entry(&mut out, "r-e1", false, 3);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["type"], "debit");
        for kind in InvalidKind::ALL {
            w.render_invalid(&mut out, 1, kind, 0, 1);
            let parsed = serde_json::from_str::<serde_json::Value>(&out);
            assert_eq!(
                parsed.is_err(),
                kind == InvalidKind::MalformedJson,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_mix_with_unknown_names_or_no_weight_is_refused() {
        assert!(Mix::parse("transfer=1,teleport=2").is_err());
        assert!(Mix::parse("transfer=0").is_err());
        assert!(Mix::parse("batch").unwrap().contains(OpKind::TransferBatch));
    }
}
