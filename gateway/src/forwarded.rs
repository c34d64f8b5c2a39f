//! Behind a TLS-terminating proxy (`--behind-tls-proxy`): which requests are believed to have
//! reached the proxy over HTTPS.
//!
//! A proxy that terminates TLS (an AWS ALB, an ingress controller) talks plain HTTP to the
//! gateway and says how the client reached it in `X-Forwarded-Proto`. Anyone can send that
//! header, so it is believed only on connections from a `--trusted-proxy` network. With
//! `--behind-tls-proxy`, a `/v1` request and any request carrying an `Authorization` header
//! must come from a trusted proxy and say `https`; otherwise it is refused (403
//! `tls_required`) before its token is looked at. That turns a client that bypasses the proxy,
//! or a proxy listener left on plain HTTP, into a visible error instead of bearer tokens
//! crossing the network in clear text. Health checks and `/metrics` (no token) pass, because
//! load balancers probe them directly and without the header.
//!
//! Nothing else is taken from forwarded headers: the rate limiter still keys on the token's
//! subject (or the connection's address), never on `X-Forwarded-For`.

use std::{fmt, net::IpAddr, str::FromStr};

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

/// A network whose connections may vouch for the client's scheme: `10.0.0.0/8`, `fd00::/8`,
/// or one address (`10.1.2.3`, the same as `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustedProxy {
    /// The network's address, with the host bits cleared.
    network: IpAddr,
    /// Leading bits that must match.
    prefix_len: u8,
}

/// Why a `--trusted-proxy` value is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or a network such as 10.0.0.0/8")]
pub struct TrustedProxyParseError(String);

impl TrustedProxy {
    /// Returns true when `addr` lies in this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                mask(u32::from(a).into(), self.prefix_len, 32) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                mask(u128::from(a), self.prefix_len, 128) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// Returns `bits` (an address of `width` bits) with all but the first `prefix_len` cleared.
fn mask(bits: u128, prefix_len: u8, width: u8) -> u128 {
    debug_assert!(prefix_len <= width);
    if prefix_len == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - prefix_len);
    let width_mask = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    bits & keep & width_mask
}

impl FromStr for TrustedProxy {
    type Err = TrustedProxyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || TrustedProxyParseError(s.to_owned());
        let (addr, prefix_opt) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr.trim())
            .map_err(|_| error())?
            .to_canonical();
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_opt {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= width)
                .ok_or_else(error)?,
            None => width,
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4((mask(u32::from(a).into(), prefix_len, 32) as u32).into()),
            IpAddr::V6(a) => IpAddr::V6(mask(u128::from(a), prefix_len, 128).into()),
        };
        Ok(TrustedProxy {
            network,
            prefix_len,
        })
    }
}

impl TryFrom<String> for TrustedProxy {
    type Error = TrustedProxyParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TrustedProxy> for String {
    fn from(p: TrustedProxy) -> String {
        p.to_string()
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Returns true when the request came from a trusted proxy that says the client used HTTPS.
///
/// Every `X-Forwarded-Proto` value must be `https`: a chain of proxies appends one value per
/// hop, and a single `http` anywhere means some hop was clear text.
pub fn came_over_https(
    trusted: &[TrustedProxy],
    peer_opt: Option<IpAddr>,
    headers: &HeaderMap,
) -> bool {
    let Some(peer) = peer_opt else {
        return false;
    };
    if !trusted.iter().any(|net| net.contains(peer)) {
        return false;
    }
    let mut values = headers
        .get_all("x-forwarded-proto")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .peekable();
    values.peek().is_some() && values.all(|v| v.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> TrustedProxy {
        s.parse().expect("valid network")
    }

    fn headers(protos: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for p in protos {
            h.append("x-forwarded-proto", p.parse().expect("valid header"));
        }
        h
    }

    #[test]
    fn networks_contain_their_addresses_and_nothing_else() {
        let ten = net("10.0.0.0/8");
        assert!(ten.contains("10.200.3.4".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        assert!(
            ten.contains("::ffff:10.1.1.1".parse().unwrap()),
            "mapped IPv4"
        );
        assert!(net("10.1.2.3").contains("10.1.2.3".parse().unwrap()));
        assert!(!net("10.1.2.3").contains("10.1.2.4".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(net("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!net("fd00::/8").contains("10.0.0.1".parse().unwrap()));
        assert_eq!(
            net("10.9.8.7/8").to_string(),
            "10.0.0.0/8",
            "host bits cleared"
        );
        for bad in ["10.0.0.0/33", "ten", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<TrustedProxy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_trusted_peer_saying_https_on_every_hop_counts_as_https() {
        let trusted = [net("10.0.0.0/8")];
        let proxy = Some("10.0.0.5".parse().unwrap());
        assert!(came_over_https(&trusted, proxy, &headers(&["https"])));
        assert!(came_over_https(
            &trusted,
            proxy,
            &headers(&["HTTPS, https"])
        ));
        assert!(!came_over_https(
            &trusted,
            proxy,
            &headers(&["https, http"])
        ));
        assert!(!came_over_https(
            &trusted,
            proxy,
            &headers(&["https", "http"])
        ));
        assert!(!came_over_https(&trusted, proxy, &headers(&[])));
        let stranger = Some("192.0.2.1".parse().unwrap());
        assert!(!came_over_https(&trusted, stranger, &headers(&["https"])));
        assert!(!came_over_https(&trusted, None, &headers(&["https"])));
    }
}
