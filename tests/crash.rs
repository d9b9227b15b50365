//! SIGKILL `wasp` at exact points of a 200-clone stand-in batch (pool
//! warm-up, mid-restore, mid-teardown), then `wasp reconcile`. Afterwards
//! exactly one outcome holds, checked with independent readers (`ip netns`,
//! `ip netns identify`, `ip link`, `nft list tables`, /proc, the file
//! system):
//!
//! - the clones that were healthy are adopted: `wasp ls` lists them, each
//!   VMM alive in its slot netns, and nothing else of wasp's clones is
//!   left (no other VMM, clone dir or record); `kill --all` + `pool drain`
//!   then leave zero;
//! - or there is no clone at all, and `pool drain` leaves zero.
//!
//! The kill points are found deterministically with the `WASP_STOP_AT`
//! stop points (see `wasp::testhook`): wasp SIGSTOPs itself at the Nth
//! pass, the test sees it with `waitpid(WUNTRACED)` and sends SIGKILL.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin, wasp_cmd};

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use testkit::cli::World;

/// The batches are large: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn killed_during_pool_warm_up() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = World::new(wasp_bin!(), "warm");
    s.kill_at(s.spawn_cmd(), "slot-built:40");
    let seen = s.seen();
    assert!(
        seen.netns.len() >= 40,
        "slots existed at the kill: {seen:?}"
    );
    assert!(seen.vmms.is_empty(), "no clone was started yet: {seen:?}");

    let rec = s.reconcile();
    // No clone: the zero outcome for clones; the warm slots stay as the pool.
    assert_eq!(s.assert_only_adopted(&rec), 0);
    assert_eq!(
        rec["pools"][0]["healthy"].as_u64().unwrap() as usize,
        s.seen().netns.len(),
        "{rec:#}"
    );
    s.kill_drain_and_assert_zero();
}

#[test]
fn killed_mid_restore() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = World::new(wasp_bin!(), "restore");
    s.kill_at(s.spawn_cmd(), "clone-recorded:60");
    let before = s.seen();
    assert!(
        before.vmms.len() > 60,
        "clones were in flight at the kill: {} VMMs",
        before.vmms.len()
    );

    let rec = s.reconcile();
    assert_eq!(rec["adopted"].as_array().unwrap().len(), 60, "{rec:#}");
    assert!(
        !rec["orphans_killed"].as_array().unwrap().is_empty(),
        "in-flight VMMs had no record: {rec:#}"
    );
    assert_eq!(s.assert_only_adopted(&rec), 60);
    // A second reconcile finds nothing to do.
    let again = s.reconcile();
    assert_eq!(again["adopted"].as_array().unwrap().len(), 60);
    for k in ["removed", "orphans_killed", "dirs_removed", "corrupt"] {
        assert_eq!(again[k], serde_json::json!([]), "{k}: {again:#}");
    }
    s.kill_drain_and_assert_zero();
}

#[test]
fn killed_mid_teardown() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = World::new(wasp_bin!(), "teardown");
    let v = s.json(s.spawn_cmd());
    assert_eq!(v["summary"]["ready"], 200, "{:#}", v["summary"]);
    // `kill --all` signals a whole wave (up to 256 VMMs) before it waits
    // for any: all 200 got their SIGTERM. The 80th clone's VMM is stopped;
    // its files and record are not yet removed when wasp dies, nor are the
    // 120 after it.
    s.kill_at(s.wasp(&["kill", "--all"], false), "teardown-vmm-stopped:80");
    assert_eq!(
        s.seen().records.len(),
        121,
        "79 torn down, 1 half, 120 signalled"
    );
    // Wait (on each one's pidfd) for the signalled VMMs to exit.
    for pid in s.seen().vmms {
        if let Ok(fd) = wasp::sys::pidfd::pidfd_open(pid) {
            // A safety net against a hung test, not synchronisation.
            assert!(
                wasp::sys::pidfd::pidfd_exited(&fd, 30_000).unwrap(),
                "VMM {pid} survived its SIGTERM"
            );
        }
    }

    let rec = s.reconcile();
    let removed = rec["removed"].as_array().unwrap();
    assert_eq!(
        removed.len(),
        121,
        "the half torn-down clone and the signalled: {rec:#}"
    );
    assert!(
        removed
            .iter()
            .all(|r| r["reason"].as_str().unwrap().contains("gone")),
        "{rec:#}"
    );
    assert_eq!(s.assert_only_adopted(&rec), 0);
    s.kill_drain_and_assert_zero();
}

