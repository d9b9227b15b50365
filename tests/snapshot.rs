//! Snapshot store: synth, check (one test per validation error), adopt of a
//! seed-like Firecracker directory, warm.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasp::snapshot::adopt::{AdoptDrive, AdoptError, AdoptOptions};
use wasp::snapshot::manifest::{ManifestError, NetIface};
use wasp::snapshot::{
    self, check, synth, CheckError, SynthError, SynthOptions, WarmMethod, MANIFEST_FILE, MIB,
};

fn opts(out: PathBuf) -> SynthOptions {
    SynthOptions {
        out,
        mem_mib: 2,
        rootfs_mib: 1,
        vcpus: 1,
        rootfs_read_only: false,
        scratch_mib: None,
        sha256: true,
    }
}

/// A fresh small stand-in snapshot in its own temp dir.
fn snap() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("snap");
    synth(&opts(out.clone())).unwrap();
    (t, out)
}

/// Makes the snapshot file `p` writable, changes it with `f`, and makes it
/// read-only (0444) again, as the snapshot's files are.
fn tamper(p: &Path, f: impl FnOnce(&fs::File) -> std::io::Result<()>) {
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    let file = OpenOptions::new().write(true).open(p).unwrap();
    f(&file).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o444)).unwrap();
}

#[test]
fn synth_makes_a_valid_read_only_snapshot_with_real_content() {
    let (_t, dir) = snap();
    let r = check(&dir, true).unwrap();
    assert!(r.files.iter().all(|f| f.checksum == "verified"), "{r:?}");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let m = &r.manifest;
    assert_eq!(m.mem_mib, 2);
    assert_eq!(m.drives[0].path_on_host, snapshot::CLONE_ROOTFS_PATH);
    for f in ["vm.mem", "rootfs.ext4", "vm.snapshot"] {
        let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444, "{f}");
    }
    // Every 4 KiB page of memory holds non-zero data, and pages differ.
    let mem = fs::read(dir.join("vm.mem")).unwrap();
    assert_eq!(mem.len() as u64, 2 * MIB);
    for page in mem.chunks(4096) {
        assert!(page.iter().all(|&b| b != 0));
    }
    assert_ne!(mem[..4096], mem[4096..8192]);
    // Nothing but the snapshot dir was left beside it.
    let siblings: Vec<_> = fs::read_dir(dir.parent().unwrap()).unwrap().collect();
    assert_eq!(siblings.len(), 1);
}

#[test]
fn synth_refuses_an_existing_out_and_bad_sizes() {
    let (_t, dir) = snap();
    assert!(matches!(
        synth(&opts(dir.clone())),
        Err(SynthError::Exists(_))
    ));
    let mut o = opts(dir.with_file_name("zero"));
    o.mem_mib = 0;
    assert!(matches!(synth(&o), Err(SynthError::BadOption(_))));
    assert!(!dir.with_file_name("zero").exists());
}

#[test]
fn check_names_a_missing_manifest() {
    let t = tempfile::tempdir().unwrap();
    let e = check(t.path(), false).unwrap_err();
    assert!(matches!(e, CheckError::NoManifest { .. }), "{e}");
    assert!(e.to_string().contains("wasp snapshot adopt"));
}

