//! The reflink store (`wasp storage init|status|remove`) on real kernel
//! objects: a scratch ext4 filesystem made here in a loop image (so nothing
//! depends on the machine's root fs), an XFS store image on it attached to
//! a loop device by wasp's own ioctls and mounted on a runtime dir there.
//!
//! Every loop device, image and mount a test makes is removed by a guard
//! (also on panic): the store's loop device is found from its backing
//! file, images carry the `wasp` prefix. `losetup`, `stat`, `cp` and
//! `mount` appear only as independent readers and test tooling.

use wasp_testkit::{root_or_skip, wasp_bin, wasp_cmd};

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use wasp::pipeline::storage::probe::Strategy;
use wasp::pipeline::storage::store::{self, InitAction, InitOptions, StoreError};
use wasp::pipeline::storage::{CloneStore, Mode, StorageError};
use wasp::snapshot::{synth, SynthOptions};
use wasp::sys::loopdev;
use wasp_testkit::cli::{stop_and_kill, World};
use wasp_testkit::loopfs::LoopFs;

/// Loop images and page cache of GiB-sized files: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the store of `rt` (image `img`) however a test left it: the
/// mount, every loop device backed by the image, the image and its
/// `.partial`. Declared after the `LoopFs` holding them, so it drops first.
struct StoreGuard {
    rt: PathBuf,
    img: PathBuf,
}

impl StoreGuard {
    fn new(rt: &Path) -> Self {
        Self {
            rt: rt.to_owned(),
            img: store::default_image(rt),
        }
    }
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        while mounted(&self.rt).is_some() {
            if !Command::new("umount")
                .arg(&self.rt)
                .status()
                .unwrap()
                .success()
            {
                let _ = Command::new("umount").arg("-l").arg(&self.rt).status();
                break;
            }
        }
        for dev in loops_of(&self.img) {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
        let _ = fs::remove_file(&self.img);
        let _ = fs::remove_file(partial(&self.img));
    }
}

fn partial(img: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", img.display()))
}

/// The mount on exactly `dir`, from /proc/self/mountinfo.
fn mounted(dir: &Path) -> Option<store::MountEntry> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = fs::canonicalize(dir).ok()?;
    store::mount_at(&info, &dir)
}

/// The loop devices backed by `img`, as `losetup -j` (an independent
/// reader) lists them.
fn loops_of(img: &Path) -> Vec<String> {
    let out = Command::new("losetup").arg("-j").arg(img).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next().map(str::to_owned))
        .collect()
}

