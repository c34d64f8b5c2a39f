//! Authentication and authorization of `/v1` requests.
//!
//! - `--auth none`: every request acts as an anonymous principal with every scope. The binary
//!   logs a warning at start.
//! - `--auth jwt`: OAuth2 bearer tokens verified locally, as Amazon Cognito issues them:
//!   RS256 or ES256 against a JWKS (file or URL, cached; an unknown `kid` triggers a refresh, at
//!   most once per [`JWKS_REFRESH_INTERVAL_MS_MIN`]), or HS256 with a shared secret for
//!   development. `exp` is required; `nbf`, `iss` and the audience are checked. The audience
//!   matches the `aud` claim (ID tokens) or the `client_id` claim (Cognito access tokens carry
//!   no `aud`).
//!
//! Scopes come from the space-separated `scope` claim (Cognito) or the `scp` claim; a scope
//! matches on its last path segment, so Cognito's resource-server prefix
//! (`https://api.example/ledger:read`) is accepted. `ledger:read` allows reads,
//! `ledger:write` allows writes, `ledger:admin` allows both. An optional claim (default
//! `saldo:accounts`: an array of account IDs, or a space-separated string; an entry ending in
//! `*` is a prefix) limits the token to those accounts: a merchant sees only its accounts and
//! moves money only out of them. An admin token is never limited.
//!
//! Verified tokens are cached until they expire (bounded), so the signature of a token is
//! checked once, not on every request.

use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::{header, HeaderMap};
use jsonwebtoken::{
    decode, decode_header,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
    Algorithm, DecodingKey, Validation,
};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use crate::{
    error::ApiError,
    limits::{
        JWKS_BYTES_MAX, JWKS_FETCH_TIMEOUT_MS, JWKS_REFRESH_INTERVAL_MS_MIN, TOKEN_BYTES_MAX,
        TOKEN_CACHE_ENTRIES_MAX,
    },
};

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Read accounts, transfers, histories and reports.
    Read,
    /// Open accounts, post transfers and entries.
    Write,
    /// Everything, on every account.
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }

    /// Returns the scope's name in tokens.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "ledger:read",
            Scope::Write => "ledger:write",
            Scope::Admin => "ledger:admin",
        }
    }
}

/// Who is calling, as far as the gateway knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject (`sub`, else `client_id`); `None` without authentication. Also the
    /// rate limiter's client key when present.
    pub subject_opt: Option<Arc<str>>,
    /// Bit set of [`Scope`]s.
    scopes: u8,
    /// The accounts this principal may touch; `None` means every account.
    accounts_opt: Option<Box<[Box<str>]>>,
}

impl Principal {
    /// Returns the principal of `--auth none`: anonymous, every scope, every account.
    pub fn unrestricted() -> Principal {
        Principal {
            subject_opt: None,
            scopes: 7,
            accounts_opt: None,
        }
    }

    /// Returns whether this principal holds `scope` (admin holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// Returns 403 unless this principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                detail: format!("the token lacks the {} scope", scope.name()).into(),
            })
        }
    }

    /// Returns whether this principal may touch `account_id`.
    pub fn may_access(&self, account_id: &str) -> bool {
        match &self.accounts_opt {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => account_id.starts_with(prefix),
                None => **p == *account_id,
            }),
        }
    }

    /// Returns 403 unless this principal may touch `account_id`.
    pub fn require_account(&self, account_id: &str) -> Result<(), ApiError> {
        if self.may_access(account_id) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                detail: format!("the token does not grant access to account {account_id}").into(),
            })
        }
    }
}

/// How bearer tokens are checked (`--auth jwt`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Expected `iss` (for Cognito: `https://cognito-idp.<region>.amazonaws.com/<pool id>`).
    pub issuer: Option<String>,
    /// Expected audience: matched against `aud` or `client_id`.
    pub audience: Option<String>,
    /// JWKS document on disk (re-read on an unknown `kid`).
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL (`<issuer>/.well-known/jwks.json` for Cognito).
    pub jwks_url: Option<String>,
    /// Shared secret for HS256 tokens (development only).
    pub hs256_secret: Option<String>,
    /// Name of the claim listing the accounts a token may touch (default `saldo:accounts`).
    pub accounts_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 30).
    pub leeway_s: Option<u64>,
}

/// Why the authenticator could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// No key source configured for `--auth jwt`.
    #[error("--auth jwt needs --jwks-file, --jwks-url or --jwt-hs256-secret")]
    NoKeySource,
    /// The JWKS file could not be read or parsed.
    #[error("failed to load jwks from {source_name}: {reason}")]
    Jwks {
        /// File or URL.
        source_name: String,
        /// What failed.
        reason: String,
    },
}

