//! `docs/conformance.md` agrees with the tests: see `tern_testkit::conformance`.
//!
//! Run with `TERN_CONFORMANCE_BLESS=1` to rewrite the Tests column, the summary
//! and the README sentence from the citations found.

use std::path::Path;

#[test]
fn conformance_map_matches_the_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bless = std::env::var_os("TERN_CONFORMANCE_BLESS").is_some();
    let report = match tern_testkit::conformance::check(&root, bless) {
        Ok(r) => r,
        Err(e) => panic!("cannot read the repository: {e}"),
    };
    for f in &report.rewritten {
        eprintln!("rewrote {f}");
    }
    for n in &report.notes {
        eprintln!("note (library code, not checked): {n}");
    }
    assert!(
        report.problems.is_empty(),
        "{} problem(s) between docs/conformance.md and the tests \
         (cite statements as `v3.1.1 <id>`, `v5 <id>` or `v3.1.1+v5 <id>` with the id in brackets; \
         TERN_CONFORMANCE_BLESS=1 rewrites the Tests column):\n{}",
        report.problems.len(),
        report.problems.join("\n")
    );
}
