//! The spawn pipeline end to end with the stand-in VMM, over fake slots made
//! of test namespaces (the real pool has its own tests): every clone runs in
//! its slot's netns, holds its own rootfs, maps the shared memory file and
//! sees its own AGENT_ID in MMDS; failures are typed and reclaimed.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin, wasp_cmd};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::fake_slots::FakeSlots;
use wasp::engine::batch::SpawnOptions;
use wasp::pipeline::env::Env;
use wasp::pipeline::launch::Vmm;
use wasp::pipeline::ready::Ready;
use wasp::pipeline::restore::Timeouts;
use wasp::pipeline::storage::clone::{CloneStore, Mode};
use wasp::snapshot::synth::{synth, SynthOptions};

fn setup(root: &Path) -> (PathBuf, CloneStore) {
    let snap = root.join("snap");
    synth(&SynthOptions {
        out: snap.clone(),
        ..Default::default()
    })
    .unwrap();
    let store = CloneStore::open(&snap, &root.join("run"), Mode::Auto).unwrap();
    (snap, store)
}

fn options(root: &Path, count: usize, args: &[&str]) -> SpawnOptions {
    SpawnOptions {
        vmm: Vmm::Standin(env!("CARGO_BIN_EXE_wasp-standin").into()),
        count,
        parallel: 4,
        ready: Ready::Running,
        timeouts: Timeouts {
            socket: Duration::from_secs(10),
            load: Duration::from_secs(10),
            api: Duration::from_secs(2),
            ready: Duration::from_secs(10),
        },
        driver: None,
        state_dir: root.join("state"),
        ready_retry: Duration::from_millis(10),
        vmm_args: args.iter().map(|s| s.to_string()).collect(),
        isolation: Default::default(),
    }
}

#[test]
fn standin_clones_get_their_own_disk_shared_memory_and_own_agent_id() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let (snap, store) = setup(tmp.path());
    let mut slots = FakeSlots::new(3, true);
    let mut env = Env::new();
    env.add_plain("API_URL=http://10.0.0.1:8080").unwrap();
    env.add_secret_from("TOKEN", |_| Some("canary-9f2c".into()))
        .unwrap();
    let report =
        wasp::engine::spawn(&options(tmp.path(), 3, &[]), &store, &mut slots, &env).unwrap();
    let state = tmp.path().join("state");
    let guard = testkit::TeardownGuard(&state);
    assert_eq!(report.summary.ready, 3, "{:#?}", report.clones);
    assert_eq!(report.summary.failed, 0);
    assert_eq!(report.summary.mem_bytes_copied, 0);
    let base_rootfs = testkit::dev_ino(snap.join("rootfs.ext4"));
    for c in &report.clones {
        let pid = c.pid.unwrap();
        // In its slot's netns.
        let ns = slots
            .nss
            .iter()
            .find(|n| Some(n.name()) == c.netns.as_deref())
            .unwrap();
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .unwrap()
                .ino(),
            wasp::sys::netns::inode_of(ns.fd()).unwrap()
        );
        // The slot holds an externally learned entry for the guest, with
        // the snapshot's guest MAC, made before the VM resumed; its probe
        // (an ARP request) went to the guest, which answers or will.
        let n: serde_json::Value =
            serde_json::from_str(&ns.sh("ip -j -d neigh show dev tap0 192.168.241.2")).unwrap();
        assert_eq!(
            n[0]["lladdr"],
            wasp::paths::GUEST_MAC,
            "clone {}: {n}",
            c.id
        );
        // (`ip -j` prints the flag as a key.)
        assert!(n[0].get("extern_learn").is_some(), "clone {}: {n}", c.id);
        let state = n[0]["state"][0].as_str().unwrap_or_default();
        assert!(
            ["PROBE", "REACHABLE", "DELAY", "STALE"].contains(&state),
            "clone {}: {n}",
            c.id
        );
        // The shared memory file, mapped private.
        testkit::assert_maps_private(pid, &snap.join("vm.mem"));
        // Its own rootfs inode open, not the base's.
        let own = testkit::dev_ino(store.clone_dir(&c.id).join("rootfs"));
        let fds = testkit::held_files(pid);
        assert!(
            fds.contains(&own),
            "clone {} does not hold its own rootfs",
            c.id
        );
        assert!(
            !fds.contains(&base_rootfs),
            "clone {} holds the base rootfs",
            c.id
        );
        // Its mount namespace is a copy of the batch's template: the
        // recorded drive path is its own rootfs, and no slot netns (the
        // batch's slots are named netns) is mounted in it.
        let seen = testkit::dev_ino(format!(
            "/proc/{pid}/root{}",
            wasp::paths::stable_drive_path("rootfs").display()
        ));
        assert_eq!(seen, own, "clone {}: recorded drive path", c.id);
        let netns_mounts = testkit::netns_mounts_of(pid);
        assert!(netns_mounts.is_empty(), "clone {}: {netns_mounts:#?}", c.id);
        // Its own AGENT_ID in MMDS.
        let mut client =
            wasp::vmm::api::Client::connect(&store.clone_dir(&c.id).join("api.sock")).unwrap();
        let mmds = client.get_mmds().unwrap();
        assert_eq!(mmds["env"]["AGENT_ID"], c.id.as_str());
        // No secret in argv or environ.
        for f in ["cmdline", "environ"] {
            let b = std::fs::read(format!("/proc/{pid}/{f}")).unwrap();
            assert!(
                !String::from_utf8_lossy(&b).contains("canary-9f2c"),
                "secret in /proc/{pid}/{f}"
            );
        }
    }
    drop(guard);
    assert_no_clone_dirs(&store);
}

