//! Codec benchmarks (filled in by the codec test work).
fn main() {}
