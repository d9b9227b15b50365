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

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::TestNetns;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use wasp::snapshot::synth::{synth, SynthOptions};

/// The batches are large: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const COUNT: &str = "200";

struct Setup {
    tmp: tempfile::TempDir,
    host: TestNetns,
    pool: String,
}

impl Setup {
    fn new(tag: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        synth(&SynthOptions {
            out: tmp.path().join("snap"),
            mem_mib: 16,
            rootfs_mib: 1,
            vcpus: 1,
            rootfs_read_only: true,
            scratch_mib: None,
            sha256: false,
        })
        .unwrap();
        Setup {
            tmp,
            host: TestNetns::new(tag),
            pool: format!("x{tag}{}", std::process::id()),
        }
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    /// `wasp ARGS` with this test's dirs (as far as the command takes
    /// them) and (when `at`) pool.
    fn wasp(&self, args: &[&str], at: bool) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wasp"));
        c.args(args);
        if args[0] != "pool" || args[1] != "status" {
            c.arg("--state-dir").arg(self.state());
        }
        if args[0] != "ls" && (args[0] != "pool" || args[1] != "status") {
            c.arg("--runtime-dir").arg(self.run_dir());
        }
        if at {
            c.args(["--host-netns", self.host.name(), "--pool", &self.pool]);
        }
        c
    }

    fn spawn_cmd(&self) -> Command {
        self.spawn_n(COUNT)
    }

    fn spawn_n(&self, count: &str) -> Command {
        let mut c = self.wasp(
            &[
                "spawn",
                "--vmm",
                "standin",
                "--count",
                count,
                "--parallel",
                "16",
                "--ready",
                "running",
                "--json",
            ],
            true,
        );
        c.arg("--snapshot").arg(self.tmp.path().join("snap"));
        c
    }

