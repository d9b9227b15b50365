//! The commands end to end, as a user runs them: `wasp demo`, and
//! `wasp spawn` through the real pool in a private host netns, then `ls`,
//! `kill` and `pool drain`, checked with `ip netns` as an independent reader.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin, wasp_cmd};

use std::process::Command;

use testkit::cli::World;

/// `wasp` with no `WASP_*` variable of the environment.
fn wasp() -> Command {
    wasp_cmd!()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The one CLI fixture, with a host netns (`wasptest-…-<tag>`) that wasp
/// creates when missing and a pool `<pool><pid>`.
fn world(tag: &str, pool: &str) -> World {
    World::with_host_by_wasp(wasp_bin!(), tag, pool)
}

/// `wasp snapshot synth` of a small stand-in snapshot at `out`.
fn synth(out: &std::path::Path) -> std::process::Output {
    testkit::cli::synth_small(wasp_bin!(), out)
}

/// Each demo has its own pool `demo<pid>` and host netns, but the tests
/// below compare `ip netns` before and after: one demo at a time.
static DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn demo_spawns_checks_agents_and_removes_everything() {
    root_or_skip!();
    let _g = DEMO.lock().unwrap_or_else(|p| p.into_inner());
    let before = testkit::ip_netns_list();
    let out = wasp()
        .args(["demo", "--count", "6", "--parallel", "3", "--json"])
        .output()
        .unwrap();
    let v = json(&out);
    testkit::ok(&out);
    assert_eq!(v["spawn"]["summary"]["ready"], 6);
    assert_eq!(v["agents_ok"], 6);
    assert_eq!(v["cleanup_errors"].as_array().unwrap().len(), 0);
    let host = v["host_netns"].as_str().unwrap();
    let after = testkit::ip_netns_list();
    assert!(!after.iter().any(|n| n == host), "demo left {host}");
    let new: Vec<_> = after
        .iter()
        .filter(|n| !before.contains(n) && n.starts_with("wasp-demo"))
        .collect();
    assert!(new.is_empty(), "demo left slots: {new:?}");
}

#[test]
fn spawn_ls_kill_drain_through_the_real_pool() {
    root_or_skip!();
    let w = world("cli", "c");
    let snap = w.synth();
    let mut c = w.wasp(
        &[
            "spawn",
            "--vmm",
            "standin",
            "--count",
            "3",
            "--ready",
            "tcp:22",
            "--json",
            "--env",
            "API_URL=http://10.0.0.1:8080/",
        ],
        true,
    );
    c.arg("--snapshot").arg(&snap);
    let out = c.output().unwrap();
    let v = json(&out);
    assert!(out.status.success(), "{v:#}");
    let clones = v["clones"].as_array().unwrap();
    assert_eq!(clones.len(), 3);
    for cl in clones {
        assert_eq!(cl["ok"], true);
        assert_eq!(cl["host_netns"], w.host.name());
        assert_eq!(cl["ready_port"], 22);
        assert!(cl["phases_ms"]["load"].as_f64().unwrap() > 0.0);
    }
    // The slots exist, seen by ip.
    let names = testkit::ip_netns_list();
    for cl in clones {
        assert!(names.contains(&cl["netns"].as_str().unwrap().to_owned()));
    }
    let ls = json(&w.wasp(&["ls", "--json"], false).output().unwrap());
    assert_eq!(ls["clones"].as_array().unwrap().len(), 3);
    assert!(ls["clones"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["alive"] == true));
    let pids: Vec<i64> = ls["clones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_i64().unwrap())
        .collect();

    let out = w
        .wasp(&["kill", "--all", "--json"], false)
        .output()
        .unwrap();
    testkit::ok(&out);
    for p in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .unwrap()
                    .contains(") Z"),
            "VMM {p} still runs"
        );
    }
    let out = w.wasp(&["ls", "--json"], false).output().unwrap();
    assert_eq!(json(&out)["clones"].as_array().unwrap().len(), 0);

    let out = w.wasp(&["pool", "drain", "--json"], true).output().unwrap();
    testkit::ok(&out);
    let prefix = format!("wasp-{}-", w.pool);
    assert!(
        !testkit::ip_netns_list()
            .iter()
            .any(|n| n.starts_with(&prefix)),
        "slots left"
    );
}

