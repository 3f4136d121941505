//! A short load check of `http_service`: requests per second of
//! `GET /v1/whoami` (authenticated, usage recorded) and of `GET /v1/ping`
//! (the same answer without authentication), both sent the same bearer
//! token, from a loopback client; then whoami in the two-header form.
//!
//! ```text
//! KEYROLL_ADMIN_TOKEN=load-bootstrap-token-0123456789abcdef cargo run --release -p keyroll-demo --bin http_service -- --listen 127.0.0.1:8080 &
//! KEYROLL_ADMIN_TOKEN=load-bootstrap-token-0123456789abcdef cargo run --release -p keyroll-demo --bin http_load -- --url http://127.0.0.1:8080
//! ```
//!
//! Bounded: each run stops after `--seconds` or `--max-requests`, whichever
//! comes first, and only targets loopback addresses.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ureq::Agent;

#[derive(Parser)]
struct Cli {
    /// The service, on a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    threads: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2)]
    seconds: u64,
    /// Rounds of one measurement per route, each round starting one route
    /// later (ping first, then bearer whoami first, ...), so that neither a
    /// machine slowing down nor a route's place in a round favours one;
    /// medians are reported, so a burst of other work on the machine moves
    /// one measurement, not the result.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// At most this many requests per route.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
}

/// Requests per second of `GET path` with `headers`, from `threads` keep-alive clients.
fn measure(cli: &Cli, path: &str, headers: &[(&str, &str)]) -> Result<f64, Box<dyn Error>> {
    let done = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(cli.seconds);
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<(), Box<dyn Error>> {
        let workers: Vec<_> = (0..cli.threads)
            .map(|_| {
                scope.spawn(|| -> Result<(), String> {
                    let agent: Agent = Agent::config_builder().build().into();
                    let url = format!("{}{path}", cli.url);
                    while Instant::now() < deadline
                        && done.fetch_add(1, Ordering::Relaxed) < cli.max_requests
                    {
                        let mut request = agent.get(&url);
                        for (name, value) in headers {
                            request = request.header(*name, *value);
                        }
                        let mut response = request.call().map_err(|e| e.to_string())?;
                        response
                            .body_mut()
                            .read_to_vec()
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().map_err(|_| "a client thread panicked")??;
        }
        Ok(())
    })?;
    let requests = done.load(Ordering::Relaxed).min(cli.max_requests);
    Ok(requests as f64 / start.elapsed().as_secs_f64())
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// A 95% confidence interval for the median of `sorted` (ascending), from
/// order statistics, with no assumption on how the values vary: the k-th
/// smallest and the k-th largest value, k the largest with
/// P(Binomial(n, 1/2) < k) <= 2.5%. None for fewer than 6 values.
fn median_interval(sorted: &[f64]) -> Option<(f64, f64)> {
    let n = sorted.len();
    let (mut k, mut below) = (0, 0.0);
    // P(Binomial(n, 1/2) = k), from k = 0 on.
    let mut term = 0.5f64.powi(i32::try_from(n).ok()?);
    while k < n && below + term <= 0.025 {
        below += term;
        k += 1;
        term *= (n - k + 1) as f64 / k as f64;
    }
    (k > 0).then(|| (sorted[k - 1], sorted[n - k]))
}

fn main() -> Result<(), Box<dyn Error>> {
    let cli = Cli::parse();
    if cli.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let host = cli
        .url
        .trim_start_matches("http://")
        .split([':', '/'])
        .next()
        .unwrap_or("");
    if !(host == "localhost" || host.starts_with("127.") || host == "[") {
        return Err("the load check only targets loopback addresses".into());
    }
    let admin = std::env::var("KEYROLL_ADMIN_TOKEN").map_err(|_| "set KEYROLL_ADMIN_TOKEN")?;
    let agent: Agent = Agent::config_builder().build().into();
    let created: serde_json::Value = agent
        .post(format!("{}/admin/keys", cli.url))
        .header("Authorization", &format!("Bearer {admin}"))
        .header("Content-Type", "application/json")
        .send(r#"{"label": "load check"}"#)?
        .body_mut()
        .read_json()?;
    let id = created["id"].as_str().ok_or("no id")?.to_owned();
    let token = created["token"].as_str().ok_or("no token")?.to_owned();

    // The same request to both routes (ping ignores the credential), so
    // the ratio is what authenticating costs.
    let bearer = format!("Bearer {token}");
    let headers = [("Authorization", bearer.as_str())];
    let two = [("X-Api-Key", id.as_str()), ("X-Api-Token", token.as_str())];
    let routes: [(&str, &[(&str, &str)]); 3] = [
        ("/v1/ping", &headers),
        ("/v1/whoami", &headers),
        ("/v1/whoami", &two),
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..cli.rounds {
        for i in (0..3).map(|i| (i + round) % 3) {
            let (path, headers) = routes[i];
            rates[i].push(measure(&cli, path, headers)?);
        }
    }
    // Each round's ratio compares measurements made moments apart.
    let mut ratios: Vec<f64> = rates[1].iter().zip(&rates[0]).map(|(w, p)| w / p).collect();
    ratios.sort_by(f64::total_cmp);
    let paired = ratios[ratios.len() / 2];
    let [plain, authenticated, two_headers] = rates.map(median);
    println!(
        "medians of {} measurements of {} s each:",
        cli.rounds, cli.seconds
    );
    println!("GET /v1/ping   (no authentication):        {plain:.0} requests/s");
    println!("GET /v1/whoami (keyroll, bearer token):    {authenticated:.0} requests/s");
    println!("GET /v1/whoami (keyroll, two headers):     {two_headers:.0} requests/s");
    println!("ratio whoami/ping: {:.3}", authenticated / plain);
    let interval = match median_interval(&ratios) {
        Some((low, high)) => format!("95% confidence interval {low:.3}-{high:.3}"),
        None => "too few rounds for a 95% confidence interval".to_owned(),
    };
    println!("median of the rounds' ratios whoami/ping: {paired:.3} ({interval})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median_interval;

    #[test]
    fn the_median_interval_is_the_order_statistics_binomial_tables_give() {
        let values = |n: usize| (0..n).map(|i| i as f64).collect::<Vec<_>>();
        // P(B(5, 1/2) = 0) = 1/32 > 2.5%: five values bound nothing.
        assert_eq!(median_interval(&values(5)), None);
        // n = 6 and 9: k = 1 and 2; n = 40: k = 14 (P(B < 14) = 1.9%, P(B < 15) = 4.0%).
        assert_eq!(median_interval(&values(6)), Some((0.0, 5.0)));
        assert_eq!(median_interval(&values(9)), Some((1.0, 7.0)));
        assert_eq!(median_interval(&values(40)), Some((13.0, 26.0)));
    }
}