#[test]
fn check_names_a_missing_file() {
    let (_t, dir) = snap();
    fs::remove_file(dir.join("rootfs.ext4")).unwrap();
    match check(&dir, false).unwrap_err() {
        CheckError::Missing { role, path } => {
            assert_eq!(role, "drive rootfs");
            assert!(path.ends_with("rootfs.ext4"));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn check_names_a_wrong_size() {
    let (_t, dir) = snap();
    let p = dir.join("rootfs.ext4");
    tamper(&p, |f| f.set_len(MIB + 1));
    match check(&dir, false).unwrap_err() {
        CheckError::WrongSize {
            expected, actual, ..
        } => assert_eq!((expected, actual), (MIB, MIB + 1)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn check_names_a_memory_file_smaller_than_mem_mib() {
    let (_t, dir) = snap();
    let p = dir.join("vm.mem");
    tamper(&p, |f| f.set_len(MIB));
    let e = check(&dir, false).unwrap_err();
    assert!(
        matches!(e, CheckError::MemoryTooSmall { actual, mem_mib: 2, .. } if actual == MIB),
        "{e:?}"
    );
    assert!(e.to_string().contains("SIGBUS"));
}

#[test]
fn check_names_a_truncated_standin_vmstate() {
    let (_t, dir) = snap();
    let p = dir.join("vm.snapshot");
    let len = fs::metadata(&p).unwrap().len();
    tamper(&p, |f| f.set_len(len / 2));
    let e = check(&dir, false).unwrap_err();
    assert!(
        matches!(e, CheckError::VmstateTruncated { expected, actual, .. } if expected == len && actual == len / 2),
        "{e:?}"
    );
}

#[test]
fn check_names_a_corrupt_standin_vmstate_of_the_right_size() {
    let (_t, dir) = snap();
    let p = dir.join("vm.snapshot");
    tamper(&p, |f| f.write_all_at(b"X", 0));
    let e = check(&dir, false).unwrap_err();
    assert!(matches!(e, CheckError::StandinVmstate { .. }), "{e:?}");
}

#[test]
fn check_names_an_unknown_format_version() {
    let (_t, dir) = snap();
    let p = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    v["format_version"] = 2.into();
    fs::write(&p, v.to_string()).unwrap();
    let e = check(&dir, false).unwrap_err();
    assert!(
        matches!(
            e,
            CheckError::Manifest(ManifestError::UnknownFormatVersion { found: 2, .. })
        ),
        "{e:?}"
    );
}

#[test]
fn check_deep_names_a_checksum_mismatch() {
    let (_t, dir) = snap();
    let p = dir.join("vm.mem");
    tamper(&p, |f| f.write_all_at(b"!", 12345));
    // Sizes still match: only --deep can see it.
    check(&dir, false).unwrap();
    match check(&dir, true).unwrap_err() {
        CheckError::ChecksumMismatch { role, .. } => assert_eq!(role, "memory"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn check_refuses_a_symlink_leading_outside_the_dir() {
    let (t, dir) = snap();
    let outside = t.path().join("elsewhere.ext4");
    fs::copy(dir.join("rootfs.ext4"), &outside).unwrap();
    fs::remove_file(dir.join("rootfs.ext4")).unwrap();
    symlink(&outside, dir.join("rootfs.ext4")).unwrap();
    let e = check(&dir, false).unwrap_err();
    assert!(matches!(e, CheckError::SymlinkOutside { .. }), "{e:?}");
    // A symlink to a file inside the directory is fine.
    fs::remove_file(dir.join("rootfs.ext4")).unwrap();
    fs::rename(&outside, dir.join("real.ext4")).unwrap();
    fs::set_permissions(dir.join("real.ext4"), fs::Permissions::from_mode(0o444)).unwrap();
    symlink("real.ext4", dir.join("rootfs.ext4")).unwrap();
    check(&dir, true).unwrap();
}

#[test]
fn check_refuses_files_writable_by_others() {
    let (_t, dir) = snap();
    fs::set_permissions(dir.join("vm.mem"), fs::Permissions::from_mode(0o666)).unwrap();
    let e = check(&dir, false).unwrap_err();
    assert!(
        matches!(e, CheckError::WritableByOthers { mode: 0o666, .. }),
        "{e:?}"
    );
}

#[test]
fn check_warns_about_a_writable_memory_file() {
    let (_t, dir) = snap();
    fs::set_permissions(dir.join("vm.mem"), fs::Permissions::from_mode(0o644)).unwrap();
    let r = check(&dir, false).unwrap();
    assert_eq!(r.warnings.len(), 1);
    assert!(r.warnings[0].contains("chmod 0444"));
}

#[test]
fn check_refuses_files_not_owned_by_root() {
    root_or_skip!();
    let (_t, dir) = snap();
    nix::unistd::chown(
        &dir.join("rootfs.ext4"),
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    let e = check(&dir, false).unwrap_err();
    assert!(
        matches!(e, CheckError::NotOwnedByRoot { uid: 65534, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("chown root"));
}

/// A directory shaped like the seed's Firecracker snapshot.
fn seed_dir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("vm.snapshot"), vec![0xa5u8; 7000]).unwrap();
    fs::write(t.path().join("vm.mem"), vec![1u8; 2 * MIB as usize]).unwrap();
    fs::write(t.path().join("rootfs.ext4"), vec![2u8; 300_000]).unwrap();
    t
}

fn adopt_opts(dir: &Path) -> AdoptOptions {
    AdoptOptions {
        dir: dir.into(),
        vmstate: "vm.snapshot".into(),
        memory: "vm.mem".into(),
        drives: vec![AdoptDrive {
            drive_id: "rootfs".into(),
            file: "rootfs.ext4".into(),
            path_on_host: Some("/opt/swarm/vms/vm1/rootfs.ext4".into()),
            read_only: false,
        }],
        vmm_version: Some("1.12.1".into()),
        vcpus: None,
        iface: Some(NetIface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: "06:00:ac:10:00:02".into(),
            guest_ip: Some("172.16.0.2".into()),
        }),
        mmds: None,
        sha256: true,
        force: false,
    }
}

#[test]
fn adopt_a_seed_firecracker_dir_infers_sizes_and_asks_for_the_rest() {
    let t = seed_dir();
    let mut o = adopt_opts(t.path());
    o.vmm_version = None;
    let e = wasp::snapshot::adopt(&o).unwrap_err();
    assert!(
        matches!(&e, AdoptError::NeedFlag { flag, .. } if flag == "--vmm-version"),
        "{e}"
    );
    let mut o = adopt_opts(t.path());
    o.drives[0].path_on_host = None;
    let e = wasp::snapshot::adopt(&o).unwrap_err();
    assert!(
        matches!(&e, AdoptError::NeedFlag { flag, .. } if flag == "--drive-path"),
        "{e}"
    );
    assert!(
        !t.path().join(MANIFEST_FILE).exists(),
        "nothing written on error"
    );

    let a = wasp::snapshot::adopt(&adopt_opts(t.path())).unwrap();
    assert_eq!(a.manifest.mem_mib, 2);
    assert_eq!(a.manifest.vmm, wasp::snapshot::Vmm::Firecracker);
    assert_eq!(a.manifest.drives[0].size, 300_000);
    assert_eq!(a.made_read_only.len(), 3);
    check(t.path(), true).unwrap();
    assert!(matches!(
        wasp::snapshot::adopt(&adopt_opts(t.path())),
        Err(AdoptError::ManifestExists(_))
    ));

    // A Firecracker vmstate cut short is named as truncated.
    let p = t.path().join("vm.snapshot");
    tamper(&p, |f| f.set_len(100));
    assert!(matches!(
        check(t.path(), false),
        Err(CheckError::VmstateTruncated {
            actual: 100,
            expected: 7000,
            ..
        })
    ));
}

#[test]
fn adopt_refuses_a_memory_file_that_is_not_whole_mib() {
    let t = seed_dir();
    fs::write(t.path().join("vm.mem"), vec![1u8; 5000]).unwrap();
    let e = wasp::snapshot::adopt(&adopt_opts(t.path())).unwrap_err();
    assert!(matches!(e, AdoptError::MemNotMib { size: 5000, .. }), "{e}");
}

#[test]
fn adopt_a_standin_dir_reads_the_vmstate() {
    let (_t, dir) = snap();
    fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    let mut o = adopt_opts(&dir);
    o.vmm_version = None;
    o.iface = None;
    o.drives[0].path_on_host = None;
    let a = wasp::snapshot::adopt(&o).unwrap();
    assert_eq!(a.manifest.vmm, wasp::snapshot::Vmm::Standin);
    assert_eq!(
        a.manifest.drives[0].path_on_host,
        snapshot::CLONE_ROOTFS_PATH
    );
    assert_eq!(a.manifest.network_interfaces[0].host_dev_name, "tap0");
    check(&dir, true).unwrap();
}

#[test]
fn warm_reads_memory_and_vmstate() {
    let (_t, dir) = snap();
    let m = snapshot::read_manifest(&dir).unwrap();
    let want = m.memory.size + m.vmstate.size;
    for method in [WarmMethod::Auto, WarmMethod::Pread] {
        let r = snapshot::warm(&dir, method, true).unwrap();
        assert_eq!(r.bytes, want, "{method:?}");
        assert!(r.mib_per_s.unwrap() > 0.0);
    }
}

#[test]
fn fuzz_seed_corpus_parses_or_fails_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/manifest");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let r = wasp::snapshot::Manifest::from_bytes(&fs::read(&p).unwrap(), "corpus");
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        match name.as_str() {
            "standin.json" | "firecracker.json" => {
                r.unwrap();
            }
            "future-version.json" => assert!(matches!(
                r,
                Err(ManifestError::UnknownFormatVersion { found: 2, .. })
            )),
            _ => assert!(r.is_err(), "{name} should be refused"),
        }
        n += 1;
    }
    assert!(n >= 6);
}

#[test]
fn check_refuses_a_manifest_writable_by_others() {
    let (_t, dir) = snap();
    fs::set_permissions(dir.join(MANIFEST_FILE), fs::Permissions::from_mode(0o666)).unwrap();
    let e = check(&dir, false).unwrap_err();
    assert!(
        matches!(&e, CheckError::WritableByOthers { role, .. } if role == "manifest"),
        "{e:?}"
    );
}
