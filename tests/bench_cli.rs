//! `wasp bench …` as a user runs it: `--plot FILE.svg` draws an SVG whose
//! axes are named, `--json` is one clean JSON document (no progress bar
//! when stderr is not a terminal), the human tables carry percentiles, and
//! `wasp bench compare` prints ratio and difference per figure and refuses
//! outputs of different commands.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_cmd};

use std::path::Path;
use std::process::{Command, Output};

use testkit::ok;

/// `wasp` with no `WASP_*` variable of the environment.
fn wasp() -> Command {
    wasp_cmd!()
}

/// stdout as exactly one JSON document, stderr free of terminal control.
fn clean_json(out: &Output) -> serde_json::Value {
    let text = ok(out);
    assert!(
        !out.stderr.contains(&0x1b) && !out.stderr.contains(&b'\r'),
        "progress or escape sequences on a non-terminal stderr: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

/// The SVG's text, checked to name `labels` (XML-escaped as written).
fn svg_names(path: &Path, labels: &[&str]) -> String {
    let svg = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no SVG at {}: {e}", path.display()));
    assert!(svg.trim_start().starts_with("<svg"), "not an SVG document");
    for l in labels {
        let escaped = l
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(
            svg.contains(&escaped),
            "{} does not name {l:?}",
            path.display()
        );
    }
    svg
}

fn bench_clone(snap: &Path, rt: &Path, count: &str, extra: &[&str]) -> Output {
    wasp()
        .args(["bench", "clone", "--snapshot"])
        .arg(snap)
        .arg("--runtime-dir")
        .arg(rt)
        .args(["--count", count])
        .args(extra)
        .output()
        .unwrap()
}

/// A temp dir on /var/tmp (`wasptest-<pid>-<tag>-…`) holding a small
/// stand-in snapshot at `snap`.
fn dir_with_snapshot(tag: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::Builder::new()
        .prefix(&format!("wasptest-{}-{tag}-", std::process::id()))
        .tempdir_in("/var/tmp")
        .unwrap();
    let snap = t.path().join("snap");
    ok(&wasp()
        .args([
            "snapshot",
            "synth",
            "--mem-mib",
            "8",
            "--rootfs-mib",
            "4",
            "--out",
        ])
        .arg(&snap)
        .output()
        .unwrap());
    (t, snap)
}

#[test]
fn bench_clone_plots_prints_json_and_compares() {
    let (t, snap) = dir_with_snapshot("benchcli");
    let rt = t.path().join("rt");
    let svg = t.path().join("clone.svg");
    let a = clean_json(&bench_clone(
        &snap,
        &rt,
        "5",
        &["--json", "--plot", svg.to_str().unwrap()],
    ));
    assert_eq!(a["kind"], "clone");
    assert_eq!(a["prep_ms"]["n"], 5);
    svg_names(
        &svg,
        &[
            "time per clone (ms)",
            wasp::bench::plot::CDF_Y_LABEL,
            "prep",
            "cleanup",
        ],
    );
    let b = clean_json(&bench_clone(&snap, &rt, "6", &["--json"]));
    let (fa, fb) = (t.path().join("a.json"), t.path().join("b.json"));
    std::fs::write(&fa, a.to_string()).unwrap();
    std::fs::write(&fb, b.to_string()).unwrap();

    // The human table: percentiles per figure.
    let human = ok(&bench_clone(&snap, &rt, "3", &["--baseline-runs", "0"]));
    for w in ["figure", "p50", "p99", "prep", "cleanup"] {
        assert!(human.contains(w), "no {w:?} in:\n{human}");
    }

    let table = ok(&wasp()
        .args(["bench", "compare"])
        .arg(&fa)
        .arg(&fb)
        .output()
        .unwrap());
    let count_row = table
        .lines()
        .find(|l| l.starts_with("count "))
        .unwrap_or_else(|| panic!("no count row in:\n{table}"));
    let cells: Vec<&str> = count_row.split_whitespace().collect();
    assert_eq!(cells, ["count", "5", "6", "1.200", "1"], "{table}");
    assert!(table.contains("prep_ms.p50"), "{table}");

    let c = clean_json(
        &wasp()
            .args(["bench", "compare", "--json"])
            .arg(&fa)
            .arg(&fb)
            .output()
            .unwrap(),
    );
    assert_eq!(c["kind"], "clone");
    let rows = c["rows"].as_array().unwrap();
    let p50 = rows.iter().find(|r| r["figure"] == "prep_ms.p50").unwrap();
    let (x, y) = (p50["a"].as_f64().unwrap(), p50["b"].as_f64().unwrap());
    // Within JSON's float round trip.
    let close = |got: f64, want: f64| (got - want).abs() <= 1e-9 * want.abs().max(1e-9);
    assert!(close(p50["diff"].as_f64().unwrap(), y - x), "{p50}");
    if x != 0.0 {
        assert!(close(p50["ratio"].as_f64().unwrap(), y / x), "{p50}");
    }

    // Outputs of different commands: one clear error, exit 1.
    let other = t.path().join("spawn.json");
    std::fs::write(&other, r#"{"kind":"spawn","wall_ms":1.0}"#).unwrap();
    let out = wasp()
        .args(["bench", "compare"])
        .arg(&fa)
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot compare a `wasp bench clone` output")
            && err.contains("`wasp bench spawn` output"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // A plot path that is not .svg is refused before anything runs.
    let out = bench_clone(&snap, &rt, "1", &["--plot", "x.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SVG only"));
}

#[test]
fn bench_spawn_plots_the_latency_cdf_and_phases_per_clone() {
    root_or_skip!();
    let t = tempfile::tempdir().unwrap();
    let svg = t.path().join("spawn.svg");
    let v = clean_json(
        &wasp()
            .args([
                "bench",
                "spawn",
                "--count",
                "4",
                "--parallel",
                "4",
                "--mem-mib",
                "16",
            ])
            .args(["--json", "--plot"])
            .arg(&svg)
            .output()
            .unwrap(),
    );
    assert_eq!(v["kind"], "spawn");
    assert_eq!(v["ready"], 4);
    assert_eq!(v["phase_percentiles_ms"]["load"]["n"], 4);
    svg_names(
        &svg,
        &[
            "clone latency, admission to ready (ms)",
            wasp::bench::plot::CDF_Y_LABEL,
            wasp::bench::plot::BARS_X_LABEL,
            wasp::bench::plot::BARS_Y_LABEL,
            "socket",
            "load",
            "resume",
            "ready",
        ],
    );
}

#[test]
fn bench_slots_plots_and_prints_a_percentile_table() {
    root_or_skip!();
    let t = tempfile::tempdir().unwrap();
    let svg = t.path().join("slots.svg");
    let human = ok(&wasp()
        .args(["bench", "slots", "--count", "4", "--plot"])
        .arg(&svg)
        .output()
        .unwrap());
    for w in [
        "figure", "p50", "p99", "build", "take", "recycle", "destroy",
    ] {
        assert!(human.contains(w), "no {w:?} in:\n{human}");
    }
    svg_names(
        &svg,
        &[
            "time per slot (ms)",
            wasp::bench::plot::CDF_Y_LABEL,
            "build",
            "destroy",
        ],
    );
}

/// `wasp --config DIR/wasp.toml` with `toml` written there (and, as every
/// [`wasp`], neither `WASP_CONFIG` nor `WASP_FIRECRACKER`, which outranks
/// the file, from the test's environment).
fn with_config(dir: &Path, toml: &str) -> Command {
    let file = dir.join("wasp.toml");
    std::fs::write(&file, toml).unwrap();
    let mut c = wasp();
    c.arg("--config").arg(file);
    c
}

#[test]
fn bench_commands_take_their_defaults_from_the_config_file() {
    let (t, snap) = dir_with_snapshot("benchcfg");
    let dir = t.path();
    let rt = dir.join("configured-rt");
    let toml = format!(
        "[paths]\nruntime_dir = \"{}\"\nfirecracker = \"/nonexistent/fc-from-config\"\n\n[spawn]\nparallel = 2\n\n[pool]\ncidr = \"10.66.0.0/29\"\n",
        rt.display()
    );

    // bench clone: the runtime dir of the file; the flag wins over it.
    let v = clean_json(
        &with_config(dir, &toml)
            .args(["bench", "clone", "--count", "2", "--json", "--snapshot"])
            .arg(&snap)
            .output()
            .unwrap(),
    );
    assert_eq!(v["runtime_dir"], rt.to_str().unwrap());
    assert!(rt.join("clones").is_dir());
    let flag_rt = dir.join("flag-rt");
    let v = clean_json(
        &with_config(dir, &toml)
            .args(["bench", "clone", "--count", "1", "--json", "--snapshot"])
            .arg(&snap)
            .arg("--runtime-dir")
            .arg(&flag_rt)
            .output()
            .unwrap(),
    );
    assert_eq!(v["runtime_dir"], flag_rt.to_str().unwrap());

    // bench spawn --vmm firecracker: paths.firecracker, named in the
    // error when it is not there; --firecracker wins over it.
    let fc_err = |extra: &[&str]| {
        let out = with_config(dir, &toml)
            .args(["bench", "spawn", "--vmm", "firecracker", "--count", "1"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fc_err(&[]);
    assert!(
        err.contains("paths.firecracker = /nonexistent/fc-from-config in"),
        "{err}"
    );
    let err = fc_err(&["--firecracker", "/nonexistent/fc-flag"]);
    assert!(
        err.contains("--firecracker /nonexistent/fc-flag") && !err.contains("fc-from-config"),
        "{err}"
    );

    // bench slots: the slots are built in pool.cidr (a /29 holds 5), so
    // a count beyond it is one clear error before anything is made.
    let out = with_config(dir, &toml)
        .args(["bench", "slots", "--count", "6"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--count 6 does not fit pool.cidr 10.66.0.0/29 (file "),
        "{err}"
    );

    if !testkit::require_root(module_path!()) {
        return;
    }
    let v = clean_json(
        &with_config(dir, &toml)
            .args(["bench", "slots", "--count", "3", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["cidr"], "10.66.0.0/29");
    assert_eq!(v["create_ms"]["n"], 3);
    // Every build step is timed for every build, and the steps account
    // for most of the build.
    let steps = v["create_steps_ms"].as_object().unwrap();
    assert_eq!(
        steps
            .keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        wasp::pipeline::slot::BuildSteps::NAMES
            .into_iter()
            .collect()
    );
    let step_mean: f64 = steps
        .values()
        .map(|p| {
            assert_eq!(p["n"], 3);
            p["mean"].as_f64().unwrap()
        })
        .sum();
    let build_mean = v["create_ms"]["mean"].as_f64().unwrap();
    assert!(
        step_mean > 0.0 && step_mean <= build_mean,
        "steps {step_mean} ms of a {build_mean} ms build"
    );

    // bench spawn: the runtime dir and parallelism of the file; its work
    // dir is made there and removed.
    let v = clean_json(
        &with_config(dir, &toml)
            .args([
                "bench",
                "spawn",
                "--count",
                "2",
                "--mem-mib",
                "16",
                "--json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(v["runtime_dir"], rt.to_str().unwrap());
    assert_eq!(v["parallel"], 2);
    assert_eq!(v["ready"], 2);
    let left: Vec<_> = std::fs::read_dir(&rt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bench-"))
        .collect();
    assert!(left.is_empty(), "bench work dirs left: {left:?}");
}

#[test]
fn bench_clone_holds_all_clones_and_runs_side_by_side() {
    let (t, snap) = dir_with_snapshot("benchhold");
    let rt = t.path().join("rt");
    let rt2 = t.path().join("rt2");
    let v = clean_json(&bench_clone(
        &snap,
        &rt,
        "4",
        &[
            "--json",
            "--hold",
            "--compare-snapshot",
            snap.to_str().unwrap(),
            "--compare-runtime-dir",
            rt2.to_str().unwrap(),
            "--compare-count",
            "2",
        ],
    ));
    let held = &v["held"];
    assert_eq!(held["clones"], 4);
    // Four full copies of the 4 MiB rootfs (every block written by synth).
    assert_eq!(held["full_copy_bytes"], 4u64 * (4 << 20), "{v:#}");
    assert!(held["percent_of_full_copies"].as_f64().is_some());
    assert_eq!(v["prep_ms"]["n"], 4);
    assert_eq!(v["cleanup_ms"]["n"], 4);
    let cmp = &v["compare"];
    assert_eq!(cmp["count"], 2);
    assert_eq!(cmp["prep_ms"]["n"], 2);
    assert_eq!(cmp["runtime_dir"], rt2.display().to_string());
    // The same filesystem, no reflink on ext4 here or reflink elsewhere:
    // either way the figure is what one clone copied.
    let per = cmp["bytes_copied_per_clone"].as_u64().unwrap();
    assert!(per == 0 || per == 4 << 20, "{cmp}");
    // The baseline ran in the side-by-side dir; nothing is left anywhere.
    for d in [&rt, &rt2] {
        let left: Vec<_> = std::fs::read_dir(d.join("clones"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{}: {left:?}", d.display());
    }
}
