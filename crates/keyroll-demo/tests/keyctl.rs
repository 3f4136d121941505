//! `keyctl`, run as a user would: the built example binary, as a process.

use std::path::PathBuf;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
        Command::new(env!("CARGO_BIN_EXE_keyctl"))
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
        one_line_failure(self.run(args), args)
    }

    /// Runs `args` with `input` as a line on standard input.
    fn with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyctl"))
            .arg("--db")
            .arg(&self.db)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
        child.wait_with_output().unwrap()
    }

    /// `verify ID` (with `--now NOW` if given), the token on standard input.
    fn verify(&self, now: Option<&str>, id: &str, token: &str) -> Output {
        let mut args = Vec::new();
        if let Some(now) = now {
            args.extend(["--now", now]);
        }
        args.extend(["verify", id]);
        self.with_stdin(&args, token)
    }

    fn verify_ok(&self, now: Option<&str>, id: &str, token: &str) -> String {
        let out = self.verify(now, id, token);
        assert!(
            out.status.success(),
            "verify {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn verify_fails(&self, now: Option<&str>, id: &str, token: &str) -> String {
        one_line_failure(self.verify(now, id, token), &["verify", id])
    }
}

fn one_line_failure(out: Output, args: &[&str]) -> String {
    assert!(!out.status.success(), "keyctl {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// An RFC 3339 instant `days` from now.
fn in_days(days: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::days(days))
        .format(&Rfc3339)
        .unwrap()
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
        ctl.verify_ok(None, "acme-orders", &first)
            .contains("valid: current")
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
    assert!(
        ctl.verify_ok(None, "acme-orders", &first)
            .contains("valid: old")
    );
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
        ctl.verify_fails(None, "acme-orders", &first)
            .contains("does not match")
    );
    assert!(!ctl.ok(&["list"]).contains("pending deletion"));

    let third = token_from(&ctl.ok(&["renew", "acme-orders"]), "new token:");
    ctl.ok(&["undo", "acme-orders"]);
    assert!(
        ctl.verify_fails(None, "acme-orders", &third)
            .contains("does not match")
    );
    assert!(
        ctl.fails(&["undo", "acme-orders"])
            .contains("renew again or delete the key")
    );

    ctl.ok(&["deactivate", "acme-orders"]);
    assert!(
        ctl.verify_fails(None, "acme-orders", &second)
            .contains("inactive")
    );
    assert!(ctl.ok(&["show", "acme-orders"]).contains("inactive"));
    ctl.ok(&["activate", "acme-orders"]);

    assert!(
        ctl.verify_ok(None, "acme-orders", &second)
            .contains("valid: current")
    );
    // Never from the command line, where `ps` and shell history see it.
    assert_eq!(
        ctl.run(&["verify", "acme-orders", &second]).status.code(),
        Some(2)
    );

    ctl.ok(&["delete", "acme-orders"]);
    assert!(ctl.fails(&["show", "acme-orders"]).contains("acme-orders"));
}

#[test]
fn keyctl_shows_freshness_alerts_over_time() {
    let ctl = Ctl::new();
    ctl.ok(&["create", "--label", "x", "--id", "k", "--period", "6m"]);
    let at = |days: i64| ctl.ok(&["--now", &in_days(days), "list"]);
    assert!(at(150).contains("fresh"));
    assert!(at(200).contains("outdated"));
    assert!(at(300).contains("long outdated"));
    assert!(
        ctl.ok(&["--now", &in_days(200), "show", "k"])
            .contains("outdated")
    );
}