#[test]
fn a_missing_tap_and_a_failing_load_are_reclaimed_and_the_batch_goes_on() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let (_snap, store) = setup(tmp.path());
    // No taps at all: every clone fails in the slot phase, before load.
    let mut slots = FakeSlots::new(2, false);
    let report = wasp::engine::spawn(
        &options(tmp.path(), 2, &[]),
        &store,
        &mut slots,
        &Env::new(),
    )
    .unwrap();
    assert_eq!(report.summary.failed, 2);
    for c in &report.clones {
        assert_eq!(c.failed_phase.as_deref(), Some("slot"));
        assert!(c.error.as_deref().unwrap().contains("tap"), "{:?}", c.error);
    }
    assert_eq!(slots.given_back.len(), 2);

    // load-400 fault: typed error in phase load; slot and files reclaimed.
    let mut slots = FakeSlots::new(2, true);
    let report = wasp::engine::spawn(
        &options(tmp.path(), 2, &["--fault", "load-400"]),
        &store,
        &mut slots,
        &Env::new(),
    )
    .unwrap();
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    assert_eq!(report.summary.failed, 2);
    for c in &report.clones {
        assert_eq!(c.failed_phase.as_deref(), Some("load"), "{c:?}");
        assert!(c.error.as_deref().unwrap().contains("400"), "{:?}", c.error);
    }
    assert_eq!(slots.given_back.len(), 2);
    assert_no_clone_dirs(&store);
}

/// No clone's files are left in the runtime dir.
fn assert_no_clone_dirs(store: &CloneStore) {
    let left: Vec<_> = std::fs::read_dir(store.clones_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "clone dirs left: {left:?}");
}

/// Issue #18 finding 2: a snapshot whose writable rootfs is recorded at a
/// host file (in both the vmstate and the manifest) would have every
/// clone's VMM open that one file read-write. `wasp snapshot check` and
/// `wasp spawn` refuse it, naming the drive, and spawn builds nothing.
#[test]
fn check_and_spawn_refuse_a_writable_drive_recorded_outside_its_per_clone_path() {
    root_or_skip!();
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    let s = testkit::cli::World::new(wasp_bin!(), "drvpath");
    let snap = s.tmp.path().join("snap");
    let golden = s.tmp.path().join("golden-rootfs.ext4");
    fs::write(&golden, b"golden").unwrap();
    let recorded = golden.to_str().unwrap();
    // Writable, at the host file, in both records.
    let vs_path = snap.join("vm.snapshot");
    let mut vs =
        wasp::standin::vmstate::VmState::from_bytes(&fs::read(&vs_path).unwrap(), "t").unwrap();
    vs.drives[0].path_on_host = recorded.into();
    vs.drives[0].is_read_only = false;
    let bytes = vs.to_bytes();
    fs::set_permissions(&vs_path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&vs_path, &bytes).unwrap();
    fs::set_permissions(&vs_path, fs::Permissions::from_mode(0o444)).unwrap();
    let mp = snap.join(wasp::snapshot::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
    m["drives"][0]["path_on_host"] = recorded.into();
    m["drives"][0]["read_only"] = false.into();
    m["vmstate"]["size"] = bytes.len().into();
    m["vmstate"].as_object_mut().unwrap().remove("sha256");
    fs::write(&mp, m.to_string()).unwrap();

    let out = wasp_cmd!()
        .args(["snapshot", "check"])
        .arg(&snap)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("drive rootfs is recorded at {recorded}")),
        "{err}"
    );

    let out = s.spawn_n("2").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("drive rootfs is recorded at {recorded}")),
        "{err}"
    );
    assert!(err.contains("/run/wasp/drives/rootfs"), "{err}");
    // Nothing built: no slot, clone dir, VMM or record.
    assert_eq!(s.seen(), testkit::cli::Seen::default());
    assert_eq!(fs::read(&golden).unwrap(), b"golden");
}
