//! Marks the tests that need a tool from outside Rust as ignored, with the
//! reason, when it is not configured: `cargo test` then lists them as
//! ignored instead of passing them in 0.00 s. In CI (`CI` set) they always
//! run, and fail without the tool.
//!
//! - `keyroll_validator`: Python's openapi-spec-validator
//!   (`KEYROLL_OPENAPI_VALIDATOR`, the Python that has it).
//! - `keyroll_browser`: Chromium and ChromeDriver (`KEYROLL_CHROMEDRIVER`,
//!   the driver's path).
//! - `keyroll_sfv`: Python's http_sfv, a structured-field parser
//!   (`KEYROLL_SFV_PARSER`, the Python that has it).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(keyroll_validator, keyroll_browser, keyroll_sfv)");
    for var in [
        "KEYROLL_OPENAPI_VALIDATOR",
        "KEYROLL_CHROMEDRIVER",
        "KEYROLL_SFV_PARSER",
        "CI",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("KEYROLL_OPENAPI_VALIDATOR") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_validator");
    }
    if set("KEYROLL_CHROMEDRIVER") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_browser");
    }
    if set("KEYROLL_SFV_PARSER") || set("CI") {
        println!("cargo::rustc-cfg=keyroll_sfv");
    }
}
