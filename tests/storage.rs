//! Per-clone storage on real filesystems: reflink on a private XFS loop
//! image, the fallbacks on the ext4 root (/var/tmp), EXDEV across
//! filesystems, ENOSPC mid-copy on a tiny tmpfs, reconcile, shared-readonly.

use wasp_testkit::root_or_skip;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use wasp::pipeline::storage::probe::Strategy;
use wasp::pipeline::storage::{CloneStore, Mode, StorageError};
use wasp::snapshot::{synth, SynthOptions, MIB};
use wasp_testkit::loopfs::LoopFs;

fn make_snap(parent: &Path, mem_mib: u64, rootfs_mib: u64) -> PathBuf {
    let out = parent.join("snap");
    synth(&SynthOptions {
        out: out.clone(),
        mem_mib,
        rootfs_mib,
        ..Default::default()
    })
    .unwrap();
    out
}

/// A temp dir on the root filesystem (ext4 here), not /tmp (may be tmpfs).
fn ext4_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("wasptest-{}-", std::process::id()))
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn fs_type(p: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes to clone A's rootfs and checks that clone B and the base do not
/// see it.
fn assert_isolated(store: &CloneStore, snap: &Path) {
    let a = store.prepare("a").unwrap();
    let b = store.prepare("b").unwrap();
    assert_eq!((a.mem_bytes_copied, b.mem_bytes_copied), (0, 0));
    assert_eq!(a.memory, snap.join("vm.mem"), "memory is the shared base");
    let (da, db) = (&a.drives[0], &b.drives[0]);
    assert!(da.per_clone && db.per_clone);
    assert!(da.file.starts_with(store.clones_dir().join("wasp-a")));
    let base = fs::read(snap.join("rootfs.ext4")).unwrap();
    assert_eq!(fs::read(&da.file).unwrap(), base);
    OpenOptions::new()
        .write(true)
        .open(&da.file)
        .unwrap()
        .write_all_at(b"clone A was here", 4096)
        .unwrap();
    let after_a = fs::read(&da.file).unwrap();
    assert_eq!(&after_a[4096..4096 + 16], b"clone A was here");
    assert_eq!(
        fs::read(&db.file).unwrap(),
        base,
        "B must not see A's write"
    );
    assert_eq!(
        fs::read(snap.join("rootfs.ext4")).unwrap(),
        base,
        "the base must not see A's write"
    );
    store.cleanup("a").unwrap();
    store.cleanup("b").unwrap();
    assert!(!a.dir.exists() && !b.dir.exists());
    assert_eq!(fs::read_dir(store.clones_dir()).unwrap().count(), 0);
}

#[test]
fn reflink_on_xfs_shares_blocks_and_isolates_clones() {
    root_or_skip!();
    let xfs = LoopFs::xfs_reflink(512);
    let snap = make_snap(xfs.path(), 8, 64);
    let store = CloneStore::open(&snap, &xfs.path().join("rt"), Mode::Auto).unwrap();
    assert_eq!(store.strategy(), Strategy::Reflink, "{:?}", store.probe());

    // Blocks are shared: free space barely moves for 4 clones of 64 MiB,
    // and filefrag (an independent reader) flags the extents shared.
    let free_before = xfs.free_bytes();
    let clones: Vec<_> = (0..4)
        .map(|i| store.prepare(&format!("c{i}")).unwrap())
        .collect();
    let used = free_before.saturating_sub(xfs.free_bytes());
    assert!(used < 4 * MIB, "4 reflinked clones used {used} bytes");
    for c in &clones {
        assert_eq!(c.bytes_copied, 0);
        assert_eq!(c.strategy, Strategy::Reflink);
    }
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(&clones[0].drives[0].file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shared"),
        "filefrag -v shows no shared extent:\n{text}"
    );
    for c in &clones {
        store.cleanup(&c.clone_id).unwrap();
    }
    assert_isolated(&store, &snap);
}

#[test]
fn ext4_falls_back_to_copy_file_range_and_sparse_copy() {
    let t = ext4_tempdir();
    if fs_type(t.path()) != "ext2/ext3" {
        eprintln!("note: /var/tmp is {}, not ext4", fs_type(t.path()));
    }
    let snap = make_snap(t.path(), 4, 8);
    let rt = t.path().join("rt");
    let store = CloneStore::open(&snap, &rt, Mode::Auto).unwrap();
    if fs_type(t.path()) == "ext2/ext3" {
        assert_eq!(store.strategy(), Strategy::CopyFileRange);
        assert!(store.probe().reason.contains("does not support reflinks"));
        let e = CloneStore::open(&snap, &rt, Mode::Force(Strategy::Reflink)).unwrap_err();
        assert!(matches!(e, StorageError::StrategyUnavailable { .. }), "{e}");
    }
    let c = store.prepare("x").unwrap();
    assert_eq!(c.bytes_copied, 8 * MIB, "a dense rootfs is copied whole");
    store.cleanup("x").unwrap();
    assert_isolated(&store, &snap);

    let sparse = CloneStore::open(&snap, &rt, Mode::Force(Strategy::SparseCopy)).unwrap();
    assert_eq!(sparse.strategy(), Strategy::SparseCopy);
    assert_isolated(&sparse, &snap);
}

#[test]
fn runtime_dir_on_another_filesystem_falls_back_and_says_exdev() {
    root_or_skip!();
    let t = ext4_tempdir();
    let snap = make_snap(t.path(), 4, 8);
    let xfs = LoopFs::xfs_reflink(320);
    let store = CloneStore::open(&snap, xfs.path(), Mode::Auto).unwrap();
    assert_ne!(store.strategy(), Strategy::Reflink);
    assert_eq!(store.probe().reflink_errno, Some(libc::EXDEV));
    assert!(
        store.probe().reason.contains("different filesystem"),
        "{}",
        store.probe().reason
    );
    assert_isolated(&store, &snap);
}

#[test]
fn enospc_mid_copy_leaves_no_partial_file() {
    root_or_skip!();
    let t = ext4_tempdir();
    let snap = make_snap(t.path(), 1, 5);
    // 8 MiB of tmpfs: the first 5 MiB clone fits, the second runs out
    // of space part way through.
    let small = LoopFs::tmpfs(8);
    let store = CloneStore::open(&snap, small.path(), Mode::Auto).unwrap();
    let first = store.prepare("first").unwrap();
    let e = store.prepare("second").unwrap_err();
    match &e {
        StorageError::Copy { source, hint, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{e}");
            assert!(hint.contains("full"), "{hint}");
        }
        other => panic!("expected a copy error, got {other:?}"),
    }
    // Only the first clone is left, complete.
    let left: Vec<_> = fs::read_dir(store.clones_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("wasp-first")]);
    assert_eq!(
        fs::read(&first.drives[0].file).unwrap(),
        fs::read(snap.join("rootfs.ext4")).unwrap()
    );
    store.cleanup("first").unwrap();
}