#[test]
fn torn_and_corrupt_records_are_moved_aside_and_their_vmms_reclaimed() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = World::new(wasp_bin!(), "corrupt");
    let v = s.json(s.spawn_n("2"));
    assert_eq!(v["summary"]["ready"], 2);
    let recs = s.state().join("clones");
    let torn_id = v["clones"][0]["id"].as_str().unwrap().to_owned();
    let torn = recs.join(format!("{torn_id}.json"));
    let good = std::fs::read(&torn).unwrap();
    std::fs::write(&torn, &good[..good.len() / 2]).unwrap();
    std::fs::write(recs.join("wasp-junk.json"), b"\x00\xff not json").unwrap();
    std::fs::write(recs.join("wasp-big.json"), vec![b' '; 70 * 1024]).unwrap();

    // ls: a clear warning per bad record, naming the file and the fix.
    let out = s.wasp(&["ls", "--json"], false).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for name in [
        torn.file_name().unwrap().to_str().unwrap(),
        "wasp-junk.json",
        "wasp-big.json",
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(name) && l.contains("wasp reconcile")),
            "{name}: {err}"
        );
    }

    // reconcile moves them aside and reclaims the torn record's clone
    // (its VMM now has no record: an orphan).
    let rec = s.reconcile();
    let moved: BTreeSet<String> = rec["corrupt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let to = PathBuf::from(c["moved_to"].as_str().unwrap());
            assert!(to.exists(), "{to:?}");
            to.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    let want: BTreeSet<String> = [
        format!("{torn_id}.json.corrupt"),
        "wasp-junk.json.corrupt".into(),
        "wasp-big.json.corrupt".into(),
    ]
    .into();
    assert_eq!(moved, want, "{rec:#}");
    let orphans = rec["orphans_killed"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{rec:#}");
    assert_eq!(orphans[0]["clone_id"], torn_id.as_str());
    assert_eq!(s.assert_only_adopted(&rec), 1);
    // The human report says what happened.
    let out = s.wasp(&["reconcile"], true).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 clone(s) adopted"));
    s.kill_drain_and_assert_zero();

    // A state dir that cannot be used is one clear error, not a panic.
    let file = s.tmp.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let out = wasp_cmd!()
        .args(["ls", "--state-dir"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not-a-dir") && !err.contains("panicked"),
        "{err}"
    );
}

/// 1 000 stand-in clones held at once, then `kill --all` and `pool drain`:
/// zero leaks, by the same independent readers.
#[test]
fn a_thousand_clones_at_once_then_zero_leaks() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = World::new(wasp_bin!(), "k1000");
    let v = s.json(s.spawn_n("1000"));
    assert_eq!(v["summary"]["ready"], 1000, "{:#}", v["summary"]);
    // All alive at once, each in its own slot.
    assert_eq!(s.assert_only(&testkit::cli::ids(&v["clones"])), 1000);
    s.kill_drain_and_assert_zero();
}

/// The host netns of a pool vanished (deleted behind wasp's back): its
/// slots are unwired leftovers and reconcile removes them, but never the
/// slots of a same-named pool still wired in another host netns.
#[test]
fn slots_whose_host_netns_vanished_are_removed_and_only_they() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = World::new(wasp_bin!(), "gone");
    let gone = testkit::unique_name("gonehost");
    let at = |c: &mut Command, host: &str| {
        c.args(["--pool", &s.pool, "--host-netns", host]);
    };
    let mut warm = s.wasp(&["pool", "warm", "--size", "3", "--json"], false);
    at(&mut warm, &gone);
    s.json(warm);
    assert_eq!(s.seen().netns.len(), 3);
    // Another host netns that does not exist yet: the wired slots stay.
    let mut rec = s.wasp(&["reconcile", "--json"], false);
    at(&mut rec, &testkit::unique_name("nohost"));
    let r = s.json(rec);
    assert_eq!(r["pools"][0]["removed"], serde_json::json!([]), "{r:#}");
    assert_eq!(s.seen().netns.len(), 3);
    // Their host netns goes: the slots are leftovers. The kernel destroys
    // a namespace's links asynchronously; deleting the host veths first
    // (which takes each slot's veth0 with it, synchronously) reaches the
    // same end state deterministically.
    let gone_ns = format!("/run/netns/{gone}");
    let host_links = Command::new("ip")
        .args(["-n", &gone, "-o", "link", "show"])
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&host_links.stdout).lines() {
        let full = l.split(": ").nth(1).unwrap_or("");
        let name = full.split('@').next().unwrap();
        // A slot's host veth (`NAME@ifN`), on the bridge or routed.
        if name.starts_with("wasp") && full.contains('@') {
            assert!(Command::new("ip")
                .args(["-n", &gone, "link", "del", name])
                .status()
                .unwrap()
                .success());
        }
    }
    wasp::sys::netns::delete_named(&gone).unwrap();
    assert!(!std::path::Path::new(&gone_ns).exists());
    let mut rec = s.wasp(&["reconcile", "--json"], false);
    at(&mut rec, &gone);
    let r = s.json(rec);
    assert_eq!(
        r["pools"][0]["removed"],
        serde_json::json!([0, 1, 2]),
        "{r:#}"
    );
    assert_eq!(r["errors"], serde_json::json!([]), "{r:#}");
    assert_eq!(s.seen(), testkit::cli::Seen::default());
}