fn fs_type(p: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn used_bytes(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    (s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64
}

fn wasp(args: &[&str], rt: &Path) -> Output {
    let mut c = wasp_cmd!();
    c.args(args).arg("--runtime-dir").arg(rt);
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn ok(o: &Output) {
    assert!(o.status.success(), "failed: {}\n{}", stdout(o), stderr(o));
}

/// Nothing of a store at `rt`: no mount, no loop device on the image, no
/// image, no `.partial`.
#[track_caller]
fn assert_no_store(rt: &Path) {
    let img = store::default_image(rt);
    assert!(
        mounted(rt).is_none(),
        "{} is still a mount point",
        rt.display()
    );
    assert_eq!(loops_of(&img), Vec::<String>::new(), "loop devices left");
    assert!(!img.exists(), "{} left", img.display());
    assert!(!partial(&img).exists(), "{} left", partial(&img).display());
}

fn snap(out: &Path, rootfs_mib: u64) -> PathBuf {
    synth(&SynthOptions {
        out: out.to_owned(),
        mem_mib: 16,
        rootfs_mib,
        ..Default::default()
    })
    .unwrap();
    out.to_owned()
}

#[test]
fn loop_devices_attach_by_ioctl_and_autoclear_on_the_last_close() {
    root_or_skip!();
    let _s = serial();
    let ext4 = LoopFs::ext4(64);
    let img = ext4.path().join("wasp-loop-test.img");
    fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let dev = loopdev::attach(&f, loopdev::LO_FLAGS_AUTOCLEAR, &img).unwrap();
    drop(f);
    // sysfs and losetup both name the device by its backing file.
    assert!(loopdev::attached()
        .unwrap()
        .contains(&(dev.number(), img.clone())));
    assert_eq!(loops_of(&img), vec![dev.path().display().to_string()]);
    let mut head = [0u8; 4];
    dev.as_file().read_exact_at(&mut head, 4096).unwrap();
    assert_eq!(head, [0x5a; 4]);
    drop(dev);
    assert_eq!(
        loops_of(&img),
        Vec::<String>::new(),
        "autoclear detaches it"
    );
}

#[test]
fn init_makes_a_reflink_store_on_ext4_idempotently_and_remove_leaves_nothing() {
    root_or_skip!();
    let _s = serial();
    let ext4 = LoopFs::ext4(1024);
    assert_eq!(fs_type(ext4.path()), "ext2/ext3");
    let rt = ext4.path().join("rt");
    let guard = StoreGuard::new(&rt);
    let img = guard.img.clone();

    let o = wasp(&["storage", "init", "--size", "1G"], &rt);
    ok(&o);
    assert!(
        stdout(&o).contains("made the reflink store"),
        "{}",
        stdout(&o)
    );
    assert_eq!(fs_type(&rt), "xfs");
    let devs = loops_of(&img);
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert_eq!(mounted(&rt).unwrap().source, devs[0]);
    // Sparse: 1 GiB apparent, only what mkfs wrote is allocated.
    let meta = fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 100 << 20,
        "{} bytes allocated",
        meta.blocks() * 512
    );
    // An independent reflink: cp --reflink=always inside the store.
    fs::write(rt.join("a"), vec![1u8; 1 << 20]).unwrap();
    let cp = Command::new("cp")
        .arg("--reflink=always")
        .arg(rt.join("a"))
        .arg(rt.join("b"))
        .output()
        .unwrap();
    assert!(cp.status.success(), "{}", stderr(&cp));
    fs::remove_file(rt.join("a")).unwrap();
    fs::remove_file(rt.join("b")).unwrap();
    // Clone dirs are private, snapshots readable.
    assert_eq!(
        fs::metadata(rt.join("clones")).unwrap().mode() & 0o777,
        0o700
    );

    // Idempotent: a second run finds it and changes nothing.
    let o = wasp(&["storage", "init", "--size", "1G"], &rt);
    ok(&o);
    assert!(stdout(&o).contains("set up already"), "{}", stdout(&o));
    assert_eq!(loops_of(&img), devs);

    // A reboot drops the mount and (autoclear) the loop device; the
    // library's re-attach, which a daemon calls at start, mounts it again.
    assert!(Command::new("umount").arg(&rt).status().unwrap().success());
    assert_eq!(loops_of(&img), Vec::<String>::new());
    assert_eq!(
        store::reattach(&rt, None).unwrap(),
        store::Reattach::Reattached
    );
    assert_eq!(
        store::reattach(&rt, None).unwrap(),
        store::Reattach::AlreadyMounted
    );
    assert_eq!(fs_type(&rt), "xfs");
    let devs = loops_of(&img);
    assert_eq!(devs.len(), 1);
    assert_eq!(
        store::reattach(&ext4.path().join("none"), None).unwrap(),
        store::Reattach::NoStore
    );
    assert!(!ext4.path().join("none").exists(), "reattach makes nothing");

    let o = wasp(&["storage", "status", "--json"], &rt);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["store"];
    assert_eq!(s["mounted"], true);
    assert_eq!(s["image"], img.display().to_string());
    assert_eq!(s["loop_device"], devs[0]);
    assert_eq!(s["image_size"], 1u64 << 30);
    assert_eq!(s["clone_disks"], 0);
    assert!(s["fs_free"].as_u64().unwrap() > 800 << 20, "{s}");

    let o = wasp(&["storage", "remove"], &rt);
    ok(&o);
    assert!(stdout(&o).contains("unmounted"), "{}", stdout(&o));
    assert_no_store(&rt);
    // Again: nothing there, said so, success.
    let o = wasp(&["storage", "remove"], &rt);
    ok(&o);
    assert!(stdout(&o).contains("nothing to remove"), "{}", stdout(&o));
    let o = wasp(&["storage", "status"], &rt);
    ok(&o);
    assert!(stdout(&o).contains("no store"), "{}", stdout(&o));
    let o = wasp(&["storage", "status"], &ext4.path().join("never-made"));
    ok(&o);
    assert!(stdout(&o).contains("no store"), "{}", stdout(&o));
    drop(guard);
}

#[test]
fn a_store_with_an_image_of_any_name_is_found_by_status_and_remove() {
    root_or_skip!();
    let _s = serial();
    let ext4 = LoopFs::ext4(1024);
    let rt = ext4.path().join("rt");
    let mut guard = StoreGuard::new(&rt);
    let img = ext4.path().join("images").join("mine.img");
    fs::create_dir_all(img.parent().unwrap()).unwrap();
    guard.img = img.clone();
    let img_arg = img.to_str().unwrap();

    ok(&wasp(
        &["storage", "init", "--size", "1G", "--image", img_arg],
        &rt,
    ));
    assert_eq!(fs_type(&rt), "xfs");
    // Found by its label, not its name: status shows it, remove takes it.
    let o = wasp(&["storage", "status", "--json"], &rt);
    ok(&o);
    assert!(stdout(&o).contains("mine.img"), "{}", stdout(&o));
    ok(&wasp(&["storage", "remove", "--image", img_arg], &rt));
    assert!(
        mounted(&rt).is_none(),
        "{} is still a mount point",
        rt.display()
    );
    assert_eq!(loops_of(&img), Vec::<String>::new(), "loop devices left");
    assert!(!img.exists(), "{} left", img.display());
}

#[test]
fn a_hundred_clones_of_a_1gib_rootfs_use_only_the_blocks_they_write() {
    root_or_skip!();
    let _s = serial();
    const CLONES: usize = 100;
    let ext4 = LoopFs::ext4(4096);
    let rt = ext4.path().join("rt");
    let guard = StoreGuard::new(&rt);
    // A dense 1 GiB rootfs on the ext4 (every block written).
    let golden = snap(&ext4.path().join("golden"), 1024);
    let rootfs = golden.join("rootfs.ext4");
    assert!(fs::metadata(&rootfs).unwrap().blocks() * 512 >= 1 << 30);

    let r = store::init(&InitOptions {
        runtime_dir: rt.clone(),
        image: None,
        size: 3 << 30,
        snapshot: Some(golden.clone()),
    })
    .unwrap();
    assert_eq!(r.action, InitAction::Created);
    let placed = r.placed.unwrap();
    assert_eq!(placed.dir, rt.join("snapshots/golden"));
    assert!(placed.bytes_copied >= 1 << 30, "{placed:?}");
    // Placing again copies nothing.
    let again = store::place_snapshot(&golden, &rt).unwrap();
    assert_eq!(
        (again.dir.clone(), again.bytes_copied),
        (placed.dir.clone(), 0)
    );

    // The snapshot on ext4: each clone would copy the whole rootfs;
    // refused unless allowed, both saying the bytes per clone.
    let outside = CloneStore::open(&golden, &rt, Mode::Auto).unwrap();
    assert_ne!(outside.strategy(), Strategy::Reflink);
    let e = outside.copy_check(false).unwrap_err();
    assert!(
        matches!(e, StorageError::WouldCopy { bytes_per_clone, .. } if bytes_per_clone == 1 << 30)
    );
    let msg = e.to_string();
    assert!(
        msg.contains("each clone would copy 1073741824 bytes"),
        "{msg}"
    );
    assert!(
        msg.contains("--allow-copy") && msg.contains("wasp snapshot adopt"),
        "{msg}"
    );
    assert_eq!(outside.copy_check(true).unwrap(), Some(1 << 30));

    let st = CloneStore::open(&placed.dir, &rt, Mode::Auto).unwrap();
    assert_eq!(st.strategy(), Strategy::Reflink);
    assert_eq!(st.copy_check(false).unwrap(), None);
    let before = used_bytes(&rt);
    let mut files = Vec::new();
    for i in 0..CLONES {
        let c = st.prepare(&format!("c{i}")).unwrap();
        assert_eq!((c.bytes_copied, c.mem_bytes_copied), (0, 0));
        files.push(c.drives[0].file.clone());
    }
    File::open(&rt).unwrap().sync_all().unwrap();
    let held = used_bytes(&rt) - before;
    // Every clone's file maps the whole 1 GiB (st_blocks counts shared
    // extents), yet the filesystem holds almost nothing new.
    let logical: u64 = files
        .iter()
        .map(|f| fs::metadata(f).unwrap().blocks() * 512)
        .sum();
    assert!(logical >= CLONES as u64 * (1 << 30), "{logical}");
    let full_copies = CLONES as u64 * (1 << 30);
    assert!(
        held * 100 <= full_copies,
        "{held} bytes held: over 1 % of {full_copies}"
    );
    assert!(
        held < 16 << 20,
        "{held} bytes held by {CLONES} reflinked clones"
    );

    // Each clone writes 64 KiB of its own: exactly those blocks are new.
    let write = vec![0xc3u8; 64 << 10];
    for (i, f) in files.iter().enumerate() {
        let h = OpenOptions::new().write(true).open(f).unwrap();
        h.write_all_at(&write, (i as u64) * (8 << 20)).unwrap();
        h.sync_all().unwrap();
    }
    let grown = used_bytes(&rt) - before - held;
    let written = CLONES as u64 * (64 << 10);
    assert!(
        grown >= written && grown < written + (16 << 20),
        "{grown} bytes grew for {written} written"
    );
    // The base and another clone do not see a clone's write.
    let mut b = vec![0u8; 64 << 10];
    File::open(placed.dir.join("rootfs.ext4"))
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    assert_ne!(b, write);
    File::open(&files[1])
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    assert_ne!(b, write);

    let s = store::status(&rt, None).unwrap().unwrap();
    assert_eq!(s.clone_disks, CLONES);
    assert!(s.clone_disk_bytes >= full_copies);
    // Shared: the 100 GiB the clones map, less the blocks they wrote.
    assert!(
        s.shared_bytes <= full_copies && s.shared_bytes >= full_copies - written - (16 << 20),
        "{s:?}"
    );
    assert_eq!(s.snapshots, vec![placed.dir.clone()]);

    // Remove refuses while the clones use it, and changes nothing.
    let e = store::remove(&rt, None).unwrap_err();
    assert!(
        matches!(e, StoreError::InUse { count, .. } if count == CLONES),
        "{e}"
    );
    assert!(e.to_string().contains("wasp kill --all"), "{e}");
    assert_eq!(fs_type(&rt), "xfs");
    let o = wasp(&["storage", "remove"], &rt);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("100 clone dir(s)"), "{}", stderr(&o));

    for i in 0..CLONES {
        st.cleanup(&format!("c{i}")).unwrap();
    }
    drop((st, outside));
    let r = store::remove(&rt, None).unwrap();
    assert!(r.unmounted);
    assert_eq!(r.snapshots_deleted, vec![placed.dir]);
    assert_no_store(&rt);
    // The original snapshot is untouched.
    wasp::snapshot::check(&golden, false).unwrap();
    drop(guard);
}

#[test]
fn a_kill_during_init_leaves_nothing_a_second_init_or_remove_cannot_clean_up() {
    root_or_skip!();
    let _s = serial();
    let ext4 = LoopFs::ext4(1024);
    for point in ["storage-formatted", "storage-attached"] {
        for then in ["init", "remove"] {
            let rt = ext4.path().join(format!("rt-{point}-{then}"));
            let guard = StoreGuard::new(&rt);
            let mut c = wasp_cmd!();
            c.args(["storage", "init", "--size", "400M", "--runtime-dir"])
                .arg(&rt);
            stop_and_kill(c, &format!("{point}:1"), &ext4.path().join("killed.stderr"));
            // Killed: the image is formatted; never a mount; the loop
            // device of a kill after attach went with the process's fd.
            assert!(guard.img.exists(), "{point}");
            assert!(mounted(&rt).is_none(), "{point}");
            assert_eq!(loops_of(&guard.img), Vec::<String>::new(), "{point}");
            let o = wasp(&["storage", then], &rt);
            ok(&o);
            if then == "init" {
                assert!(
                    stdout(&o).contains("re-attached"),
                    "{point}: {}",
                    stdout(&o)
                );
                assert_eq!(fs_type(&rt), "xfs");
                assert_eq!(loops_of(&guard.img).len(), 1);
                ok(&wasp(&["storage", "remove"], &rt));
            } else {
                assert!(stdout(&o).contains("deleted"), "{point}: {}", stdout(&o));
            }
            assert_no_store(&rt);
            drop(guard);
        }
    }
}

#[test]
fn a_leftover_partial_image_and_a_bound_loop_device_are_cleaned_up() {
    root_or_skip!();
    let _s = serial();
    let ext4 = LoopFs::ext4(1024);
    let rt = ext4.path().join("rt");
    fs::create_dir(&rt).unwrap();
    let guard = StoreGuard::new(&rt);
    // What a kill inside mkfs leaves: a `.partial` image.
    let part = partial(&guard.img);
    File::create(&part).unwrap().set_len(400 << 20).unwrap();
    ok(&wasp(&["storage", "init", "--size", "400M"], &rt));
    assert!(!part.exists());
    ok(&wasp(&["storage", "remove"], &rt));
    assert_no_store(&rt);
    // A formatted image bound to a loop device without autoclear and not
    // mounted (as `losetup` without autoclear would leave it): remove
    // detaches it, found from its backing file.
    ok(&wasp(&["storage", "init", "--size", "400M"], &rt));
    assert!(Command::new("umount").arg(&rt).status().unwrap().success());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&guard.img)
        .unwrap();
    let dev = loopdev::attach(&f, 0, &guard.img).unwrap();
    drop((f, dev));
    assert_eq!(loops_of(&guard.img).len(), 1);
    let o = wasp(&["storage", "remove"], &rt);
    ok(&o);
    assert!(stdout(&o).contains("detached /dev/loop"), "{}", stdout(&o));
    assert_no_store(&rt);
    drop(guard);
}