#[test]
fn keyctl_enforced_keys_expire() {
    let ctl = Ctl::new();
    let out = ctl.ok(&[
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
        ctl.verify_ok(Some(&in_days(60)), "k", &token)
            .contains("valid: current")
    );
    assert!(
        ctl.verify_fails(Some(&in_days(100)), "k", &token)
            .contains("renewal period")
    );
}

/// `--now` is for looking: it never writes, so looking ahead cannot apply
/// a deletion early or record a use at a time that has not come.
#[test]
fn keyctl_now_never_writes() {
    let ctl = Ctl::new();
    let token = token_from(&ctl.ok(&["create", "--id", "k", "--label", "x"]), "token:");
    let later = in_days(30);
    for args in [
        vec!["renew", "k"],
        vec!["housekeep"],
        vec!["deactivate", "k"],
        vec!["delete", "k"],
        vec!["create", "--label", "y"],
    ] {
        let mut all = vec!["--now", later.as_str()];
        all.extend(args);
        assert!(ctl.fails(&all).contains("--now is for looking"), "{all:?}");
    }
    assert!(
        ctl.verify_ok(Some(&later), "k", &token)
            .contains("valid: current")
    );
    let shown = ctl.ok(&["show", "k"]);
    assert!(
        shown.contains("last used never"),
        "no use recorded: {shown}"
    );
    assert!(shown.contains("version  1"), "{shown}");
}

/// Labels are printed with control characters escaped (keyroll 0.1 stored
/// them; a label must not rewrite the operator's terminal).
#[test]
fn keyctl_escapes_control_characters_in_labels() {
    let ctl = Ctl::new();
    ctl.ok(&["list"]); // creates the database
    let record = include_str!("../../../tests/fixtures/schema-1/single.json")
        .replace("\"label\":\"single\"", "\"label\":\"\\u001b[2Jgotcha\"");
    let key: keyroll::ApiKey = serde_json::from_str(&record).unwrap();
    assert_eq!(key.label(), "\u{1b}[2Jgotcha");
    let conn = rusqlite::Connection::open(&ctl.db).unwrap();
    conn.execute(
        "INSERT INTO keyroll_keys (id, incarnation, version, record) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![
            key.id().as_str(),
            key.revision().incarnation() as i64,
            key.version() as i64,
            record
        ],
    )
    .unwrap();
    for out in [ctl.ok(&["list"]), ctl.ok(&["show", key.id().as_str()])] {
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("\\u{1b}[2Jgotcha"), "{out}");
    }
}