/// Checks the `Authorization` header of requests.
pub struct Authenticator {
    /// `None` for `--auth none`.
    jwt_opt: Option<JwtVerifier>,
    /// The principal handed out under `--auth none` (shared, so no allocation per request).
    unrestricted: Arc<Principal>,
}

impl Authenticator {
    /// Returns the authenticator of `--auth none`.
    pub fn none() -> Authenticator {
        Authenticator {
            jwt_opt: None,
            unrestricted: Arc::new(Principal::unrestricted()),
        }
    }

    /// Returns a JWT authenticator; loads the JWKS file now (a URL is fetched now too, but a
    /// failure there only logs a warning: the keys are fetched again on the first token).
    pub async fn jwt(config: JwtConfig) -> Result<Authenticator, AuthSetupError> {
        let verifier = JwtVerifier::new(config).await?;
        Ok(Authenticator {
            jwt_opt: Some(verifier),
            unrestricted: Arc::new(Principal::unrestricted()),
        })
    }

    /// Returns whether requests are authenticated at all.
    pub fn is_enabled(&self) -> bool {
        self.jwt_opt.is_some()
    }

    /// Returns the principal of `--auth none` (shared: no allocation).
    pub fn unrestricted(&self) -> Arc<Principal> {
        self.unrestricted.clone()
    }

    /// Returns the principal of a request: 401 when its token is missing or invalid.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
        let Some(verifier) = &self.jwt_opt else {
            return Ok(self.unrestricted.clone());
        };
        let unauthenticated = |detail: &'static str| ApiError::Unauthenticated {
            detail: detail.into(),
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("missing bearer token"))?;
        if value.len() > TOKEN_BYTES_MAX {
            return Err(unauthenticated("the authorization header is too long"));
        }
        let value = value
            .to_str()
            .map_err(|_| unauthenticated("malformed authorization header"))?;
        let (scheme, token) = value
            .split_once(' ')
            .ok_or_else(|| unauthenticated("expected a bearer token"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthenticated("expected a bearer token"));
        }
        verifier.verify(token.trim()).await
    }
}

/// The signing keys known, by `kid`.
type KeyMap = HashMap<String, (DecodingKey, Algorithm)>;

/// A verified token kept in the cache.
struct CachedToken {
    /// The whole token, compared on lookup (the map key is only its hash).
    token: Box<str>,
    /// What it grants.
    principal: Arc<Principal>,
    /// Its `exp`, seconds since the epoch.
    exp_s: u64,
}

/// Shards of the token cache (so concurrent requests rarely contend on one mutex).
const TOKEN_CACHE_SHARDS: usize = 16;

struct JwtVerifier {
    /// What to check.
    config: JwtConfig,
    /// The HS256 key, when a secret is configured.
    hs256_opt: Option<DecodingKey>,
    /// RS256/ES256 keys by `kid`, replaced whole on refresh.
    keys: RwLock<Arc<KeyMap>>,
    /// When the keys were last loaded; held across a refresh so that refreshes are single
    /// flight.
    refreshed_at: tokio::sync::Mutex<Option<Instant>>,
    /// Client for `jwks_url`.
    http: reqwest::Client,
    /// Verified tokens, by hash of the token.
    cache: [Mutex<HashMap<u64, CachedToken>>; TOKEN_CACHE_SHARDS],
    /// Hasher of the token cache (random keys: token hashes are not predictable).
    hasher: RandomState,
}

