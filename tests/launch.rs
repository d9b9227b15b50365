//! The VMM launch stage with the real pinned Firecracker: it runs inside the
//! slot's netns, in its own mount namespace where the recorded drive path is
//! this clone's file, in its own process group, with a clean environment.

use wasp_testkit as testkit;
use wasp_testkit::root_or_skip;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use testkit::TestNetns;
use wasp::pipeline::launch::{self, LaunchSpec, Vmm};
use wasp::sys::{netns, pidfd};

fn get_root(mut s: std::os::unix::net::UnixStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

struct Kill(Option<launch::Launched>);
impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(mut l) = self.0.take() {
            let _ = pidfd::pidfd_send_signal(&l.pidfd, libc::SIGKILL);
            let _ = l.child.wait();
        }
    }
}

/// Clone `tag`'s directory under `dir` with its own rootfs (holding
/// `disk of clone TAG`), and the spec that launches Firecracker on it in
/// `ns` with `isolation`. Returns the disk and the spec.
fn clone_spec(
    fc: &Path,
    dir: &Path,
    tag: &str,
    ns: &TestNetns,
    isolation: launch::Isolation,
) -> (std::path::PathBuf, LaunchSpec) {
    let cdir = dir.join(tag);
    std::fs::create_dir_all(&cdir).unwrap();
    let disk = cdir.join("rootfs");
    std::fs::write(&disk, format!("disk of clone {tag}")).unwrap();
    let spec = LaunchSpec {
        vmm: Vmm::Firecracker(fc.to_owned()),
        id: format!("wasp-test-{tag}"),
        api_sock: cdir.join("api.sock"),
        netns: Some(ns.name().to_owned()),
        drives: vec![(disk.clone(), "rootfs".into())],
        log_dir: cdir.clone(),
        extra_args: vec![],
        stdin_pipe: false,
        isolation,
        snapshot_files: vec![],
    };
    (disk, spec)
}

/// Launches `spec` and waits for its API socket; the answer to `GET /`.
fn start(spec: &LaunchSpec) -> (Kill, String) {
    let guard = Kill(Some(launch::launch(spec).unwrap()));
    let l = guard.0.as_ref().unwrap();
    let s = launch::wait_for_socket(
        &spec.api_sock,
        &l.pidfd,
        l.pid,
        &spec.log_dir.join("vmm.stderr"),
        Duration::from_secs(10),
    )
    .unwrap();
    (guard, get_root(s))
}