#[test]
fn keyctl_bad_input_is_one_line_and_a_failure() {
    let ctl = Ctl::new();
    ctl.ok(&["create", "--label", "x", "--id", "k"]);
    assert!(ctl.fails(&["show", "nobody"]).contains("nobody"));
    assert!(ctl.fails(&["renew", "nobody"]).contains("not found"));
    assert!(ctl.verify_fails(None, "k", "kr_typo").contains("malformed"));
    let gone = token_from(
        &ctl.ok(&["create", "--id", "gone", "--label", "x"]),
        "token:",
    );
    ctl.ok(&["delete", "gone"]);
    assert!(
        ctl.verify_fails(None, "gone", &gone)
            .contains("unknown key")
    );
    assert!(
        ctl.verify_fails(None, "k", &gone)
            .contains("does not match")
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
    let out = Command::new(env!("CARGO_BIN_EXE_keyctl"))
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

    // An invalid key id, or a duration that is not one (a character
    // spanning bytes, an overflow, a negative), is refused by the argument
    // parser, without a panic.
    for args in [
        vec!["show", "bad id"],
        vec!["delete-old", "k", "--if-idle", "1é"],
        vec!["delete-old", "k", "--if-idle", "999999999999999999d"],
        vec!["delete-old", "k", "--if-idle", "-1h"],
        vec!["finalize", "k", "--delete-old", "after-use=-5m"],
        vec!["finalize", "k", "--delete-old", "after-use=1é"],
    ] {
        let out = ctl.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

#[test]
fn keyctl_scheduled_and_after_use_deletion_with_last_use() {
    let ctl = Ctl::new();
    let first = token_from(&ctl.ok(&["create", "--label", "x", "--id", "k"]), "token:");
    let second = token_from(&ctl.ok(&["renew", "k"]), "new token:");
    ctl.ok(&["finalize", "k", "--delete-old", "after-use=1h"]);
    assert!(ctl.ok(&["list"]).contains("after the new one is used"));
    assert!(ctl.verify_ok(None, "k", &first).contains("valid: old"));
    let shown = ctl.ok(&["show", "k"]);
    let old_line = shown.lines().find(|l| l.starts_with("old")).unwrap();
    assert!(
        !old_line.contains("last used never"),
        "last use shown: {shown}"
    );

    // The first use of the new token schedules the old token's deletion an
    // hour later; looking two hours ahead, the old token is gone.
    ctl.verify_ok(None, "k", &second);
    assert!(ctl.ok(&["show", "k"]).contains("old token deleted at"));
    assert!(ctl.verify_ok(None, "k", &first).contains("valid: old"));
    assert!(
        ctl.verify_fails(Some(&in_days(1)), "k", &first)
            .contains("does not match")
    );

    // A scheduled instant two seconds away, applied by housekeep.
    ctl.ok(&["undo", "k"]);
    let third = token_from(&ctl.ok(&["renew", "k"]), "new token:");
    let soon = (OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&Rfc3339)
        .unwrap();
    ctl.ok(&["finalize", "k", "--delete-old", &format!("at={soon}")]);
    assert!(ctl.ok(&["show", "k"]).contains("old token deleted at"));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(ctl.ok(&["housekeep"]).contains("\"reason\":\"scheduled\""));
    assert!(!ctl.ok(&["list"]).contains("old token"));

    // An idle-guarded deletion: refused while the old token was just used.
    ctl.ok(&["renew", "k"]);
    assert!(ctl.verify_ok(None, "k", &third).contains("valid: old"));
    assert!(
        ctl.fails(&["delete-old", "k", "--if-idle", "7d"])
            .contains("used at")
    );
    ctl.ok(&["delete-old", "k", "--if-idle", "0s"]);
    let out = ctl.run(&["finalize", "k", "--delete-old", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("expected now, later")
    );
}

#[test]
fn keyctl_revokes_leaked_tokens_and_tells_whose_a_token_is() {
    let ctl = Ctl::new();
    let first = token_from(
        &ctl.ok(&["create", "--label", "x", "--id", "acme_orders"]),
        "token:",
    );
    let second = token_from(&ctl.ok(&["renew", "acme_orders"]), "new token:");

    // whois reads no database: it works on one that does not exist.
    let nowhere = Ctl::new();
    let out = nowhere.with_stdin(&["whois"], &second);
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "acme_orders");
    assert!(!nowhere.db.exists(), "whois created a database");
    let out = nowhere.with_stdin(&["whois"], "kr_typo");
    assert!(String::from_utf8(out.stderr).unwrap().contains("malformed"));

    // Revoking the old token deletes it; revoking the current one kills it.
    let out = ctl.with_stdin(&["revoke"], &first);
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("\"which\":\"old\"")
    );
    assert!(!ctl.ok(&["list"]).contains("pending deletion"));
    let out = ctl.with_stdin(&["revoke"], &second);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("\"which\":\"current\"")
    );
    assert!(
        ctl.verify_fails(None, "acme_orders", &second)
            .contains("does not match")
    );
    // Nothing left to revoke; a renewal brings a working token back.
    let out = ctl.with_stdin(&["revoke"], &second);
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("nothing was revoked")
    );
    let third = token_from(&ctl.ok(&["renew", "acme_orders"]), "new token:");
    assert!(
        ctl.verify_ok(None, "acme_orders", &third)
            .contains("valid: current")
    );
}

#[test]
fn keyctl_keeps_scopes_metadata_and_expiry_on_keys() {
    let ctl = Ctl::new();
    let token = token_from(
        &ctl.ok(&[
            "create",
            "--label",
            "orders",
            "--id",
            "acme",
            "--scope",
            "orders:read",
            "--scope",
            "orders:write",
            "--meta",
            "tenant=acme",
            "--expires",
            "2099-06-30T00:00:00Z",
        ]),
        "token:",
    );
    let shown = ctl.ok(&["show", "acme"]);
    assert!(
        shown.contains("scopes   orders:read orders:write"),
        "{shown}"
    );
    assert!(shown.contains("metadata tenant=acme"), "{shown}");
    assert!(shown.contains("expires  2099-06-30 00:00"), "{shown}");
    assert!(ctl.ok(&["list"]).contains("2099-06-30 00:00"));

    ctl.ok(&["set-scopes", "acme", "--scope", "orders:read"]);
    ctl.ok(&[
        "set-meta",
        "acme",
        "--meta",
        "tenant=globex",
        "--meta",
        "owner=ops",
    ]);
    ctl.ok(&["set-label", "acme", "orders v2"]);
    let shown = ctl.ok(&["show", "acme"]);
    assert!(shown.contains("scopes   orders:read\n"), "{shown}");
    assert!(
        shown.contains("metadata owner=ops tenant=globex"),
        "{shown}"
    );
    assert!(shown.contains("label    orders v2"), "{shown}");

    // Expired: nothing verifies, renewals are refused until the expiry moves.
    ctl.ok(&["set-expiry", "acme", "2020-01-01T00:00:00Z"]);
    assert!(ctl.ok(&["show", "acme"]).contains("EXPIRED"));
    assert!(ctl.verify_fails(None, "acme", &token).contains("expired"));
    assert!(ctl.fails(&["renew", "acme"]).contains("set_expiry"));
    ctl.ok(&["set-expiry", "acme", "none"]);
    assert!(
        ctl.verify_ok(None, "acme", &token)
            .contains("valid: current")
    );

    // Bad input: one line naming it.
    assert!(
        ctl.fails(&["set-scopes", "acme", "--scope", "has space"])
            .contains("invalid scope \"has space\"")
    );
    assert!(
        ctl.fails(&["set-meta", "acme", "--meta", "a=1", "--meta", "a=2"])
            .contains("given twice")
    );
    assert!(
        ctl.fails(&["set-label", "acme", "bad\u{7}"])
            .contains("control character")
    );
}