impl JwtVerifier {
    async fn new(config: JwtConfig) -> Result<JwtVerifier, AuthSetupError> {
        if config.jwks_file.is_none() && config.jwks_url.is_none() && config.hs256_secret.is_none()
        {
            return Err(AuthSetupError::NoKeySource);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(JWKS_FETCH_TIMEOUT_MS))
            .build()
            .map_err(|e| AuthSetupError::Jwks {
                source_name: "http client".into(),
                reason: e.to_string(),
            })?;
        let verifier = JwtVerifier {
            hs256_opt: config
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            config,
            keys: RwLock::new(Arc::new(KeyMap::new())),
            refreshed_at: tokio::sync::Mutex::new(None),
            http,
            cache: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        };
        if let Some(path) = &verifier.config.jwks_file {
            let keys = load_file(path).await?;
            *verifier.keys.write() = Arc::new(keys);
            *verifier.refreshed_at.lock().await = Some(Instant::now());
        } else if let Some(url) = &verifier.config.jwks_url {
            match fetch_url(&verifier.http, url).await {
                Ok(keys) => {
                    *verifier.keys.write() = Arc::new(keys);
                    *verifier.refreshed_at.lock().await = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "jwks not loaded at start; will retry on first token")
                }
            }
        }
        Ok(verifier)
    }

    async fn verify(&self, token: &str) -> Result<Arc<Principal>, ApiError> {
        let now_s = jsonwebtoken::get_current_timestamp();
        let hash = self.hasher.hash_one(token);
        let shard = &self.cache[(hash as usize) % TOKEN_CACHE_SHARDS];
        if let Some(hit) = shard.lock().get(&hash) {
            if *hit.token == *token && hit.exp_s > now_s {
                return Ok(hit.principal.clone());
            }
        }
        let (principal, exp_s) = self.verify_uncached(token).await?;
        let principal = Arc::new(principal);
        let mut shard = shard.lock();
        if shard.len() >= TOKEN_CACHE_ENTRIES_MAX / TOKEN_CACHE_SHARDS {
            shard.retain(|_, t| t.exp_s > now_s);
            if shard.len() >= TOKEN_CACHE_ENTRIES_MAX / TOKEN_CACHE_SHARDS {
                shard.clear();
            }
        }
        shard.insert(
            hash,
            CachedToken {
                token: token.into(),
                principal: principal.clone(),
                exp_s,
            },
        );
        Ok(principal)
    }

    async fn verify_uncached(&self, token: &str) -> Result<(Principal, u64), ApiError> {
        let invalid = |detail: &'static str| ApiError::Unauthenticated {
            detail: detail.into(),
        };
        let header = decode_header(token).map_err(|_| invalid("malformed token"))?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => {
                let key = self
                    .hs256_opt
                    .clone()
                    .ok_or_else(|| invalid("HS256 tokens are not accepted"))?;
                (key, Algorithm::HS256)
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header
                    .kid
                    .ok_or_else(|| invalid("the token names no key id (kid)"))?;
                let (key, alg) = self
                    .key(&kid)
                    .await
                    .ok_or_else(|| invalid("unknown key id (kid)"))?;
                if alg != header.alg {
                    return Err(invalid("the token's algorithm does not match its key"));
                }
                (key, alg)
            }
            _ => return Err(invalid("unsupported token algorithm")),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = self.config.leeway_s.unwrap_or(30);
        validation.validate_nbf = true;
        validation.validate_aud = false; // checked below against `aud` or `client_id`
        let mut required = vec!["exp"];
        if let Some(issuer) = &self.config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => invalid("the token has expired"),
                ErrorKind::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
                ErrorKind::InvalidIssuer => invalid("the token's issuer is not accepted"),
                ErrorKind::MissingRequiredClaim(_) => invalid("the token lacks a required claim"),
                ErrorKind::InvalidSignature => invalid("the token's signature does not verify"),
                _ => invalid("invalid token"),
            })?
            .claims;
        if let Some(audience) = &self.config.audience {
            let in_aud = claims.aud.as_ref().is_some_and(|a| a.contains(audience));
            let is_client = claims.client_id.as_deref() == Some(audience.as_str());
            if !in_aud && !is_client {
                return Err(invalid("the token's audience is not accepted"));
            }
        }
        let principal = claims.principal(self.accounts_claim())?;
        Ok((principal, claims.exp))
    }

    fn accounts_claim(&self) -> &str {
        self.config
            .accounts_claim
            .as_deref()
            .unwrap_or("saldo:accounts")
    }

    /// Returns the key of `kid`, refreshing the key set once if it is unknown.
    async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        if let Some(k) = self.keys.read().get(kid) {
            return Some(k.clone());
        }
        self.refresh().await;
        self.keys.read().get(kid).cloned()
    }

    /// Reloads the key set from its file or URL, unless that was done very recently.
    async fn refresh(&self) {
        let mut refreshed_at = self.refreshed_at.lock().await;
        let interval = Duration::from_millis(JWKS_REFRESH_INTERVAL_MS_MIN);
        if refreshed_at.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        let result = if let Some(path) = &self.config.jwks_file {
            load_file(path).await
        } else if let Some(url) = &self.config.jwks_url {
            fetch_url(&self.http, url).await
        } else {
            return;
        };
        *refreshed_at = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::info!(num_keys = keys.len(), "jwks refreshed");
                *self.keys.write() = Arc::new(keys);
            }
            Err(e) => tracing::warn!(error = %e, "jwks refresh failed; keeping the previous keys"),
        }
    }
}

async fn load_file(path: &PathBuf) -> Result<KeyMap, AuthSetupError> {
    let source_name = path.display().to_string();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| AuthSetupError::Jwks {
            source_name: source_name.clone(),
            reason: e.to_string(),
        })?;
    parse_jwks(&bytes).map_err(|reason| AuthSetupError::Jwks {
        source_name,
        reason,
    })
}

