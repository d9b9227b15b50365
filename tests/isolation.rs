//! Per-clone cgroup v2 placement and limits, and jailer mode, with real
//! kernel objects and the real pinned Firecracker 1.12.1 + jailer:
//! - a child started with CLONE_INTO_CGROUP (and with the cgroup.procs
//!   fallback) is in its cgroup when its first program reads
//!   /proc/self/cgroup; a limit file is written; a busy cgroup is killed
//!   and removed;
//! - a limit whose controller is not on cgroup v2 is one clear error up
//!   front and nothing is created (library and CLI);
//! - jailed clones from a real golden snapshot run as the jailed uid in
//!   their chroot, in their slot netns and cgroup, hold their own rootfs,
//!   map the shared memory file, answer with their own AGENT_ID, and
//!   teardown (or a failed clone's reclaim) leaves no chroot and no cgroup.
//!
//! Test cgroups live under `<cgroup2 mount>/wasptest-<pid>-<tag>`; a
//! controller the test enabled at the mount's root is disabled again.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin, wasp_cmd};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use testkit::dev_ino;
use testkit::fake_slots::FakeSlots;
use wasp::engine::batch::SpawnOptions;
use wasp::pipeline::env::Env;
use wasp::pipeline::launch::{Isolation, Vmm};
use wasp::pipeline::ready::Ready;
use wasp::pipeline::restore::Timeouts;
use wasp::pipeline::storage::clone::{CloneStore, Mode};
use wasp::sys::spawn::{ChildSetup, CloneStyle, Exec, Placement, Stdin};
use wasp::vmm::cgroup::{self, CgroupParent, Limits};
use wasp::vmm::jailer::{IdRange, Jailer};

/// Tests that enable controllers at the root take turns, so each can put
/// the root's subtree_control back as it found it.
static ROOT_CONTROLLERS: Mutex<()> = Mutex::new(());

fn mount() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    cgroup::find_cgroup2(&mi).expect("cgroup2 is mounted")
}