#[test]
fn bad_input_gets_one_clear_error_and_nothing_half_made() {
    root_or_skip!();
    let _s = serial();
    let ext4 = LoopFs::ext4(2048);

    // Below what mkfs.xfs formats.
    let rt = ext4.path().join("small");
    let guard = StoreGuard::new(&rt);
    let o = wasp(&["storage", "init", "--size", "100M"], &rt);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--size 104857600 is too small: mkfs.xfs formats at least 300 MiB"),
        "{}",
        stderr(&o)
    );
    assert_no_store(&rt);
    drop(guard);

    // Too small for the snapshot (512 MiB of rootfs).
    let golden = snap(&ext4.path().join("golden"), 512);
    let rt = ext4.path().join("forsnap");
    let guard = StoreGuard::new(&rt);
    let mut c = wasp_cmd!();
    c.args(["storage", "init", "--size", "400M", "--runtime-dir"])
        .arg(&rt)
        .arg("--snapshot")
        .arg(&golden);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("--size 400 MiB is too small for snapshot") && e.contains("give --size"),
        "{e}"
    );
    assert_no_store(&rt);
    // A store too small for a snapshot placed later: one error, no
    // partial copy in the store.
    ok(&wasp(&["storage", "init", "--size", "400M"], &rt));
    let mut c = wasp_cmd!();
    c.args(["snapshot", "adopt", "--force", "--runtime-dir"])
        .arg(&rt)
        .arg(&golden);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("MiB free, and snapshot"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read_dir(rt.join("snapshots")).unwrap().count(), 0);
    ok(&wasp(&["storage", "remove"], &rt));
    assert_no_store(&rt);
    drop(guard);

    // Already a mount point of another filesystem: init and remove both
    // refuse, and leave it mounted.
    let rt = ext4.path().join("tmpfs");
    fs::create_dir(&rt).unwrap();
    let guard = StoreGuard::new(&rt);
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "wasptest-tmpfs"])
        .arg(&rt)
        .status()
        .unwrap()
        .success());
    let o = wasp(&["storage", "init", "--size", "400M"], &rt);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o)
            .contains("already a mount point of another filesystem (tmpfs from wasptest-tmpfs)"),
        "{}",
        stderr(&o)
    );
    let o = wasp(&["storage", "remove"], &rt);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a wasp store"), "{}", stderr(&o));
    assert_eq!(fs_type(&rt), "tmpfs");
    assert!(!guard.img.exists());
    drop(guard);

    // A runtime dir with files in it: the mount would hide them.
    let rt = ext4.path().join("busy");
    fs::create_dir(&rt).unwrap();
    fs::write(rt.join("keep-me"), b"x").unwrap();
    let guard = StoreGuard::new(&rt);
    let o = wasp(&["storage", "init", "--size", "400M"], &rt);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not empty") && stderr(&o).contains("keep-me"),
        "{}",
        stderr(&o)
    );
    assert_no_store(&rt);
    drop(guard);

    // A full disk: a tiny ext4 cannot hold what formatting writes.
    let tiny = LoopFs::ext4(48);
    let rt = tiny.path().join("rt");
    let guard = StoreGuard::new(&rt);
    let o = wasp(&["storage", "init", "--size", "1G"], &rt);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("MiB free; making the store needs"),
        "{}",
        stderr(&o)
    );
    assert_no_store(&rt);
    drop(guard);
}

