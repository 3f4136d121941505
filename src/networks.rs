//! [`Networks`]: the IP networks a key's requests may come from.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

/// The IP networks (IPv4 and IPv6) a key's requests may come from: a key
/// with networks refuses a request from any other address, or with none.
///
/// A set of at most [`Networks::MAX`] entries, normalised: host bits
/// cleared, overlapping and adjacent networks merged, sorted (IPv4 first).
/// It reads and prints as a comma-separated list; a bare address is a
/// network of one host. Clones share the list. Set it with
/// [`Change::Networks`](crate::Change::Networks).
///
/// # Example
///
/// ```
/// use keyroll::Networks;
///
/// let networks: Networks = "10.1.2.3/8, 2001:db8::/32, 10.0.0.0/9, 192.0.2.7".parse()?;
/// assert_eq!(networks.to_string(), "10.0.0.0/8,192.0.2.7/32,2001:db8::/32");
/// assert!(networks.contains("10.200.0.1".parse()?));
/// assert!(networks.contains("::ffff:10.0.0.1".parse()?)); // IPv4 on a dual-stack socket
/// assert!(!networks.contains("192.0.2.8".parse()?));
///
/// let error = "10.0.0.0/33".parse::<Networks>().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "invalid network \"10.0.0.0/33\": the prefix is longer than 32, the most for IPv4"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Networks(
    // A thin pointer: `Option<Networks>` is one word in every
    // `Authenticated` (a fat `Arc<[IpNet]>` cost about 5% of an
    // authentication over a million keys in paired runs).
    Arc<Box<[IpNet]>>,
);

impl Networks {
    /// The most entries a key's networks may have.
    pub const MAX: usize = 64;

    /// The networks `nets` covers, normalised.
    ///
    /// # Errors
    ///
    /// [`InvalidNetworks`] when `nets` is empty, or holds more than
    /// [`MAX`](Networks::MAX) entries.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Result<Networks, InvalidNetworks> {
        let nets: Vec<IpNet> = nets.into_iter().collect();
        if nets.is_empty() {
            return Err(InvalidNetworks::Empty);
        }
        if nets.len() > Networks::MAX {
            return Err(InvalidNetworks::TooMany { given: nets.len() });
        }
        // Aggregating clears host bits, merges and sorts.
        Ok(Networks(Arc::new(
            IpNet::aggregate(&nets).into_boxed_slice(),
        )))
    }

    /// Whether `addr` is in one of the networks (an IPv4 address mapped
    /// into IPv6, as a dual-stack socket reports it, counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// The networks, normalised.
    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.0.iter()
    }
}

impl FromStr for Networks {
    type Err = InvalidNetworks;

    fn from_str(text: &str) -> Result<Networks, InvalidNetworks> {
        let nets = text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(network)
            .collect::<Result<Vec<_>, _>>()?;
        Networks::new(nets)
    }
}

/// One entry: `ADDRESS/PREFIX`, or a bare address.
fn network(entry: &str) -> Result<IpNet, InvalidNetworks> {
    let bad = |problem| InvalidNetworks::Entry {
        entry: entry.chars().take(64).collect(),
        problem,
    };
    let (addr, prefix) = match entry.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (entry, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad(NetworkProblem::Address))?;
    let (most, family) = match addr {
        IpAddr::V4(_) => (32, "IPv4"),
        IpAddr::V6(_) => (128, "IPv6"),
    };
    let prefix = match prefix {
        None => most,
        Some(digits) if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(bad(NetworkProblem::Prefix));
        }
        Some(digits) => match digits.parse::<u8>() {
            Ok(prefix) if prefix <= most => prefix,
            _ => return Err(bad(NetworkProblem::PrefixTooLong { most, family })),
        },
    };
    IpNet::new(addr, prefix).map_err(|_| bad(NetworkProblem::PrefixTooLong { most, family }))
}

impl fmt::Display for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, net) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Networks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Networks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Networks, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Networks refused: an entry that is not a network, too many entries, or
/// none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidNetworks {
    /// An entry that is not `ADDRESS/PREFIX` nor an address.
    #[error("invalid network {entry:?}: {problem}")]
    Entry {
        /// The entry, quoted (its first 64 characters).
        entry: String,
        /// What is wrong with it.
        problem: NetworkProblem,
    },
    /// More entries than [`Networks::MAX`].
    #[error("too many networks: {given} given, at most 64; merge them into wider ones")]
    TooMany {
        /// How many were given.
        given: usize,
    },
    /// No entry at all.
    #[error("no network given: give at least one, or remove the setting")]
    Empty,
}

/// What is wrong with a network entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkProblem {
    /// Its address is not an IPv4 or IPv6 address.
    #[error("not an IPv4 or IPv6 address, like 10.0.0.0/8 or 2001:db8::/32")]
    Address,
    /// Its prefix is not a number.
    #[error("the prefix after '/' is not a number")]
    Prefix,
    /// Its prefix is longer than its family allows.
    #[error("the prefix is longer than {most}, the most for {family}")]
    PrefixTooLong {
        /// 32 or 128.
        most: u8,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_normalised_and_print_as_they_parse() {
        let networks: Networks = "2001:db8::1/32,10.0.0.0/25,10.0.0.128/25,10.0.0.7"
            .parse()
            .unwrap();
        assert_eq!(networks.to_string(), "10.0.0.0/24,2001:db8::/32");
        assert_eq!(networks.to_string().parse::<Networks>().unwrap(), networks);
        assert!(networks.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!networks.contains("2001:db9::1".parse().unwrap()));
        assert!(!networks.contains("10.0.1.0".parse().unwrap()));
    }

    #[test]
    fn bad_networks_are_refused_quoting_the_entry() {
        for (text, message) in [
            (
                "10.0.0.0/8,nope",
                "invalid network \"nope\": not an IPv4 or IPv6 address, like 10.0.0.0/8 or 2001:db8::/32",
            ),
            (
                "2001:db8::/129",
                "invalid network \"2001:db8::/129\": the prefix is longer than 128, the most for IPv6",
            ),
            (
                "10.0.0.0/300",
                "invalid network \"10.0.0.0/300\": the prefix is longer than 32, the most for IPv4",
            ),
            (
                "10.0.0.0/x",
                "invalid network \"10.0.0.0/x\": the prefix after '/' is not a number",
            ),
            (
                "10.0.0.0/",
                "invalid network \"10.0.0.0/\": the prefix after '/' is not a number",
            ),
            (
                " , ",
                "no network given: give at least one, or remove the setting",
            ),
        ] {
            assert_eq!(
                text.parse::<Networks>().unwrap_err().to_string(),
                message,
                "{text}"
            );
        }
        let many = (0..65)
            .map(|n| format!("10.0.{n}.0/24"))
            .collect::<Vec<_>>();
        assert_eq!(
            many.join(",").parse::<Networks>().unwrap_err(),
            InvalidNetworks::TooMany { given: 65 }
        );
        assert!(many[..64].join(",").parse::<Networks>().is_ok());
    }
}