fn words(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A limit this host's cgroup v2 can take: hugetlb here (hybrid host), or
/// pids on a unified one.
fn available_limit() -> (&'static str, &'static str) {
    let ctl = words(&mount().join("cgroup.controllers"));
    if ctl.iter().any(|c| c == "hugetlb")
        && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists()
    {
        ("hugetlb.2MB.max", "4194304")
    } else if ctl.iter().any(|c| c == "pids") {
        ("pids.max", "64")
    } else {
        panic!("cgroup v2 here offers neither hugetlb nor pids: {ctl:?}")
    }
}

/// A test-owned cgroup parent; on drop its clone cgroups and itself are
/// removed, and controllers it enabled at the root are disabled again.
struct TestParent {
    parent: Arc<CgroupParent>,
    enabled_at_root: Vec<String>,
    _turn: MutexGuard<'static, ()>,
}

impl TestParent {
    fn open(tag: &str, limits: Limits) -> Self {
        let turn = ROOT_CONTROLLERS.lock().unwrap_or_else(|e| e.into_inner());
        let sc = mount().join("cgroup.subtree_control");
        let before = words(&sc);
        let name = format!("wasptest-{}-{tag}", std::process::id());
        let parent = CgroupParent::open_named(&name, limits).unwrap();
        let enabled_at_root = words(&sc)
            .into_iter()
            .filter(|c| !before.contains(c))
            .collect();
        Self {
            parent: Arc::new(parent),
            enabled_at_root,
            _turn: turn,
        }
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        let r = cgroup::reconcile(self.parent.dir(), &|_| false);
        for e in r.errors {
            eprintln!("warning: {e}");
        }
        if let Err(e) = std::fs::remove_dir(self.parent.dir()) {
            eprintln!(
                "warning: cannot remove {}: {e}",
                self.parent.dir().display()
            );
        }
        let sc = self.parent.mount().join("cgroup.subtree_control");
        for c in &self.enabled_at_root {
            if let Err(e) = std::fs::write(&sc, format!("-{c}")) {
                eprintln!("warning: cannot disable {c} at {}: {e}", sc.display());
            }
        }
    }
}

/// Runs `cat /proc/self/cgroup` as the child's very first program and
/// returns its output and the placement.
fn first_program_cgroup(
    cg: cgroup::CloneCgroup,
    force_procs_write: bool,
    force_fork: bool,
) -> (String, Placement) {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().unwrap();
    let exec = Exec {
        program: "cat".into(),
        args: vec!["/proc/self/cgroup".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        stdin: Stdin::Null,
        stdout: out.try_clone().unwrap(),
        stderr: out.try_clone().unwrap(),
    };
    let setup = ChildSetup::new()
        .cgroup(cg.dir, cg.procs, force_procs_write)
        .force_fork(force_fork);
    let mut s = wasp::sys::spawn::spawn(exec, setup).unwrap();
    let style = if force_fork || !wasp::sys::spawn::VFORK_SUPPORTED {
        CloneStyle::Fork
    } else {
        CloneStyle::Vfork
    };
    assert_eq!(s.style, style);
    assert!(s.process.wait().unwrap().success());
    let mut text = String::new();
    out.rewind().unwrap();
    out.read_to_string(&mut text).unwrap();
    (text, s.placement.unwrap())
}

fn v2_line(cgroup_dir: &Path) -> String {
    format!(
        "0::/{}",
        cgroup_dir.strip_prefix(mount()).unwrap().display()
    )
}

#[test]
fn clone_into_cgroup_places_the_child_before_its_first_instruction() {
    root_or_skip!();
    let (key, value) = available_limit();
    let mut limits = Limits::new();
    limits.set(key, value).unwrap();
    let tp = TestParent::open("place", limits);

    // Both ways to create the child (vfork-style, and the fork-style
    // fallback) place it the same way.
    for force_fork in [false, true] {
        let cg = tp.parent.create(&format!("t1-{force_fork}")).unwrap();
        let path = cg.path.clone();
        assert_eq!(
            std::fs::read_to_string(path.join(key)).unwrap().trim(),
            value,
            "{key} written"
        );
        let (text, placement) = first_program_cgroup(cg, false, force_fork);
        assert_eq!(placement, Placement::CloneIntoCgroup);
        assert!(text.lines().any(|l| l == v2_line(&path)), "{text}");
        cgroup::remove(&path, Duration::from_secs(5)).unwrap();
        assert!(!path.exists());

        // The fallback: the child writes itself to cgroup.procs before exec.
        let cg = tp.parent.create(&format!("t2-{force_fork}")).unwrap();
        let path = cg.path.clone();
        let (text, placement) = first_program_cgroup(cg, true, force_fork);
        assert_eq!(placement, Placement::ProcsWrite);
        assert!(text.lines().any(|l| l == v2_line(&path)), "{text}");
        cgroup::remove(&path, Duration::from_secs(5)).unwrap();
    }

    // A cgroup that still has a process: killed through cgroup.kill, then
    // removed. `cat` blocks on its stdin pipe.
    let cg = tp.parent.create("t3").unwrap();
    let path = cg.path.clone();
    let exec = Exec {
        program: "cat".into(),
        args: vec![],
        env: vec![],
        stdin: Stdin::Pipe,
        stdout: tempfile::tempfile().unwrap(),
        stderr: tempfile::tempfile().unwrap(),
    };
    let mut s =
        wasp::sys::spawn::spawn(exec, ChildSetup::new().cgroup(cg.dir, cg.procs, false)).unwrap();
    let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), s.process.id().to_string());
    cgroup::remove(&path, Duration::from_secs(5)).unwrap();
    assert!(!path.exists());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(s.process.wait().unwrap().signal(), Some(libc::SIGKILL));

    // Crash leftovers are found by name; a live one is kept.
    let a = tp.parent.create("live").unwrap().path;
    let b = tp.parent.create("dead").unwrap().path;
    let r = cgroup::reconcile(tp.parent.dir(), &|id| id == "live");
    assert_eq!(
        (r.kept, r.removed.clone()),
        (1, vec![b.clone()]),
        "{:?}",
        r.errors
    );
    assert!(a.exists() && !b.exists());
}