#[test]
fn spawn_refuses_a_snapshot_on_another_filesystem_unless_allow_copy() {
    root_or_skip!();
    let _s = serial();
    let ext4 = LoopFs::ext4(512);
    // A writable 8 MiB rootfs, every block written, on the scratch ext4.
    let golden = snap(&ext4.path().join("golden"), 8);
    let img = ext4.path().join("wasp-store-run.img");
    let world = World::new(wasp_bin!(), "stc");
    let guard = StoreGuard {
        rt: world.run_dir(),
        img: img.clone(),
    };
    let storage = |args: &[&str]| {
        let mut c = wasp_cmd!();
        c.arg("storage")
            .args(args)
            .arg("--runtime-dir")
            .arg(world.run_dir());
        c.output().unwrap()
    };
    ok(&storage(&[
        "init",
        "--size",
        "400M",
        "--image",
        img.to_str().unwrap(),
    ]));
    assert_eq!(fs_type(&world.run_dir()), "xfs");

    let spawn = |extra: &[&str], snapshot: &Path| {
        let mut c = world.wasp(
            &[
                "spawn", "--vmm", "standin", "--count", "1", "--ready", "running", "--json",
            ],
            true,
        );
        c.args(extra).arg("--snapshot").arg(snapshot);
        c.output().unwrap()
    };
    let o = spawn(&[], &golden);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("is on another filesystem than the runtime dir"),
        "{e}"
    );
    assert!(
        e.contains("each clone would copy 8388608 bytes (8 MiB)"),
        "{e}"
    );
    assert!(
        e.contains("--allow-copy") && e.contains("wasp snapshot adopt"),
        "{e}"
    );
    assert_eq!(
        fs::read_dir(world.run_dir().join("clones"))
            .unwrap()
            .count(),
        0
    );

    let o = spawn(&["--allow-copy"], &golden);
    ok(&o);
    assert!(
        stderr(&o).contains("--allow-copy")
            && stderr(&o).contains("each clone copies 8388608 bytes"),
        "{}",
        stderr(&o)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["summary"]["disk_bytes_copied"], 8u64 << 20, "{r:#}");
    assert_eq!(r["clones"][0]["bytes_copied"], 8u64 << 20, "{r:#}");

    // Adopt places it in the store once; clones from there copy nothing.
    let mut c = wasp_cmd!();
    c.args(["snapshot", "adopt", "--force", "--json", "--runtime-dir"])
        .arg(world.run_dir())
        .arg(&golden);
    let o = c.output().unwrap();
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let placed = PathBuf::from(v["placed"]["dir"].as_str().unwrap());
    assert_eq!(
        placed,
        fs::canonicalize(world.run_dir())
            .unwrap()
            .join("snapshots/golden")
    );
    assert!(v["placed"]["bytes_copied"].as_u64().unwrap() >= 8 << 20);
    let o = spawn(&[], &placed);
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["summary"]["disk_bytes_copied"], 0, "{r:#}");
    assert_eq!(r["summary"]["storage_strategy"], "reflink", "{r:#}");
    assert_eq!(r["clones"][0]["bytes_copied"], 0, "{r:#}");

    // Clones live: remove refuses; after them it goes.
    let o = storage(&["remove", "--image", img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("2 clone dir(s)"), "{}", stderr(&o));
    world.kill_drain_and_assert_zero();
    ok(&storage(&["remove", "--image", img.to_str().unwrap()]));
    assert!(mounted(&world.run_dir()).is_none());
    assert_eq!(loops_of(&img), Vec::<String>::new());
    assert!(!img.exists());
    drop(world);
    drop(guard);
}

