//! Several `wasp spawn` processes on one pool at once. Slots are leased
//! across processes ([`wasp::pipeline::lease`]), so on a cold pool and on a warm one
//! no slot or clone IP is handed out twice, and a spawner killed with
//! SIGKILL in the middle does not disturb the others.
//!
//! The spawners are held by a [`Spawners`] guard: when an assertion fails,
//! every one still running is SIGKILLed and reaped and the world's clones
//! and pool are removed, so a failing test leaves no process and no slot.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin};

use std::collections::{BTreeSet, VecDeque};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use testkit::cli::{stop_and_kill, Seen, World};

const EACH: usize = 50;

/// The test's `wasp spawn` children. Dropped (also when an assertion
/// fails), it SIGKILLs (through the child handle) and reaps every child it
/// still holds, then, if the test is failing or a child had to be killed,
/// kills the world's clones and removes its pool: nothing keeps building
/// slots after the test, and nothing it built is left.
struct Spawners<'w> {
    world: &'w World,
    children: VecDeque<Child>,
}

impl<'w> Spawners<'w> {
    /// `n` spawns of `EACH` clones each, started at once.
    fn start(world: &'w World, n: usize) -> Self {
        let mut g = Self {
            world,
            children: VecDeque::new(),
        };
        for _ in 0..n {
            g.push(world.spawn_ready(&EACH.to_string(), "tcp:22"));
        }
        g
    }

    /// Starts `c` (stdout and stderr piped) and holds it.
    fn push(&mut self, mut c: Command) -> &Child {
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.children.push_back(child);
        self.children.back().unwrap()
    }

    /// Each child's batch, in order; every clone of it ready. A child is
    /// let go only once it has exited.
    fn finish(&mut self) -> Vec<serde_json::Value> {
        let mut batches = Vec::new();
        while let Some(c) = self.children.pop_front() {
            batches.push(finish(c));
        }
        batches
    }
}

impl Drop for Spawners<'_> {
    fn drop(&mut self) {
        let killed = !self.children.is_empty();
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if killed || std::thread::panicking() {
            self.world.remove_clones_and_pool();
        }
    }
}

/// The batch's JSON; every clone of it ready.
fn finish(c: Child) -> serde_json::Value {
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "a concurrent spawn failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clones = v["clones"].as_array().unwrap();
    assert_eq!(clones.len(), EACH);
    assert!(clones.iter().all(|c| c["ok"] == true), "{v:#}");
    v
}

/// The ids of every clone in `batches`, after checking that no two of them
/// share a slot, a clone IP or an id.
fn distinct(batches: &[serde_json::Value]) -> BTreeSet<String> {
    let clones: Vec<&serde_json::Value> = batches
        .iter()
        .flat_map(|b| b["clones"].as_array().unwrap())
        .collect();
    let field = |k: &str| -> BTreeSet<String> {
        clones
            .iter()
            .map(|c| c[k].as_str().unwrap().to_owned())
            .collect()
    };
    let n = clones.len();
    assert_eq!(field("netns").len(), n, "a slot was handed out twice");
    assert_eq!(
        field("clone_ip").len(),
        n,
        "a clone IP was handed out twice"
    );
    let ids = field("id");
    assert_eq!(ids.len(), n, "a clone id was given twice");
    ids
}

fn four_at_once(s: &World) {
    let batches = Spawners::start(s, 4).finish();
    let ids = distinct(&batches);
    assert_eq!(ids.len(), 4 * EACH);
    assert_eq!(s.assert_only(&ids), 4 * EACH);
    s.kill_drain_and_assert_zero();
}

#[test]
fn four_spawns_share_a_cold_pool() {
    root_or_skip!();
    four_at_once(&World::new(wasp_bin!(), "ccold"));
}

#[test]
fn four_spawns_share_a_warm_pool() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "cwarm");
    s.json(s.wasp(&["pool", "warm", "--size", "120", "--json"], true));
    four_at_once(&s);
}

#[test]
fn a_spawner_killed_mid_batch_leaves_the_others_whole() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "ckill");
    let mut others = Spawners::start(&s, 3);
    // The fourth stops itself at its 10th launched clone, while the others
    // are in flight, and is SIGKILLed there.
    stop_and_kill(
        s.spawn_ready(&EACH.to_string(), "tcp:22"),
        "clone-launched:10",
        &s.tmp.path().join("killed.stderr"),
    );
    let batches = others.finish();
    let mut want = distinct(&batches);
    // The killed run's ready clones are adopted, the rest removed; the
    // three others' clones are all untouched.
    let rec = s.reconcile();
    for a in rec["adopted"].as_array().unwrap() {
        want.insert(a["id"].as_str().unwrap().to_owned());
    }
    assert!(want.len() >= 3 * EACH);
    s.assert_only(&want);
    s.kill_drain_and_assert_zero();
}

#[test]
fn a_failed_assertion_leaves_no_spawner_and_no_slot() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "cfail");
    let mut pids = Vec::new();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut g = Spawners {
            world: &s,
            children: VecDeque::new(),
        };
        // Two spawners stop themselves mid-batch (slots taken, clones
        // launched), as if the test failed while they were in flight.
        for _ in 0..2 {
            let mut c = s.spawn_ready(&EACH.to_string(), "tcp:22");
            c.env(wasp::testhook::ENV, "clone-launched:3");
            let pid = Pid::from_raw(g.push(c).id() as i32);
            pids.push(pid);
            match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap() {
                WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
                other => panic!("spawn did not stop at clone-launched:3: {other:?}"),
            }
        }
        assert_ne!(s.seen(), Seen::default(), "the spawners built nothing");
        panic!("a failing assertion with two spawners in flight");
    }));
    assert!(failed.is_err());
    // Reaped, not just signalled: no process of theirs is left.
    for pid in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "spawner {pid} still exists"
        );
    }
    assert_eq!(s.seen(), Seen::default(), "the failed test left something");
}
