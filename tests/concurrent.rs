//! Several `wasp spawn` processes on one pool at once. Slots are leased
//! across processes ([`wasp::pipeline::lease`]), so on a cold pool and on a warm one
//! no slot or clone IP is handed out twice, and a spawner killed with
//! SIGKILL in the middle does not disturb the others.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin};

use std::collections::BTreeSet;
use std::process::{Child, Stdio};

use testkit::cli::{stop_and_kill, World};

const EACH: usize = 50;

fn start(s: &World) -> Child {
    s.spawn_ready(&EACH.to_string(), "tcp:22")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
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
    let children: Vec<Child> = (0..4).map(|_| start(s)).collect();
    let batches: Vec<serde_json::Value> = children.into_iter().map(finish).collect();
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
    let others: Vec<Child> = (0..3).map(|_| start(&s)).collect();
    // The fourth stops itself at its 10th launched clone, while the others
    // are in flight, and is SIGKILLed there.
    stop_and_kill(
        s.spawn_ready(&EACH.to_string(), "tcp:22"),
        "clone-launched:10",
        &s.tmp.path().join("killed.stderr"),
    );
    let batches: Vec<serde_json::Value> = others.into_iter().map(finish).collect();
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