async fn fetch_url(http: &reqwest::Client, url: &str) -> Result<KeyMap, AuthSetupError> {
    let err = |reason: String| AuthSetupError::Jwks {
        source_name: url.to_owned(),
        reason,
    };
    let response = http.get(url).send().await.map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(err(format!("http status {}", response.status())));
    }
    if response
        .content_length()
        .is_some_and(|n| n > JWKS_BYTES_MAX as u64)
    {
        return Err(err("document too large".into()));
    }
    let bytes = response.bytes().await.map_err(|e| err(e.to_string()))?;
    parse_jwks(&bytes).map_err(err)
}

/// Returns the RS256 and ES256 keys of a JWKS document, by `kid`.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeyMap, String> {
    if bytes.len() > JWKS_BYTES_MAX {
        return Err("document too large".into());
    }
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut keys = KeyMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let alg = match (
            &jwk.algorithm,
            jwk.common.key_algorithm.map(|a| a.to_string()),
        ) {
            (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
            (AlgorithmParameters::RSA(_), Some(a)) if a == "RS256" => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(_))
                if p.curve == EllipticCurve::P256
                    && jwk
                        .common
                        .key_algorithm
                        .is_none_or(|a| a.to_string() == "ES256") =>
            {
                Algorithm::ES256
            }
            _ => {
                tracing::warn!(
                    kid,
                    "jwks key skipped: only RS256 and ES256 (P-256) are accepted"
                );
                continue;
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
        keys.insert(kid.clone(), (key, alg));
    }
    Ok(keys)
}

/// A string or a list of strings (`aud`, `scp`, the accounts claim).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains(&self, s: &str) -> bool {
        match self {
            OneOrMany::One(v) => v == s,
            OneOrMany::Many(vs) => vs.iter().any(|v| v == s),
        }
    }

    /// Returns the items (a single string is split on spaces, as OAuth2 scopes are).
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => v.split_ascii_whitespace().collect(),
            OneOrMany::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

/// The claims the gateway reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    aud: Option<OneOrMany>,
    client_id: Option<String>,
    scope: Option<OneOrMany>,
    scp: Option<OneOrMany>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    fn principal(&self, accounts_claim: &str) -> Result<Principal, ApiError> {
        let mut scopes = 0;
        for item in self
            .scope
            .iter()
            .chain(self.scp.iter())
            .flat_map(OneOrMany::items)
        {
            let name = item.rsplit('/').next().unwrap_or(item);
            for scope in [Scope::Read, Scope::Write, Scope::Admin] {
                if name == scope.name() {
                    scopes |= scope.bit();
                }
            }
        }
        let accounts_opt = match self.rest.get(accounts_claim) {
            None => None,
            Some(_) if scopes & Scope::Admin.bit() != 0 => None,
            Some(value) => {
                let list: OneOrMany = serde_json::from_value(value.clone()).map_err(|_| {
                    ApiError::Unauthenticated {
                        detail: "malformed accounts claim".into(),
                    }
                })?;
                Some(list.items().into_iter().map(Box::from).collect())
            }
        };
        let subject_opt = self
            .sub
            .as_deref()
            .or(self.client_id.as_deref())
            .map(Arc::from);
        Ok(Principal {
            subject_opt,
            scopes,
            accounts_opt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).expect("test claims deserialize")
    }

    #[test]
    fn cognito_scopes_with_a_resource_server_prefix_are_recognised() {
        let c = claims(serde_json::json!({
            "exp": 1, "scope": "https://ledger.example/ledger:read openid ledger:write"
        }));
        let p = c.principal("saldo:accounts").expect("valid claims");
        assert!(p.has(Scope::Read) && p.has(Scope::Write) && !p.has(Scope::Admin));
    }

    #[test]
    fn admin_implies_every_scope_and_every_account() {
        let c = claims(serde_json::json!({
            "exp": 1, "scp": ["ledger:admin"], "saldo:accounts": ["m1"]
        }));
        let p = c.principal("saldo:accounts").expect("valid claims");
        assert!(p.has(Scope::Read) && p.has(Scope::Write));
        assert!(p.may_access("someone-else"));
    }

    #[test]
    fn the_accounts_claim_limits_a_token_to_its_accounts() {
        let c = claims(serde_json::json!({
            "exp": 1, "scope": "ledger:read", "saldo:accounts": ["m1:main", "m2:*"]
        }));
        let p = c.principal("saldo:accounts").expect("valid claims");
        assert!(p.may_access("m1:main"));
        assert!(!p.may_access("m1:other"));
        assert!(p.may_access("m2:anything"));
        assert!(!p.may_access("m3"));
        assert!(p.require_account("m3").is_err());
    }

    #[test]
    fn a_malformed_accounts_claim_is_refused() {
        let c = claims(serde_json::json!({"exp": 1, "saldo:accounts": 42}));
        assert!(c.principal("saldo:accounts").is_err());
    }
}
