//! Hostile and bad input through the commands, as a user types them: each
//! case gets one clear error (what, which file or field, what to do), no
//! panic, and nothing half-built (checked with the independent readers of
//! `wasp_testkit::cli`). The table in docs/testing.md maps every case of the
//! issue to its test, here or in the library's tests.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use testkit::cli::{Seen, World};

/// Runs `c`; checks the exit code, that stderr holds every one of `want`,
/// and that there is no panic.
fn fails(mut c: Command, code: i32, want: &[&str]) -> String {
    let out: Output = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{c:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "{c:?}: stderr lacks {w:?}: {err}");
    }
    err
}

/// Nothing of wasp's exists for this test.
fn nothing_built(s: &World) {
    assert_eq!(s.seen(), Seen::default());
}

fn env_file(s: &World, text: &[u8], mode: u32) -> std::path::PathBuf {
    let p = s.tmp.path().join("secrets.env");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn corrupt_manifest() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hman");
    let m = s.tmp.path().join("snap/wasp-snapshot.json");
    std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&m, b"{\"format_version\": 1, \"vmm\": ").unwrap();
    fails(s.spawn_n("2"), 1, &["wasp-snapshot.json"]);
    nothing_built(&s);
}

#[test]
fn snapshot_file_symlinked_outside_the_dir() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hsym");
    let snap = s.tmp.path().join("snap");
    let outside = s.tmp.path().join("elsewhere.mem");
    std::fs::rename(snap.join("vm.mem"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, snap.join("vm.mem")).unwrap();
    fails(
        s.spawn_n("2"),
        1,
        &[
            "vm.mem is a symlink",
            "replace the link with the file itself",
        ],
    );
    nothing_built(&s);
}

#[test]
fn snapshot_dir_given_as_a_symlink_is_resolved_and_checked_the_same() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hsymd");
    let link = s.tmp.path().join("snap-link");
    std::os::unix::fs::symlink(s.tmp.path().join("snap"), &link).unwrap();
    // The files behind the link are checked like any others: one not
    // owned by root is refused.
    nix::unistd::chown(
        &s.tmp.path().join("snap/rootfs.ext4"),
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    let mut c = s.wasp(
        &[
            "spawn", "--vmm", "standin", "--count", "1", "--ready", "running",
        ],
        true,
    );
    c.arg("--snapshot").arg(&link);
    fails(c, 1, &["rootfs.ext4", "chown root"]);
    nothing_built(&s);
}

#[test]
fn snapshot_file_not_owned_by_root() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hown");
    nix::unistd::chown(
        &s.tmp.path().join("snap/vm.mem"),
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    fails(s.spawn_n("2"), 1, &["vm.mem", "uid 65534", "chown root"]);
    nothing_built(&s);
}

#[test]
fn cidr_exhausted() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hfull");
    let mut c = s.spawn_n("3");
    c.args(["--cidr", "10.9.0.0/30", "--allow-host", "10.9.0.1:8080"]);
    fails(c, 1, &["10.9.0.0/30", "exhausted", "larger --cidr"]);
    let mut c = s.wasp(&["pool", "warm", "--size", "2"], true);
    c.args(["--cidr", "10.9.0.0/30", "--allow-host", "10.9.0.1:8080"]);
    fails(c, 1, &["exhausted"]);
    nothing_built(&s);
}

#[test]
fn cidr_overlapping_a_host_route() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hroute");
    s.host.sh("ip route add 10.7.0.0/16 dev lo");
    let mut c = s.spawn_n("1");
    c.args(["--cidr", "10.7.0.0/16", "--allow-host", "10.7.0.1:8080"]);
    fails(c, 1, &["10.7.0.0/16", "overlaps the host route", "--cidr"]);
    nothing_built(&s);
}

#[test]
fn count_zero_and_huge() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hcount");
    fails(s.spawn_n("0"), 1, &["--count 0 is out of range"]);
    fails(s.spawn_n("100001"), 1, &["--count 100001 is out of range"]);
    fails(s.spawn_n("-1"), 2, &["--count"]);
    nothing_built(&s);
}

#[test]
fn interface_name_clash() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hclash");
    // Something not wasp's holds the bridge name.
    s.host.sh("ip link add wasp0 type bridge");
    fails(s.spawn_n("1"), 1, &["wasp0", "not wasp's"]);
    let seen = s.seen();
    assert_eq!(seen.host_links, ["wasp0"], "the foreign link is untouched");
    assert_eq!(
        Seen {
            host_links: vec![],
            ..seen
        },
        Seen::default()
    );
    s.host.sh("ip link del wasp0");
}

#[test]
fn env_file_wrong_mode_or_owner() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "henvm");
    let f = env_file(&s, b"TOKEN=canary-mode\n", 0o644);
    let mut c = s.spawn_n("1");
    c.arg("--env-file").arg(&f);
    let err = fails(c, 1, &["secrets.env", "mode 0644", "chmod 600"]);
    assert!(!err.contains("canary"), "{err}");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(&f, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let mut c = s.spawn_n("1");
    c.arg("--env-file").arg(&f);
    let err = fails(c, 1, &["secrets.env", "uid 65534", "chown root"]);
    assert!(!err.contains("canary"), "{err}");
    nothing_built(&s);
}