#[test]
fn firecracker_runs_in_the_slot_netns_with_its_own_drive_view() {
    root_or_skip!();
    let fc = testkit::firecracker_bin();
    let soft = wasp::sys::rlimit::raise_nofile(8192).unwrap();
    assert!(
        soft > 2048,
        "this test needs RLIMIT_NOFILE above 2048 (hard limit)"
    );
    // Hold more fds than the VMM's limit, as wasp does with a thousand live
    // clones: the child makes its binds in our fd table, before it lowers
    // its limit.
    let held: Vec<std::fs::File> = (0..2100)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let a = TestNetns::new("la");
    let b = TestNetns::new("lb");
    let mut running = Vec::new();
    for (ns, tag) in [(&a, "A"), (&b, "B")] {
        let (disk, spec) = clone_spec(&fc, dir.path(), tag, ns, Default::default());
        let (guard, resp) = start(&spec);
        let l = guard.0.as_ref().unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("Not started"), "{resp}");

        // Its network namespace is the slot's.
        let proc_ns = std::fs::metadata(format!("/proc/{}/ns/net", l.pid))
            .unwrap()
            .ino();
        assert_eq!(proc_ns, netns::inode_of(ns.fd()).unwrap());
        // Its own process group.
        assert_eq!(
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(l.pid)))
                .unwrap()
                .as_raw(),
            l.pid
        );
        // In its mount namespace the recorded path is this clone's file.
        let seen = std::fs::read_to_string(format!(
            "/proc/{}/root{}",
            l.pid,
            wasp::paths::stable_drive_path("rootfs").display()
        ))
        .unwrap();
        assert_eq!(seen, format!("disk of clone {tag}"));
        let ino_inside = std::fs::metadata(format!("/proc/{}/root/run/wasp/drives/rootfs", l.pid))
            .unwrap()
            .ino();
        assert_eq!(ino_inside, std::fs::metadata(&disk).unwrap().ino());
        // Its open-files limit is the VMM's own 2048, not ours (raised
        // above it at the top, as wasp raises its own for dense batches),
        // and so is the fd table Firecracker sizes to it at start.
        let status = std::fs::read_to_string(format!("/proc/{}/status", l.pid)).unwrap();
        let fd_size = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        assert_eq!(
            fd_size.split_whitespace().nth(1),
            Some(
                wasp::pipeline::launch::VMM_MAX_OPEN_FILES
                    .to_string()
                    .as_str()
            ),
            "{fd_size}"
        );
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", l.pid)).unwrap();
        let nofile = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        assert_eq!(
            nofile
                .split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>(),
            ["2048", "2048"],
            "{nofile}"
        );
        // A clean environment: nothing of ours leaks into the VMM.
        let environ = std::fs::read(format!("/proc/{}/environ", l.pid)).unwrap();
        assert!(
            !String::from_utf8_lossy(&environ).contains("CARGO"),
            "VMM inherited wasp's environment"
        );
        running.push(guard);
    }
    // The host's own mount namespace never sees the binds.
    assert!(!Path::new(&wasp::paths::stable_drive_path("rootfs")).exists());
    drop(running);
    drop(held);
}

