//! Fault injection through `wasp spawn`, as a user runs it, with the real
//! pool in a private host netns. Every odd-numbered clone of a batch of 6
//! meets the fault (a stand-in wrapper adds the `--fault` switch for them);
//! for each fault the test checks: a per-clone error naming the phase and
//! the cause, bounded by a timeout where the fault is silence; the failed
//! clones' VMMs, files and records are gone and their slots are back in
//! the pool, unbroken; the even clones are ready; the exit status is 1 and
//! the summary counts 3 failures. docs/testing.md has the table.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin};

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use testkit::cli::World;

/// The machine has two cores: one batch at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A VMM "binary" that runs the stand-in, with `--fault FAULT` for clones
/// whose index is odd (the API socket path ends in `<tag>-<i>/api.sock`).
/// The VMM's environment is cleared by wasp, so everything is in the text.
fn odd_fault_standin(s: &World, fault: &str) -> PathBuf {
    let p = s.tmp.path().join(format!("standin-odd-{fault}"));
    let standin = env!("CARGO_BIN_EXE_wasp-standin");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\ncase \"$2\" in\n  *[13579]/api.sock) exec {standin} \"$@\" --fault {fault} ;;\nesac\nexec {standin} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Runs the batch; returns the report and checks exit 1 + 3 failures.
fn run(s: &World, mut c: Command) -> serde_json::Value {
    let out = c.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(1), "failures give exit 1: {v:#}");
    let _ = s;
    v
}

/// Checks the report and what is left: odd clones failed in `phase` with
/// `cause` in the error, even ones ready and nothing else of wasp's.
fn check(s: &World, v: &serde_json::Value, phase: &str, cause: &str, failed: usize) {
    assert_eq!(v["summary"]["failed"], failed, "{:#}", v["summary"]);
    assert_eq!(v["summary"]["ready"], 6 - failed, "{:#}", v["summary"]);
    let mut ready = BTreeSet::new();
    for c in v["clones"].as_array().unwrap() {
        if c["ok"] == true {
            ready.insert(c["id"].as_str().unwrap().to_owned());
            continue;
        }
        assert_eq!(c["failed_phase"], phase, "{c:#}");
        let err = c["error"].as_str().unwrap();
        assert!(
            err.starts_with(&format!("{phase}: ")),
            "names the phase: {err}"
        );
        assert!(err.contains(cause), "names the cause ({cause}): {err}");
    }
    // Failed clones: VMM, files, record gone; slots unbroken (assert_only
    // checks pool status); the ready ones listed and alive.
    s.assert_only(&ready);
    s.kill_drain_and_assert_zero();
}

/// One fault through the odd-clone wrapper.
fn odd_fault(tag: &str, fault: &str, extra: &[&str], ready: &str, phase: &str, cause: &str) {
    let s = World::new(wasp_bin!(), tag);
    let vmm = odd_fault_standin(&s, fault);
    let mut c = s.spawn_ready("6", ready);
    c.args(extra).env("WASP_STANDIN", &vmm);
    let v = run(&s, c);
    for c in v["clones"].as_array().unwrap() {
        let i: usize = c["id"]
            .as_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(c["ok"], i % 2 == 0, "only odd clones meet the fault: {c:#}");
    }
    check(&s, &v, phase, cause, 3);
}

#[test]
fn vmm_exits_during_load() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    odd_fault(
        "exit",
        "exit-on-load",
        &[],
        "running",
        "load",
        "the VMM process exited",
    );
}

#[test]
fn socket_never_appears() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    odd_fault(
        "nosock",
        "no-socket",
        &["--socket-timeout", "1"],
        "running",
        "socket",
        "no progress within 1s",
    );
}

#[test]
fn load_answers_400() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    odd_fault("l400", "load-400", &[], "running", "load", "answered 400");
}

#[test]
fn resume_hangs() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    odd_fault(
        "hang",
        "hang-on-resume",
        &["--api-timeout", "1"],
        "running",
        "resume",
        "no progress within 1s",
    );
}

#[test]
fn guest_never_ready() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    odd_fault(
        "noguest",
        "no-guest",
        &["--ready-timeout", "1"],
        "tcp:22",
        "ready",
        "no progress within 1s",
    );
}

