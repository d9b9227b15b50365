//! Shared setup of wasp's integration tests (`tests/`) and benches
//! (`benches/`), as a workspace member: a dev-dependency of `wasp`, the way
//! Cloud Hypervisor's `test_infra` serves its tests.
//!
//! - [`require_root`] fails the test with a clear message when not root and
//!   `CI` is set, and otherwise skips loudly.
//! - [`TestNetns`] is a named, throwaway network namespace deleted on drop,
//!   even when the test panics. Its name starts with [`TEST_PREFIX`] and
//!   carries the test process's pid, so [`sweep_stale`] can remove what a
//!   killed test run left behind without touching anything else.
//! - Tests never touch the machine's own network namespace: everything runs
//!   inside namespaces made here, including a private "host" namespace.
//! - Every helper that runs the `wasp` binary starts from
//!   [`wasp_command`]: no `WASP_*` variable of the caller's environment
//!   reaches it; a test passes what it needs (e.g. `WASP_FIRECRACKER`)
//!   explicitly. A library cannot know `CARGO_BIN_EXE_wasp`: the
//!   [`wasp_bin!`] and [`wasp_cmd!`] macros expand it in the test's crate.
//!
//! Modules: [`cli`] (the one fixture for `wasp` as a user runs it),
//! [`fake_slots`], [`fake_vmm`], [`loopfs`], [`netutil`], and [`bench`]
//! (the regression gate's benches and measurement).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use wasp::sys::netns;

pub mod bench;
pub mod cli;
pub mod fake_slots;
pub mod fake_vmm;
pub mod loopfs;
pub mod netutil;

/// Prefix of every namespace the harness creates.
pub const TEST_PREFIX: &str = "wasptest-";

/// Returns true when the test may go on. Not root: panics when `CI` is set,
/// else prints a loud skip note and returns false.
pub fn require_root(test: &str) -> bool {
    if wasp::sys::is_root() {
        sweep_stale_once();
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: this test needs root (network namespaces, links, nf_tables); CI must run it as root");
    }
    eprintln!(
        "SKIPPED {test}: needs root; run the tests as root (sudo -E cargo test) to exercise it"
    );
    false
}

/// Skips the test body unless root (see [`require_root`]).
#[macro_export]
macro_rules! root_or_skip {
    () => {
        if !$crate::require_root(module_path!()) {
            return;
        }
    };
}

/// `Command::new(bin)` with every `WASP_*` variable of this process's
/// environment removed, so a developer's or CI's settings (a config file,
/// a Firecracker path, a stop point) never change what a test runs. Add
/// what the test wants after this.
pub fn wasp_command(bin: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WASP_") {
            c.env_remove(k);
        }
    }
    c
}

/// The `wasp` binary of the calling test or bench target
/// (`CARGO_BIN_EXE_wasp`, expanded in the caller's crate), as a `&Path`.
#[macro_export]
macro_rules! wasp_bin {
    () => {
        ::std::path::Path::new(env!("CARGO_BIN_EXE_wasp"))
    };
}

/// `wasp` with no `WASP_*` variable of the environment: [`wasp_command`]
/// of [`wasp_bin!`].
#[macro_export]
macro_rules! wasp_cmd {
    () => {
        $crate::wasp_command(env!("CARGO_BIN_EXE_wasp"))
    };
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for a test object: `wasptest-<pid>-<n>-<tag>`.
pub fn unique_name(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("{TEST_PREFIX}{}-{n}-{tag}", std::process::id());
    name.truncate(netns::MAX_NAME_LEN);
    name
}

/// A named network namespace owned by one test; deleted on drop.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    fd: OwnedFd,
}

impl TestNetns {
    /// Creates `wasptest-<pid>-<n>-<tag>`, with `lo` up.
    pub fn new(tag: &str) -> Self {
        let name = unique_name(tag);
        netns::create_named(&name).unwrap_or_else(|e| panic!("create netns {name}: {e}"));
        let fd = netns::open_named(&name).expect("open netns");
        let ns = Self { name, fd };
        ns.sh("ip link set lo up");
        ns
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An fd on the namespace.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(&self.fd, f).expect("setns")
    }

