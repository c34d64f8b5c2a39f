//! # Console
//!
//! Serves the merchant web console under `/console/`: plain HTML, CSS and JavaScript modules
//! from `console/` at the repository root, embedded in the binary with `include_bytes!`, so
//! `saldo serve` needs no files on disk and no Node build.
//!
//! The console is a client of the public API and nothing more: the browser calls `/v1/…` with
//! the bearer token the user pasted or obtained through OAuth2 authorization code + PKCE. This
//! module serves the files, a `config.json` telling the console which OAuth issuer to use (if
//! any), and the security headers on every response, 404s and the redirect included:
//! - a strict `Content-Security-Policy`: scripts, styles and images only from this origin, no
//!   inline script or style, no `eval`, Trusted Types enforced (the console never assigns HTML
//!   strings), connections only to this origin and to the OAuth token endpoint when one is
//!   configured, no plug-ins, no framing, forms post only to this origin;
//! - `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
//!   `Cross-Origin-Opener-Policy: same-origin`, and `Cache-Control: no-cache` so a new binary's
//!   assets are picked up at once (they are small).
//!
//! # Layout
//! - [`router`] / [`router_with`]: the axum routes under `/console`, to be merged into the
//!   gateway's router (`.merge(console::router())`).
//! - [`ConsoleConfig`] / [`OAuthConfig`]: what the console needs to know to start OAuth sign-in.
//! - `ASSETS`: the embedded files and their content types.
//!
//! # Failure model
//! Configuration is checked once by [`OAuthConfig::validate`]; a bad value is a typed
//! [`ConsoleConfigError`]. At run time the only failure is a request for an unknown asset,
//! answered 404 with the same headers.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::Path,
    http::{header, HeaderValue, StatusCode},
    response::Response,
    routing::get,
    Router,
};

/// One embedded console file.
struct Asset {
    /// Path under `/console/`, without a leading slash.
    path: &'static str,
    /// Sent as `Content-Type`; browsers refuse module scripts served with any other JS type.
    content_type: &'static str,
    /// The file's bytes, embedded at compile time.
    body: &'static [u8],
}

/// Every file of the console. `console/tests/static_check.py` checks that each file under
/// `console/` (tests aside) is listed here, so a new file cannot be forgotten.
const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../console/index.html"),
    },
    Asset {
        path: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/style.css"),
    },
    Asset {
        path: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../console/favicon.svg"),
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/app.js"),
    },
    Asset {
        path: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/api.js"),
    },
    Asset {
        path: "auth.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/auth.js"),
    },
    Asset {
        path: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/dom.js"),
    },
    Asset {
        path: "money.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/money.js"),
    },
    Asset {
        path: "forms.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/forms.js"),
    },
    Asset {
        path: "views/signin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/views/signin.js"),
    },
    Asset {
        path: "views/home.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/views/home.js"),
    },
    Asset {
        path: "views/account.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/views/account.js"),
    },
    Asset {
        path: "views/report.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/views/report.js"),
    },
    Asset {
        path: "chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/chart.js"),
    },
];

/// The longest URL accepted in [`OAuthConfig`]; a longer one is a configuration mistake.
const OAUTH_URL_BYTES_MAX: usize = 2_048;

/// What the console needs from the server beyond its files.
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    /// The OAuth2 issuer to sign in with (authorization code + PKCE); with `None` the console
    /// offers only a pasted bearer token.
    pub oauth_opt: Option<OAuthConfig>,
}

/// A Cognito-compatible OAuth2 issuer for the console's sign-in. The console's redirect URI is
/// the page itself, `https://<host>/console/`, and must be registered with the issuer.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The issuer's authorization endpoint, e.g. `https://<domain>/oauth2/authorize`.
    pub authorize_url: String,
    /// The issuer's token endpoint, e.g. `https://<domain>/oauth2/token`; the browser calls it,
    /// so its origin is added to the CSP's `connect-src`.
    pub token_url: String,
    /// The public client (no secret: a browser cannot keep one) registered for the console.
    pub client_id: String,
    /// Space-separated scopes to ask for, e.g. `openid ledger:read ledger:write`.
    pub scope: String,
}

/// A console configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleConfigError {
    /// The URL is not `https://` (or `http://` on a loopback host), is too long, or holds
    /// characters that would break the Content-Security-Policy header.
    #[error("console oauth {field} is not a usable url: {value}")]
    BadUrl {
        /// Which setting.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// The client ID or scope is empty or holds control characters.
    #[error("console oauth {field} is empty or holds control characters")]
    BadValue {
        /// Which setting.
        field: &'static str,
    },
}

