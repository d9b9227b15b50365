//! `--env-file` as a boundary (issue #18, finding 5), through the library:
//! the file is opened once without following a symlink and without
//! blocking, every check is made on that open fd, every directory on its
//! path must be one only root can change, its size is capped, and no text
//! of the file ever appears in an error (Display or Debug, whole chain).
//! Root: ownership is the point.

use wasp_testkit::root_or_skip;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use wasp::pipeline::env::{Env, EnvError};

const NOBODY: u32 = 65534;

/// A root-owned directory (mode 0700) in a fresh temp dir, and a file
/// `name` in it holding `text` with `mode`.
fn file_in(dir: &Path, name: &str, text: &[u8], mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// The error's whole chain: Display of every link and Debug of the top.
fn chain(e: &EnvError) -> String {
    let mut s = format!("{e:?}\n{e}");
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(&format!("\n{c}\n{c:?}"));
        cur = c.source();
    }
    s
}

/// `add_file` on a thread; fails the test (instead of hanging forever)
/// when it has not returned within a generous bound.
fn add_file_bounded(p: &Path) -> (Env, Result<(), EnvError>) {
    let (tx, rx) = mpsc::channel();
    let p = p.to_path_buf();
    std::thread::spawn(move || {
        let mut e = Env::new();
        let r = e.add_file(&p);
        let _ = tx.send((e, r));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("add_file did not return: it blocked on the env file")
}

#[test]
fn a_symlink_at_open_time_is_refused_not_followed() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = file_in(elsewhere.path(), "other.env", b"TOKEN=canary-link\n", 0o600);
    let p = tmp.path().join("secrets.env");
    std::os::unix::fs::symlink(&target, &p).unwrap();
    let (env, r) = add_file_bounded(&p);
    let e = r.unwrap_err();
    let all = chain(&e);
    assert!(
        all.contains("secrets.env") && all.contains("symlink"),
        "{all}"
    );
    assert!(!all.contains("canary"), "{all}");
    assert!(env.is_empty(), "nothing read through the link");
}

#[test]
fn a_fifo_is_refused_at_once() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("secrets.env");
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // No writer ever opens it: a blocking open would wait forever.
    let (env, r) = add_file_bounded(&p);
    let all = chain(&r.unwrap_err());
    assert!(all.contains("not a regular file"), "{all}");
    assert!(env.is_empty());
}

#[test]
fn a_file_over_the_size_cap_is_refused() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let cap = wasp::pipeline::env::MAX_FILE_LEN as usize;
    // Comment lines only: the old reader accepted any amount of them.
    let mut text = b"A=1\n".to_vec();
    while text.len() < cap {
        text.extend_from_slice(b"# padding padding padding padding\n");
    }
    text.truncate(cap);
    *text.last_mut().unwrap() = b'\n';
    let p = file_in(tmp.path(), "exact.env", &text, 0o600);
    let (env, r) = add_file_bounded(&p);
    r.unwrap();
    assert_eq!(env.len(), 1, "a file of exactly the cap is read");

    text.push(b'\n');
    let p = file_in(tmp.path(), "big.env", &text, 0o600);
    let (env, r) = add_file_bounded(&p);
    let all = chain(&r.unwrap_err());
    assert!(all.contains("big.env"), "{all}");
    assert!(all.contains(&format!("{} bytes", cap + 1)), "{all}");
    assert!(all.contains(&format!("{cap}-byte")), "{all}");
    assert!(env.is_empty());
}

#[test]
fn a_bad_line_is_named_by_number_and_its_text_never_shown() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let long = format!("LONG=s3cret-long-{}\n", "x".repeat(40_000));
    // (file text, what the error says). Every secret-looking token below
    // holds "S3cret" or "s3cret"; none may be printed, keys included (a
    // token like ghp_... is a valid identifier).
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"A=1\nDB_PASSWORD: hunter2-S3cret=x\n".to_vec(),
            "not a valid identifier",
        ),
        (b"A=1\nhunter2-S3cret\n".to_vec(), "KEY=VALUE"),
        (b"ghp_S3cret=1\nghp_S3cret=2\n".to_vec(), "given twice"),
        (b"A=1\nB=s3cret\0x\n".to_vec(), "NUL byte"),
        (
            long.replace("LONG", "A=1\nLONG").into_bytes(),
            "bytes, over",
        ),
        (b"A=1\nAGENT_ID=s3cret\n".to_vec(), "AGENT_ID"),
        (b"A=1\nB=s3cret-\xff\xfe\n".to_vec(), "UTF-8"),
    ];
    for (text, says) in cases {
        let p = file_in(tmp.path(), "secrets.env", &text, 0o600);
        let (_, r) = add_file_bounded(&p);
        let e = r.unwrap_err();
        let all = chain(&e);
        let shown = String::from_utf8_lossy(&text);
        assert!(
            all.contains("secrets.env line 2"),
            "{shown:?}: no line: {all}"
        );
        assert!(all.contains(says), "{shown:?}: lacks {says:?}: {all}");
        for secret in ["S3cret", "s3cret", "hunter2", "ghp_", "DB_PASSWORD"] {
            assert!(!all.contains(secret), "{shown:?}: shows {secret}: {all}");
        }
    }
}

