//! `keyctl`, run as a user would: the built example binary, as a process.

mod common;

use std::path::PathBuf;

use common::example_binary;
use std::process::{Command, Output, Stdio};

struct Ctl {
    db: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ctl {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Ctl {
            db: dir.path().join("keys.db"),
            _dir: dir,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(example_binary("keyctl"))
            .arg("--db")
            .arg(&self.db)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "keyctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail with one line on stderr, and returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "keyctl {args:?} should fail");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

fn token_from(stdout: &str, label: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|t| t.trim().to_owned())
        .unwrap_or_else(|| panic!("no {label:?} line in {stdout}"))
}

#[test]
fn keyctl_runs_the_whole_renewal_story() {
    let ctl = Ctl::new();
    let created = ctl.ok(&["create", "--label", "orders service", "--id", "acme-orders"]);
    let first = token_from(&created, "token:");
    assert!(first.starts_with("kr_"));
    assert!(
        ctl.ok(&["verify", "acme-orders", &first])
            .contains("Current")
    );

    let out = ctl.run(&["renew", "acme-orders"]);
    assert!(out.status.success());
    let second = token_from(&String::from_utf8(out.stdout).unwrap(), "new token:");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("will not be shown again")
    );

    let listing = ctl.ok(&["list"]);
    assert!(
        listing.contains("acme-orders") && listing.contains("orders service"),
        "{listing}"
    );
    assert!(listing.contains("pending deletion: old token"), "{listing}");
    assert!(
        !listing.contains(&first) && !listing.contains(&second),
        "no secret in the listing"
    );
    assert!(ctl.ok(&["verify", "acme-orders", &first]).contains("Old"));
    assert!(
        ctl.fails(&["renew", "acme-orders"])
            .contains("already has a renewed token pending")
    );

    ctl.ok(&["finalize", "acme-orders", "--delete-old", "later"]);
    assert!(
        ctl.fails(&["finalize", "acme-orders", "--delete-old", "now"])
            .contains("already finalized")
    );
    ctl.ok(&["delete-old", "acme-orders"]);
    assert!(
        ctl.fails(&["verify", "acme-orders", &first])
            .contains("does not match")
    );
    assert!(!ctl.ok(&["list"]).contains("pending deletion"));

    let third = token_from(&ctl.ok(&["renew", "acme-orders"]), "new token:");
    ctl.ok(&["undo", "acme-orders"]);
    assert!(
        ctl.fails(&["verify", "acme-orders", &third])
            .contains("does not match")
    );
    assert!(
        ctl.fails(&["undo", "acme-orders"])
            .contains("renew again or delete the key")
    );

    ctl.ok(&["deactivate", "acme-orders"]);
    assert!(
        ctl.fails(&["verify", "acme-orders", &second])
            .contains("inactive")
    );
    assert!(ctl.ok(&["show", "acme-orders"]).contains("inactive"));
    ctl.ok(&["activate", "acme-orders"]);

    // Token from standard input.
    let mut child = Command::new(example_binary("keyctl"))
        .arg("--db")
        .arg(&ctl.db)
        .args(["verify", "acme-orders", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{second}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("Current"));

    ctl.ok(&["delete", "acme-orders"]);
    assert!(ctl.fails(&["show", "acme-orders"]).contains("acme-orders"));
}

#[test]
fn keyctl_shows_freshness_alerts_over_time() {
    let ctl = Ctl::new();
    ctl.ok(&[
        "--now",
        "2026-01-01T00:00:00Z",
        "create",
        "--label",
        "x",
        "--id",
        "k",
        "--period",
        "6m",
    ]);
    let at = |now: &str| ctl.ok(&["--now", now, "list"]);
    assert!(at("2026-06-01T00:00:00Z").contains("fresh"));
    assert!(at("2026-07-01T00:00:00Z").contains("outdated"));
    assert!(at("2026-10-01T00:00:00Z").contains("long outdated"));
    assert!(
        ctl.ok(&["--now", "2026-07-01T00:00:00Z", "show", "k"])
            .contains("outdated")
    );
}

#[test]
fn keyctl_enforced_keys_expire() {
    let ctl = Ctl::new();
    let out = ctl.ok(&[
        "--now",
        "2026-01-01T00:00:00Z",
        "create",
        "--label",
        "x",
        "--id",
        "k",
        "--enforced",
        "--prefix",
        "acme",
    ]);
    let token = token_from(&out, "token:");
    assert!(token.starts_with("acme_"));
    assert!(
        ctl.ok(&["--now", "2026-03-01T00:00:00Z", "verify", "k", &token])
            .contains("Current")
    );
    assert!(
        ctl.fails(&["--now", "2026-04-01T00:00:00Z", "verify", "k", &token])
            .contains("renewal period")
    );
}

#[test]
fn keyctl_bad_input_is_one_line_and_a_failure() {
    let ctl = Ctl::new();
    ctl.ok(&["create", "--label", "x", "--id", "k"]);
    assert!(ctl.fails(&["show", "nobody"]).contains("nobody"));
    assert!(ctl.fails(&["renew", "nobody"]).contains("not found"));
    assert!(ctl.fails(&["verify", "k", "kr_typo"]).contains("malformed"));
    assert!(
        ctl.fails(&["verify", "nobody", "kr_typo"])
            .contains("unknown key")
    );
    assert!(
        ctl.fails(&["create", "--label", "x", "--id", "k"])
            .contains("already exists")
    );
    assert!(
        ctl.fails(&["create", "--label", "x", "--prefix", "BAD"])
            .contains("prefix")
    );
    assert!(ctl.fails(&["delete-old", "k"]).contains("renew again"));

    // A file that is not a database.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let out = Command::new(example_binary("keyctl"))
        .arg("--db")
        .arg(&junk)
        .arg("list")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("keyctl: ") && stderr.lines().count() == 1,
        "{stderr}"
    );

    // An invalid key id is refused by the argument parser, without a panic.
    let out = ctl.run(&["show", "bad id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn keyctl_scheduled_and_after_use_deletion_with_last_use() {
    let ctl = Ctl::new();
    let at = |now: &str, args: &[&str]| {
        let mut all = vec!["--now", now];
        all.extend_from_slice(args);
        ctl.ok(&all)
    };
    let first = token_from(
        &at(
            "2026-01-01T00:00:00Z",
            &["create", "--label", "x", "--id", "k"],
        ),
        "token:",
    );
    let second = token_from(&at("2026-01-02T00:00:00Z", &["renew", "k"]), "new token:");
    at(
        "2026-01-02T00:00:00Z",
        &["finalize", "k", "--delete-old", "after-use=1h"],
    );
    assert!(at("2026-01-02T00:00:00Z", &["list"]).contains("after the new one is used"));
    assert!(at("2026-01-03T00:00:00Z", &["verify", "k", &first]).contains("Old"));
    assert!(
        at("2026-01-03T00:00:00Z", &["list"]).contains("2026-01-03 00:00"),
        "last use shown"
    );

    // The first use of the new token schedules the old token's deletion.
    at("2026-01-04T00:00:00Z", &["verify", "k", &second]);
    assert!(
        at("2026-01-04T00:00:00Z", &["show", "k"])
            .contains("old token deleted at 2026-01-04 01:00")
    );
    assert!(at("2026-01-04T00:30:00Z", &["verify", "k", &first]).contains("Old"));
    assert!(
        ctl.fails(&["--now", "2026-01-04T01:00:00Z", "verify", "k", &first])
            .contains("does not match")
    );
    let out = ctl.run(&["--now", "2026-01-04T02:00:00Z", "housekeep"]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("\"reason\":\"scheduled\"")
    );
    assert!(!at("2026-01-04T02:00:00Z", &["list"]).contains("old token"));

    // A scheduled instant, and an idle-guarded deletion.
    at("2026-02-01T00:00:00Z", &["renew", "k"]);
    at(
        "2026-02-01T00:00:00Z",
        &["finalize", "k", "--delete-old", "at=2026-03-01T00:00:00Z"],
    );
    assert!(
        at("2026-02-01T00:00:00Z", &["show", "k"])
            .contains("old token deleted at 2026-03-01 00:00")
    );
    at("2026-02-10T00:00:00Z", &["verify", "k", &second]);
    assert!(
        ctl.fails(&[
            "--now",
            "2026-02-11T00:00:00Z",
            "delete-old",
            "k",
            "--if-idle",
            "7d"
        ])
        .contains("used at")
    );
    at(
        "2026-02-18T00:00:00Z",
        &["delete-old", "k", "--if-idle", "7d"],
    );
    let out = ctl.run(&["finalize", "k", "--delete-old", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("expected now, later")
    );
}
