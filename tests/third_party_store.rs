//! The complete third-party store that the backend kit's docs show
//! (`examples/third_party_store.rs`) passes the conformance suite.

#[path = "../examples/third_party_store.rs"]
mod example;

#[test]
fn the_kits_example_store_passes_the_conformance_suite() {
    example::main();
}
