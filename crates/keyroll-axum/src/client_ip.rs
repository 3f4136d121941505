//! The client's address, which a key's networks are checked against: the
//! connection's peer, or, behind proxies the service says it trusts, the
//! address they forwarded.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, HeaderName};
use keyroll::Networks;

/// The proxies in front of the service that may tell the client's address,
/// in `Forwarded` (RFC 7239, its `for=`) or, without it, `X-Forwarded-For`.
/// Give them to [`KeyrollLayer::trusted_proxies`](crate::KeyrollLayer::trusted_proxies);
/// without them the layer reads neither header, as anyone can send one.
///
/// The addresses are read as a chain: the forwarded ones, left to right,
/// then the connection's peer. Both ways walk it from the peer leftwards,
/// past the proxies trusted, and take the next address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustedProxies {
    /// This many proxies, each adding the address it was reached from: the
    /// client is the address that many places left of the peer (a chain
    /// too short has no client address).
    Hops(usize),
    /// Proxies within these networks: the client is the first address,
    /// from the peer leftwards, outside them (the leftmost, if all are
    /// inside).
    Networks(Networks),
}

/// The address the request came from: the peer of its connection
/// ([`ConnectInfo`], which a service serves with
/// `into_make_service_with_connect_info::<SocketAddr>()`), or, behind
/// `trusted` proxies, the client's as they forwarded it. `None` when it is
/// not known: no peer, a chain too short, or an address hidden (`unknown`,
/// `_hidden`).
pub(crate) fn client_ip(
    headers: &HeaderMap,
    extensions: &Extensions,
    trusted: Option<&TrustedProxies>,
) -> Option<IpAddr> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_canonical());
    let Some(trusted) = trusted else {
        return peer;
    };
    let mut chain = forwarded(headers);
    chain.push(Some(peer?));
    match trusted {
        TrustedProxies::Hops(hops) => chain.len().checked_sub(hops + 1).and_then(|n| chain[n]),
        TrustedProxies::Networks(proxies) => {
            let outside = chain
                .iter()
                .rev()
                .find(|hop| !hop.is_some_and(|ip| proxies.contains(ip)));
            *outside.or(chain.first())?
        }
    }
}

/// The forwarded addresses, left to right: from `Forwarded` if the request
/// has it, else from `X-Forwarded-For` (every line of either, in order).
/// `None` for a hop whose address is hidden or unreadable.
fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &HeaderName| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let forwarded = values(&axum::http::header::FORWARDED);
    if !forwarded.is_empty() {
        return forwarded
            .into_iter()
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.trim().split_once('=')?;
                    name.eq_ignore_ascii_case("for").then(|| address(value))?
                })
            })
            .collect();
    }
    values(&HeaderName::from_static("x-forwarded-for"))
        .into_iter()
        .map(address)
        .collect()
}

/// One hop's address: `192.0.2.1`, `"192.0.2.1:4711"`, `"[2001:db8::1]:4711"`
/// or `2001:db8::1`, quoted or not.
fn address(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    let ip = match text.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0.parse().ok()?,
        None => text
            .parse::<IpAddr>()
            .ok()
            .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))?,
    };
    Some(IpAddr::to_canonical(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: Option<&str>, headers: &[(&str, &str)]) -> (HeaderMap, Extensions) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut extensions = Extensions::new();
        if let Some(peer) = peer {
            extensions.insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        }
        (map, extensions)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn without_trusted_proxies_only_the_peer_counts() {
        let (headers, extensions) = request(
            Some("198.51.100.7:5000"),
            &[("x-forwarded-for", "10.0.0.1")],
        );
        assert_eq!(client_ip(&headers, &extensions, None), ip("198.51.100.7"));
        let (headers, extensions) = request(Some("[::ffff:10.1.2.3]:5000"), &[]);
        assert_eq!(client_ip(&headers, &extensions, None), ip("10.1.2.3"));
        let (headers, extensions) = request(None, &[("x-forwarded-for", "10.0.0.1")]);
        assert_eq!(client_ip(&headers, &extensions, None), None);
    }

    #[test]
    fn trusted_hops_count_from_the_peer() {
        let one = TrustedProxies::Hops(1);
        // The client forged a first entry; the proxy appended the real one.
        let (headers, extensions) = request(
            Some("10.9.9.9:443"),
            &[("x-forwarded-for", "10.0.0.1, 203.0.113.5")],
        );
        assert_eq!(
            client_ip(&headers, &extensions, Some(&one)),
            ip("203.0.113.5")
        );
        let two = TrustedProxies::Hops(2);
        assert_eq!(client_ip(&headers, &extensions, Some(&two)), ip("10.0.0.1"));
        // A chain shorter than the hops: no client address.
        let three = TrustedProxies::Hops(3);
        assert_eq!(client_ip(&headers, &extensions, Some(&three)), None);
        // Forwarded wins over X-Forwarded-For, on every line, in order.
        let (headers, extensions) = request(
            Some("10.9.9.9:443"),
            &[
                ("x-forwarded-for", "192.0.2.99"),
                ("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"),
                ("forwarded", "For=\"[2001:db8:cafe::17]:4711\""),
            ],
        );
        assert_eq!(
            client_ip(&headers, &extensions, Some(&one)),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            client_ip(&headers, &extensions, Some(&two)),
            ip("192.0.2.60")
        );
        // A hidden address is no address.
        let (headers, extensions) = request(Some("10.9.9.9:443"), &[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(&headers, &extensions, Some(&one)), None);
    }

    #[test]
    fn trusted_networks_are_walked_past() {
        let proxies = TrustedProxies::Networks("10.0.0.0/8".parse().unwrap());
        let (headers, extensions) = request(
            Some("10.9.9.9:443"),
            &[("x-forwarded-for", "192.0.2.1, 203.0.113.5:8080, 10.1.1.1")],
        );
        assert_eq!(
            client_ip(&headers, &extensions, Some(&proxies)),
            ip("203.0.113.5")
        );
        // A peer outside the trusted networks is the client, whatever it says.
        let (headers, extensions) = request(
            Some("198.51.100.7:5000"),
            &[("x-forwarded-for", "10.0.0.1")],
        );
        assert_eq!(
            client_ip(&headers, &extensions, Some(&proxies)),
            ip("198.51.100.7")
        );
        // All inside: the leftmost.
        let (headers, extensions) =
            request(Some("10.9.9.9:443"), &[("x-forwarded-for", "10.2.2.2")]);
        assert_eq!(
            client_ip(&headers, &extensions, Some(&proxies)),
            ip("10.2.2.2")
        );
        // No peer: nothing is trusted.
        let (headers, extensions) = request(None, &[("x-forwarded-for", "192.0.2.1")]);
        assert_eq!(client_ip(&headers, &extensions, Some(&proxies)), None);
    }
}
