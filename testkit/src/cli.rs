//! `wasp` as a user runs it: [`World`], the one fixture of the CLI tests
//! (crash, fault, hostile-input and command tests): per-test state and
//! runtime dirs, a host netns and a pool of its own, a stand-in snapshot,
//! and independent readers (`ip`, `nft`, /proc, the file system) of
//! everything wasp may leave. Every `wasp` it runs starts from
//! [`crate::wasp_command`]: no `WASP_*` variable of the environment.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use wasp::snapshot::synth::{synth, SynthOptions};

use crate::{wasp_command, TestNetns};

/// A [`World`]'s host network namespace.
#[derive(Debug)]
pub enum Host {
    /// Made by the test (with `lo` up), deleted on drop.
    Test(TestNetns),
    /// Only named by the test (`wasptest-…`): the first `wasp` command
    /// given `--host-netns` of it creates it. The [`World`] deletes it on
    /// drop if wasp did not.
    ByWasp(String),
}

impl Host {
    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        match self {
            Host::Test(ns) => ns.name(),
            Host::ByWasp(n) => n,
        }
    }

    /// The test-made namespace; panics for one wasp makes.
    pub fn netns(&self) -> &TestNetns {
        match self {
            Host::Test(ns) => ns,
            Host::ByWasp(n) => panic!("host netns {n} is made by wasp, not by the test"),
        }
    }

    /// Runs a shell command inside the namespace and returns stdout;
    /// panics on failure (see [`TestNetns::sh`]).
    pub fn sh(&self, cmd: &str) -> String {
        crate::sh_in(self.name(), cmd)
    }

    /// Like [`Host::sh`] but returns whether it succeeded.
    pub fn sh_ok(&self, cmd: &str) -> bool {
        crate::sh_ok_in(self.name(), cmd)
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self {
            Host::Test(ns) => ns.run(f),
            Host::ByWasp(n) => {
                let fd = wasp::sys::netns::open_named(n).expect("open the host netns");
                wasp::sys::netns::run_in(&fd, f).expect("setns")
            }
        }
    }
}

/// One test's own world for the `wasp` commands: per-test state and
/// runtime dirs in a temp dir, a host netns and a pool of its own.
/// Dropped (also on panic), it kills the recorded clones, drains the pool
/// and deletes the host netns, so a failing test leaves nothing behind.
pub struct World {
    /// The test's temp dir: `state/`, `run/`, `snap/` and whatever the
    /// test puts there.
    pub tmp: tempfile::TempDir,
    /// The host netns the pool's bridge and nft table live in.
    pub host: Host,
    /// The pool's name, unique to this test process.
    pub pool: String,
    bin: PathBuf,
}

impl World {
    /// A world for the `wasp` binary `bin` (`wasp_bin!()`): a host netns
    /// made here (`wasptest-…-<tag>`), pool `x<tag><pid>`, and a small
    /// stand-in snapshot synthesized in-process at [`World::snap`] (16 MiB
    /// of memory, a 1 MiB read-only rootfs).
    pub fn new(bin: &Path, tag: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        synth(&SynthOptions {
            out: tmp.path().join("snap"),
            mem_mib: 16,
            rootfs_mib: 1,
            rootfs_read_only: true,
            ..Default::default()
        })
        .unwrap();
        World {
            tmp,
            host: Host::Test(TestNetns::new(tag)),
            pool: format!("x{tag}{}", std::process::id()),
            bin: bin.to_owned(),
        }
    }

    /// A world whose host netns wasp itself makes: only its name
    /// (`wasptest-…-<tag>`) is chosen here. Pool `<pool><pid>`; no
    /// snapshot yet ([`World::synth`] makes one).
    pub fn with_host_by_wasp(bin: &Path, tag: &str, pool: &str) -> Self {
        World {
            tmp: tempfile::tempdir().unwrap(),
            host: Host::ByWasp(crate::unique_name(tag)),
            pool: format!("{pool}{}", std::process::id()),
            bin: bin.to_owned(),
        }
    }