impl OAuthConfig {
    /// Returns an error when a URL is unusable or the client ID or scope is empty.
    pub fn validate(&self) -> Result<(), ConsoleConfigError> {
        for (field, value) in [
            ("authorize_url", &self.authorize_url),
            ("token_url", &self.token_url),
        ] {
            if origin_of(value).is_none() {
                return Err(ConsoleConfigError::BadUrl {
                    field,
                    value: value.clone(),
                });
            }
        }
        for (field, value) in [("client_id", &self.client_id), ("scope", &self.scope)] {
            if value.trim().is_empty() || value.chars().any(char::is_control) {
                return Err(ConsoleConfigError::BadValue { field });
            }
        }
        Ok(())
    }
}

/// Returns `scheme://host[:port]` of an `https://` URL, or of an `http://` URL on a loopback
/// host (for development), or `None` when the URL is unusable in a CSP source list.
fn origin_of(url: &str) -> Option<&str> {
    if url.len() > OAUTH_URL_BYTES_MAX {
        return None;
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | ',' | '\''))
    {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    match scheme {
        "https" => {}
        "http" if loopback => {}
        _ => return None,
    }
    Some(&url[..scheme.len() + "://".len() + authority_end])
}

/// Returns the Content-Security-Policy for the console, allowing connections to `extra_connect`
/// (the OAuth token endpoint's origin) besides this origin.
fn content_security_policy(extra_connect_opt: Option<&str>) -> String {
    let connect = match extra_connect_opt {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; \
         object-src 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
    )
}

/// The parts of a response that depend on the configuration, computed once.
struct Served {
    /// The `Content-Security-Policy` header value.
    csp: HeaderValue,
    /// The body of `/console/config.json`.
    config_json: Vec<u8>,
}

/// Returns the console's routes without OAuth sign-in (a pasted bearer token only), under
/// `/console`, to be merged into the gateway's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    router_with(ConsoleConfig::default())
}

/// Returns the console's routes for `config`, under `/console`: `/console` redirects
/// to `/console/`, which serves `index.html`; `/console/config.json` tells the console about
/// the OAuth issuer; every other path is an embedded asset or a 404.
///
/// # Panics
/// Panics when `config.oauth_opt` does not pass [`OAuthConfig::validate`]; call it first to
/// report a typed error instead.
pub fn router_with<S: Clone + Send + Sync + 'static>(config: ConsoleConfig) -> Router<S> {
    let token_origin_opt = config.oauth_opt.as_ref().map(|oauth| {
        oauth
            .validate()
            .expect("console oauth config must be validated before the router");
        origin_of(&oauth.token_url)
            .expect("validate() checked the token url")
            .to_owned()
    });
    let csp = content_security_policy(token_origin_opt.as_deref());
    let config_json = serde_json::json!({
        "oauth": config.oauth_opt.as_ref().map(|oauth| serde_json::json!({
            "authorize_url": oauth.authorize_url,
            "token_url": oauth.token_url,
            "client_id": oauth.client_id,
            "scope": oauth.scope,
        })),
    });
    let served = Arc::new(Served {
        csp: HeaderValue::from_str(&csp).expect("validate() kept header-breaking characters out"),
        config_json: serde_json::to_vec(&config_json).expect("a json value always serializes"),
    });

    // The routes carry the full `/console` prefix and the gateway merges this router, rather
    // than nesting it: a router nested at `/console` in axum 0.8 matches `/console` but never
    // `/console/`, the page itself.
    let redirect = served.clone();
    let index = served.clone();
    Router::new()
        .route(
            "/console",
            get(move || std::future::ready(redirect_to_slash(&redirect))),
        )
        .route(
            "/console/",
            get(move || std::future::ready(serve(&index, ""))),
        )
        .route(
            "/console/{*path}",
            get(move |Path(path): Path<String>| std::future::ready(serve(&served, &path))),
        )
}

/// Returns a redirect from `/console` to `/console/`, so relative asset URLs resolve.
fn redirect_to_slash(served: &Served) -> Response {
    let mut response = respond(served, StatusCode::PERMANENT_REDIRECT, "text/plain", b"");
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/console/"));
    response
}

