//! Proves the benchmark regression gate on real criterion runs of the real
//! gate benches (`testkit/src/bench/gate.rs`), run in-process the way
//! `scripts/bench-gate.sh` runs them across two commits: the base saved as
//! baseline `base`, stale results cleared, the head compared against it,
//! then `wasp::bench::gate` decides, and a regression is confirmed by a
//! second measurement of just the regressed benches.
//!
//! - an injected 2x slowdown (the bench does its work twice) fails, and
//!   `wasp bench gate` exits 1 naming it;
//! - three clean reruns in a row pass;
//! - a missing baseline fails with a clear message, and so does stale
//!   `change/` data from an earlier run.
//!
//! No root needed. The tests share one lock so their measurements do not
//! compete for the CPU with each other.

use wasp_testkit::bench::gate;
use wasp_testkit::wasp_cmd;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use wasp::bench::gate::{self as benchgate, GateError, GateOptions, GateReport, Verdict};

/// Two of the gate's benches: enough to show that only the slowed one
/// fails, short enough for a test.
const SUBSET: &str = "^(http parse 204|slot rtnetlink messages)$";
const SLOWED: &str = "http parse 204";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

enum Run {
    /// `--save-baseline base`.
    Base,
    /// `--baseline-lenient base`.
    Head,
}

/// One criterion run of the gate benches matching `filter`.
fn measure(dir: &Path, run: Run, filter: &str, inject: Option<&str>) {
    let c = gate::criterion()
        .output_directory(dir)
        .without_plots()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .nresamples(20_000)
        .with_filter(filter);
    let mut c = match run {
        Run::Base => c.save_baseline("base".into()),
        Run::Head => c.retain_baseline("base".into(), false),
    };
    gate::register(&mut c, inject);
}

/// Base, clear stale results, head (with `inject`), decide.
fn pair(dir: &Path, filter: &str, inject: Option<&str>) -> Result<GateReport, GateError> {
    measure(dir, Run::Base, filter, None);
    benchgate::clear_stale(dir)?;
    measure(dir, Run::Head, filter, inject);
    benchgate::evaluate(dir, &GateOptions::default())
}

/// The script's procedure: a regression must show again in a second
/// measurement of just the regressed benches.
fn gate_run(dir: &Path, inject: Option<&str>) -> GateReport {
    let first = pair(dir, SUBSET, inject).expect("the gate decides");
    eprint!("{}", benchgate::render(&first));
    if first.passed() {
        return first;
    }
    let names: Vec<String> = first
        .regressions()
        .iter()
        .map(|b| regex::escape(&b.name))
        .collect();
    let again = pair(dir, &format!("^({})$", names.join("|")), inject).expect("the gate decides");
    eprint!("confirmation:\n{}", benchgate::render(&again));
    again
}

fn wasp_gate(dir: &Path) -> (bool, String) {
    let out = wasp_cmd!()
        .args(["bench", "gate"])
        .arg(dir)
        .output()
        .expect("run wasp bench gate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_injected_2x_slowdown_fails_the_gate() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let r = gate_run(t.path(), Some(SLOWED));
    let slowed = r
        .benches
        .iter()
        .find(|b| b.name == SLOWED)
        .expect("the slowed bench was measured");
    assert_eq!(slowed.verdict, Verdict::Regressed, "{r:?}");
    let [lo, _, _] = slowed.change.expect("compared");
    assert!(lo > 0.25, "lower bound {lo}");
    // The CLI the script runs agrees, exits 1 and names the bench.
    let (ok, err) = wasp_gate(t.path());
    assert!(!ok, "wasp bench gate passed a 2x slowdown");
    assert!(
        err.contains("bench gate failed") && err.contains(SLOWED),
        "{err}"
    );
}

#[test]
fn three_clean_reruns_in_a_row_pass_the_gate() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let r = gate_run(t.path(), None);
        assert!(r.passed(), "clean rerun {i} failed the gate: {r:?}");
        assert!(
            r.benches.iter().all(|b| b.verdict == Verdict::Pass),
            "{r:?}"
        );
        let (ok, err) = wasp_gate(t.path());
        assert!(ok, "wasp bench gate failed clean rerun {i}: {err}");
    }
}

#[test]
fn a_missing_baseline_fails_clearly_and_stale_results_are_never_read() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let filter = format!("^{}$", regex::escape(SLOWED));
    // A head run without any base measurement.
    measure(t.path(), Run::Head, &filter, None);
    match benchgate::evaluate(t.path(), &GateOptions::default()) {
        Err(e @ GateError::MissingBaseline { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(SLOWED) && msg.contains("--save-baseline"),
                "{msg}"
            );
        }
        other => panic!("a missing baseline did not fail: {other:?}"),
    }
    let (ok, err) = wasp_gate(t.path());
    assert!(!ok, "wasp bench gate passed without a baseline");
    assert!(
        err.contains("no baseline for") && err.contains(SLOWED),
        "{err}"
    );
    // Nothing measured at all.
    let (ok, err) = wasp_gate(&t.path().join("absent"));
    assert!(!ok && err.contains("no criterion results"), "{err}");

    // A full pair leaves change/; a later head run whose base is gone
    // writes no new change/, and the old one must not be read.
    benchgate::clear_stale(t.path()).unwrap();
    pair(t.path(), &filter, None).unwrap();
    let bench_dir = t.path().join(SLOWED);
    std::fs::remove_dir_all(bench_dir.join("base")).unwrap();
    measure(t.path(), Run::Head, &filter, None);
    match benchgate::evaluate(t.path(), &GateOptions::default()) {
        Err(e @ GateError::Stale(_)) => assert!(e.to_string().contains("stale"), "{e}"),
        other => panic!("stale change/ data was read: {other:?}"),
    }
}