#[test]
fn tap_deleted_behind_wasps_back() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = World::new(wasp_bin!(), "notap");
    s.json(s.wasp(&["pool", "warm", "--size", "6", "--json"], true));
    for n in [1, 3] {
        let ns = format!("wasp-{}-{n}", s.pool);
        let out = Command::new("ip")
            .args(["-n", &ns, "link", "del", "tap0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let v = run(&s, s.spawn_n("6"));
    check(&s, &v, "slot", "tap", 2);
}

/// Truncates a snapshot file (made writable first) to half its size.
fn truncate_to_half(p: &std::path::Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
}

#[test]
fn memory_file_truncated_after_the_snapshot_was_made() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = World::new(wasp_bin!(), "trunc");
    truncate_to_half(&s.tmp.path().join("snap/vm.mem"));
    // Caught before anything is built: one clear error naming the file.
    let out = s.spawn_n("6").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vm.mem") && err.contains("smaller"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    s.assert_only(&BTreeSet::new());
    s.kill_drain_and_assert_zero();
}

/// Real Firecracker, with the snapshot's files changed under a batch after
/// the check at open: a corrupt vmstate, then a truncated memory file.
#[test]
fn firecracker_corrupt_vmstate_and_truncated_memory_mid_batch() {
    use std::time::Duration;
    use testkit::fake_slots::FakeSlots;
    use wasp::pipeline::storage::clone::{CloneStore, Mode};
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let boot = testkit::TestNetns::new("fcfault");
    let snap = tmp.path().join("golden");
    testkit::fc_golden(tmp.path(), &snap, &boot, false);
    let store = CloneStore::open(&snap, &tmp.path().join("run"), Mode::Auto).unwrap();
    let vmstate = snap.join(&store.manifest().vmstate.file);
    let mem = snap.join(&store.manifest().memory.file);
    for f in [&vmstate, &mem] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let opts = wasp::engine::batch::SpawnOptions {
        vmm: wasp::pipeline::launch::Vmm::Firecracker(testkit::firecracker_bin()),
        count: 2,
        parallel: 2,
        ready: wasp::pipeline::ready::Ready::Running,
        timeouts: wasp::pipeline::restore::Timeouts {
            socket: Duration::from_secs(5),
            load: Duration::from_secs(5),
            api: Duration::from_secs(2),
            ready: Duration::from_secs(2),
        },
        driver: None,
        state_dir: tmp.path().join("state"),
        ready_retry: Duration::from_millis(10),
        vmm_args: vec![],
        isolation: Default::default(),
    };
    let batch = |what: &str, cause: &str| {
        let mut slots = FakeSlots::new(2, true);
        let r = wasp::engine::spawn(&opts, &store, &mut slots, &wasp::pipeline::env::Env::new())
            .unwrap();
        let mut back = slots.given_back.clone();
        back.sort();
        assert_eq!(back, [0, 1], "{what}: slots given back");
        assert!(
            testkit::cli::names_in(store.clones_dir()).is_empty(),
            "{what}: clone files left"
        );
        assert!(
            testkit::cli::names_in(&tmp.path().join("state/clones")).is_empty(),
            "{what}: records left"
        );
        assert!(
            testkit::cli::vmm_pids(&Default::default(), tmp.path()).is_empty(),
            "{what}: VMMs left"
        );
        assert_eq!(r.summary.failed, 2, "{what}");
        for c in &r.clones {
            assert_eq!(c.failed_phase.as_deref(), Some("load"), "{c:?}");
            let e = c.error.as_deref().unwrap();
            assert!(
                e.starts_with("load: the VMM answered 400") && e.contains(cause),
                "{what}: {e}"
            );
        }
    };

    let good = std::fs::read(&vmstate).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[..mid].iter_mut().for_each(|b| *b = 0xa5);
    std::fs::write(&vmstate, &bad).unwrap();
    batch("corrupt vmstate", "CRC64 validation failed");

    std::fs::write(&vmstate, &good).unwrap();
    truncate_to_half(&mem);
    batch("truncated memory", "greater then file length");
}