#[test]
fn a_vmm_that_exits_early_is_reported_not_waited_for() {
    root_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    // `false` exits at once and never makes a socket.
    let spec = LaunchSpec {
        vmm: Vmm::Standin("/bin/false".into()),
        id: "x".into(),
        api_sock: dir.path().join("api.sock"),
        netns: None,
        drives: vec![],
        log_dir: dir.path().to_owned(),
        extra_args: vec![],
        stdin_pipe: false,
        isolation: Default::default(),
        snapshot_files: vec![],
    };
    let mut l = launch::launch(&spec).unwrap();
    let e = launch::wait_for_socket(
        &spec.api_sock,
        &l.pidfd,
        l.pid,
        &dir.path().join("vmm.stderr"),
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert!(matches!(e, launch::LaunchError::Exited { .. }), "{e}");
    let _ = l.child.wait();
}

#[test]
fn a_missing_slot_netns_is_a_clear_error() {
    root_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let spec = LaunchSpec {
        vmm: Vmm::Firecracker(testkit::firecracker_bin()),
        id: "x".into(),
        api_sock: dir.path().join("api.sock"),
        netns: Some(testkit::unique_name("absent")),
        drives: vec![],
        log_dir: dir.path().to_owned(),
        extra_args: vec![],
        stdin_pipe: false,
        isolation: Default::default(),
        snapshot_files: vec![],
    };
    let e = launch::launch(&spec).unwrap_err();
    assert!(e.to_string().contains("network namespace"), "{e}");
}

#[test]
fn firecracker_from_a_template_mount_namespace_in_both_clone_styles() {
    root_or_skip!();
    use std::sync::Arc;
    use wasp::pipeline::launch::{CloneStyle, Isolation, MountTemplate};
    let fc = testkit::firecracker_bin();
    let dir = tempfile::tempdir().unwrap();
    // A named netns, so wasp's own table has at least one nsfs mount under
    // /run/netns for the template to drop.
    let ns = TestNetns::new("lt");
    let ino_of = |p: &str| std::fs::metadata(p).unwrap().ino();
    let template = Arc::new(MountTemplate::new().unwrap());
    assert!(
        template
            .detached()
            .iter()
            .any(|d| d.starts_with(netns::NETNS_RUN_DIR)),
        "{template:?}"
    );
    let t_ino = template.inode().unwrap();
    assert_ne!(t_ino, ino_of("/proc/self/ns/mnt"));
    let default_style = if wasp::sys::spawn::VFORK_SUPPORTED {
        CloneStyle::Vfork
    } else {
        CloneStyle::Fork
    };
    let mut running = Vec::new();
    for (force_fork, style) in [(false, default_style), (true, CloneStyle::Fork)] {
        let tag = format!("t{style:?}");
        let isolation = Isolation {
            mount_template: Some(template.clone()),
            force_fork,
            ..Default::default()
        };
        let (disk, spec) = clone_spec(&fc, dir.path(), &tag, &ns, isolation);
        let (guard, resp) = start(&spec);
        let l = guard.0.as_ref().unwrap();
        assert_eq!(l.style, style);
        assert!(resp.starts_with("HTTP/1.1 200"), "{tag}: {resp}");
        let pid = l.pid;
        // The slot's netns, its own process group.
        assert_eq!(
            ino_of(&format!("/proc/{pid}/ns/net")),
            netns::inode_of(ns.fd()).unwrap()
        );
        assert_eq!(
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
                .unwrap()
                .as_raw(),
            pid
        );
        // Its own mount namespace: neither wasp's nor the template itself.
        let mnt = ino_of(&format!("/proc/{pid}/ns/mnt"));
        assert_ne!(mnt, t_ino, "{tag}");
        assert_ne!(mnt, ino_of("/proc/self/ns/mnt"), "{tag}");
        // No slot netns mounted in it, though wasp's own table has them
        // (this test's netns at least): the template dropped them. (Total
        // counts are not compared: with few namespaces on the host, the
        // drive tmpfs and binds outnumber the netns mounts dropped.)
        let netns_mounts = testkit::netns_mounts_of(pid);
        assert!(netns_mounts.is_empty(), "{tag}: {netns_mounts:#?}");
        assert!(
            !testkit::netns_mounts_of(std::process::id() as i32).is_empty(),
            "{tag}: wasp's own table has netns mounts to drop"
        );
        // The recorded drive path is this clone's file; the devices and
        // the clone's dir are there.
        let root = format!("/proc/{pid}/root");
        let recorded = wasp::paths::stable_drive_path("rootfs");
        let seen = std::fs::read_to_string(format!("{root}{}", recorded.display())).unwrap();
        assert_eq!(seen, format!("disk of clone {tag}"));
        assert_eq!(
            ino_of(&format!("{root}{}", recorded.display())),
            std::fs::metadata(&disk).unwrap().ino()
        );
        for dev in ["/dev/kvm", "/dev/net/tun"] {
            assert!(Path::new(&format!("{root}{dev}")).exists(), "{tag}: {dev}");
        }
        assert!(Path::new(&format!("{root}{}", disk.display())).exists());
        // Back in wasp's working directory.
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
            std::env::current_dir().unwrap()
        );
        // The template's fd is close-on-exec: the VMM does not hold it.
        let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .any(|t| t.to_string_lossy() == format!("mnt:[{t_ino}]"));
        assert!(!held, "{tag}: the VMM holds the template");
        running.push(guard);
    }
    // Nothing reached wasp's own mount namespace: no drive tmpfs, no bind.
    let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours_drives = |t: &str| {
        t.lines()
            .filter(|l| l.contains(wasp::paths::STABLE_DRIVE_DIR) || l.contains("wasp-drives"))
            .count()
    };
    assert_eq!(ours_drives(&after), 0, "{after}");
    assert!(!Path::new(&wasp::paths::stable_drive_path("rootfs")).exists());
    // Nothing names the template: released with its last handle.
    drop(template);
    let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!after.contains(&format!("mnt:[{t_ino}]")));
    drop(running);
}