/// Returns the asset at `path` ("" is the index page), or a 404.
fn serve(served: &Served, path: &str) -> Response {
    let path = if path.is_empty() { "index.html" } else { path };
    if path == "config.json" {
        return respond(
            served,
            StatusCode::OK,
            "application/json",
            &served.config_json,
        );
    }
    match ASSETS.iter().find(|asset| asset.path == path) {
        Some(asset) => respond(served, StatusCode::OK, asset.content_type, asset.body),
        None => respond(
            served,
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"not found",
        ),
    }
}

/// Returns a response carrying the console's security headers.
fn respond(
    served: &Served,
    status: StatusCode,
    content_type: &'static str,
    body: &[u8],
) -> Response {
    let mut response = Response::new(Body::from(body.to_vec()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, served.csp.clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `app` on 127.0.0.1:0 and returns its base URL.
    async fn serve_on_loopback(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port 0 succeeds");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serving succeeds") });
        format!("http://{addr}")
    }

    /// Returns the answer to `GET path`, redirects not followed.
    async fn fetch_path(base: &str, path: &str) -> reqwest::Response {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain http client builds");
        client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("the test server answers")
    }

    /// Returns the console merged into a router, as the gateway mounts it, served on loopback.
    async fn console_app() -> String {
        serve_on_loopback(
            Router::new()
                .route("/v1/x", get(|| async {}))
                .merge(router()),
        )
        .await
    }

    fn header_of<'r>(response: &'r reqwest::Response, name: &str) -> &'r str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn assert_security_headers(response: &reqwest::Response) {
        let csp = header_of(response, "content-security-policy");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("style-src 'self';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(header_of(response, "x-frame-options"), "DENY");
        assert_eq!(header_of(response, "x-content-type-options"), "nosniff");
        assert_eq!(header_of(response, "referrer-policy"), "no-referrer");
    }

    #[tokio::test]
    async fn console_without_slash_redirects_to_console_with_slash() {
        let base = console_app().await;
        let response = fetch_path(&base, "/console").await;
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header_of(&response, "location"), "/console/");
        assert_security_headers(&response);
    }

    #[tokio::test]
    async fn console_with_slash_serves_the_index_page() {
        let base = console_app().await;
        let response = fetch_path(&base, "/console/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header_of(&response, "content-type"),
            "text/html; charset=utf-8"
        );
        assert_security_headers(&response);
        let body = response.text().await.expect("the body is text");
        assert!(body.contains("<script type=\"module\" src=\"app.js\">"));
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_content_type() {
        let base = console_app().await;
        for asset in ASSETS {
            let response = fetch_path(&base, &format!("/console/{}", asset.path)).await;
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.path);
            assert_eq!(header_of(&response, "content-type"), asset.content_type);
            assert_security_headers(&response);
        }
    }

    #[tokio::test]
    async fn unknown_asset_is_a_404_with_the_security_headers() {
        let base = console_app().await;
        let response = fetch_path(&base, "/console/nope.js").await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_security_headers(&response);
        let response = fetch_path(&base, "/console/%2e%2e/Cargo.toml").await;
        assert_ne!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn config_json_says_no_oauth_by_default() {
        let base = console_app().await;
        let response = fetch_path(&base, "/console/config.json").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.text().await.expect("the body is text"),
            r#"{"oauth":null}"#
        );
    }

    #[tokio::test]
    async fn oauth_token_origin_is_allowed_in_connect_src() {
        let config = ConsoleConfig {
            oauth_opt: Some(OAuthConfig {
                authorize_url: "https://auth.example.com/oauth2/authorize".to_owned(),
                token_url: "https://auth.example.com:8443/oauth2/token".to_owned(),
                client_id: "console".to_owned(),
                scope: "openid ledger:read".to_owned(),
            }),
        };
        let base = serve_on_loopback(Router::new().merge(router_with(config))).await;
        let response = fetch_path(&base, "/console/").await;
        let csp = header_of(&response, "content-security-policy");
        assert!(
            csp.contains("connect-src 'self' https://auth.example.com:8443;"),
            "{csp}"
        );
        let response = fetch_path(&base, "/console/config.json").await;
        let config: serde_json::Value = response.json().await.expect("config.json is json");
        assert_eq!(config["oauth"]["client_id"], "console");
    }

    #[test]
    fn origin_of_accepts_https_and_loopback_http_only() {
        assert_eq!(
            origin_of("https://a.example/x?y"),
            Some("https://a.example")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:9000/token"),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(origin_of("http://a.example/token"), None);
        assert_eq!(origin_of("https://a.example/x; script-src *"), None);
        assert_eq!(origin_of("https://user@a.example/"), None);
        assert_eq!(origin_of("javascript:alert(1)"), None);
    }
}
