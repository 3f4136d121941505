//! Marks the tests that need a PostgreSQL server as ignored, with the
//! reason, when none is configured: `cargo test` then lists them as
//! `ignored, needs PostgreSQL: ...` instead of passing them in 0.00 s. In
//! CI (`CI` set) they always run, and fail without a server.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(keyroll_pg, keyroll_pg_plain)");
    for var in ["KEYROLL_PG_URL", "KEYROLL_PG_PLAIN_URL", "CI"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("KEYROLL_PG_URL") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_pg");
    }
    if set("KEYROLL_PG_PLAIN_URL") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_pg_plain");
    }
}