    /// Runs a shell command inside the namespace (test tooling only, as an
    /// independent reader or a peer) and returns stdout; panics on failure.
    pub fn sh(&self, cmd: &str) -> String {
        sh_in(&self.name, cmd)
    }

    /// Like [`TestNetns::sh`] but returns whether it succeeded.
    pub fn sh_ok(&self, cmd: &str) -> bool {
        sh_ok_in(&self.name, cmd)
    }
}

/// Runs a shell command inside the named netns `ns` (test tooling only)
/// and returns stdout; panics on failure.
pub fn sh_in(ns: &str, cmd: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .output()
        .expect("spawn ip netns exec");
    assert!(
        out.status.success(),
        "`{cmd}` in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`sh_in`] but returns whether it succeeded.
pub fn sh_ok_in(ns: &str, cmd: &str) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = netns::delete_named(&self.name) {
            eprintln!("warning: could not delete test netns {}: {e}", self.name);
        }
    }
}

/// Deletes every named netns starting with its prefix on drop, even when
/// the test panics: the slots of a pool the test named after its own pid,
/// which the test's own drain did not reach.
pub struct NetnsPrefixGuard(pub String);

impl Drop for NetnsPrefixGuard {
    fn drop(&mut self) {
        for n in netns::list_named().unwrap_or_default() {
            if n.starts_with(&self.0) {
                if let Err(e) = netns::delete_named(&n) {
                    eprintln!("warning: could not delete netns {n}: {e}");
                }
            }
        }
    }
}

/// A private host netns (`tag`) with the slot pool `pool`'s host side set
/// up in it: the bridge and wasp's host nft table.
pub fn slot_host(tag: &str, pool: String) -> (TestNetns, wasp::pipeline::slot::Kernel) {
    slot_host_with(tag, pool, wasp::pipeline::slot::Layout::default())
}

/// [`slot_host`] with the slots in `layout`.
pub fn slot_host_with(
    tag: &str,
    pool: String,
    layout: wasp::pipeline::slot::Layout,
) -> (TestNetns, wasp::pipeline::slot::Kernel) {
    let host = TestNetns::new(tag);
    let net = wasp::pipeline::slot::SlotNet {
        pool,
        layout,
        ..wasp::pipeline::slot::SlotNet::default()
    };
    let k = wasp::pipeline::slot::Kernel::setup(
        net,
        &wasp::pipeline::slot::HostNet {
            netns: Some(host.name().to_owned()),
            egress_uplink: None,
            ..Default::default()
        },
    )
    .expect("set up the slot host side");
    (host, k)
}

/// Removes test namespaces whose creating process is gone.
pub fn sweep_stale() {
    let Ok(names) = netns::list_named() else {
        return;
    };
    for n in names {
        let Some(rest) = n.strip_prefix(TEST_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = netns::delete_named(&n);
        }
    }
}

fn sweep_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sweep_stale);
}

