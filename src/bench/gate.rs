//! The benchmark regression gate: reads what criterion wrote under its
//! output directory and fails when a bench got slower than a threshold.
//!
//! Criterion compares a run against a saved baseline (`--save-baseline
//! base`, then `--baseline-lenient base`) and writes, per bench,
//! `<dir>/<bench>/new/benchmark.json` (the bench's id),
//! `<dir>/<bench>/new/estimates.json` and `<dir>/<bench>/change/estimates.json`:
//! the relative change of the mean and the median with their bootstrap
//! confidence intervals (`0.25` is +25%). Criterion itself never fails on a
//! regression; this does, when the chosen statistic's **lower bound** is
//! above the threshold: the bench is slower with 95% confidence by more
//! than the threshold.
//!
//! A bench that ran without a baseline measurement has no `change/`: that
//! is an error naming the bench, never a pass. So is a `change/` older than
//! the run's own estimates (stale data from an earlier run; [`clear_stale`]
//! removes it before a run).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Which criterion statistic the gate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistic {
    /// The mean (what criterion prints as `change:`).
    Mean,
    /// The median: robust to the descheduling outliers of a shared machine.
    Median,
}

/// Gate settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateOptions {
    /// Fail when the change's lower bound exceeds this (0.25 = +25%).
    pub threshold: f64,
    /// The statistic whose confidence interval is read.
    pub statistic: Statistic,
    /// Benches without a baseline are reported but do not fail the gate
    /// (for the first run after benches were added on purpose). At least
    /// one bench must still have been compared.
    pub allow_new: bool,
}

impl Default for GateOptions {
    fn default() -> Self {
        Self {
            threshold: 0.25,
            statistic: Statistic::Median,
            allow_new: false,
        }
    }
}

/// One bench's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchVerdict {
    /// Criterion's full id (`group/function`).
    pub name: String,
    /// The relative change (lower bound, point, upper bound), when there is
    /// a baseline.
    pub change: Option<[f64; 3]>,
    /// What the gate decided.
    pub verdict: Verdict,
}

/// The gate's decision for one bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Within the threshold.
    Pass,
    /// Slower by more than the threshold, with confidence.
    Regressed,
    /// No baseline measurement (accepted only with `allow_new`).
    NoBaseline,
}

/// Every bench's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateReport {
    /// The threshold used (fraction).
    pub threshold: f64,
    /// The statistic used.
    pub statistic: Statistic,
    /// Per bench, by name.
    pub benches: Vec<BenchVerdict>,
}

impl GateReport {
    /// The regressed benches.
    pub fn regressions(&self) -> Vec<&BenchVerdict> {
        self.benches
            .iter()
            .filter(|b| b.verdict == Verdict::Regressed)
            .collect()
    }

    /// True when no bench regressed.
    pub fn passed(&self) -> bool {
        self.regressions().is_empty()
    }
}

/// Why the gate could not decide.
#[derive(Debug, Error)]
pub enum GateError {
    /// Nothing was measured.
    #[error("no criterion results under {0}: run the benches first (scripts/bench-gate.sh runs the base and the head)")]
    NoResults(PathBuf),
    /// Benches ran without a baseline.
    #[error("no baseline for {}: criterion wrote no change/estimates.json for {}, so they were not compared; measure the base first (`cargo bench -- --save-baseline base` on the base commit, as scripts/bench-gate.sh does). A bench added on purpose since the base: set WASP_BENCH_GATE_ALLOW_NEW=1 once", names.join(", "), if names.len() == 1 { "it" } else { "them" })]
    MissingBaseline {
        /// The benches.
        names: Vec<String>,
    },
    /// Only benches without a baseline: nothing was compared.
    #[error("none of the {0} benches had a baseline: nothing was compared, the gate cannot pass")]
    NothingCompared(usize),
    /// A `change/` from an earlier run.
    #[error("{0} is older than the run's own estimates: stale data from an earlier run; clear it first (`wasp bench gate --clear DIR`)")]
    Stale(PathBuf),
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what criterion writes.
    #[error("{path} is not a criterion {what} file")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct BenchmarkId {
    full_id: String,
}

#[derive(Deserialize)]
struct ConfidenceInterval {
    lower_bound: f64,
    upper_bound: f64,
}

#[derive(Deserialize)]
struct Estimate {
    confidence_interval: ConfidenceInterval,
    point_estimate: f64,
}