#[test]
fn memory_max_without_the_v2_memory_controller_is_one_clear_error() {
    root_or_skip!();
    let m = mount();
    let ctl = words(&m.join("cgroup.controllers"));
    let mut limits = Limits::new();
    limits.set(cgroup::MEMORY_MAX, "128M").unwrap();
    let name = format!("wasptest-{}-mem", std::process::id());
    if ctl.iter().any(|c| c == "memory") {
        // A unified host: the limit works instead.
        let tp = TestParent::open("mem", limits);
        let cg = tp.parent.create("m").unwrap();
        let v = std::fs::read_to_string(cg.path.join("memory.max")).unwrap();
        assert_eq!(v.trim(), (128u64 << 20).to_string());
        return;
    }
    let _turn = ROOT_CONTROLLERS.lock().unwrap_or_else(|e| e.into_inner());
    let before = std::fs::read_to_string(m.join("cgroup.subtree_control")).unwrap();
    let e = CgroupParent::open_named(&name, limits).unwrap_err();
    let msg = e.to_string();
    for want in [
        "memory.max",
        "`memory`",
        &m.display().to_string(),
        "cgroup.controllers",
        "leave out memory.max",
    ] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    assert!(!m.join(&name).exists(), "nothing is created");
    assert_eq!(
        std::fs::read_to_string(m.join("cgroup.subtree_control")).unwrap(),
        before,
        "nothing is enabled"
    );

    // The CLI: one clear error before any slot, clone or record exists.
    let tmp = tempfile::tempdir().unwrap();
    let wasp = wasp_bin!();
    let snap = tmp.path().join("snap");
    let out = testkit::wasp_command(wasp)
        .args([
            "snapshot",
            "synth",
            "--mem-mib",
            "16",
            "--rootfs-mib",
            "1",
            "--out",
        ])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = testkit::wasp_command(wasp)
        .args([
            "spawn",
            "--vmm",
            "standin",
            "--count",
            "1",
            "--memory-max",
            "128M",
        ])
        .arg("--snapshot")
        .arg(&snap)
        .arg("--runtime-dir")
        .arg(tmp.path().join("run"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .args([
            "--host-netns",
            &testkit::unique_name("memcli"),
            "--pool",
            "wasptest-memcli",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`memory`") && err.contains(&m.display().to_string()),
        "{err}"
    );
    assert!(!tmp.path().join("state").exists(), "no clone records");
    assert!(
        !testkit::ip_netns_list()
            .iter()
            .any(|n| n.contains("memcli")),
        "no host netns or slot was made"
    );
}

fn status_ids(pid: i32, field: &str) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

#[test]
fn jailed_firecracker_clones_from_a_real_snapshot() {
    root_or_skip!();
    let fc = testkit::firecracker_bin();
    let jailer_bin = wasp::vmm::firecracker::locate_jailer(Some(&fc)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (golden, _) = testkit::firecracker_golden(tmp.path());
    let runtime = tmp.path().join("run");
    let store = CloneStore::open(&golden, &runtime, Mode::Auto).unwrap();
    let (key, value) = available_limit();
    let mut limits = Limits::new();
    limits.set(key, value).unwrap();
    let tp = TestParent::open("jail", limits);
    let ids: IdRange = "64000-64009".parse().unwrap();
    let jailer = Arc::new(Jailer::new(&jailer_bin, &fc, &runtime, ids).unwrap());
    let state = tmp.path().join("state");
    let opts = |count, vmm_args: Vec<String>| SpawnOptions {
        vmm: Vmm::Firecracker(fc.clone()),
        count,
        parallel: count,
        ready: Ready::Running,
        timeouts: Timeouts::default(),
        driver: None,
        state_dir: state.clone(),
        ready_retry: Duration::from_millis(10),
        vmm_args,
        isolation: Isolation {
            cgroup: Some(tp.parent.clone()),
            jailer: Some(jailer.clone()),
            force_procs_write: false,
            force_fork: false,
            mount_template: None,
        },
    };
    let jail_execs = jailer.base().join("firecracker");
    let empty = |d: &Path| std::fs::read_dir(d).map(|r| r.count() == 0).unwrap_or(true);

    // A snapshot file the jailed uid cannot read is refused up front, before
    // any slot, file, jail or cgroup.
    use std::os::unix::fs::PermissionsExt;
    let vmstate = golden.join("vm.snapshot");
    std::fs::set_permissions(&vmstate, std::fs::Permissions::from_mode(0o400)).unwrap();
    let mut slots = FakeSlots::new(1, true);
    let e = wasp::engine::spawn(&opts(1, vec![]), &store, &mut slots, &Env::new()).unwrap_err();
    std::fs::set_permissions(&vmstate, std::fs::Permissions::from_mode(0o444)).unwrap();
    let msg = wasp::error::chain(&e);
    assert!(
        msg.contains("vm.snapshot") && msg.contains("64000-64009"),
        "{msg}"
    );
    assert!(empty(&jail_execs) && empty(store.clones_dir()));
    assert!(child_cgroups(tp.parent.dir()).is_empty());

    // A clone whose Firecracker refuses its arguments fails, and its jail
    // and cgroup are reclaimed with it.
    let bad = wasp::engine::spawn(
        &opts(1, vec!["--no-such-flag".into()]),
        &store,
        &mut slots,
        &Env::new(),
    )
    .unwrap();
    assert_eq!(bad.summary.failed, 1, "{:#?}", bad.clones);
    let why = bad.clones[0].error.clone().unwrap();
    eprintln!("failed as meant: {why}");
    assert!(why.contains("exited"), "{why}");
    assert!(empty(&jail_execs), "jail left behind");
    assert!(
        child_cgroups(tp.parent.dir()).is_empty(),
        "cgroup left behind"
    );
    assert!(empty(store.clones_dir()));

    let n = 3;
    let mut slots = FakeSlots::new(n, true);
    let mut env = Env::new();
    env.add_plain("ROLE=jailed").unwrap();
    let report = wasp::engine::spawn(&opts(n, vec![]), &store, &mut slots, &env).unwrap();
    let guard = testkit::TeardownGuard(&state);
    assert_eq!(report.summary.ready, n, "{:#?}", report.clones);
    let records = wasp::state::Store::open(&state).unwrap().list().unwrap().0;
    for c in &report.clones {
        let pid = c.pid.unwrap();
        let uid = status_ids(pid, "Uid:")[0];
        assert!(ids.contains(uid), "{}: uid {uid}", c.id);
        assert_eq!(status_ids(pid, "Uid:"), vec![uid; 4], "{}", c.id);
        assert_eq!(status_ids(pid, "Gid:"), vec![uid; 4], "{}", c.id);
        let root = jailer.root(&c.id);
        assert_eq!(
            dev_ino(format!("/proc/{pid}/root")),
            dev_ino(&root),
            "chrooted"
        );
        let ns = slots
            .nss
            .iter()
            .find(|s| Some(s.name()) == c.netns.as_deref())
            .unwrap();
        assert_eq!(
            dev_ino(format!("/proc/{pid}/ns/net")).1,
            dev_ino(wasp::sys::netns::path_of(ns.name())).1,
            "in its slot netns"
        );
        let cg = tp.parent.clone_path(&c.id);
        let own_cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(own_cg.lines().any(|l| l == v2_line(&cg)), "{own_cg}");
        assert_eq!(std::fs::read_to_string(cg.join(key)).unwrap().trim(), value);

        // The shared memory file (inside the chroot its path is
        // /snapshot/vm.mem), mapped private.
        testkit::assert_maps_private(pid, &golden.join("vm.mem"));
        let own = dev_ino(store.clone_dir(&c.id).join("rootfs"));
        assert!(
            testkit::held_files(pid).contains(&own),
            "{} does not hold its own rootfs",
            c.id
        );

        let sock = root.join("run/firecracker.socket");
        let mut client = wasp::vmm::api::Client::connect(&sock).unwrap();
        assert_eq!(client.get_instance_info().unwrap().state, "Running");
        assert_eq!(client.get_mmds().unwrap()["env"]["AGENT_ID"], c.id.as_str());
        let r = records.iter().find(|r| r.id == c.id).unwrap();
        assert_eq!(r.api_sock, sock);
        assert_eq!(
            r.jail_dir.as_deref(),
            Some(jailer.jail_dir(&c.id).as_path())
        );
        assert_eq!(r.cgroup.as_deref(), Some(cg.as_path()));
    }
    drop(guard);
    assert!(empty(&jail_execs), "teardown left a jail");
    assert!(
        child_cgroups(tp.parent.dir()).is_empty(),
        "teardown left a cgroup"
    );
    assert!(empty(store.clones_dir()), "teardown left clone files");
}

/// Sub-directories (child cgroups) of a cgroup directory.
fn child_cgroups(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect()
}

/// uids (field 0) or gids of the entries of a passwd-style file.
fn ids_in(file: &str) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect()
}

/// The per-mount options of the (topmost) mount on `point` in process
/// `pid`'s mount namespace.
fn mount_options(pid: i32, point: &str) -> Option<String> {
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    mi.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&point)).then(|| f[5].to_owned())
    })
}