/// keyctl over PostgreSQL (`--store postgres:URL`), when a server is given
/// (`.ci/run` starts one and sets `KEYROLL_PG_URL`): `migrate` first, which
/// no other command runs; a connection in the clear is warned about.
#[cfg_attr(
    not(keyroll_pg),
    ignore = "needs PostgreSQL: set KEYROLL_PG_URL (`bash .ci/run` starts one)"
)]
#[test]
fn keyctl_works_over_postgres() {
    let url = std::env::var("KEYROLL_PG_URL").expect("KEYROLL_PG_URL must be set");
    let ctl = Ctl::new();
    // In the clear: TLS, and its verification, are keyroll-postgres's tests.
    let admin = ctl.run(&[
        "--store",
        &format!("postgres:{url}?sslmode=disable"),
        "migrate",
    ]);
    assert!(admin.status.success(), "{admin:?}");
    assert!(
        String::from_utf8_lossy(&admin.stderr).contains("not encrypted"),
        "{admin:?}"
    );
    // It prints what the service's own role needs, on all six tables.
    assert!(
        String::from_utf8_lossy(&admin.stdout).contains(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON keyroll_keys, keyroll_keys_meters, \
             keyroll_keys_usage, keyroll_keys_markers, keyroll_keys_owners, keyroll_keys_outbox \
             TO \"keyroll\";"
        ),
        "{admin:?}"
    );
    let store = format!("postgres:{url}?sslmode=disable");
    let id = format!("keyctl-pg-{}", std::process::id());
    let created = ctl.ok(&["--store", &store, "create", "--id", &id, "--label", "pg"]);
    let token = token_from(&created, "token:");
    let out = ctl.with_stdin(&["--store", &store, "verify", &id], &token);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("valid: current")
    );
    assert!(
        ctl.ok(&["--store", &store, "show", &id])
            .contains("label    pg")
    );
    ctl.ok(&["--store", &store, "delete", &id]);
}

