//! The root harness and the sys layer's namespace helpers, checked against
//! `ip netns` as an independent reader.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_cmd};

use testkit::{ip_netns_list, TestNetns};
use wasp::sys::netns;

#[test]
fn named_netns_round_trip_is_visible_to_ip() {
    root_or_skip!();
    let name = testkit::unique_name("rt");
    netns::create_named(&name).unwrap();
    assert!(
        ip_netns_list().contains(&name),
        "ip netns does not list {name}"
    );
    // A second create with the same name is a clash, not a takeover.
    let e = netns::create_named(&name).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    netns::delete_named(&name).unwrap();
    assert!(!ip_netns_list().contains(&name));
    assert!(!netns::exists(&name));
}

#[test]
fn run_in_enters_another_namespace_and_leaves_the_caller_alone() {
    root_or_skip!();
    let before = netns::inode_of(netns::open_current().unwrap()).unwrap();
    let ns = TestNetns::new("enter");
    let inside = ns.run(|| netns::inode_of(netns::open_current().unwrap()).unwrap());
    let expected = netns::inode_of(ns.fd()).unwrap();
    assert_eq!(inside, expected);
    assert_ne!(inside, before);
    // The calling thread never moved.
    assert_eq!(
        netns::inode_of(netns::open_current().unwrap()).unwrap(),
        before
    );
}

#[test]
fn create_named_with_runs_inside_and_cleans_up_on_error() {
    root_or_skip!();
    let name = testkit::unique_name("cw");
    let r = netns::create_named_with(&name, netns::Owner::Host, || -> Result<(), &'static str> {
        Err("boom")
    });
    assert!(matches!(r, Err(netns::CreateError::Inner("boom"))));
    assert!(!netns::exists(&name), "a failed create left {name} behind");
    let ino = netns::create_named_with(&name, netns::Owner::Host, || {
        netns::inode_of(netns::open_current()?)
    })
    .unwrap();
    assert_eq!(
        ino,
        netns::inode_of(netns::open_named(&name).unwrap()).unwrap()
    );
    netns::delete_named(&name).unwrap();
}

#[test]
fn test_netns_is_removed_even_on_panic() {
    root_or_skip!();
    let mut seen = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = TestNetns::new("panic");
        seen = ns.name().to_owned();
        panic!("test body failed");
    }));
    assert!(r.is_err());
    assert!(!seen.is_empty());
    assert!(
        !ip_netns_list().contains(&seen),
        "{seen} leaked after a panic"
    );
}

#[test]
fn delete_of_missing_netns_reports_not_found() {
    root_or_skip!();
    let e = netns::delete_named(&testkit::unique_name("absent")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn pinned_firecracker_reports_its_version() {
    root_or_skip!();
    let fc = testkit::firecracker_bin();
    let v = wasp::vmm::firecracker::version_of(&fc).unwrap();
    assert_eq!(v, wasp::vmm::firecracker::PINNED_VERSION);
}

#[test]
fn doctor_json_reports_every_check_on_this_host() {
    root_or_skip!();
    let out = wasp_cmd!()
        .args(["doctor", "--json", "--runtime-dir"])
        .arg(std::env::temp_dir().join(testkit::unique_name("doc")))
        .env("WASP_FIRECRACKER", testkit::firecracker_bin())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<_> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in [
        "root",
        "kvm",
        "tun",
        "nftables",
        "io_uring",
        "userfaultfd",
        "cgroup2",
        "firecracker",
        "jailer",
        "reflink",
        "nofile",
        "conntrack",
        "netns_max",
        "slot_owner",
        "pid_max",
        "neigh",
    ] {
        assert!(names.contains(&n), "missing check {n}");
    }
    for c in checks {
        assert!(["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()));
        assert!(!c["detail"].as_str().unwrap().is_empty());
    }
    let get = |n: &str| checks.iter().find(|c| c["name"] == n).unwrap();
    assert_eq!(get("root")["status"], "ok");
    // This host can make wasp's user namespace for slot namespaces.
    assert_eq!(get("slot_owner")["status"], "ok", "{}", get("slot_owner"));
    assert_eq!(
        get("nftables")["status"],
        "ok",
        "{}",
        get("nftables")["detail"]
    );
    assert_eq!(
        get("firecracker")["status"],
        "ok",
        "{}",
        get("firecracker")["detail"]
    );
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(get("kvm")["detail"].as_str().unwrap().contains("kvm_pvm"));
    }
}