/// `change/estimates.json`.
#[derive(Deserialize)]
struct ChangeEstimates {
    mean: Estimate,
    median: Estimate,
}

fn read(path: &Path) -> Result<Vec<u8>, GateError> {
    fs::read(path).map_err(|source| GateError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, what: &'static str) -> Result<T, GateError> {
    serde_json::from_slice(&read(path)?).map_err(|source| GateError::Parse {
        path: path.to_owned(),
        what,
        source,
    })
}

/// Every bench directory under `dir` (those holding `new/benchmark.json`).
fn bench_dirs(dir: &Path) -> Result<Vec<PathBuf>, GateError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == dir => {
                return Err(GateError::NoResults(dir.to_owned()))
            }
            Err(source) => return Err(GateError::Read { path: d, source }),
        };
        if d.join("new").join("benchmark.json").is_file() {
            out.push(d.clone());
        }
        for e in entries {
            let e = e.map_err(|source| GateError::Read {
                path: d.clone(),
                source,
            })?;
            let p = e.path();
            let name = e.file_name();
            // Criterion's own per-bench subdirectories are not benches.
            if p.is_dir() && !matches!(name.to_str(), Some("new" | "change" | "report")) {
                stack.push(p);
            }
        }
    }
    Ok(out)
}

/// Removes every `new/` and `change/` under `dir` (saved baselines stay),
/// so the next run's results are the only ones the gate reads. Returns how
/// many directories it removed; a missing `dir` is fine.
pub fn clear_stale(dir: &Path) -> Result<usize, GateError> {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(GateError::Read { path: d, source }),
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            match e.file_name().to_str() {
                Some("change" | "new") => {
                    fs::remove_dir_all(&p).map_err(|source| GateError::Read {
                        path: p.clone(),
                        source,
                    })?;
                    n += 1;
                }
                Some("report") => {}
                _ => stack.push(p),
            }
        }
    }
    Ok(n)
}

/// Reads every bench criterion measured under `dir` and decides.
pub fn evaluate(dir: &Path, o: &GateOptions) -> Result<GateReport, GateError> {
    let dirs = bench_dirs(dir)?;
    if dirs.is_empty() {
        return Err(GateError::NoResults(dir.to_owned()));
    }
    let mut benches = Vec::new();
    for d in dirs {
        let id: BenchmarkId = parse(&d.join("new").join("benchmark.json"), "benchmark.json")?;
        let change_file = d.join("change").join("estimates.json");
        if !change_file.is_file() {
            benches.push(BenchVerdict {
                name: id.full_id,
                change: None,
                verdict: Verdict::NoBaseline,
            });
            continue;
        }
        let new_file = d.join("new").join("estimates.json");
        let mtime = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .map_err(|source| GateError::Read {
                    path: p.to_owned(),
                    source,
                })
        };
        if mtime(&change_file)? < mtime(&new_file)? {
            return Err(GateError::Stale(change_file));
        }
        let c: ChangeEstimates = parse(&change_file, "change/estimates.json")?;
        let e = match o.statistic {
            Statistic::Mean => c.mean,
            Statistic::Median => c.median,
        };
        let lo = e.confidence_interval.lower_bound;
        benches.push(BenchVerdict {
            name: id.full_id,
            change: Some([lo, e.point_estimate, e.confidence_interval.upper_bound]),
            verdict: if lo > o.threshold {
                Verdict::Regressed
            } else {
                Verdict::Pass
            },
        });
    }
    benches.sort_by(|a, b| a.name.cmp(&b.name));
    let missing: Vec<String> = benches
        .iter()
        .filter(|b| b.verdict == Verdict::NoBaseline)
        .map(|b| b.name.clone())
        .collect();
    if missing.len() == benches.len() {
        if o.allow_new {
            return Err(GateError::NothingCompared(benches.len()));
        }
        return Err(GateError::MissingBaseline { names: missing });
    }
    if !missing.is_empty() && !o.allow_new {
        return Err(GateError::MissingBaseline { names: missing });
    }
    Ok(GateReport {
        threshold: o.threshold,
        statistic: o.statistic,
        benches,
    })
}

