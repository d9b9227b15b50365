//! A real golden snapshot with the pinned Firecracker 1.12.1 and wasp's
//! built-in test guest (serial readiness), then clones restored from it:
//! each reaches Running, holds its own rootfs inode at the recorded path,
//! maps the shared memory file, and answers GET /mmds with its own AGENT_ID.

use wasp_testkit as testkit;
use wasp_testkit::root_or_skip;

use std::time::Duration;

use testkit::fake_slots::FakeSlots;
use testkit::TestNetns;
use wasp::engine::batch::SpawnOptions;
use wasp::pipeline::env::Env;
use wasp::pipeline::launch::Vmm;
use wasp::pipeline::ready::Ready;
use wasp::pipeline::restore::Timeouts;
use wasp::pipeline::storage::clone::{CloneStore, Mode};
use wasp::snapshot::golden::{self, GoldenOptions};

#[test]
fn firecracker_golden_snapshot_then_clones() {
    root_or_skip!();
    let fc = testkit::firecracker_bin();
    let tmp = tempfile::tempdir().unwrap();
    let (out, m) = testkit::firecracker_golden(tmp.path());
    assert_eq!(m.vmm_version, "1.12.1");
    assert_eq!(
        m.drives[0].path_on_host,
        wasp::paths::stable_drive_path("rootfs").to_str().unwrap()
    );
    assert_eq!(m.mmds.as_ref().unwrap().version, "V2");
    wasp::snapshot::check(&out, true).unwrap();
    // Nothing half-made beside it.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let store = CloneStore::open(&out, &tmp.path().join("run"), Mode::Auto).unwrap();
    let mut slots = FakeSlots::new(3, true);
    let state = tmp.path().join("state");
    let opts = SpawnOptions {
        vmm: Vmm::Firecracker(fc),
        count: 3,
        parallel: 3,
        ready: Ready::Running,
        timeouts: Timeouts::default(),
        driver: None,
        state_dir: state.clone(),
        ready_retry: Duration::from_millis(10),
        vmm_args: vec![],
        isolation: Default::default(),
    };
    let report = wasp::engine::spawn(&opts, &store, &mut slots, &Env::new()).unwrap();
    let _g = testkit::TeardownGuard(&state);
    assert_eq!(report.summary.ready, 3, "{:#?}", report.clones);
    for c in &report.clones {
        let pid = c.pid.unwrap();
        testkit::assert_maps_private(pid, &out.join("vm.mem"));
        let own = testkit::dev_ino(store.clone_dir(&c.id).join("rootfs"));
        assert!(
            testkit::held_files(pid).contains(&own),
            "{} does not hold its own rootfs",
            c.id
        );
        let mut client =
            wasp::vmm::api::Client::connect(&store.clone_dir(&c.id).join("api.sock")).unwrap();
        assert_eq!(client.get_instance_info().unwrap().state, "Running");
        assert_eq!(client.get_mmds().unwrap()["env"]["AGENT_ID"], c.id.as_str());
    }
}

#[test]
fn a_failed_create_leaves_nothing_at_out() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let (kernel, rootfs) = testkit::guest_files(tmp.path());
    let ns = TestNetns::new("goldfail");
    ns.sh("ip tuntap add tap0 mode tap && ip link set tap0 up");
    let out = tmp.path().join("golden");
    let e = golden::create(&GoldenOptions {
        vmm: Vmm::Firecracker(testkit::firecracker_bin()),
        kernel,
        rootfs,
        vcpus: 1,
        mem_mib: 128,
        boot_args: String::new(),
        // The guest never prints this: readiness fails at its deadline.
        ready: "serial:^never printed$".parse().unwrap(),
        timeout: Duration::from_millis(500),
        out: out.clone(),
        netns: ns.name().to_owned(),
        tap: "tap0".into(),
        guest: golden::GuestAddr::default(),
        sha256: false,
    })
    .unwrap_err();
    assert!(matches!(e, golden::GoldenError::NotReady { .. }), "{e}");
    // The log files go with the work dir: the error carries their tail,
    // here the test guest's line on the serial console.
    let msg = e.to_string();
    assert!(
        msg.contains("the VMM's last output:") && msg.contains("stdout| wasp-testguest ready"),
        "{msg}"
    );
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "left behind: {names:?}");
    assert!(!out.exists());
}