#[test]
fn keyctl_sets_and_shows_rate_limits_and_credits() {
    let ctl = Ctl::new();
    let created = ctl.ok(&[
        "create",
        "--label",
        "m",
        "--id",
        "m",
        "--rate-limit",
        "100/1m",
        "--burst",
        "5",
        "--credits",
        "3",
        "--refill",
        "1000/30d",
    ]);
    let token = token_from(&created, "token:");
    let shown = ctl.ok(&["show", "m"]);
    assert!(
        shown.contains("rate     100 per 1m, burst 5: 5 left now"),
        "{shown}"
    );
    assert!(shown.contains("credits  3 left; next refill "), "{shown}");
    assert!(shown.contains("(to 1000 every 30d)"), "{shown}");
    // A verification is a request: it spends a credit.
    ctl.verify_ok(None, "m", &token);
    let shown = ctl.ok(&["show", "m"]);
    assert!(shown.contains("credits  2 left"), "{shown}");
    assert!(shown.contains("burst 5: 4 left now"), "{shown}");
    // Set again, the credits start over; removed, nothing is shown.
    let set = ctl.ok(&["set-credits", "m", "10"]);
    assert!(set.contains("\"credits_set\""), "{set}");
    assert!(
        ctl.ok(&["show", "m"])
            .contains("credits  10 left; no refill")
    );
    ctl.ok(&["set-rate-limit", "m", "none"]);
    ctl.ok(&["set-credits", "m", "none"]);
    let shown = ctl.ok(&["show", "m"]);
    assert!(
        !shown.contains("rate ") && !shown.contains("credits "),
        "{shown}"
    );
    // Bad limits: refused, quoting them, and nothing changed.
    for (args, quoted) in [
        (&["set-rate-limit", "m", "0/1s"][..], "limit 0"),
        (&["set-rate-limit", "m", "5/2fortnights"][..], "2fortnights"),
        (
            &["set-credits", "m", "5", "--refill", "5/10s"][..],
            "every 10s",
        ),
        (&["set-credits", "m", "lots"][..], "lots"),
    ] {
        let refused = ctl.run(args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains(quoted),
            "{stderr}"
        );
    }
    assert_eq!(ctl.ok(&["show", "m"]), shown);
}

#[test]
fn keyctl_lists_owners_keys_expiring_keys_and_revoked_tokens() {
    let ctl = Ctl::new();
    for (id, owner) in [("a2", "acme"), ("a1", "acme"), ("g1", "globex")] {
        ctl.ok(&["create", "--label", id, "--id", id, "--owner", owner]);
    }
    let soon = in_days(5);
    ctl.ok(&[
        "create",
        "--label",
        "soon",
        "--id",
        "soon",
        "--expires",
        &soon,
    ]);
    // One owner's keys, in id order; the owner shows in `list` and `show`.
    let acme = ctl.ok(&["list", "--owner", "acme"]);
    let ids: Vec<&str> = acme
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["a1", "a2"], "{acme}");
    assert!(ctl.ok(&["show", "g1"]).contains("owner    globex"));
    ctl.ok(&["set-owner", "g1", "acme"]);
    assert!(ctl.ok(&["list", "--owner", "acme"]).contains("g1"));
    ctl.ok(&["set-owner", "g1", "none"]);
    assert!(!ctl.ok(&["list", "--owner", "acme"]).contains("g1"));
    let refused = ctl.run(&["list", "--owner", "not an owner"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("invalid owner id \"not an owner\""),
        "{stderr}"
    );
    // Keys expiring within two weeks: `soon`; within 100 days, every key
    // (their tokens fall due in 90), soonest first.
    let expiring = ctl.ok(&["expiring", "14d"]);
    assert_eq!(expiring.lines().count(), 2, "{expiring}");
    assert!(expiring.contains("soon") && expiring.contains("the key expires"));
    let all = ctl.ok(&["expiring", "100d"]);
    assert_eq!(
        all.lines().nth(1).unwrap().split_whitespace().next(),
        Some("soon")
    );
    assert_eq!(all.lines().count(), 5, "{all}");
    // A revoked current token shows in the list.
    let created = ctl.ok(&["create", "--label", "leaked", "--id", "leaked"]);
    let token = token_from(&created, "token:");
    assert!(ctl.with_stdin(&["revoke"], &token).status.success());
    let listed = ctl.ok(&["list"]);
    let line = listed.lines().find(|l| l.starts_with("leaked")).unwrap();
    assert!(line.contains("REVOKED"), "{line}");
}

