//! Marks the test that needs Python's `standardwebhooks` package as
//! ignored, with the reason, unless `KEYROLL_STANDARDWEBHOOKS` (or `CI`,
//! where it must run) is set.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(keyroll_standardwebhooks)");
    println!("cargo::rerun-if-env-changed=KEYROLL_STANDARDWEBHOOKS");
    println!("cargo::rerun-if-env-changed=CI");
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("KEYROLL_STANDARDWEBHOOKS") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_standardwebhooks");
    }
}