#[test]
fn synth_on_a_full_filesystem_leaves_nothing() {
    root_or_skip!();
    let small = LoopFs::tmpfs(4);
    let e = synth(&SynthOptions {
        out: small.path().join("snap"),
        mem_mib: 2,
        rootfs_mib: 8,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("nothing was left behind"), "{e}");
    assert_eq!(fs::read_dir(small.path()).unwrap().count(), 0);
}

#[test]
fn reconcile_removes_orphans_after_a_crash() {
    let t = ext4_tempdir();
    let snap = make_snap(t.path(), 1, 1);
    let rt = t.path().join("rt");
    let owner = wasp::state::Owner::of_state_dir(&t.path().join("state")).unwrap();
    let store = CloneStore::open(&snap, &rt, Mode::Auto)
        .unwrap()
        .with_owner(owner.clone());
    for id in ["live1", "dead1", "dead2"] {
        store.prepare(id).unwrap();
    }
    fs::create_dir(store.clones_dir().join("not-ours")).unwrap();
    // A new process (after a crash) reconciles with its own liveness view.
    let again = CloneStore::open(&snap, &rt, Mode::Auto)
        .unwrap()
        .with_owner(owner);
    let r = again.reconcile(&|id| id == "live1");
    assert_eq!(r.kept, 1);
    assert_eq!(r.removed.len(), 2, "{r:?}");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(again.clone_dir("live1").exists());
    assert!(!again.clone_dir("dead1").exists());
    assert!(again.clones_dir().join("not-ours").exists());
    // A crashed prepare's id is free again after reconcile.
    again.prepare("dead1").unwrap();
    assert!(matches!(
        again.prepare("live1"),
        Err(StorageError::CloneExists(_))
    ));
    assert!(matches!(
        again.prepare("../etc"),
        Err(StorageError::BadCloneId(_))
    ));
}

#[test]
fn shared_readonly_shares_the_base_and_makes_a_scratch_drive() {
    let t = ext4_tempdir();
    let out = t.path().join("ro");
    synth(&SynthOptions {
        out: out.clone(),
        mem_mib: 1,
        rootfs_mib: 2,
        rootfs_read_only: true,
        scratch_mib: Some(4),
        ..Default::default()
    })
    .unwrap();
    let rt = t.path().join("rt");
    let store = CloneStore::open(&out, &rt, Mode::Force(Strategy::SharedReadonly)).unwrap();
    let c = store.prepare("s").unwrap();
    assert_eq!(c.bytes_copied, 0);
    let root = &c.drives[0];
    assert!(!root.per_clone && root.read_only);
    assert_eq!(root.file, out.join("rootfs.ext4"));
    let scratch = &c.drives[1];
    assert!(scratch.per_clone);
    assert_eq!(fs::metadata(&scratch.file).unwrap().len(), 4 * MIB);
    store.cleanup("s").unwrap();

    let rw = make_snap(t.path(), 1, 1);
    let e = CloneStore::open(&rw, &rt, Mode::Force(Strategy::SharedReadonly)).unwrap_err();
    assert!(matches!(e, StorageError::WritableSharedDrive { .. }), "{e}");
}
