//! The base62 alphabet shared by token secrets, checksums and generated ids.

/// `0-9A-Za-z`, in that order.
pub(crate) const ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fills `out` with characters drawn uniformly from [`ALPHABET`].
///
/// Rejection sampling: a random byte is used only when it is below 248
/// (= 4 × 62), so `byte % 62` carries no modulo bias.
pub(crate) fn fill_random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R, out: &mut [u8]) {
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

/// Marks a byte outside the alphabet in [`DIGITS`].
pub(crate) const INVALID: u8 = 0xFF;

/// The value of each byte as a base62 digit, or [`INVALID`].
pub(crate) const DIGITS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The value of one base62 digit, or `None` for a byte outside the alphabet.
pub(crate) const fn digit(byte: u8) -> Option<u8> {
    match DIGITS[byte as usize] {
        INVALID => None,
        value => Some(value),
    }
}

/// Packs 40 base62 characters into 30 bytes, 6 bits each (a lossless
/// encoding of valid input), or `None` if any character is outside the
/// alphabet. One pass, no branch per character.
pub(crate) fn pack40(chars: &[u8; 40]) -> Option<[u8; 30]> {
    let mut out = [0u8; 30];
    (pack(chars, &mut out) & 0xC0 == 0).then_some(out)
}

/// Packs each 8 characters of `chars` into 6 bytes of `out`; returns the
/// `|` of every digit, whose top bits are set if one was [`INVALID`] (an
/// INVALID digit garbles its bytes, which the caller then drops).
///
/// Kept out of line: inlined in `pack40`, the compiler interleaves the
/// groups and runs out of registers (306 instructions as generated, 229
/// this way).
#[inline(never)]
fn pack(chars: &[u8], out: &mut [u8]) -> u8 {
    let mut invalid = 0u8;
    for (group, bytes) in chars.chunks_exact(8).zip(out.chunks_exact_mut(6)) {
        let mut bits = 0u64;
        for &c in group {
            let digit = DIGITS[usize::from(c)];
            invalid |= digit;
            bits = bits << 6 | u64::from(digit);
        }
        bytes.copy_from_slice(&bits.to_be_bytes()[2..]);
    }
    invalid
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
        assert_eq!(DIGITS.iter().filter(|&&d| d != INVALID).count(), 62);
    }

    /// The 40 characters `packed` holds, read back 6 bits at a time.
    fn unpack(packed: &[u8; 30]) -> Vec<u8> {
        (0..40)
            .map(|i| {
                let bit = i * 6;
                let word =
                    u16::from_be_bytes([packed[bit / 8], *packed.get(bit / 8 + 1).unwrap_or(&0)]);
                ALPHABET[usize::from((word >> (10 - bit % 8)) & 63)]
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn pack40_is_lossless_and_refuses_foreign_bytes(
            digits in proptest::array::uniform::<_, 40>(0..62usize),
            at in 0..40usize,
            bad in proptest::sample::select(vec![b'_', b'-', 0, 0x80, 0xFF, b' ']),
        ) {
            let chars = digits.map(|d| ALPHABET[d]);
            let packed = pack40(&chars).unwrap();
            proptest::prop_assert_eq!(unpack(&packed), chars);
            let mut tampered = chars;
            tampered[at] = bad;
            proptest::prop_assert_eq!(pack40(&tampered), None);
        }
    }

    #[test]
    fn encode_fixed_pads_and_orders_most_significant_first() {
        assert_eq!(&encode_fixed::<6>(0), b"000000");
        assert_eq!(&encode_fixed::<6>(61), b"00000z");
        assert_eq!(&encode_fixed::<6>(62), b"000010");
        assert_eq!(&encode_fixed::<6>(u64::from(u32::MAX)), b"4gfFC3");
    }
}
