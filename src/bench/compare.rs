//! `wasp bench compare A.json B.json`: two outputs of the same `wasp bench`
//! command side by side, per figure: A, B, the ratio B/A and the difference
//! B - A. Figures are the numeric leaves of the JSON document, named by
//! their path (`latency_ms.p50`, `phases_ms.load`).

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

/// The `wasp bench` commands whose output can be compared.
pub const KINDS: [&str; 3] = ["spawn", "slots", "clone"];

/// Comparison failures.
#[derive(Debug, Error)]
pub enum CompareError {
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// A file is not JSON.
    #[error("{0} is not JSON (pass the output of `wasp bench … --json`)")]
    Json(PathBuf, #[source] serde_json::Error),
    /// A file is not a `wasp bench` output.
    #[error("{0} is not the output of `wasp bench spawn|slots|clone --json` (no \"kind\" field and no figures of one)")]
    Unknown(PathBuf),
    /// The two files come from different commands.
    #[error("cannot compare a `wasp bench {a}` output ({a_path}) with a `wasp bench {b}` output ({b_path}): compare two outputs of the same command")]
    Mismatch {
        /// A's kind.
        a: String,
        /// A's file.
        a_path: PathBuf,
        /// B's kind.
        b: String,
        /// B's file.
        b_path: PathBuf,
    },
}

/// One figure in both files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Path of the figure in the document.
    pub figure: String,
    /// A's value.
    pub a: f64,
    /// B's value.
    pub b: f64,
    /// B / A (none when A is 0).
    pub ratio: Option<f64>,
    /// B - A.
    pub diff: f64,
}

/// The comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The command both files came from.
    pub kind: String,
    /// Figures in both, by name.
    pub rows: Vec<Row>,
    /// Figures only in A.
    pub only_in_a: Vec<String>,
    /// Figures only in B.
    pub only_in_b: Vec<String>,
}

/// The command a `wasp bench … --json` document came from: its `kind`
/// field, else recognised by its figures (outputs older than `kind`).
pub fn kind_of(v: &serde_json::Value) -> Option<String> {
    if let Some(k) = v.get("kind").and_then(|k| k.as_str()) {
        return KINDS.contains(&k).then(|| k.to_owned());
    }
    let has = |k: &str| v.get(k).is_some();
    if has("latency_ms") && has("phases_ms") {
        Some("spawn".into())
    } else if has("create_ms") && has("fill_slots_per_s") {
        Some("slots".into())
    } else if has("prep_ms") && has("strategy") {
        Some("clone".into())
    } else {
        None
    }
}

/// Numeric leaves, depth first, keys sorted (booleans, strings,
/// nulls and arrays of strings are not figures).
fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((prefix.to_owned(), x));
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                leaves(&join(k), v, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                leaves(&join(&i.to_string()), v, out);
            }
        }
        _ => {}
    }
}

/// Compares two parsed documents of the same kind.
pub fn compare_values(
    a: &serde_json::Value,
    a_path: &Path,
    b: &serde_json::Value,
    b_path: &Path,
) -> Result<Comparison, CompareError> {
    let ka = kind_of(a).ok_or_else(|| CompareError::Unknown(a_path.to_owned()))?;
    let kb = kind_of(b).ok_or_else(|| CompareError::Unknown(b_path.to_owned()))?;
    if ka != kb {
        return Err(CompareError::Mismatch {
            a: ka,
            a_path: a_path.to_owned(),
            b: kb,
            b_path: b_path.to_owned(),
        });
    }
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    leaves("", a, &mut la);
    leaves("", b, &mut lb);
    let mut rows = Vec::new();
    let mut only_in_a = Vec::new();
    for (name, x) in &la {
        match lb.iter().find(|(n, _)| n == name) {
            Some((_, y)) => rows.push(Row {
                figure: name.clone(),
                a: *x,
                b: *y,
                ratio: (*x != 0.0).then(|| y / x),
                diff: y - x,
            }),
            None => only_in_a.push(name.clone()),
        }
    }
    let only_in_b = lb
        .iter()
        .filter(|(n, _)| !la.iter().any(|(m, _)| m == n))
        .map(|(n, _)| n.clone())
        .collect();
    Ok(Comparison {
        kind: ka,
        rows,
        only_in_a,
        only_in_b,
    })
}

/// Reads and compares two files.
pub fn compare_files(a: &Path, b: &Path) -> Result<Comparison, CompareError> {
    let load = |p: &Path| -> Result<serde_json::Value, CompareError> {
        let text = std::fs::read(p).map_err(|e| CompareError::Read(p.to_owned(), e))?;
        serde_json::from_slice(&text).map_err(|e| CompareError::Json(p.to_owned(), e))
    };
    compare_values(&load(a)?, a, &load(b)?, b)
}

/// A human table for CI logs.
pub fn render(c: &Comparison) -> String {
    use std::fmt::Write;
    let w = c
        .rows
        .iter()
        .map(|r| r.figure.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut s = String::new();
    let _ = writeln!(s, "wasp bench {}: B compared with A", c.kind);
    let _ = writeln!(
        s,
        "{:<w$}  {:>12} {:>12} {:>8} {:>12}",
        "figure", "A", "B", "B/A", "B-A"
    );
    for r in &c.rows {
        let ratio = r.ratio.map_or("-".to_owned(), |x| format!("{x:.3}"));
        let _ = writeln!(
            s,
            "{:<w$}  {:>12} {:>12} {:>8} {:>12}",
            r.figure,
            num(r.a),
            num(r.b),
            ratio,
            num(r.diff)
        );
    }
    for n in &c.only_in_a {
        let _ = writeln!(s, "only in A: {n}");
    }
    for n in &c.only_in_b {
        let _ = writeln!(s, "only in B: {n}");
    }
    s
}

/// Up to 4 significant decimals, integers without a fraction.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratio_and_difference_per_figure() {
        let a = json!({"kind":"spawn","wall_ms":200.0,"latency_ms":{"p50":10.0,"p99":0.0},"vmm":"standin","failures":[]});
        let b = json!({"kind":"spawn","wall_ms":300.0,"latency_ms":{"p50":5.0,"p99":2.0},"agents_ok":3});
        let c = compare_values(&a, Path::new("a"), &b, Path::new("b")).unwrap();
        assert_eq!(c.kind, "spawn");
        let row = |n: &str| c.rows.iter().find(|r| r.figure == n).unwrap().clone();
        assert_eq!(
            (row("wall_ms").ratio, row("wall_ms").diff),
            (Some(1.5), 100.0)
        );
        assert_eq!(row("latency_ms.p50").ratio, Some(0.5));
        assert_eq!(row("latency_ms.p99").ratio, None);
        assert_eq!(c.only_in_b, ["agents_ok"]);
        assert!(render(&c).contains("latency_ms.p50"));
    }

    #[test]
    fn kinds_must_match_and_be_known() {
        let spawn = json!({"latency_ms":{}, "phases_ms":{}});
        let slots = json!({"create_ms":{}, "fill_slots_per_s": 1.0});
        let e = compare_values(&spawn, Path::new("a.json"), &slots, Path::new("b.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`wasp bench spawn`")
                && e.contains("`wasp bench slots`")
                && e.contains("b.json"),
            "{e}"
        );
        let e = compare_values(&json!({"x":1}), Path::new("x.json"), &slots, Path::new("b"))
            .unwrap_err();
        assert!(matches!(e, CompareError::Unknown(p) if p == Path::new("x.json")));
    }
}
