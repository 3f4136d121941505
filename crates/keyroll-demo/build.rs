//! Marks the tests that need a PostgreSQL server (or Python's
//! `prometheus_client`, `standardwebhooks` or `grpcio`) as ignored, with
//! the reason, unless `KEYROLL_PG_URL` (`KEYROLL_PROMETHEUS_PARSER`,
//! `KEYROLL_STANDARDWEBHOOKS`, `KEYROLL_GRPCIO`), or `CI`, where they must
//! run, is set: as
//! keyroll-postgres's build script does.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(keyroll_pg)");
    println!("cargo::rustc-check-cfg=cfg(keyroll_prometheus)");
    println!("cargo::rustc-check-cfg=cfg(keyroll_standardwebhooks)");
    println!("cargo::rustc-check-cfg=cfg(keyroll_grpcio)");
    println!("cargo::rerun-if-env-changed=KEYROLL_PG_URL");
    println!("cargo::rerun-if-env-changed=KEYROLL_PROMETHEUS_PARSER");
    println!("cargo::rerun-if-env-changed=KEYROLL_STANDARDWEBHOOKS");
    println!("cargo::rerun-if-env-changed=KEYROLL_GRPCIO");
    println!("cargo::rerun-if-env-changed=CI");
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("KEYROLL_PG_URL") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_pg");
    }
    if set("KEYROLL_PROMETHEUS_PARSER") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_prometheus");
    }
    if set("KEYROLL_STANDARDWEBHOOKS") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_standardwebhooks");
    }
    if set("KEYROLL_GRPCIO") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_grpcio");
    }
}
