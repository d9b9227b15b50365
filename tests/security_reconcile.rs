//! Reconcile acts only on what its own state dir owns (issue #18, findings
//! 1 and 3):
//!
//! - two state dirs share one host and one runtime dir: `wasp reconcile`
//!   of state dir B leaves the clone of state dir A alone (its VMM, its
//!   clone dir), though that clone has no record in B;
//! - a process whose argv merely names a clone's API socket is not a VMM
//!   of wasp's: a decoy running as `nobody` that names a clone dir which
//!   does not exist, and a root decoy that names a real-looking clone dir
//!   wasp never marked, both survive `wasp reconcile`;
//! - real orphans of the state dir are still killed (tests/crash.rs).

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin};

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use testkit::cli::{wasp_in, World};

/// A process that stays until its stdin closes, whose argv names `sock` as
/// `--api-sock`, like a VMM's; run as `uid` when given. Returns once it
/// runs (it says so on stdout).
fn decoy(sock: &Path, uid: Option<u32>) -> Child {
    // setpriv drops every id and group, then execs the shell (same pid).
    let mut c = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={u}"))
                .arg(format!("--regid={u}"))
                .args(["--clear-groups", "/bin/sh"]);
            c
        }
        None => Command::new("/bin/sh"),
    };
    c.args(["-c", "echo up; read x", "sh", "--api-sock"])
        .arg(sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    child
}

/// Asserts `child` was not killed, then ends it by closing its stdin.
fn assert_alive_then_end(mut child: Child, what: &str) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "{what} was killed: {:?}",
        child.try_wait()
    );
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"\n");
    drop(stdin);
    assert!(child.wait().unwrap().success(), "{what} ended by itself");
}

#[test]
fn reconcile_of_another_state_dir_leaves_a_clone_alone() {
    root_or_skip!();
    let a = World::new(wasp_bin!(), "sra");
    let b = World::new(wasp_bin!(), "srb");
    let v = a.json(a.spawn_n("1"));
    assert_eq!(v["summary"]["ready"], 1, "{v:#}");
    let id = v["clones"][0]["id"].as_str().unwrap().to_owned();
    let dir = a.run_dir().join("clones").join(format!("wasp-{id}"));
    assert!(dir.is_dir());

    // State dir B, same runtime dir as A, its own pool.
    let out = wasp_in(
        wasp_bin!(),
        &["reconcile", "--json"],
        &b.state(),
        &a.run_dir(),
        Some((b.host.name(), b.pool.as_str())),
    )
    .output()
    .unwrap();
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(rep["orphans_killed"], serde_json::json!([]), "{rep:#}");
    assert_eq!(rep["dirs_removed"], serde_json::json!([]), "{rep:#}");
    assert_eq!(rep["errors"], serde_json::json!([]), "{rep:#}");

    // A's clone is untouched: alive, listed, its files in place.
    assert!(dir.is_dir(), "B's reconcile removed A's clone dir");
    let ls = a.json(a.wasp(&["ls", "--json"], false));
    assert_eq!(ls["clones"][0]["id"], id.as_str(), "{ls:#}");
    assert_eq!(ls["clones"][0]["alive"], true, "{ls:#}");
    // And A's own reconcile adopts it.
    let rec = a.reconcile();
    assert_eq!(a.assert_only_adopted(&rec), 1);
    a.kill_drain_and_assert_zero();
}

#[test]
fn decoys_that_name_a_clone_socket_survive_reconcile() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "srd");
    let clones = s.run_dir().join("clones");
    std::fs::create_dir_all(&clones).unwrap();
    // As nobody, naming a clone dir that does not exist.
    let nobody = decoy(&clones.join("wasp-notavm/api.sock"), Some(65534));
    // As root, naming a real-looking clone dir wasp never marked.
    let unmarked = clones.join("wasp-decoy1");
    std::fs::create_dir(&unmarked).unwrap();
    std::fs::write(unmarked.join("rootfs"), b"x").unwrap();
    let rooted = decoy(&unmarked.join("api.sock"), None);
    // Both run: /proc shows their argv.
    for c in [&nobody, &rooted] {
        let cmd = std::fs::read(format!("/proc/{}/cmdline", c.id())).unwrap();
        let want = format!("--api-sock\0{}", clones.display());
        assert!(String::from_utf8_lossy(&cmd).contains(&want), "{cmd:?}");
    }

    let rep = s.reconcile();
    assert_eq!(rep["orphans_killed"], serde_json::json!([]), "{rep:#}");
    assert_eq!(rep["dirs_removed"], serde_json::json!([]), "{rep:#}");
    assert_alive_then_end(nobody, "the nobody decoy");
    assert_alive_then_end(rooted, "the root decoy");
    assert!(
        unmarked.join("rootfs").exists(),
        "an unmarked dir is not wasp's"
    );
    std::fs::remove_dir_all(&unmarked).unwrap();
}

/// A limit this host's cgroup v2 takes (hugetlb on a hybrid host like the
/// build machines, pids on a unified one).
fn cgroup_limit() -> String {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = wasp::vmm::cgroup::find_cgroup2(&mi).expect("cgroup2 is mounted");
    let ctl = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap();
    let has = |c: &str| ctl.split_whitespace().any(|x| x == c);
    if has("hugetlb") && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        "hugetlb.2MB.max=4194304".into()
    } else if has("pids") {
        "pids.max=64".into()
    } else {
        panic!("cgroup v2 here offers neither hugetlb nor pids: {ctl:?}")
    }
}

#[test]
fn reconcile_of_another_state_dir_leaves_a_clones_cgroup_alone() {
    root_or_skip!();
    let a = World::new(wasp_bin!(), "srca");
    let b = World::new(wasp_bin!(), "srcb");
    let mut spawn = a.spawn_n("1");
    spawn.args(["--cgroup", &cgroup_limit()]);
    let v = a.json(spawn);
    assert_eq!(v["summary"]["ready"], 1, "{v:#}");
    let id = v["clones"][0]["id"].as_str().unwrap().to_owned();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.state().join("clones").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    let cg = std::path::PathBuf::from(rec["cgroup"].as_str().unwrap());
    // Under A's own parent, named by A's owner id.
    let owner = std::fs::read_to_string(a.state().join("owner")).unwrap();
    assert_eq!(
        cg.parent().unwrap().file_name().unwrap().to_str(),
        Some(owner.trim()),
        "{cg:?}"
    );
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    let pid = rec["pid"].to_string();
    assert!(procs.lines().any(|p| p == pid), "{procs}");

    let out = wasp_in(
        wasp_bin!(),
        &["reconcile", "--json"],
        &b.state(),
        &a.run_dir(),
        Some((b.host.name(), b.pool.as_str())),
    )
    .output()
    .unwrap();
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["dirs_removed"], serde_json::json!([]), "{rep:#}");
    assert_eq!(rep["orphans_killed"], serde_json::json!([]), "{rep:#}");
    assert_eq!(
        std::fs::read_to_string(cg.join("cgroup.procs")).unwrap(),
        procs,
        "A's clone is still in its cgroup"
    );
    let ls = a.json(a.wasp(&["ls", "--json"], false));
    assert_eq!(ls["clones"][0]["alive"], true, "{ls:#}");
    a.kill_drain_and_assert_zero();
    assert!(!cg.exists(), "kill removes the clone's cgroup");
}
