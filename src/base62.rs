//! The base62 alphabet shared by token secrets, checksums and generated ids.

/// `0-9A-Za-z`, in that order.
pub(crate) const ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fills `out` with characters drawn uniformly from [`ALPHABET`].
///
/// Rejection sampling: a random byte is used only when it is below 248
/// (= 4 × 62), so `byte % 62` carries no modulo bias.
pub(crate) fn fill_random<R: rand::CryptoRng + ?Sized>(rng: &mut R, out: &mut [u8]) {
    let mut pool = [0u8; 64];
    let mut used = pool.len();
    for slot in out.iter_mut() {
        loop {
            if used == pool.len() {
                rng.fill_bytes(&mut pool);
                used = 0;
            }
            let byte = pool[used];
            used += 1;
            if byte < 248 {
                *slot = ALPHABET[usize::from(byte % 62)];
                break;
            }
        }
    }
    zeroize::Zeroize::zeroize(&mut pool);
}

/// The value of one base62 digit, or `None` for a byte outside the alphabet.
pub(crate) const fn digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'Z' => Some(byte - b'A' + 10),
        b'a'..=b'z' => Some(byte - b'a' + 36),
        _ => None,
    }
}

/// Writes `value` as exactly `N` base62 digits, most significant first,
/// left-padded with `0`. `N` must be large enough to hold `value`.
pub(crate) fn encode_fixed<const N: usize>(mut value: u64) -> [u8; N] {
    let mut out = [b'0'; N];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    debug_assert_eq!(value, 0, "value does not fit in {N} base62 digits");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_round_trip_the_alphabet() {
        for (i, &c) in ALPHABET.iter().enumerate() {
            assert_eq!(digit(c), Some(i as u8));
        }
        assert_eq!(digit(b'_'), None);
        assert_eq!(digit(b'-'), None);
    }

    #[test]
    fn encode_fixed_pads_and_orders_most_significant_first() {
        assert_eq!(&encode_fixed::<6>(0), b"000000");
        assert_eq!(&encode_fixed::<6>(61), b"00000z");
        assert_eq!(&encode_fixed::<6>(62), b"000010");
        assert_eq!(&encode_fixed::<6>(u64::from(u32::MAX)), b"4gfFC3");
    }
}