#[test]
fn jailed_clones_get_own_ids_read_only_snapshot_binds_and_a_pid_namespace() {
    root_or_skip!();
    let fc = testkit::firecracker_bin();
    let jailer_bin = wasp::vmm::firecracker::locate_jailer(Some(&fc)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (golden, _) = testkit::firecracker_golden(tmp.path());
    let runtime = tmp.path().join("run");
    let store = CloneStore::open(&golden, &runtime, Mode::Auto).unwrap();
    let ids: IdRange = "64100-64101".parse().unwrap();
    let jailer = Arc::new(Jailer::new(&jailer_bin, &fc, &runtime, ids).unwrap());
    let state = tmp.path().join("state");
    let opts = SpawnOptions {
        vmm: Vmm::Firecracker(fc.clone()),
        count: 2,
        parallel: 2,
        ready: Ready::Running,
        timeouts: Timeouts::default(),
        driver: None,
        state_dir: state.clone(),
        ready_retry: Duration::from_millis(10),
        vmm_args: vec![],
        isolation: Isolation {
            jailer: Some(jailer.clone()),
            ..Isolation::default()
        },
    };
    let mut slots = FakeSlots::new(2, true);
    let report = wasp::engine::spawn(&opts, &store, &mut slots, &Env::new()).unwrap();
    let guard = testkit::TeardownGuard(&state);
    assert_eq!(report.summary.ready, 2, "{:#?}", report.clones);
    let (passwd, group) = (ids_in("/etc/passwd"), ids_in("/etc/group"));
    let my_pidns = dev_ino("/proc/self/ns/pid");
    let mut uids = Vec::new();
    for c in &report.clones {
        let pid = c.pid.unwrap();
        let uid = status_ids(pid, "Uid:")[0];
        let gid = status_ids(pid, "Gid:")[0];
        assert!(ids.contains(uid) && ids.contains(gid), "{uid}:{gid}");
        assert!(
            uid != 0 && !passwd.contains(&uid),
            "uid {uid} is an account"
        );
        assert!(gid != 0 && !group.contains(&gid), "gid {gid} is a group");
        uids.push(uid);
        // Its own pid namespace, where it is init.
        assert_ne!(dev_ino(format!("/proc/{pid}/ns/pid")), my_pidns, "{}", c.id);
        let nspid = status_ids(pid, "NSpid:");
        assert_eq!(nspid, vec![pid as u32, 1], "{}", c.id);
        // The API socket and the chroot's run dir are its uid's alone.
        let root = jailer.root(&c.id);
        use std::os::unix::fs::MetadataExt;
        let sock = std::fs::metadata(root.join("run/firecracker.socket")).unwrap();
        assert_eq!((sock.uid(), sock.gid()), (uid, gid));
        // The shared snapshot files: read-only, nosuid, nodev binds.
        for f in ["/snapshot/vm.mem", "/snapshot/vm.snapshot"] {
            let opts = mount_options(pid, f)
                .unwrap_or_else(|| panic!("{f} is no mount in {}'s namespace", c.id));
            let o: Vec<&str> = opts.split(',').collect();
            for want in ["ro", "nosuid", "nodev"] {
                assert!(o.contains(&want), "{f}: {opts}");
            }
        }
        testkit::assert_maps_private(pid, &golden.join("vm.mem"));
        let mut client =
            wasp::vmm::api::Client::connect(&root.join("run/firecracker.socket")).unwrap();
        assert_eq!(client.get_instance_info().unwrap().state, "Running");
    }
    assert_ne!(uids[0], uids[1], "each clone has its own uid");

    // The records name the VMM itself (pid in wasp's namespace, start
    // time): a reconcile, as after a crash of wasp, adopts both.
    let o = wasp::ops::reconcile::Options {
        state_dir: state.clone(),
        runtime_dir: runtime.clone(),
        tap: "tap0".into(),
        pools: vec![],
        vmm_binaries: vec![],
    };
    let rep = wasp::ops::reconcile::reconcile(&o).unwrap();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    let mut adopted: Vec<(String, i32)> =
        rep.adopted.iter().map(|a| (a.id.clone(), a.pid)).collect();
    adopted.sort();
    let mut want: Vec<(String, i32)> = report
        .clones
        .iter()
        .map(|c| (c.id.clone(), c.pid.unwrap()))
        .collect();
    want.sort();
    assert_eq!(adopted, want);

    // Teardown (`wasp kill`) stops exactly that process.
    let st = wasp::state::Store::open(&state).unwrap();
    let r = st.list().unwrap().0.into_iter().next().unwrap();
    let fd = wasp::sys::pidfd::pidfd_open(r.pid).unwrap();
    let (fate, errors) = wasp::ops::teardown::teardown(&st, &r, Duration::from_secs(5));
    assert!(errors.is_empty(), "{errors:?}");
    // Init of its pid namespace drops SIGTERM: killed at once.
    assert_eq!(fate, Some(wasp::vmm::VmmFate::Killed));
    assert!(
        wasp::sys::pidfd::pidfd_exited(&fd, 0).unwrap(),
        "VMM still runs"
    );
    assert!(!jailer.jail_dir(&r.id).exists(), "jail left");
    drop(guard);
}

#[test]
fn jailer_id_ranges_with_an_account_or_root_are_refused_before_anything_is_made() {
    root_or_skip!();
    let fc = testkit::firecracker_bin();
    let tmp = tempfile::tempdir().unwrap();
    let (run, state) = (tmp.path().join("run"), tmp.path().join("state"));
    let pool = testkit::unique_name("jids");
    let spawn = |extra: &[&str]| {
        wasp_cmd!()
            .args(["spawn", "--count", "1", "--jailer"])
            .args(extra)
            .arg("--snapshot")
            .arg(tmp.path().join("snap"))
            .arg("--firecracker")
            .arg(&fc)
            .arg("--runtime-dir")
            .arg(&run)
            .arg("--state-dir")
            .arg(&state)
            .args(["--pool", &pool])
            .output()
            .unwrap()
    };
    // An id of an account: the first passwd entry in 1..=4294967294.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let (name, id) = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f[0].to_owned(), f.get(2)?.parse::<u32>().ok()?))
        })
        .find(|(_, id)| *id > 0)
        .expect("a non-root account in /etc/passwd");
    let range = format!("{}-{}", id.saturating_sub(2).max(1), id + 2);
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec!["--jailer-id-range".into(), range.clone()],
            vec![format!("uid {id} of user `{name}`"), "/etc/passwd".into()],
        ),
        (
            vec!["--jailer-id-range".into(), "0-100".into()],
            vec!["root".into()],
        ),
        (
            vec!["--jailer-uid".into(), "64000".into()],
            vec!["--jailer-id-range".into()],
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = spawn(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        for w in &want {
            assert!(err.contains(w.as_str()), "{args:?}: want {w}: {err}");
        }
        assert_eq!(err.matches("error").count().max(1), 1, "one error: {err}");
        assert!(!state.exists(), "{args:?}: a state dir was made");
        assert!(!run.join("jail").exists(), "{args:?}: a jail dir was made");
        assert!(
            !testkit::ip_netns_list().iter().any(|n| n.contains(&pool)),
            "{args:?}: a netns was made"
        );
    }
}
