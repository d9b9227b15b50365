//! Snapshot store: synth, check (one test per validation error), adopt of a
//! seed-like Firecracker directory, warm.

use wasp_testkit::root_or_skip;

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
        sha256: true,
        ..Default::default()
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
fn check_refuses_a_symlink_inside_or_outside_the_dir() {
    let (t, dir) = snap();
    let outside = t.path().join("elsewhere.ext4");
    fs::copy(dir.join("rootfs.ext4"), &outside).unwrap();
    fs::remove_file(dir.join("rootfs.ext4")).unwrap();
    symlink(&outside, dir.join("rootfs.ext4")).unwrap();
    let msg = check(&dir, false).unwrap_err().to_string();
    assert!(msg.contains("rootfs.ext4 is a symlink"), "{msg}");
    // A symlink to a file inside the directory is refused too: files are
    // opened without following links.
    fs::remove_file(dir.join("rootfs.ext4")).unwrap();
    fs::rename(&outside, dir.join("real.ext4")).unwrap();
    fs::set_permissions(dir.join("real.ext4"), fs::Permissions::from_mode(0o444)).unwrap();
    symlink("real.ext4", dir.join("rootfs.ext4")).unwrap();
    let msg = check(&dir, false).unwrap_err().to_string();
    assert!(msg.contains("rootfs.ext4 is a symlink"), "{msg}");
    // The file itself in its place passes.
    fs::remove_file(dir.join("rootfs.ext4")).unwrap();
    fs::rename(dir.join("real.ext4"), dir.join("rootfs.ext4")).unwrap();
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
    fs::write(
        t.path().join("vm.snapshot"),
        fc_vmstate("/opt/swarm/vms/vm1/rootfs.ext4"),
    )
    .unwrap();
    fs::write(t.path().join("vm.mem"), vec![1u8; 2 * MIB as usize]).unwrap();
    fs::write(t.path().join("rootfs.ext4"), vec![2u8; 300_000]).unwrap();
    t
}