#[test]
fn bad_counts_are_usage_or_runtime_errors_with_a_clear_message() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let out = wasp()
        .args(["spawn", "--vmm", "standin", "--count", "0", "--snapshot"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--count 0 is out of range"), "{err}");
    let out = wasp()
        .args(["spawn", "--count", "x", "--snapshot", "/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_snapshot_takes_vmm_standin_and_refuses_firecracker_with_a_reason() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let run = |vmm: &str, count: &str| {
        wasp()
            .args(["spawn", "--demo-snapshot", "--vmm", vmm, "--count", count])
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .arg("--runtime-dir")
            .arg(tmp.path().join("run"))
            .output()
            .unwrap()
    };
    // `--vmm standin` says what --demo-snapshot means anyway: the parser
    // takes it, and the run goes on to the next check (the count).
    let out = run("standin", "0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--count 0 is out of range"), "{err}");
    assert!(!err.contains("cannot be used with"), "{err}");
    // Firecracker cannot load the stand-in's snapshot: refused with the
    // reason, before the demo snapshot or any slot is made.
    let out = run("firecracker", "1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--demo-snapshot cannot be used with --vmm firecracker")
            && err.contains("stand-in"),
        "{err}"
    );
    assert!(!tmp
        .path()
        .join("run")
        .join(wasp::bench::demo::DEMO_SNAPSHOT_NAME)
        .exists());
}

#[test]
fn without_pool_status_reconcile_and_drain_cover_every_pool_of_the_state_dir() {
    root_or_skip!();
    let w = world("allp", "a");
    let snap = w.synth();
    let mut c = w.wasp(
        &["spawn", "--vmm", "standin", "--count", "2", "--json"],
        true,
    );
    c.arg("--snapshot").arg(&snap);
    testkit::ok(&c.output().unwrap());

    // No --pool: the pool this state dir's spawn made (in a host netns of
    // its own) is found with its own settings.
    let v = json(
        &w.wasp(&["pool", "status", "--json"], false)
            .output()
            .unwrap(),
    );
    let pools = v["pools"].as_array().unwrap();
    let mine = pools
        .iter()
        .find(|p| p["pool"] == w.pool.as_str())
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(mine["host_netns"], w.host.name());
    assert_eq!(mine["slots"], 2, "{v:#}");
    let r = json(&w.wasp(&["reconcile", "--json"], false).output().unwrap());
    let rp = r["pools"].as_array().unwrap();
    let mine = rp
        .iter()
        .find(|p| p["pool"] == w.pool.as_str())
        .unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(mine["held"], 2, "{r:#}");
    assert_eq!(r["adopted"].as_array().unwrap().len(), 2, "{r:#}");

    // Drain names the pools and asks which; nothing is removed.
    let out = w.wasp(&["pool", "drain"], false).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&w.pool) && err.contains("--all"), "{err}");
    assert!(testkit::ip_netns_list().contains(&w.host.name().to_owned()));

    // --all drains it, with the host netns wasp made for it.
    testkit::ok(&w.wasp(&["kill", "--all"], false).output().unwrap());
    let d = json(
        &w.wasp(&["pool", "drain", "--all", "--json"], false)
            .output()
            .unwrap(),
    );
    assert_eq!(d["pool"], w.pool.as_str(), "{d:#}");
    assert_eq!(d["host_netns_removed"], w.host.name(), "{d:#}");
    let names = testkit::ip_netns_list();
    assert!(!names.contains(&w.host.name().to_owned()), "{names:?}");
    let prefix = format!("wasp-{}-", w.pool);
    assert!(!names.iter().any(|n| n.starts_with(&prefix)), "{names:?}");
    let v = json(
        &w.wasp(&["pool", "status", "--json"], false)
            .output()
            .unwrap(),
    );
    assert!(
        !v["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pool"] == w.pool.as_str()),
        "{v:#}"
    );
}

