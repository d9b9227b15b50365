//! The pools of `wasp bench` and `wasp demo` runs leave nothing behind:
//! a run that fails after its pool is built removes the pool itself, and
//! the pool of a run that is SIGKILLed mid-build is removed by a plain
//! `wasp reconcile` (no `--pool`, no `--host-netns`) of the state dir the
//! run was started with, found through the pool registry whatever the
//! pool's name.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_cmd};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use wasp::sys::netns;

/// The runs build hundreds of slots on a 2-core machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A temp dir with a config file naming its own state and runtime dirs.
struct Dirs {
    tmp: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("wasptest-{}-eph-", std::process::id()))
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::write(
            tmp.path().join("wasp.toml"),
            format!(
                "[paths]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n",
                tmp.path().join("state").display(),
                tmp.path().join("run").display()
            ),
        )
        .unwrap();
        Dirs { tmp }
    }

    fn wasp(&self, args: &[&str]) -> Command {
        let mut c = wasp_cmd!();
        c.arg("--config").arg(self.tmp.path().join("wasp.toml"));
        c.args(args);
        c
    }

    fn registry(&self) -> PathBuf {
        self.tmp.path().join("state").join("pools")
    }

    fn records(&self) -> Vec<String> {
        std::fs::read_dir(self.registry())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The slot namespaces of pool `pool` (`wasp-<pool>-<n>`).
fn slots_of(pool: &str) -> Vec<String> {
    let prefix = format!("wasp-{pool}-");
    testkit::ip_netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Removes what a failed assertion would otherwise leave (by the names the
/// run used), so a failing test does not break the next one.
struct Sweep(Vec<String>, String);
impl Drop for Sweep {
    fn drop(&mut self) {
        for n in slots_of(&self.1) {
            let _ = netns::delete_named(&n);
        }
        for n in &self.0 {
            if netns::exists(n) {
                let _ = netns::delete_named(n);
            }
        }
    }
}

/// A "firecracker" that answers `--version` like 1.12.1 and fails
/// everything else: the golden boot fails after the pool is built.
fn failing_firecracker(dir: &Path) -> PathBuf {
    let p = dir.join("firecracker");
    std::fs::write(
        &p,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Firecracker v1.12.1'; exit 0; fi\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_bench_that_fails_after_building_its_pool_removes_it() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = Dirs::new();
    let fc = failing_firecracker(d.tmp.path());
    let child = d
        .wasp(&["bench", "spawn", "--vmm", "firecracker", "--count", "60"])
        .arg("--firecracker")
        .arg(&fc)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _sweep = Sweep(vec![format!("wasp-hostns-demo{pid}")], format!("demo{pid}"));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the golden boot cannot succeed");
    assert!(
        err.contains("golden"),
        "the error names the golden boot: {err}"
    );
    // Its 60 slots were built (the pool warms before the golden boot);
    // none is left, nor its host netns, work dir or registry record.
    assert_eq!(slots_of(&format!("demo{pid}")), Vec::<String>::new());
    assert!(!netns::exists(&format!("wasp-hostns-demo{pid}")));
    assert!(!d
        .tmp
        .path()
        .join("run")
        .join(format!("bench-{pid}"))
        .exists());
    assert_eq!(d.records(), Vec::<String>::new());
}

#[test]
fn a_killed_bench_pool_is_removed_by_a_plain_reconcile() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = Dirs::new();
    // `bench slots`: pool `bench<pid>`, host netns `waspbench-<pid>`, no
    // work dir; only the registry knows the pool. Killed while it fills
    // its pool (the 40th slot built by the pool's workers).
    let log = d.tmp.path().join("killed.stderr");
    let pid = testkit::cli::stop_and_kill(
        d.wasp(&["bench", "slots", "--count", "120"]),
        "slot-built:40",
        &log,
    );
    let pool = format!("bench{pid}");
    let host = format!("waspbench-{pid}");
    let _sweep = Sweep(vec![host.clone()], pool.clone());
    assert!(
        slots_of(&pool).len() >= 40,
        "slots existed at the kill: {:?}",
        slots_of(&pool)
    );
    assert!(netns::exists(&host));
    assert_eq!(d.records(), vec![format!("{pool}.json")]);

    let out = d.wasp(&["reconcile", "--json"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mine = r["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == pool.as_str())
        .unwrap_or_else(|| panic!("reconcile reports pool {pool}: {r:#}"));
    assert!(mine["removed"].as_array().unwrap().len() >= 40, "{mine:#}");
    assert_eq!(slots_of(&pool), Vec::<String>::new());
    assert!(!netns::exists(&host), "the bench's host netns is gone");
    assert_eq!(d.records(), Vec::<String>::new());
    // A second reconcile finds nothing more to do.
    let again: serde_json::Value =
        serde_json::from_slice(&d.wasp(&["reconcile", "--json"]).output().unwrap().stdout).unwrap();
    assert!(
        again["pools"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pool"] != pool.as_str()),
        "{again:#}"
    );
}
