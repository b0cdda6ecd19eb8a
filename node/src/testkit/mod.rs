//! What tests, benches and the demo share: the in-process demo fleet, and the rule for a test whose
//! asset, tool or system feature is missing (skip with a message locally, fail in CI), and the scale run
//! ([`scale`]).

pub mod scale;

/// Reports that a test cannot run because `what` is missing: under `CI=true` (set by the CI runner) this
/// panics, so CI never reports green for a test that did not run; elsewhere it prints `SKIPPED: what`
/// and the caller returns. The panic names the test's line, not this one.
#[track_caller]
pub fn skip_unless_ci(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and this test cannot run: {what}");
    }
    println!("SKIPPED: {what}");
}
