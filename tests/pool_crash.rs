//! SIGKILL `wasp pool warm` midway, then reconcile + drain: nothing of
//! wasp's is left, and nothing that is not wasp's is touched.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_cmd};

use std::os::fd::AsFd;
use std::process::Stdio;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use testkit::TestNetns;
use wasp::pipeline::pool::{Pool, PoolConfig};
use wasp::pipeline::slot::{HostNet, Kernel, SlotNet};
use wasp::sys::netns;

#[test]
fn killed_warm_is_reconciled_and_drained() {
    root_or_skip!();
    let host = TestNetns::new("crash");
    // Something that is not wasp's, which must survive.
    host.sh("ip link add keepme type veth peer name keepme2");
    let pool = format!("k{}", std::process::id());
    let prefix = format!("wasp-{pool}-");
    // Declared after `host`, so dropped before it (slots, then their host).
    let _slots = testkit::NetnsPrefixGuard(prefix.clone());

    let ino = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
    std::fs::create_dir_all(netns::NETNS_RUN_DIR).unwrap();
    ino.add_watch(netns::NETNS_RUN_DIR, AddWatchFlags::IN_CREATE)
        .unwrap();
    let mut child = wasp_cmd!()
        .args(["pool", "warm", "--size", "400", "--pool", &pool])
        .args(["--host-netns", host.name()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wasp pool warm");
    // Wait (blocking on inotify) until three slots exist, then SIGKILL.
    let mut seen = 0;
    while seen < 3 {
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        // A safety net against a hung test, not synchronisation.
        let n = poll(&mut fds, PollTimeout::from(30_000u16)).unwrap();
        assert!(n > 0, "no slot namespace appeared within 30 s");
        for ev in ino.read_events().unwrap() {
            if ev
                .name
                .as_ref()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
            {
                seen += 1;
            }
        }
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed mid-warm");
    let left: Vec<String> = netns::list_named()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.len() >= 3, "slots existed at kill time: {left:?}");

    // A fresh wasp: reconcile (adopt/remove), then drain.
    let net = SlotNet {
        pool: pool.clone(),
        ..SlotNet::default()
    };
    let hn = HostNet {
        netns: Some(host.name().to_owned()),
        egress_uplink: None,
        ..Default::default()
    };
    let k = Kernel::attach(net, &hn).expect("attach");
    let p = Pool::new(k, PoolConfig::default());
    let rep = p.reconcile().expect("reconcile");
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert!(!rep.adopted.is_empty(), "healthy slots adopted: {rep:?}");
    p.drain().expect("drain");
    p.ops().remove_host().expect("remove bridge");

    let left: Vec<String> = testkit::ip_netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "wasp namespaces left: {left:?}");
    let links = host.sh("ip -o link show");
    assert!(!links.contains(": wasp"), "wasp links left: {links}");
    assert!(links.contains("keepme"), "foreign link untouched: {links}");
}
