//! Marks the tests that need a PostgreSQL server as ignored, with the
//! reason, unless `KEYROLL_PG_URL` (or `CI`, where they must run) is set:
//! as keyroll-postgres's build script does.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(keyroll_pg)");
    println!("cargo::rerun-if-env-changed=KEYROLL_PG_URL");
    println!("cargo::rerun-if-env-changed=CI");
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("KEYROLL_PG_URL") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_pg");
    }
}