#[test]
fn owner_and_mode_are_checked_on_the_open_file() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        let p = file_in(tmp.path(), "secrets.env", b"TOKEN=canary\n", mode);
        let all = chain(&Env::new().add_file(&p).unwrap_err());
        assert!(all.contains(&format!("mode {mode:04o}")), "{all}");
        assert!(!all.contains("canary"), "{all}");
    }
    let p = file_in(tmp.path(), "secrets.env", b"TOKEN=canary\n", 0o600);
    nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    let all = chain(&Env::new().add_file(&p).unwrap_err());
    assert!(
        all.contains("uid 65534") && all.contains("chown root"),
        "{all}"
    );
    assert!(!all.contains("canary"), "{all}");
    nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    let mut e = Env::new();
    e.add_file(&p).unwrap();
    assert_eq!(e.keys().collect::<Vec<_>>(), ["TOKEN"]);
}

/// The reproduction: `nobody` owns the directory that holds the
/// (root-owned, 0600) env file, so nobody can rename another file or a
/// symlink over it at any moment. Refused whatever the file is right now.
#[test]
fn a_directory_another_user_can_change_is_refused() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("nobodys");
    std::fs::create_dir(&d).unwrap();
    let p = file_in(&d, "secrets.env", b"TOKEN=canary-dir\n", 0o600);
    nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    let (env, r) = add_file_bounded(&p);
    let all = chain(&r.unwrap_err());
    assert!(
        all.contains("nobodys") && all.contains("uid 65534"),
        "{all}"
    );
    assert!(!all.contains("canary"), "{all}");
    assert!(env.is_empty());

    // Root-owned but group- or other-writable (and not sticky): the same.
    nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    for mode in [0o770, 0o757] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        let all = chain(&Env::new().add_file(&p).unwrap_err());
        assert!(all.contains(&format!("mode {mode:04o}")), "{all}");
    }

    // A directory reached through a symlink nobody controls: nobody
    // points `link` at a root-only directory of other secrets.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let other = tmp.path().join("prod");
    std::fs::create_dir(&other).unwrap();
    file_in(&other, "secrets.env", b"TOKEN=canary-prod\n", 0o600);
    std::os::unix::fs::symlink(&other, d.join("link")).unwrap();
    nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    let (env, r) = add_file_bounded(&d.join("link/secrets.env"));
    let all = chain(&r.unwrap_err());
    assert!(all.contains("uid 65534"), "{all}");
    assert!(!all.contains("canary"), "{all}");
    assert!(env.is_empty());
}

/// What stays accepted: a sticky world-writable directory on the path
/// (like /tmp: others cannot rename root's entries), and root's symlinks
/// among the directories (another user's is refused).
#[test]
fn trusted_directories_and_their_symlinks_are_accepted() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let sticky = tmp.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let real = sticky.join("real");
    std::fs::create_dir(&real).unwrap();
    file_in(&real, "secrets.env", b"TOKEN=1\n", 0o600);
    std::os::unix::fs::symlink("real", sticky.join("rel")).unwrap();
    std::os::unix::fs::symlink(&real, tmp.path().join("abs")).unwrap();
    // Anyone may add a symlink to a sticky directory: one not owned by
    // root is not followed.
    std::os::unix::fs::symlink(&real, sticky.join("planted")).unwrap();
    std::os::unix::fs::lchown(sticky.join("planted"), Some(NOBODY), None).unwrap();
    let all = chain(
        &Env::new()
            .add_file(&sticky.join("planted/secrets.env"))
            .unwrap_err(),
    );
    assert!(
        all.contains("planted") && all.contains("symlink owned by uid 65534"),
        "{all}"
    );
    for p in [
        real.join("secrets.env"),
        sticky.join("rel/secrets.env"),
        tmp.path().join("abs/secrets.env"),
        tmp.path().join("abs/../real/./secrets.env"),
    ] {
        let mut e = Env::new();
        e.add_file(&p)
            .unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
        assert_eq!(e.len(), 1);
    }
}
