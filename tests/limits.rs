//! Host limits are checked before anything is built: `wasp pool warm`
//! and `wasp bench spawn` refuse a pool the host cannot hold with one
//! error naming the limit, its value, the need and the fix, and leave
//! nothing (no host netns, no slot, no registry record); `wasp doctor
//! --clones N` reports the same limits.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin, wasp_cmd};

use std::os::unix::process::CommandExt;

use testkit::cli::World;

/// Lowers RLIMIT_NOFILE (soft and hard) of the command's process to `n`.
fn with_nofile(c: &mut std::process::Command, n: u64) {
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                .map_err(std::io::Error::from)
        });
    }
}

#[test]
fn pool_warm_past_the_fd_limit_is_refused_and_builds_nothing() {
    root_or_skip!();
    let w = World::with_host_by_wasp(wasp_bin!(), "lim", "lim");
    let mut c = w.wasp(&["pool", "warm", "--size", "2000"], true);
    with_nofile(&mut c, 1024);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {err}");
    assert!(
        err.contains("2000 clone(s) do not fit this host; nothing was built")
            && err.contains("RLIMIT_NOFILE (hard) is 1024")
            && err.contains("ulimit -Hn"),
        "{err}"
    );
    // Nothing: not the host netns wasp would have made, no slot, no
    // registry record.
    assert!(!wasp::sys::netns::exists(w.host.name()), "{err}");
    let prefix = format!("wasp-{}-", w.pool);
    assert!(testkit::ip_netns_list()
        .iter()
        .all(|n| !n.starts_with(&prefix)));
    assert!(!w
        .state()
        .join("pools")
        .join(format!("{}.json", w.pool))
        .exists());
}

#[test]
fn doctor_clones_names_the_limits_for_n_clones() {
    root_or_skip!();
    // A /16 holds 65 533 clones: 70 000 do not fit, whatever the host.
    let out = wasp_cmd!()
        .args(["doctor", "--json", "--clones", "70000"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "clones")
        .unwrap()
        .clone();
    assert_eq!(c["status"], "fail", "{c:#}");
    let d = c["detail"].as_str().unwrap();
    assert!(
        d.contains("pool.cidr is 65533, 70000 needed") && d.contains("use a larger one"),
        "{d}"
    );
    assert!(!out.status.success());
    let out = wasp_cmd!()
        .args(["doctor", "--json", "--clones", "10"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "clones")
        .unwrap()
        .clone();
    assert_eq!(c["status"], "ok", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains("kernel.pid_max is"));
}
