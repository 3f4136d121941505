//! A short load check of `http_service`: requests per second of
//! `GET /v1/whoami` (authenticated) and of `GET /v1/ping` (the same handler
//! without authentication), from a loopback client.
//!
//! ```text
//! KEYROLL_ADMIN_TOKEN=load cargo run --release -p keyroll-demo --bin http_service -- --listen 127.0.0.1:8080 &
//! KEYROLL_ADMIN_TOKEN=load cargo run --release -p keyroll-demo --bin http_load -- --url http://127.0.0.1:8080
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
    /// Seconds per measured route.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
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

fn main() -> Result<(), Box<dyn Error>> {
    let cli = Cli::parse();
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

    let plain = measure(&cli, "/v1/ping", &[])?;
    let authenticated = measure(
        &cli,
        "/v1/whoami",
        &[("X-Api-Key", &id), ("X-Api-Token", &token)],
    )?;
    println!("GET /v1/ping   (no authentication): {plain:.0} requests/s");
    println!("GET /v1/whoami (keyroll):           {authenticated:.0} requests/s");
    println!("ratio whoami/ping: {:.3}", authenticated / plain);
    Ok(())
}