#[test]
fn doctor_says_the_bytes_per_clone_and_the_fix_then_zero_in_the_store() {
    root_or_skip!();
    let _s = serial();
    let ext4 = LoopFs::ext4(512);
    let golden = snap(&ext4.path().join("golden"), 8);
    let rt = ext4.path().join("rt");
    let guard = StoreGuard::new(&rt);
    let clone_disks = |snapshot: &Path| {
        let mut c = wasp_cmd!();
        c.args(["doctor", "--json", "--runtime-dir"])
            .arg(&rt)
            .arg("--snapshot")
            .arg(snapshot);
        let v: serde_json::Value = serde_json::from_slice(&c.output().unwrap().stdout).unwrap();
        let c = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "clone_disks")
            .unwrap()
            .clone();
        (
            c["status"].as_str().unwrap().to_owned(),
            c["detail"].as_str().unwrap().to_owned(),
        )
    };
    // Plain ext4: each clone copies the 8 MiB rootfs; the fix is printed.
    let (status, detail) = clone_disks(&golden);
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("copies 8388608 bytes (8 MiB)"), "{detail}");
    assert!(
        detail.contains(&format!(
            "`wasp storage init --runtime-dir {}`",
            rt.display()
        )),
        "{detail}"
    );
    let mut c = wasp_cmd!();
    c.args(["storage", "init", "--size", "400M", "--runtime-dir"])
        .arg(&rt)
        .arg("--snapshot")
        .arg(&golden);
    ok(&c.output().unwrap());
    // In the store: nothing copied.
    let (status, detail) = clone_disks(&rt.join("snapshots/golden"));
    assert_eq!(status, "ok", "{detail}");
    assert!(detail.contains("copy 0 bytes (reflink)"), "{detail}");
    // The original, outside the store: place it.
    let (status, detail) = clone_disks(&golden);
    assert_eq!(status, "warn", "{detail}");
    assert!(
        detail.contains("on another filesystem than the store")
            && detail.contains("wasp snapshot adopt"),
        "{detail}"
    );
    ok(&wasp(&["storage", "remove"], &rt));
    assert_no_store(&rt);
    drop(guard);
}