    /// Runs `c` with `WASP_STOP_AT=point`, waits until wasp stopped itself
    /// there, and SIGKILLs it.
    fn kill_at(&self, mut c: Command, point: &str) {
        let log = self.tmp.path().join("killed.stderr");
        let child = c
            .env(wasp::testhook::ENV, point)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap() {
            WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
            other => panic!(
                "wasp did not stop at {point}: {other:?}; stderr: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
        kill(pid, Signal::SIGKILL).unwrap();
        assert_eq!(
            waitpid(pid, None).unwrap(),
            WaitStatus::Signaled(pid, Signal::SIGKILL, false)
        );
    }

    fn json(&self, mut c: Command) -> serde_json::Value {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn reconcile(&self) -> serde_json::Value {
        let r = self.json(self.wasp(&["reconcile", "--json"], true));
        assert_eq!(r["errors"], serde_json::json!([]), "{r:#}");
        r
    }

    /// What the independent readers see of this test's wasp objects.
    fn seen(&self) -> Seen {
        let prefix = format!("wasp-{}-", self.pool);
        let netns: BTreeSet<String> = common::ip_netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        let inodes: BTreeSet<u64> = netns
            .iter()
            .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
            .map(|m| m.ino())
            .collect();
        let links: Vec<String> = self
            .host
            .sh("ip -o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with("wasp"))
            .collect();
        let tables = self.host.sh("nft list tables");
        let mut slot_tables = 0;
        for n in &netns {
            let out = Command::new("ip")
                .args(["netns", "exec", n, "nft", "list", "tables"])
                .output()
                .unwrap();
            slot_tables += String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("wasp"))
                .count();
        }
        Seen {
            vmms: vmm_pids(&inodes, self.tmp.path()),
            netns,
            host_links: links,
            host_has_wasp_table: tables.contains("wasp"),
            slot_tables,
            clone_dirs: names_in(&self.run_dir().join("clones")),
            records: names_in(&self.state().join("clones"))
                .into_iter()
                .filter(|n| n.ends_with(".json"))
                .collect(),
        }
    }

    /// Outcome "adopted": every clone `wasp ls` lists is alive in its slot
    /// (`ip netns identify`), and no other VMM, clone dir or record exists.
    /// Returns the number of clones.
    fn assert_only_adopted(&self, rec: &serde_json::Value) -> usize {
        let ls = self.json(self.wasp(&["ls", "--json"], false));
        let clones = ls["clones"].as_array().unwrap();
        let ids: BTreeSet<String> = clones
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        let adopted: BTreeSet<String> = rec["adopted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, adopted, "ls lists exactly the adopted clones");
        let seen = self.seen();
        let mut pids = BTreeSet::new();
        for c in clones {
            assert_eq!(c["alive"], true, "{c}");
            let pid = c["pid"].as_i64().unwrap() as i32;
            pids.insert(pid);
            let out = Command::new("ip")
                .args(["netns", "identify", &pid.to_string()])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                c["netns"].as_str().unwrap(),
                "clone {} runs in its slot",
                c["id"]
            );
        }
        assert_eq!(seen.vmms, pids, "no VMM of wasp's but the adopted ones");
        let dirs: BTreeSet<String> = ids.iter().map(|i| format!("wasp-{i}")).collect();
        assert_eq!(seen.clone_dirs, dirs, "clone dirs are the adopted ones");
        let recs: BTreeSet<String> = ids.iter().map(|i| format!("{i}.json")).collect();
        assert_eq!(seen.records, recs, "records are the adopted ones");
        // Every slot left is healthy; those of the clones among them.
        let st = self.json(self.wasp(&["pool", "status", "--json"], true));
        assert_eq!(st["broken"], serde_json::json!([]), "{st:#}");
        assert_eq!(st["slots"].as_u64().unwrap() as usize, seen.netns.len());
        for c in clones {
            assert!(seen.netns.contains(c["netns"].as_str().unwrap()));
        }
        ids.len()
    }

    /// `kill --all` and `pool drain`, then zero of everything.
    fn kill_drain_and_assert_zero(&self) {
        self.json(self.wasp(&["kill", "--all", "--json"], false));
        self.json(self.wasp(&["pool", "drain", "--json"], true));
        let seen = self.seen();
        assert_eq!(seen, Seen::default(), "nothing of wasp's is left");
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.wasp(&["kill", "--all"], false).output();
        let _ = self.wasp(&["pool", "drain"], true).output();
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    netns: BTreeSet<String>,
    host_links: Vec<String>,
    host_has_wasp_table: bool,
    slot_tables: usize,
    vmms: BTreeSet<i32>,
    clone_dirs: BTreeSet<String>,
    records: BTreeSet<String>,
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// VMM processes from /proc: argv[0] is the stand-in or firecracker, and
/// the process lives in one of `netns_inodes` or names a path under `tmp`.
fn vmm_pids(netns_inodes: &BTreeSet<u64>, tmp: &Path) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    let tmp = tmp.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
        let name = Path::new(std::ffi::OsStr::new(
            std::str::from_utf8(argv0).unwrap_or(""),
        ))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
        if name != "wasp-standin" && name != "firecracker" {
            continue;
        }
        // A zombie (exited, not yet reaped) is no VMM any more.
        if std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
            continue;
        }
        let in_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| netns_inodes.contains(&m.ino()));
        if in_ns || String::from_utf8_lossy(&cmd).contains(&tmp) {
            out.insert(pid);
        }
    }
    out
}

#[test]
fn killed_during_pool_warm_up() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Setup::new("warm");
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
        rec["slots"]["healthy"].as_u64().unwrap() as usize,
        s.seen().netns.len(),
        "{rec:#}"
    );
    s.kill_drain_and_assert_zero();
}

#[test]
fn killed_mid_restore() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Setup::new("restore");
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
    let s = Setup::new("teardown");
    let v = s.json(s.spawn_cmd());
    assert_eq!(v["summary"]["ready"], 200, "{:#}", v["summary"]);
    // The 80th clone's VMM is stopped; its files and record are not yet
    // removed when wasp dies.
    s.kill_at(s.wasp(&["kill", "--all"], false), "teardown-vmm-stopped:80");
    assert_eq!(s.seen().records.len(), 121, "79 torn down, 1 half");

    let rec = s.reconcile();
    let removed = rec["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "the half torn-down clone: {rec:#}");
    assert!(
        removed[0]["reason"].as_str().unwrap().contains("gone"),
        "{rec:#}"
    );
    assert_eq!(s.assert_only_adopted(&rec), 120);
    s.kill_drain_and_assert_zero();
}

#[test]
fn torn_and_corrupt_records_are_moved_aside_and_their_vmms_reclaimed() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Setup::new("corrupt");
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
    let out = Command::new(env!("CARGO_BIN_EXE_wasp"))
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