#[test]
fn keyctl_prints_usage_counts_by_hour_with_sparklines() {
    let ctl = Ctl::new();
    let created = ctl.ok(&[
        "create",
        "--label",
        "u",
        "--id",
        "u",
        "--rate-limit",
        "2/1h",
    ]);
    let token = token_from(&created, "token:");
    for _ in 0..3 {
        ctl.verify(None, "u", &token); // 2 accepted, then rate limited
    }
    ctl.ok(&["deactivate", "u"]);
    ctl.verify_fails(None, "u", &token); // refused: inactive
    let usage = ctl.ok(&["usage", "u", "--since", "24h"]);
    let lines: Vec<&str> = usage.lines().collect();
    assert!(lines[0].starts_with("HOUR (UTC)"), "{usage}");
    let counts: Vec<&str> = lines[1].split_whitespace().skip(2).collect();
    assert_eq!(counts, ["2", "1", "0", "1"], "{usage}");
    let sparkline = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {usage}"))
            .to_string()
    };
    // 25 hours: one character each, the current hour last.
    let accepted = sparkline("accepted");
    assert!(accepted.ends_with("█ 2"), "{accepted}");
    // The name in 15 columns, a space, the hours, a space, the total.
    assert_eq!(accepted.chars().count(), 15 + 1 + 25 + 1 + 1, "{accepted}");
    assert!(sparkline("usage exceeded").ends_with(" 0"));
    assert!(ctl.fails(&["usage", "nobody"]).contains("not found"));
}