/// `--kernel K --rootfs R --out OUT` of `wasp snapshot create`, with the
/// guest files of [`testkit::guest_files`].
fn guest_args(
    c: &mut Command,
    (kernel, rootfs): &(std::path::PathBuf, std::path::PathBuf),
    out: &std::path::Path,
) {
    c.arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--out")
        .arg(out);
}

#[test]
fn snapshot_create_with_firecracker_then_spawn_from_it() {
    root_or_skip!();
    let fc = testkit::firecracker_bin();
    let w = world("mk", "m");
    let guest = testkit::guest_files(w.tmp.path());
    let out_dir = w.tmp.path().join("golden");
    let mut c = w.wasp(
        &[
            "snapshot",
            "create",
            "--mem-mib",
            "128",
            "--ready",
            "serial:^wasp-testguest ready",
            "--json",
        ],
        true,
    );
    guest_args(&mut c, &guest, &out_dir);
    c.arg("--firecracker").arg(&fc);
    let out = c.output().unwrap();
    let v = json(&out);
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["manifest"]["vmm"], "firecracker");
    assert_eq!(v["manifest"]["mmds"]["version"], "V2");
    let spawn = |count: &str, extra: &[&str]| {
        w.wasp(
            &["spawn", "--count", count, "--ready", "running", "--json"],
            true,
        )
        .args(extra)
        .arg("--snapshot")
        .arg(&out_dir)
        .arg("--firecracker")
        .arg(&fc)
        .output()
        .unwrap()
    };
    let out = spawn("2", &["--vmm", "firecracker"]);
    let v = json(&out);
    // One more clone in jailer mode, from the same snapshot and pool.
    let jailed = spawn("1", &["--jailer", "--jailer-id-range", "64002-64002"]);
    let jv = json(&jailed);
    let jail_uid = jv["clones"][0]["pid"].as_i64().and_then(|pid| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        st.lines()
            .find(|l| l.starts_with("Uid:"))
            .map(str::to_owned)
    });
    let jail_dir = w.run_dir().join("jail/firecracker");
    let jails = std::fs::read_dir(&jail_dir).map(|d| d.count()).unwrap_or(0);
    let kill = w.wasp(&["kill", "--all"], false).output().unwrap();
    let jails_after = std::fs::read_dir(&jail_dir).map(|d| d.count()).unwrap_or(0);
    let drain = w.wasp(&["pool", "drain"], true).output().unwrap();
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["summary"]["ready"], 2);
    assert!(jailed.status.success(), "{jv:#}");
    assert_eq!(
        jail_uid.as_deref(),
        Some("Uid:\t64002\t64002\t64002\t64002")
    );
    assert_eq!(
        (jails, jails_after),
        (1, 0),
        "one jail while it ran, none after kill"
    );
    testkit::ok(&kill);
    testkit::ok(&drain);
}