    /// The `wasp` binary this world runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The per-test state dir.
    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// The per-test runtime dir.
    pub fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    /// Where the world's snapshot is (made by [`World::new`] or
    /// [`World::synth`]).
    pub fn snap(&self) -> PathBuf {
        self.tmp.path().join("snap")
    }

    /// `wasp ARGS` with this test's dirs (as far as the command takes
    /// them) and (when `at`) host netns and pool ([`wasp_in`]).
    pub fn wasp(&self, args: &[&str], at: bool) -> Command {
        wasp_in(
            &self.bin,
            args,
            &self.state(),
            &self.run_dir(),
            at.then_some((self.host.name(), self.pool.as_str())),
        )
    }

    /// `wasp snapshot synth` of a small stand-in snapshot (32 MiB of
    /// memory, 4 MiB rootfs) at [`World::snap`], which must succeed.
    pub fn synth(&self) -> PathBuf {
        let snap = self.snap();
        crate::ok(&synth_small(&self.bin, &snap));
        snap
    }

    /// `wasp spawn` of 200 clones (see [`World::spawn_ready`]).
    pub fn spawn_cmd(&self) -> Command {
        self.spawn_n("200")
    }

    /// `wasp spawn` of `count` clones, ready when running.
    pub fn spawn_n(&self, count: &str) -> Command {
        self.spawn_ready(count, "running")
    }

    /// `wasp spawn --vmm standin --count N --ready R --json` of the
    /// world's snapshot.
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
        c.arg("--snapshot").arg(self.snap());
        c
    }

    /// Runs `c` with `WASP_STOP_AT=point`, waits until wasp stopped itself
    /// there, and SIGKILLs it.
    pub fn kill_at(&self, c: Command, point: &str) {
        stop_and_kill(c, point, &self.tmp.path().join("killed.stderr"));
    }

    /// Runs `c`, which must succeed, and parses its stdout as JSON.
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

    /// `wasp reconcile --json` of the world's pool, which must report no
    /// error.
    pub fn reconcile(&self) -> serde_json::Value {
        let r = self.json(self.wasp(&["reconcile", "--json"], true));
        assert_eq!(r["errors"], serde_json::json!([]), "{r:#}");
        r
    }

    /// What the independent readers see of this test's wasp objects.
    pub fn seen(&self) -> Seen {
        let prefix = format!("wasp-{}-", self.pool);
        let netns: BTreeSet<String> = crate::ip_netns_list()
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
    /// adopted (see [`World::assert_only`]). Returns their number.
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

impl World {
    /// Kills every clone of this world (`wasp kill --all`, which reconciles
    /// first: what a killed spawner left goes too) and removes its pool
    /// (`wasp pool drain --force`), ignoring failures: for guards that
    /// clean up after a failed test.
    pub fn remove_clones_and_pool(&self) {
        let _ = self.wasp(&["kill", "--all"], false).output();
        let _ = self.wasp(&["pool", "drain", "--force"], true).output();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.remove_clones_and_pool();
        if let Host::ByWasp(n) = &self.host {
            let _ = wasp::sys::netns::delete_named(n);
        }
    }
}

/// `wasp snapshot synth --mem-mib 32 --rootfs-mib 4 --out OUT` (a small
/// stand-in snapshot), run.
pub fn synth_small(bin: &Path, out: &Path) -> Output {
    wasp_command(bin)
        .args([
            "snapshot",
            "synth",
            "--mem-mib",
            "32",
            "--rootfs-mib",
            "4",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap()
}

/// `wasp ARGS` (of the binary `bin`) with the per-test `state` and `run` dirs (as far as the
/// command takes them: `ls` only the state dir), so
/// the reconcile every state-owning command runs first never looks at the
/// machine's own /run/wasp or /var/lib/wasp; with `at`, `--host-netns HOST
/// --pool POOL` too.
pub fn wasp_in(
    bin: &Path,
    args: &[&str],
    state: &Path,
    run: &Path,
    at: Option<(&str, &str)>,
) -> Command {
    let mut c = wasp_command(bin);
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

/// What the independent readers see of one world's wasp objects.
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

/// The names in `dir` (none when it does not exist).
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