/// New ids start with a letter or digit: `.`, `..` and the like are
/// refused, naming the rule; a key stored under one by an older version is
/// still named (shown, deleted) by keyctl.
#[test]
fn keyctl_refuses_ids_new_keys_may_not_have() {
    let ctl = Ctl::new();
    // Refused by the argument parser, which adds a hint line of its own.
    let refused = |args: &[&str]| {
        let out = ctl.run(args);
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    for bad in [".", "..", "_x", "-x"] {
        let error = refused(&["create", "--label", "x", &format!("--id={bad}")]);
        assert!(
            error.contains("must start with an ASCII letter or digit"),
            "{error}"
        );
        let error = refused(&["create", "--label", "x", &format!("--owner={bad}")]);
        assert!(error.contains("owner id"), "{error}");
    }
    ctl.ok(&["create", "--label", "x", "--id", "fine"]);
    let error = refused(&["set-owner", "fine", ".."]);
    assert!(
        error.contains("must start with an ASCII letter or digit"),
        "{error}"
    );
    // Commands on stored keys take the old rule: "no key", not "invalid".
    let error = ctl.fails(&["show", "_legacy"]);
    assert!(error.contains("no key _legacy"), "{error}");
}

/// `restore-bootstrap` clears the store's record that the admin bootstrap
/// token retired, and says so on standard error as an audit line.
#[test]
fn keyctl_restores_the_bootstrap_token_with_an_audit_line() {
    let ctl = Ctl::new();
    assert!(
        ctl.ok(&["restore-bootstrap"])
            .contains("nothing to restore")
    );
    let store = keyroll_sqlite::SqliteStore::open(&ctl.db).unwrap();
    let retired = time::OffsetDateTime::now_utc();
    pollster::block_on(keyroll::store::KeyStore::set_marker(
        &store,
        keyroll::store::BOOTSTRAP_RETIRED,
        Some(retired),
    ))
    .unwrap();
    drop(store);
    let out = ctl.run(&["restore-bootstrap"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("acts again"));
    let audit = String::from_utf8_lossy(&out.stderr);
    assert!(audit.contains("audit: bootstrap_restored at "), "{audit}");
    assert!(audit.contains("it had retired at "), "{audit}");
    let store = keyroll_sqlite::SqliteStore::open(&ctl.db).unwrap();
    let marker = pollster::block_on(keyroll::store::KeyStore::marker(
        &store,
        keyroll::store::BOOTSTRAP_RETIRED,
    ));
    assert_eq!(marker.unwrap(), None);
}

#[test]
fn keyctl_sets_shows_and_enforces_networks() {
    let ctl = Ctl::new();
    let created = ctl.ok(&[
        "create",
        "--label",
        "n",
        "--id",
        "n",
        "--networks",
        "10.1.2.3/8, 2001:db8::/32",
    ]);
    assert!(
        created.contains(r#""settings":[{"networks":"10.0.0.0/8,2001:db8::/32"}]"#),
        "{created}"
    );
    let token = token_from(&created, "token:");
    assert!(
        ctl.ok(&["show", "n"])
            .contains("networks 10.0.0.0/8,2001:db8::/32"),
    );
    // A valid token from elsewhere, or from nowhere said, is refused.
    for from in [None, Some("192.0.2.1")] {
        let mut args = vec!["verify", "n"];
        args.extend(from.iter().flat_map(|ip| ["--from", ip]));
        let refused = one_line_failure(ctl.with_stdin(&args, &token), &args);
        assert!(
            refused.contains("the request's address is not in the key's networks"),
            "{refused}"
        );
    }
    let inside = ctl.with_stdin(&["verify", "n", "--from", "2001:db8::1"], &token);
    assert!(inside.status.success(), "{inside:?}");
    // Bad networks: one line quoting the entry, nothing changed or made.
    let refused = ctl.fails(&["set", "n", "networks", "10.0.0.0/8,10.0.0.0/33"]);
    assert!(
        refused.contains(r#"invalid network "10.0.0.0/33": the prefix is longer than 32"#),
        "{refused}"
    );
    let refused = ctl.fails(&["create", "--label", "m", "--id", "m", "--networks", "nope"]);
    assert!(refused.contains("nope"), "{refused}");
    assert!(ctl.fails(&["show", "m"]).contains("no key m"));
    // Removed: verified from anywhere again.
    let set = ctl.ok(&["set", "n", "networks", "none"]);
    assert!(set.contains(r#""change":{"networks":null}"#), "{set}");
    assert!(!ctl.ok(&["show", "n"]).contains("networks"));
    ctl.verify_ok(None, "n", &token);
}

/// An owner's limits set, shown, spent across its keys and cleared; a
/// refusal that names the owner; no limits given is refused.
#[test]
fn keyctl_sets_shows_and_clears_an_owners_limits() {
    let ctl = Ctl::new();
    let mut tokens = Vec::new();
    for id in ["prod", "ci"] {
        let out = ctl.ok(&["create", "--label", id, "--id", id, "--owner", "acme"]);
        let token = out
            .lines()
            .find_map(|l| l.strip_prefix("token:  "))
            .unwrap();
        tokens.push(token.to_owned());
    }
    let set = ctl.ok(&["set-owner-limits", "acme", "--credits", "2"]);
    assert!(set.contains("\"owner_limits_changed\""), "{set}");
    ctl.verify_ok(None, "prod", &tokens[0]);
    ctl.verify_ok(None, "ci", &tokens[1]);
    let refused = ctl.verify(None, "ci", &tokens[1]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("owner's credits"), "{said}");
    let shown = ctl.ok(&["owner", "acme"]);
    assert!(shown.contains("credits  0 left"), "{shown}");
    assert!(
        shown.contains("key      ci") && shown.contains("key      prod"),
        "{shown}"
    );
    let empty = ctl.fails(&["set-owner-limits", "acme"]);
    assert!(empty.contains("clear-owner-limits"), "{empty}");
    ctl.ok(&["clear-owner-limits", "acme"]);
    ctl.verify_ok(None, "ci", &tokens[1]);
    assert!(ctl.ok(&["owner", "acme"]).contains("limits   none"));
}

#[test]
fn keyctl_shows_the_outbox_and_retries_a_parked_delivery() {
    let ctl = Ctl::new();
    ctl.ok(&["create", "--label", "a", "--id", "acme"]);
    ctl.ok(&["set-label", "acme", "b"]);
    let shown = ctl.ok(&["notices"]);
    assert!(shown.starts_with("2 pending, 0 parked"), "{shown}");
    let lines: Vec<&str> = shown.lines().filter(|l| l.starts_with("evt_")).collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(
        lines[0].contains("key_issued") && lines[0].contains("acme"),
        "{shown}"
    );
    assert!(lines[1].contains("label_changed"), "{shown}");
    // A key's own events, newest first.
    ctl.ok(&["create", "--label", "other", "--id", "other"]);
    let events = ctl.ok(&["events", "acme"]);
    let lines: Vec<&str> = events.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{events}");
    assert!(
        lines[0].starts_with("evt_2 ") && lines[0].contains("label_changed"),
        "{events}"
    );
    assert!(
        lines[1].contains("key_issued") && lines[1].contains("pending, 0 failed attempts"),
        "{events}"
    );
    // Nothing is parked: a retry is refused, naming the entry.
    let refused = ctl.fails(&["retry-delivery", "evt_1"]);
    assert!(refused.contains("evt_1 is not parked"), "{refused}");
    let bad = ctl.fails(&["retry-delivery", "msg_1"]);
    assert!(bad.contains("\"msg_1\" is no entry id"), "{bad}");
}