#[test]
fn snapshot_create_with_the_standin_and_tcp_readiness_then_spawn_from_it() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "mkst");
    let dir = s.tmp.path();
    let guest = testkit::guest_files(dir);
    let create = |out: &std::path::Path, ready: &str, timeout: &str| {
        let mut c = s.wasp(
            &[
                "snapshot",
                "create",
                "--vmm",
                "standin",
                "--mem-mib",
                "32",
                "--timeout",
                timeout,
                "--json",
                "--ready",
                ready,
            ],
            true,
        );
        guest_args(&mut c, &guest, out);
        c
    };
    let golden = dir.join("golden");
    let v = s.json(create(&golden, "tcp:22", "10"));
    let m = &v["manifest"];
    assert_eq!(m["vmm"], "standin");
    assert_eq!(
        m["drives"][0]["path_on_host"],
        wasp::paths::stable_drive_path("rootfs").to_str().unwrap()
    );
    assert_eq!(m["mmds"]["version"], "V2");
    assert_eq!(m["mmds"]["ipv4_address"], "169.254.169.254");
    assert_eq!(m["network_interfaces"][0]["guest_ip"], "192.168.241.2");
    // What it printed is what it wrote, and it validates with its sums.
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join(wasp::snapshot::MANIFEST_FILE)).unwrap())
            .unwrap();
    assert_eq!(&on_disk, m);
    wasp::snapshot::check(&golden, true).unwrap();

    let mut c = s.wasp(
        &[
            "spawn", "--vmm", "standin", "--count", "3", "--ready", "tcp:22", "--json",
        ],
        true,
    );
    c.arg("--snapshot").arg(&golden);
    let v = s.json(c);
    let clones = v["clones"].as_array().unwrap();
    assert_eq!(v["summary"]["ready"], 3, "{v:#}");
    let agents = || {
        for cl in clones {
            assert_eq!(cl["ready_port"], 22);
            let ip: std::net::Ipv4Addr = cl["clone_ip"].as_str().unwrap().parse().unwrap();
            let id = s.host.run(|| {
                wasp::bench::demo::agent_id(ip, std::time::Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("agent of {} at {ip}: {e}", cl["id"]))
            });
            assert_eq!(id, cl["id"].as_str().unwrap(), "agent at {ip}");
        }
    };
    agents();

    // The guest never listens on 23: readiness fails at its deadline, with
    // the VMM's last output in the one error, and nothing left at --out.
    // It boots in a free slot, never in one a live clone holds.
    let failed = dir.join("never");
    let out = create(&failed, "tcp:23", "1").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not become ready (tcp:23) within 1s; the VMM's last output:")
            && err.contains("userspace guest up at 192.168.241.2/29"),
        "{err}"
    );
    assert!(!failed.exists());
    let stray: Vec<_> = testkit::cli::names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    agents();

    s.kill_drain_and_assert_zero();
}

#[test]
fn pool_drain_refuses_while_clones_live_and_force_kills_them_first() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "drain");
    let v = s.json(s.spawn_ready("3", "tcp:22"));
    assert_eq!(v["summary"]["ready"], 3, "{v:#}");
    let ids = testkit::cli::ids(&v["clones"]);
    let before = s.seen();
    assert_eq!(before.vmms.len(), 3);

    let refused = |want: &std::collections::BTreeSet<String>| {
        let out = s.wasp(&["pool", "drain", "--json"], true).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(out.stdout.is_empty(), "no JSON document on a refusal");
        assert!(
            err.contains(&format!(
                "pool {} has {} live clone(s): ",
                s.pool,
                want.len()
            )),
            "{err}"
        );
        assert!(
            err.contains("wasp kill") && err.contains("--force"),
            "{err}"
        );
        for id in &ids {
            assert_eq!(err.contains(id.as_str()), want.contains(id), "{id}: {err}");
        }
        // Nothing was touched: every slot, VMM and record is still there.
        s.assert_only(want);
    };
    refused(&ids);
    // A clone that is gone no longer counts.
    let first = ids.iter().next().unwrap().clone();
    s.json(s.wasp(&["kill", &first, "--json"], false));
    let rest: std::collections::BTreeSet<String> =
        ids.iter().filter(|i| **i != first).cloned().collect();
    refused(&rest);

    let v = s.json(s.wasp(&["pool", "drain", "--force", "--json"], true));
    assert_eq!(testkit::cli::ids(&v["killed"]), rest, "{v:#}");
    for k in v["killed"].as_array().unwrap() {
        assert!(k["vmm"] == "terminated" || k["vmm"] == "killed", "{k}");
    }
    assert_eq!(v["removed"].as_u64().unwrap() as usize, before.netns.len());
    assert_eq!(
        s.seen(),
        testkit::cli::Seen::default(),
        "nothing of wasp's is left"
    );
}

