//! keyroll's benchmarks live in `benches/`: `cargo bench -p keyroll-bench`.
