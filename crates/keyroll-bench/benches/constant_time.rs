//! Constant-time evidence for `verify`, in the manner of dudect: Welch's
//! t-test between the timings of two classes of input, measured interleaved
//! in random order. |t| < 4.5 means no timing difference was detected.
//!
//! `cargo bench -p keyroll-bench --bench constant_time [-- SAMPLES]` (default 1,000,000
//! measurements per comparison, both classes together, each the mean time
//! of 16 calls)
//!
//! Classes: the right token, and well-formed tokens (valid checksum, so they
//! reach the hash comparison) that differ from it in the first, the middle
//! or the last character of the secret. Also first-vs-last, both wrong.
//!
//! Since a token is hashed before it is compared, how close a wrong token is
//! to the right one says nothing about how close their hashes are. The last
//! rows test the comparison itself: one presented token, and stored hashes
//! that differ from its hash in the first or in the last byte.
//!
//! What must show no difference are the rows between wrong tokens (and
//! wrong hashes): a difference there would tell a caller how close a guess
//! came. A right token may take a nanosecond longer than a wrong one (an
//! `Ok` with the match is built, where a wrong one gets an `Err`): that
//! tells only what the answer itself says, and those rows say so rather
//! than fail.

use std::hint::black_box;
use std::time::Instant;

use keyroll::{ApiKey, KeyId, NewKey};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use time::OffsetDateTime;

/// Calls per measurement: the clock's resolution and cost vanish in the sum.
const BATCH: u32 = 16;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `token` with the secret character at `index` changed, checksum fixed.
fn differing_at(token: &str, index: usize) -> String {
    // The secret is the 40 characters before the 6 of the checksum.
    let mut bytes = token.as_bytes()[..token.len() - 6].to_vec();
    let at = token.len() - 46 + index;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let mut crc = crc32fast::hash(&bytes) as u64;
    let mut checksum = [b'0'; 6];
    for slot in checksum.iter_mut().rev() {
        *slot = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    bytes.extend_from_slice(&checksum);
    String::from_utf8(bytes).unwrap()
}

/// Welch's t statistic of two samples.
fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    let stats = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var, n)
    };
    let ((ma, va, na), (mb, vb, nb)) = (stats(a), stats(b));
    (ma - mb) / (va / na + vb / nb).sqrt()
}

/// Drops measurements above the pooled `percentile` (interrupts, page faults).
fn crop(a: &[f64], b: &[f64], percentile: f64) -> (Vec<f64>, Vec<f64>) {
    let mut all: Vec<f64> = a.iter().chain(b).copied().collect();
    all.sort_by(f64::total_cmp);
    let cut = all[((all.len() as f64 * percentile) as usize).min(all.len() - 1)];
    (
        a.iter().copied().filter(|&v| v <= cut).collect(),
        b.iter().copied().filter(|&v| v <= cut).collect(),
    )
}

fn main() {
    let samples: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let now = OffsetDateTime::UNIX_EPOCH;
    let mut rng = StdRng::seed_from_u64(3);
    let (mut key, _, _) = ApiKey::issue(
        NewKey::new(KeyId::new("acme-orders").unwrap()).label("ct"),
        now,
        &mut rng,
    )
    .unwrap();
    let (token, _) = key.renew(now, &mut rng).unwrap();
    let right = token.expose_secret().to_owned();
    let first = differing_at(&right, 0);
    let middle = differing_at(&right, 20);
    let last = differing_at(&right, 39);
    assert!(key.verify(&right, now).is_ok());
    for wrong in [&first, &middle, &last] {
        assert_eq!(key.verify(wrong, now), Err(keyroll::VerifyError::Mismatch));
    }

    println!(
        "{samples} measurements of {BATCH} calls per comparison (both classes), interleaved at random\n"
    );
    println!("| classes | mean time | t (all) | t (cropped at p99) | verdict |");
    println!("|---|---|---|---|---|");
    let same_key = |a: &String, b: &String| (&key, a.clone(), &key, b.clone());
    // (name, inputs, whether a difference would tell more than the answer)
    let mut comparisons = vec![
        (
            "right vs first character wrong",
            same_key(&right, &first),
            false,
        ),
        (
            "right vs middle character wrong",
            same_key(&right, &middle),
            false,
        ),
        (
            "right vs last character wrong",
            same_key(&right, &last),
            false,
        ),
        (
            "first vs last character wrong",
            same_key(&first, &last),
            true,
        ),
    ];
    // The comparison itself: keys whose stored hash differs from the right
    // token's hash in one byte, verified with the same presented token.
    let with_hash_byte_flipped = |byte: usize| {
        let mut record: serde_json::Value = serde_json::to_value(&key).unwrap();
        let hash = record["current_token"]["hash"].as_str().unwrap().to_owned();
        let mut bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        bytes[byte] ^= 1;
        record["current_token"]["hash"] = bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into();
        serde_json::from_value::<ApiKey>(record).unwrap()
    };
    let (wrong_first_byte, wrong_last_byte) =
        (with_hash_byte_flipped(0), with_hash_byte_flipped(31));
    comparisons.push((
        "stored hash wrong in byte 0 vs byte 31",
        (
            &wrong_first_byte,
            right.clone(),
            &wrong_last_byte,
            right.clone(),
        ),
        true,
    ));
    for (name, (key_a, a, key_b, b), must_not_differ) in &comparisons {
        let (mut ta, mut tb) = (
            Vec::with_capacity(samples / 2),
            Vec::with_capacity(samples / 2),
        );
        // Both classes are verified from the same buffer, so that neither
        // gains from its address or alignment.
        let mut buffer = a.clone();
        for _ in 0..samples {
            let class_b = rng.random::<bool>();
            buffer.clear();
            buffer.push_str(if class_b { b } else { a });
            let key = if class_b { key_b } else { key_a };
            let start = Instant::now();
            for _ in 0..BATCH {
                let _ = black_box(key.verify(black_box(buffer.as_str()), now));
            }
            let elapsed = start.elapsed().as_nanos() as f64 / f64::from(BATCH);
            if class_b {
                tb.push(elapsed)
            } else {
                ta.push(elapsed)
            }
        }
        let t_all = welch_t(&ta, &tb);
        let (ca, cb) = crop(&ta, &tb, 0.99);
        let t_cropped = welch_t(&ca, &cb);
        let verdict = if t_all.abs() < 4.5 && t_cropped.abs() < 4.5 {
            "no difference detected"
        } else if *must_not_differ {
            "DIFFERENCE"
        } else {
            "differs (as the answer does)"
        };
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        println!(
            "| {name} | {:.1} / {:.1} ns | {t_all:.2} | {t_cropped:.2} | {verdict} |",
            mean(&ta),
            mean(&tb)
        );
    }
}