/// Runs `c` as a child and waits for it, but never forever: a wasp that
/// blocks (say, opening a FIFO) is killed and the test fails.
fn output_bounded(mut c: Command) -> Output {
    use std::process::Stdio;
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{c:?} did not exit: it blocked");
        }
    }
}

#[test]
fn env_file_line_holding_a_secret_is_named_by_number_only() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "henvs");
    let f = env_file(&s, b"A=1\nDB_PASSWORD: hunter2-S3cret=x\n", 0o600);
    let mut c = s.spawn_n("1");
    c.arg("--env-file").arg(&f);
    let err = fails(c, 1, &["secrets.env line 2", "not a valid identifier"]);
    for secret in ["hunter2", "S3cret", "DB_PASSWORD"] {
        assert!(!err.contains(secret), "{err}");
    }
    nothing_built(&s);
}

#[test]
fn env_file_that_is_a_fifo_symlink_or_too_big() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "henvf");
    let f = s.tmp.path().join("secrets.env");
    nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut c = s.spawn_n("1");
    c.arg("--env-file").arg(&f);
    let out = output_bounded(c);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("secrets.env") && err.contains("not a regular file"));
    std::fs::remove_file(&f).unwrap();

    let other = s.tmp.path().join("other.env");
    std::fs::write(&other, b"TOKEN=canary-link\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&other, &f).unwrap();
    let mut c = s.spawn_n("1");
    c.arg("--env-file").arg(&f);
    let err = fails(c, 1, &["secrets.env", "symlink"]);
    assert!(!err.contains("canary"), "{err}");
    std::fs::remove_file(&f).unwrap();

    let big = "# comment\n".repeat(200_000);
    let f = env_file(&s, big.as_bytes(), 0o600);
    let mut c = s.spawn_n("1");
    c.arg("--env-file").arg(&f);
    fails(c, 1, &["secrets.env", "2000000 bytes", "limit"]);
    nothing_built(&s);
}

#[test]
fn env_keys_that_are_not_identifiers() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "henvk");
    let mut c = s.spawn_n("1");
    c.args(["--env", "1BAD=x"]);
    fails(c, 1, &["\"1BAD\"", "not a valid identifier"]);
    let f = env_file(&s, b"GOOD=1\nBAD-KEY=canary-key\n", 0o600);
    let mut c = s.spawn_n("1");
    c.arg("--env-file").arg(&f);
    let err = fails(c, 1, &["secrets.env line 2", "not a valid identifier"]);
    // A line of an env file is never quoted, not even its key.
    assert!(!err.contains("canary") && !err.contains("BAD-KEY"), "{err}");
    nothing_built(&s);
}

#[test]
fn env_values_very_long_or_holding_nul() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "henvv");
    let mut c = s.spawn_n("1");
    c.arg("--env").arg(format!("BIG={}", "x".repeat(100_000)));
    fails(c, 1, &["BIG", "bytes, over the"]);
    let f = env_file(&s, b"TOKEN=canary\0nul\n", 0o600);
    let mut c = s.spawn_n("1");
    c.arg("--env-file").arg(&f);
    let err = fails(c, 1, &["secrets.env line 1", "NUL byte"]);
    assert!(!err.contains("canary"), "{err}");
    nothing_built(&s);
}

/// Runs `c` in a private mount namespace after `setup` (a shell snippet)
/// has hidden a device; the machine's own mounts are untouched.
fn in_private_mounts(setup: &str, c: &Command) -> Command {
    let mut u = Command::new("unshare");
    u.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup} && exec \"$@\""))
        .arg("sh")
        .arg(c.get_program())
        .args(c.get_args());
    // `c`'s environment (no WASP_* of the test's) reaches wasp through
    // unshare and sh.
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => u.env(k, v),
            None => u.env_remove(k),
        };
    }
    u
}

#[test]
fn missing_dev_kvm() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "hkvm");
    let dev = s.tmp.path().join("dev");
    std::fs::create_dir(&dev).unwrap();
    let d = dev.display();
    // A /dev with only null and net/tun.
    let hide = format!(
        "mount -t tmpfs wasptest-dev {d} && touch {d}/null && mount --bind /dev/null {d}/null && mkdir {d}/net && touch {d}/net/tun && mount --bind /dev/net/tun {d}/net/tun && mount --bind {d} /dev"
    );
    let mut c = s.wasp(
        &[
            "spawn",
            "--vmm",
            "firecracker",
            "--count",
            "1",
            "--ready",
            "running",
        ],
        true,
    );
    c.arg("--snapshot")
        .arg(s.tmp.path().join("snap"))
        .arg("--firecracker")
        .arg(testkit::firecracker_bin());
    fails(
        in_private_mounts(&hide, &c),
        1,
        &["/dev/kvm", "modprobe", "wasp doctor"],
    );
    nothing_built(&s);
}

#[test]
fn missing_tun() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "htun");
    let hide = "mount -t tmpfs wasptest-devnet /dev/net";
    fails(
        in_private_mounts(hide, &s.spawn_n("1")),
        1,
        &["/dev/net/tun", "modprobe tun"],
    );
    fails(
        in_private_mounts(hide, &s.wasp(&["pool", "warm", "--size", "1"], true)),
        1,
        &["/dev/net/tun"],
    );
    nothing_built(&s);
    assert!(
        Path::new("/dev/net/tun").exists(),
        "the host's tun is untouched"
    );
}