/// 7000 bytes shaped like a Firecracker vmstate that recorded one drive
/// at `drive_path` (bincode: a little-endian u64 length, then the bytes).
fn fc_vmstate(drive_path: &str) -> Vec<u8> {
    let mut v = vec![0xa5u8; 100];
    v.extend_from_slice(&(drive_path.len() as u64).to_le_bytes());
    v.extend_from_slice(drive_path.as_bytes());
    v.resize(7000, 0xa5);
    v
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

    // Made with the drive at the per-clone path (as `snapshot create`
    // does), it is adopted.
    fs::write(
        t.path().join("vm.snapshot"),
        fc_vmstate(snapshot::CLONE_ROOTFS_PATH),
    )
    .unwrap();
    let mut o = adopt_opts(t.path());
    o.drives[0].path_on_host = Some(snapshot::CLONE_ROOTFS_PATH.into());
    let a = wasp::snapshot::adopt(&o).unwrap();
    assert_eq!(a.manifest.mem_mib, 2);
    assert_eq!(a.manifest.vmm, wasp::snapshot::Vmm::Firecracker);
    assert_eq!(a.manifest.drives[0].size, 300_000);
    assert_eq!(a.made_read_only.len(), 3);
    check(t.path(), true).unwrap();
    assert!(matches!(
        wasp::snapshot::adopt(&o),
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

// ---- issue #18 finding 2: a drive recorded outside its per-clone path ----

/// Records `path` as the rootfs's `path_on_host` in both the stand-in
/// vmstate and the manifest of `dir`, so that the two agree (as in the
/// issue's reproduction).
fn record_rootfs_at(dir: &Path, path: &str) {
    let vs_path = dir.join("vm.snapshot");
    let mut vs =
        wasp::standin::vmstate::VmState::from_bytes(&fs::read(&vs_path).unwrap(), "t").unwrap();
    vs.drives[0].path_on_host = path.into();
    let bytes = vs.to_bytes();
    fs::set_permissions(&vs_path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&vs_path, &bytes).unwrap();
    fs::set_permissions(&vs_path, fs::Permissions::from_mode(0o444)).unwrap();
    let mp = dir.join(MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
    m["drives"][0]["path_on_host"] = path.into();
    m["vmstate"]["size"] = bytes.len().into();
    m["vmstate"].as_object_mut().unwrap().remove("sha256");
    fs::write(&mp, m.to_string()).unwrap();
}

#[test]
fn check_refuses_a_writable_drive_recorded_outside_the_per_clone_path() {
    let (t, dir) = snap();
    let host_file = t.path().join("golden-rootfs.ext4");
    fs::write(&host_file, b"the golden disk").unwrap();
    let recorded = host_file.to_str().unwrap();
    record_rootfs_at(&dir, recorded);
    let e = check(&dir, false).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("drive rootfs"), "{msg}");
    assert!(msg.contains(recorded), "{msg}");
    assert!(msg.contains("/run/wasp/drives/rootfs"), "{msg}");
    assert!(msg.contains("wasp snapshot create"), "{msg}");
    // Back at the per-clone path it passes again.
    record_rootfs_at(&dir, snapshot::CLONE_ROOTFS_PATH);
    check(&dir, false).unwrap();
}

#[test]
fn check_refuses_a_read_only_drive_recorded_outside_the_per_clone_path() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("snap");
    let mut o = opts(dir.clone());
    o.rootfs_read_only = true;
    synth(&o).unwrap();
    record_rootfs_at(&dir, "/srv/images/shared.ext4");
    let msg = check(&dir, false).unwrap_err().to_string();
    assert!(
        msg.contains("drive rootfs is recorded at /srv/images/shared.ext4"),
        "{msg}"
    );
}

#[test]
fn check_refuses_a_standin_manifest_that_calls_a_writable_drive_read_only() {
    let (_t, dir) = snap();
    let mp = dir.join(MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
    m["drives"][0]["read_only"] = true.into();
    fs::write(&mp, m.to_string()).unwrap();
    let msg = check(&dir, false).unwrap_err().to_string();
    assert!(msg.contains("drive rootfs read_only"), "{msg}");
}

#[test]
fn adopt_refuses_a_drive_path_outside_the_per_clone_path() {
    let t = seed_dir();
    let e = wasp::snapshot::adopt(&adopt_opts(t.path())).unwrap_err();
    let msg = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(msg.contains("drive rootfs"), "{msg}");
    assert!(msg.contains("/opt/swarm/vms/vm1/rootfs.ext4"), "{msg}");
    assert!(msg.contains("/run/wasp/drives/rootfs"), "{msg}");
    assert!(!t.path().join(MANIFEST_FILE).exists(), "nothing written");
}

#[test]
fn adopt_and_check_refuse_a_drive_path_the_firecracker_vmstate_never_recorded() {
    // The seed's vmstate recorded $VM_DIR/rootfs.ext4; the operator passes
    // the per-clone path: Firecracker would still open the seed's file.
    let t = seed_dir();
    let mut o = adopt_opts(t.path());
    o.drives[0].path_on_host = Some(snapshot::CLONE_ROOTFS_PATH.into());
    let e = wasp::snapshot::adopt(&o).unwrap_err();
    let msg = format!("{}", std::error::Error::source(&e).unwrap());
    assert!(
        msg.contains("does not record drive rootfs at /run/wasp/drives/rootfs"),
        "{msg}"
    );
    assert!(!t.path().join(MANIFEST_FILE).exists(), "nothing written");
}

// ---- issue #18 finding 4: the snapshot directory and its ancestors ----

#[test]
fn check_refuses_a_snapshot_dir_owned_by_another_user() {
    root_or_skip!();
    // The layout: files root-owned and 0444, the directory owned
    // by nobody (who could swap the files after the check).
    let (_t, dir) = snap();
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let msg = check(&dir, false).unwrap_err().to_string();
    let d = dir.display().to_string();
    assert!(msg.contains(&format!("{d} is owned by uid 65534")), "{msg}");
    assert!(
        msg.contains(&format!("chown root:root {d} && chmod go-w {d}")),
        "{msg}"
    );
    // Spawn opens its store through the same check: refused too.
    let run = dir.with_file_name("run");
    let e =
        wasp::pipeline::storage::CloneStore::open(&dir, &run, wasp::pipeline::storage::Mode::Auto)
            .unwrap_err();
    assert!(format!("{:?}", e).contains("65534"), "{e:?}");
    assert!(!run.exists(), "nothing made for a refused snapshot");
}

#[test]
fn check_refuses_a_group_writable_dir_and_a_non_sticky_world_writable_ancestor() {
    let (t, dir) = snap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
    let msg = check(&dir, false).unwrap_err().to_string();
    assert!(msg.contains("is writable by group or others"), "{msg}");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    // An ancestor others can write lets them rename the whole directory.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let msg = check(&dir, false).unwrap_err().to_string();
    let a = t.path().display().to_string();
    assert!(
        msg.contains(&format!(
            "{a} is writable by group or others and not sticky"
        )),
        "{msg}"
    );
    // Sticky (like /tmp, which every test's snapshot sits under): others
    // cannot rename what they do not own, so it is accepted.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    check(&dir, false).unwrap();
}

#[test]
fn a_symlink_swapped_in_after_the_check_is_never_followed() {
    root_or_skip!();
    let (t, dir) = snap();
    let run = t.path().join("run");
    let store =
        wasp::pipeline::storage::CloneStore::open(&dir, &run, wasp::pipeline::storage::Mode::Auto)
            .unwrap();
    let base = fs::read(dir.join("rootfs.ext4")).unwrap();
    // A root-only file of the same size (so no size check can tell).
    let secret = t.path().join("secret");
    let mut data = b"TOP SECRET ".repeat(base.len() / 11 + 1);
    data.truncate(base.len());
    fs::write(&secret, &data).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    // The swap, after the check: rootfs.ext4 becomes a symlink to it.
    fs::rename(dir.join("rootfs.ext4"), t.path().join("moved.ext4")).unwrap();
    symlink(&secret, dir.join("rootfs.ext4")).unwrap();
    // A clone prepared now copies the file the check opened, not the
    // symlink's target.
    let files = store.prepare("swap").unwrap();
    let disk = fs::read(&files.drives[0].file).unwrap();
    assert!(
        disk == base,
        "the clone's disk must be the checked base image"
    );
    assert!(!disk.starts_with(b"TOP SECRET"));
    store.cleanup("swap").unwrap();
    // A new spawn (a new store) refuses the symlink: O_NOFOLLOW.
    let e =
        wasp::pipeline::storage::CloneStore::open(&dir, &run, wasp::pipeline::storage::Mode::Auto)
            .unwrap_err();
    let msg = format!("{:?}", e);
    assert!(msg.contains("Symlink") || msg.contains("symlink"), "{msg}");
    let msg = check(&dir, false).unwrap_err().to_string();
    assert!(msg.contains("rootfs.ext4 is a symlink"), "{msg}");
}