/// Every file below `dir`, recursively (symlinks not followed).
fn files_below(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files_below(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

#[test]
fn secrets_appear_nowhere_but_in_the_guest() {
    root_or_skip!();
    use std::os::unix::fs::PermissionsExt;
    let w = world("sec", "s");
    let snap = w.synth();
    let canary_file = format!("canary-file-{}", std::process::id());
    let canary_env = format!("canary-env-{}", std::process::id());
    let env_file = w.tmp.path().join("secrets.env");
    std::fs::write(&env_file, format!("ANTHROPIC_API_KEY={canary_file}\n")).unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (run, state, host) = (w.run_dir(), w.state(), w.host.name());
    let out = w
        .wasp(
            &[
                "spawn", "--vmm", "standin", "--count", "2", "--ready", "tcp:22", "--json", "-vv",
            ],
            true,
        )
        .arg("--snapshot")
        .arg(&snap)
        .arg("--env-file")
        .arg(&env_file)
        .args(["--secret-env", "GITHUB_TOKEN"])
        .env("GITHUB_TOKEN", &canary_env)
        .output()
        .unwrap();
    let v = json(&out);
    let check = || -> Vec<String> {
        let mut leaks = Vec::new();
        let out_text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for c in [&canary_file, &canary_env] {
            if out_text.contains(c.as_str()) {
                leaks.push(format!("wasp's own output holds {c}"));
            }
        }
        let mut files = Vec::new();
        files_below(&run, &mut files);
        files_below(&state, &mut files);
        for f in files {
            if f.file_name().is_some_and(|n| n == "rootfs") {
                continue;
            }
            let b = std::fs::read(&f).unwrap_or_default();
            let t = String::from_utf8_lossy(&b);
            for c in [&canary_file, &canary_env] {
                if t.contains(c.as_str()) {
                    leaks.push(format!("{} holds {c}", f.display()));
                }
            }
        }
        for cl in v["clones"].as_array().into_iter().flatten() {
            let Some(pid) = cl["pid"].as_i64() else {
                continue;
            };
            for what in ["cmdline", "environ"] {
                let b = std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
                let t = String::from_utf8_lossy(&b);
                for c in [&canary_file, &canary_env] {
                    if t.contains(c.as_str()) {
                        leaks.push(format!("/proc/{pid}/{what} holds {c}"));
                    }
                }
            }
        }
        leaks
    };
    let leaks = check();
    // The guest did get both: its agent reports the keys (never values).
    let mut agent_keys = Vec::new();
    if let Some(ip) = v["clones"][0]["clone_ip"].as_str() {
        let ns = wasp::sys::netns::open_named(host).unwrap();
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let body = wasp::sys::netns::run_in(ns, move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect((ip, 8080)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut b = String::new();
            s.read_to_string(&mut b).unwrap();
            b
        })
        .unwrap();
        let j: serde_json::Value =
            serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        agent_keys = j["env_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
    }
    drop(w);
    assert!(out.status.success(), "{v:#}");
    assert!(leaks.is_empty(), "secret leaks: {leaks:?}");
    for k in ["AGENT_ID", "ANTHROPIC_API_KEY", "GITHUB_TOKEN"] {
        assert!(
            agent_keys.iter().any(|x| x == k),
            "guest lacks {k}: {agent_keys:?}"
        );
    }
}

#[test]
fn not_root_is_one_clear_error_and_nothing_is_built() {
    root_or_skip!();
    use std::os::unix::process::CommandExt;
    for args in [
        &["pool", "warm", "--size", "1", "--pool", "nr"][..],
        &[
            "spawn",
            "--vmm",
            "standin",
            "--count",
            "1",
            "--snapshot",
            "/nonexistent",
        ][..],
        &["demo", "--count", "1"][..],
    ] {
        let out = wasp().args(args).uid(65534).gid(65534).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("needs root") && err.contains("sudo"),
            "{args:?}: {err}"
        );
    }
    // Other tests run in parallel, so look only for this test's pool.
    assert!(!testkit::ip_netns_list()
        .iter()
        .any(|n| n.starts_with("wasp-nr-")));
}

#[test]
fn pool_and_spawn_take_their_settings_from_the_config_file() {
    root_or_skip!();
    let w = world("cfg", "f");
    let (host, pool, state) = (&w.host.name().to_owned(), &w.pool, w.state());
    let base = format!(
        "[pool]\nname = \"{pool}\"\nhost_netns = \"{host}\"\ncidr = \"10.77.0.0/24\"\n\n[paths]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n",
        state.display(),
        w.run_dir().display()
    );
    let file = w.tmp.path().join("wasp.toml");
    std::fs::write(&file, &base).unwrap();
    let with_config = |f: &std::path::Path| {
        let mut c = wasp();
        c.arg("--config").arg(f);
        c
    };

    let out = with_config(&file)
        .args(["pool", "warm", "--size", "2", "--json"])
        .output()
        .unwrap();
    testkit::ok(&out);
    assert_eq!(json(&out)["pool"], pool.as_str());
    let ns = testkit::ip_netns_list();
    for n in 0..2 {
        assert!(ns.contains(&format!("wasp-{pool}-{n}")), "{ns:?}");
    }
    let addr = std::process::Command::new("ip")
        .args(["-n", host, "-j", "addr", "show", "dev", "wasp0"])
        .output()
        .unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(
        addr.contains("\"local\":\"10.77.0.1\",\"prefixlen\":24"),
        "{addr}"
    );
    let v = json(
        &with_config(&file)
            .args(["pool", "status", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["cidr"], "10.77.0.0/24");
    assert_eq!(v["host_netns"], host.as_str());
    assert_eq!(v["slots"], 2);

    // A guest address the snapshot was not made with is refused before
    // anything is built or recorded.
    let snap = w.tmp.path().join("snap");
    assert!(synth(&snap).status.success());
    let other = w.tmp.path().join("other.toml");
    std::fs::write(
        &other,
        format!("{base}\n[guest]\nguest_ip = \"192.168.241.3\"\n"),
    )
    .unwrap();
    let out = with_config(&other)
        .args(["spawn", "--vmm", "standin", "--count", "1", "--snapshot"])
        .arg(&snap)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest.guest_ip is 192.168.241.3"), "{err}");
    assert!(err.contains(other.to_str().unwrap()), "{err}");
    let recorded = std::fs::read_dir(state.join(wasp::state::CLONES))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(recorded, 0);

    let v = json(
        &with_config(&file)
            .args(["pool", "drain", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["removed"], 2);
    assert!(!testkit::ip_netns_list()
        .iter()
        .any(|n| n.starts_with(&format!("wasp-{pool}-"))));
}

#[test]
fn a_killed_demo_is_cleaned_up_by_the_next_one() {
    root_or_skip!();
    let _g = DEMO.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    // A runtime dir of its own: no other demo or bench (which clean up
    // killed runs under theirs) can get there first.
    let run = tmp.path().join("run");
    let config = tmp.path().join("wasp.toml");
    std::fs::write(
        &config,
        format!("[paths]\nruntime_dir = \"{}\"\n", run.display()),
    )
    .unwrap();
    let demo = || {
        let mut c = wasp();
        c.arg("--config").arg(&config).arg("demo");
        c
    };
    let mut c = demo();
    c.args(["--count", "4", "--parallel", "2"]);
    // Killed with two clones ready and more in flight.
    let pid = testkit::cli::stop_and_kill(c, "clone-recorded:2", &tmp.path().join("log"));
    let work = run.join(format!("demo-{pid}"));
    let host = wasp::bench::demo::host_netns_of(pid);
    let vmms = || testkit::cli::vmm_pids(&Default::default(), &work);
    assert!(work.exists() && wasp::sys::netns::exists(&host));
    assert!(vmms().len() >= 2, "clones ran at the kill: {:?}", vmms());
    let slots = format!("wasp-{}-", wasp::bench::demo::pool_of(pid));
    assert!(
        testkit::ip_netns_list()
            .iter()
            .any(|n| n.starts_with(&slots)),
        "the killed demo had slots"
    );

    let out = demo().args(["--count", "2", "--json"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("killed demo/bench run(s) left"), "{err}");
    assert!(!work.exists(), "the killed demo's work dir is gone");
    assert!(!wasp::sys::netns::exists(&host), "its host netns is gone");
    assert_eq!(vmms(), Default::default(), "its VMMs are gone");
    assert!(
        !testkit::ip_netns_list()
            .iter()
            .any(|n| n.starts_with(&slots)),
        "no slot of the killed demo left"
    );
    let leases: Vec<String> = std::fs::read_dir(wasp::pipeline::lease::LEASE_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&slots))
        .collect();
    assert!(
        leases.is_empty(),
        "lease files of the killed demo left: {leases:?}"
    );
}