/// The pinned Firecracker for tests: `WASP_FIRECRACKER`, else fetched (and
/// cached) by `scripts/fetch-firecracker.sh`.
pub fn firecracker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WASP_FIRECRACKER") {
        return p.into();
    }
    let script = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/fetch-firecracker.sh"
    ));
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("run scripts/fetch-firecracker.sh");
    assert!(
        out.status.success(),
        "scripts/fetch-firecracker.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Asserts a command succeeded (showing its status and both streams if
/// not) and returns its stdout.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "status {}: stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of every named namespace, from `ip netns` (an independent reader).
pub fn ip_netns_list() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// A real golden snapshot at `dir/golden`: the pinned Firecracker boots
/// wasp's built-in test guest (serial readiness) with a 1 MiB rootfs in a
/// throwaway netns with `tap0`, and snapshots it (see [`fc_golden`]).
pub fn firecracker_golden(dir: &std::path::Path) -> (PathBuf, wasp::snapshot::manifest::Manifest) {
    let boot_ns = TestNetns::new("gold");
    let out = dir.join("golden");
    let m = fc_golden(dir, &out, &boot_ns, true);
    (out, m)
}

/// `tap0` at 192.168.241.1/29, up, in `ns`: the tap every snapshot of
/// wasp's expects in a slot.
pub fn add_tap0(ns: &TestNetns) {
    ns.sh("ip tuntap add tap0 mode tap && ip addr add 192.168.241.1/29 dev tap0 && ip link set tap0 up");
}

/// What a golden snapshot boots: wasp's built-in test guest as the kernel,
/// `dir/testguest.elf`, and a 1 MiB rootfs image, `dir/rootfs.img`.
pub fn guest_files(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let kernel = dir.join("testguest.elf");
    wasp::standin::testguest::write(&kernel).unwrap();
    let rootfs = dir.join("rootfs.img");
    std::fs::write(&rootfs, vec![0x5au8; 1 << 20]).unwrap();
    (kernel, rootfs)
}

/// A golden snapshot at `out` of wasp's built-in test guest, made by the
/// pinned Firecracker booted in `ns` (which gets `tap0`); `work` holds the
/// kernel and rootfs.
pub fn fc_golden(
    work: &std::path::Path,
    out: &std::path::Path,
    ns: &TestNetns,
    sha256: bool,
) -> wasp::snapshot::Manifest {
    let (kernel, rootfs) = guest_files(work);
    add_tap0(ns);
    wasp::snapshot::golden::create(&wasp::snapshot::golden::GoldenOptions {
        vmm: wasp::pipeline::launch::Vmm::Firecracker(firecracker_bin()),
        kernel,
        rootfs,
        vcpus: 1,
        mem_mib: 128,
        boot_args: String::new(),
        ready: "serial:^wasp-testguest ready".parse().unwrap(),
        timeout: std::time::Duration::from_secs(30),
        out: out.to_owned(),
        netns: ns.name().to_owned(),
        tap: "tap0".into(),
        guest: wasp::snapshot::golden::GuestAddr::default(),
        sha256,
    })
    .unwrap()
}

/// Tears down every clone recorded in `state` when dropped, even on panic
/// ([`teardown_all`]).
pub struct TeardownGuard<'a>(pub &'a std::path::Path);

impl Drop for TeardownGuard<'_> {
    fn drop(&mut self) {
        teardown_all(self.0);
    }
}

/// `(st_dev, st_ino)` of `p`, following symlinks: a file's identity.
pub fn dev_ino(p: impl AsRef<std::path::Path>) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.dev(), m.ino())
}

/// `(st_dev, st_ino)` of every file process `pid` holds open.
pub fn held_files(pid: i32) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.unwrap().path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Asserts that process `pid` maps the file `file` (found in
/// /proc/PID/maps by its device and inode, whatever path it has there,
/// e.g. inside a chroot) private: MAP_PRIVATE, never written back.
pub fn assert_maps_private(pid: i32, file: &std::path::Path) {
    let (dev, ino) = dev_ino(file);
    let dev = format!(
        "{:02x}:{:02x}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let ino = ino.to_string();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3) == Some(&dev.as_str()) && f.get(4) == Some(&ino.as_str())
        })
        .unwrap_or_else(|| panic!("process {pid} does not map {}", file.display()));
    assert_eq!(
        line.split_whitespace().nth(1).unwrap().as_bytes()[3],
        b'p',
        "{line}"
    );
}

/// Tears down every clone recorded in `state` (`wasp kill --all`), failing
/// on any teardown error.
pub fn teardown_all(state: &std::path::Path) {
    let store = wasp::state::Store::open(state).unwrap();
    for r in store.list().unwrap().0 {
        let (_, errors) =
            wasp::ops::teardown::teardown(&store, &r, std::time::Duration::from_secs(5));
        assert!(errors.is_empty(), "{errors:?}");
    }
}

/// The mounts of process `pid`'s mount namespace (`/proc/PID/mountinfo`) that
/// belong to named network namespaces: mount points on or under
/// `/run/netns`, and nsfs mounts anywhere. A VMM launched from a template
/// mount namespace must hold none.
pub fn netns_mounts_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter(|l| {
            let point = l.split(' ').nth(4).unwrap_or("");
            point == "/run/netns" || point.starts_with("/run/netns/") || l.contains(" - nsfs ")
        })
        .map(str::to_owned)
        .collect()
}
