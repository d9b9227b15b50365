//! `wasp` as a user runs it, for the crash and fault tests: a synthesized
//! stand-in snapshot, per-test state and runtime dirs, a private host netns
//! and pool, and independent readers (`ip`, `nft`, /proc, the file system)
//! of everything wasp may leave.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use wasp::snapshot::synth::{synth, SynthOptions};

use super::TestNetns;

pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub host: TestNetns,
    pub pool: String,
}

impl Setup {
    pub fn new(tag: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        synth(&SynthOptions {
            out: tmp.path().join("snap"),
            mem_mib: 16,
            rootfs_mib: 1,
            rootfs_read_only: true,
            ..Default::default()
        })
        .unwrap();
        Setup {
            tmp,
            host: TestNetns::new(tag),
            pool: format!("x{tag}{}", std::process::id()),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    /// `wasp ARGS` with this test's dirs (as far as the command takes
    /// them) and (when `at`) pool.
    pub fn wasp(&self, args: &[&str], at: bool) -> Command {
        wasp_in(
            args,
            &self.state(),
            &self.run_dir(),
            at.then_some((self.host.name(), self.pool.as_str())),
        )
    }

    pub fn spawn_cmd(&self) -> Command {
        self.spawn_n("200")
    }

    pub fn spawn_n(&self, count: &str) -> Command {
        self.spawn_ready(count, "running")
    }

    /// `wasp spawn --vmm standin --count N --ready R --json` of the
    /// synthesized snapshot.
    pub fn spawn_ready(&self, count: &str, ready: &str) -> Command {
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
                ready,
                "--json",
            ],
            true,
        );
        c.arg("--snapshot").arg(self.tmp.path().join("snap"));
        c
    }

    /// Runs `c` with `WASP_STOP_AT=point`, waits until wasp stopped itself
    /// there, and SIGKILLs it.
    pub fn kill_at(&self, c: Command, point: &str) {
        stop_and_kill(c, point, &self.tmp.path().join("killed.stderr"));
    }

    pub fn json(&self, mut c: Command) -> serde_json::Value {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn reconcile(&self) -> serde_json::Value {
        let r = self.json(self.wasp(&["reconcile", "--json"], true));
        assert_eq!(r["errors"], serde_json::json!([]), "{r:#}");
        r
    }

    /// What the independent readers see of this test's wasp objects.
    pub fn seen(&self) -> Seen {
        let prefix = format!("wasp-{}-", self.pool);
        let netns: BTreeSet<String> = super::ip_netns_list()
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

    /// Outcome "adopted": `wasp ls` lists exactly the clones reconcile
    /// adopted (see [`Setup::assert_only`]). Returns their number.
    pub fn assert_only_adopted(&self, rec: &serde_json::Value) -> usize {
        self.assert_only(&ids(&rec["adopted"]))
    }

    /// `wasp ls` lists exactly `want`, each alive in its slot, and no other
    /// VMM, clone dir, record or broken slot of wasp's exists.
    pub fn assert_only(&self, want: &BTreeSet<String>) -> usize {
        let ls = self.json(self.wasp(&["ls", "--json"], false));
        let clones = ls["clones"].as_array().unwrap();
        let ids = ids(&ls["clones"]);
        assert_eq!(&ids, want, "ls lists exactly the expected clones");
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
    pub fn kill_drain_and_assert_zero(&self) {
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

/// `wasp ARGS` with the per-test `state` and `run` dirs (as far as the
/// command takes them: `ls` only the state dir), so
/// the reconcile every state-owning command runs first never looks at the
/// machine's own /run/wasp or /var/lib/wasp; with `at`, `--host-netns HOST
/// --pool POOL` too.
pub fn wasp_in(args: &[&str], state: &Path, run: &Path, at: Option<(&str, &str)>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasp"));
    c.args(args);
    c.arg("--state-dir").arg(state);
    if args[0] != "ls" {
        c.arg("--runtime-dir").arg(run);
    }
    if let Some((host, pool)) = at {
        c.args(["--host-netns", host, "--pool", pool]);
    }
    c
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub netns: BTreeSet<String>,
    pub host_links: Vec<String>,
    pub host_has_wasp_table: bool,
    pub slot_tables: usize,
    pub vmms: BTreeSet<i32>,
    pub clone_dirs: BTreeSet<String>,
    pub records: BTreeSet<String>,
}

/// Runs `c` with `WASP_STOP_AT=point`, waits until wasp stopped itself
/// there (`waitpid(WUNTRACED)`), SIGKILLs it and returns its pid. Its
/// stderr goes to `log`.
pub fn stop_and_kill(mut c: Command, point: &str, log: &Path) -> u32 {
    let mut child = c
        .env(wasp::testhook::ENV, point)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap() {
        WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
        other => panic!(
            "wasp did not stop at {point}: {other:?}; stderr: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
    // Stopped, not reaped: the pid is still this process.
    child.kill().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    child.id()
}

/// The `id`s of a JSON array of clones.
pub fn ids(clones: &serde_json::Value) -> BTreeSet<String> {
    clones
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn names_in(dir: &Path) -> BTreeSet<String> {
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
pub fn vmm_pids(netns_inodes: &BTreeSet<u64>, tmp: &Path) -> BTreeSet<i32> {
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
