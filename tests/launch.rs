//! The VMM launch stage with the real pinned Firecracker: it runs inside the
//! slot's netns, in its own mount namespace where the recorded drive path is
//! this clone's file, in its own process group, with a clean environment.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::TestNetns;
use wasp::launch::{self, LaunchSpec, Vmm};
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

#[test]
fn firecracker_runs_in_the_slot_netns_with_its_own_drive_view() {
    root_or_skip!();
    let fc = common::firecracker_bin();
    let dir = tempfile::tempdir().unwrap();
    let a = TestNetns::new("la");
    let b = TestNetns::new("lb");
    let mut running = Vec::new();
    for (ns, tag) in [(&a, "A"), (&b, "B")] {
        let cdir = dir.path().join(tag);
        std::fs::create_dir_all(&cdir).unwrap();
        let disk = cdir.join("rootfs");
        std::fs::write(&disk, format!("disk of clone {tag}")).unwrap();
        let spec = LaunchSpec {
            vmm: Vmm::Firecracker(fc.clone()),
            id: format!("wasp-test-{tag}"),
            api_sock: cdir.join("api.sock"),
            netns: Some(ns.name().to_owned()),
            drives: vec![(disk.clone(), "rootfs".into())],
            log_dir: cdir.clone(),
            extra_args: vec![],
            stdin_pipe: false,
            isolation: Default::default(),
            snapshot_files: vec![],
        };
        let l = launch::launch(&spec).unwrap();
        let guard = Kill(Some(l));
        let l = guard.0.as_ref().unwrap();
        let s = launch::wait_for_socket(
            &spec.api_sock,
            &l.pidfd,
            l.pid,
            &cdir.join("vmm.stderr"),
            Duration::from_secs(10),
        )
        .unwrap();
        let resp = get_root(s);
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
        vmm: Vmm::Firecracker(common::firecracker_bin()),
        id: "x".into(),
        api_sock: dir.path().join("api.sock"),
        netns: Some(common::unique_name("absent")),
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