/// The report as a table for CI logs.
pub fn render(r: &GateReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bench gate: fail when the {:?} change's 95% lower bound is above +{:.0}%",
        r.statistic,
        r.threshold * 100.0
    );
    let w = r
        .benches
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        s,
        "{:<w$}  {:>9} {:>9} {:>9}  verdict",
        "bench", "lower", "change", "upper"
    );
    for b in &r.benches {
        let pct = |x: f64| format!("{:+.1}%", x * 100.0);
        let (lo, pt, hi) = match b.change {
            Some([lo, pt, hi]) => (pct(lo), pct(pt), pct(hi)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let v = match b.verdict {
            Verdict::Pass => "ok",
            Verdict::Regressed => "REGRESSED",
            Verdict::NoBaseline => "NEW (no baseline; allowed by WASP_BENCH_GATE_ALLOW_NEW)",
        };
        let _ = writeln!(s, "{:<w$}  {lo:>9} {pt:>9} {hi:>9}  {v}", b.name);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one bench's files in criterion 0.5's layout and format.
    fn bench(dir: &Path, name: &str, change: Option<(f64, f64, f64)>) {
        let d = dir.join(name.replace('/', "_"));
        fs::create_dir_all(d.join("new")).unwrap();
        fs::write(
            d.join("new/benchmark.json"),
            format!(r#"{{"group_id":"{name}","function_id":null,"value_str":null,"throughput":null,"full_id":"{name}","directory_name":"{name}","title":"{name}"}}"#),
        )
        .unwrap();
        let est = |p: f64, lo: f64, hi: f64| {
            format!(
                r#"{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":{lo},"upper_bound":{hi}}},"point_estimate":{p},"standard_error":0.01}}"#
            )
        };
        fs::write(
            d.join("new/estimates.json"),
            format!(
                r#"{{"mean":{m},"median":{m},"median_abs_dev":{m},"slope":null,"std_dev":{m}}}"#,
                m = est(100.0, 90.0, 110.0)
            ),
        )
        .unwrap();
        if let Some((lo, p, hi)) = change {
            fs::create_dir_all(d.join("change")).unwrap();
            fs::write(
                d.join("change/estimates.json"),
                format!(r#"{{"mean":{m},"median":{m}}}"#, m = est(p, lo, hi)),
            )
            .unwrap();
        }
    }

    #[test]
    fn lower_bound_above_threshold_fails_only_that_bench() {
        let t = tempfile::tempdir().unwrap();
        bench(t.path(), "a", Some((0.30, 0.9, 1.1)));
        bench(t.path(), "b", Some((0.10, 0.5, 0.9)));
        bench(t.path(), "g/c", Some((-0.1, 0.0, 0.1)));
        let r = evaluate(t.path(), &GateOptions::default()).unwrap();
        let names: Vec<_> = r.regressions().iter().map(|b| b.name.clone()).collect();
        assert_eq!(names, ["a"]);
        assert!(!r.passed());
        assert!(render(&r).contains("REGRESSED"));
    }

    #[test]
    fn missing_baseline_is_an_error_naming_the_bench() {
        let t = tempfile::tempdir().unwrap();
        bench(t.path(), "old", Some((0.0, 0.0, 0.0)));
        bench(t.path(), "fresh", None);
        let e = evaluate(t.path(), &GateOptions::default()).unwrap_err();
        assert!(
            matches!(&e, GateError::MissingBaseline { names } if names == &["fresh"]),
            "{e}"
        );
        let allow = GateOptions {
            allow_new: true,
            ..GateOptions::default()
        };
        assert!(evaluate(t.path(), &allow).unwrap().passed());
        // Nothing compared at all never passes, even when allowed.
        let t2 = tempfile::tempdir().unwrap();
        bench(t2.path(), "fresh", None);
        assert!(matches!(
            evaluate(t2.path(), &allow),
            Err(GateError::NothingCompared(1))
        ));
        assert!(matches!(
            evaluate(&t2.path().join("absent"), &allow),
            Err(GateError::NoResults(_))
        ));
    }

    #[test]
    fn clear_stale_removes_change_and_new_but_keeps_baselines() {
        let t = tempfile::tempdir().unwrap();
        bench(t.path(), "a", Some((0.3, 0.4, 0.5)));
        fs::create_dir_all(t.path().join("a/base")).unwrap();
        assert_eq!(clear_stale(t.path()).unwrap(), 2);
        assert!(!t.path().join("a/change").exists());
        assert!(!t.path().join("a/new").exists());
        assert!(t.path().join("a/base").exists());
        assert!(matches!(
            evaluate(t.path(), &GateOptions::default()),
            Err(GateError::NoResults(_))
        ));
    }
}
