//! A writer killed with SIGKILL at random moments loses nothing it handed
//! out: every token it printed authenticates afterwards, and the database
//! passes `PRAGMA integrity_check`.
//!
//! The child is this test binary itself, run again with
//! `KEYROLL_CRASH_CHILD=<database>` and the filter `crash_child`: it creates
//! and renews keys in a loop, printing each token only once `create_key` or
//! `renew` has returned (the write that holds its hash committed).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyroll::{KeyId, KeyManager};
use keyroll_sqlite::SqliteStore;
use pollster::block_on;
use rand::{RngExt, SeedableRng};
use time::OffsetDateTime;

const CHILD: &str = "KEYROLL_CRASH_CHILD";
const ROUNDS: u64 = 24;

/// The child's loop (a no-op unless run as the child).
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD) else {
        return;
    };
    let manager = KeyManager::new(SqliteStore::open(path).unwrap());
    let round = std::env::var("KEYROLL_CRASH_ROUND").unwrap();
    let now = OffsetDateTime::now_utc();
    let mut rng = rand::rng();
    // The harness has printed "test crash_child ... " with no newline.
    println!();
    for i in 0.. {
        let id = KeyId::new(format!("r{round}-k{i}")).unwrap();
        let (first, _) = block_on(manager.create_key(id.clone(), now, &mut rng)).unwrap();
        println!("{}", first.expose_secret());
        let (second, _) = block_on(manager.renew(&id, now, &mut rng)).unwrap();
        println!("{}", second.expose_secret());
    }
}

#[test]
fn sqlite_tokens_survive_a_writer_killed_with_sigkill() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut printed: Vec<String> = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, &path)
            .env("KEYROLL_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // Only whole tokens: the harness prints other lines.
                    if line.starts_with("kr_") {
                        lines.lock().unwrap().push(line);
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(20..150)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let new = std::mem::take(&mut *lines.lock().unwrap());
        printed.extend(new);

        let store = SqliteStore::open(&path).unwrap();
        block_on(store.integrity_check()).unwrap();
        let manager = KeyManager::new(store);
        let now = OffsetDateTime::now_utc();
        for token in &printed {
            block_on(manager.authenticate(token, now))
                .unwrap_or_else(|e| panic!("round {round}: a printed token failed: {e}"));
        }
    }
    assert!(
        printed.len() as u64 > ROUNDS,
        "the child printed {} tokens in {ROUNDS} rounds",
        printed.len()
    );
}
