//! Runs every committed fuzz corpus file (fuzz/corpus/<target>/) through the
//! parser its fuzz target covers, with the same invariants, so plain
//! `cargo test` on stable keeps every seed and crash reproducer covered.
//! Named seeds also get exact expectations, so a parser that quietly stops
//! understanding real input fails here. No root, no kernel objects.

use std::path::PathBuf;

use wasp::netlink::rtnl::{parse_link, RTM_NEWLINK};
use wasp::netlink::{attrs, error_code, split_msgs, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN};
use wasp::pipeline::env::{valid_key, Env, LineError, LineProblem};
use wasp::snapshot::manifest::{Manifest, MAX_MANIFEST_SIZE};
use wasp::standin::http::parse_request;
use wasp::standin::vmstate::{VmState, VmStateError};
use wasp::sys::inotify::parse_events;
use wasp::vmm::api::{fault_message_of, parse_response, MAX_BODY};

/// `(file name, bytes)` of every file in fuzz/corpus/<target>, sorted;
/// fails if the directory is missing or empty.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "corpus {} is empty", dir.display());
    out
}

fn seed<'a>(c: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &c.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("seed {name} missing"))
        .1
}

#[test]
fn netlink_reply_corpus() {
    let c = corpus("netlink_reply");
    for (name, data) in &c {
        let Ok(msgs) = split_msgs(data) else {
            continue;
        };
        let mut total = 0;
        for m in &msgs {
            total += NLMSG_HDRLEN + m.payload.len();
            if m.ty == NLMSG_ERROR {
                let _ = error_code(m.payload);
            }
            let mut seen = 0;
            for (_, p) in attrs(m.payload) {
                seen += 4 + p.len();
                for (_, q) in attrs(p) {
                    assert!(q.len() <= p.len(), "{name}");
                }
            }
            assert!(seen <= m.payload.len(), "{name}");
            assert_eq!(parse_link(m.payload).is_some(), m.payload.len() >= 16);
        }
        assert!(total <= data.len(), "{name}");
    }

    // Real kernel replies captured in a private netns (see fuzz/README.md).
    let ack = split_msgs(seed(&c, "ack")).unwrap();
    assert_eq!((ack.len(), ack[0].ty), (1, NLMSG_ERROR));
    assert_eq!(error_code(ack[0].payload).unwrap(), 0);
    let err = split_msgs(seed(&c, "error_eexist")).unwrap();
    assert_eq!(error_code(err[0].payload).unwrap(), -libc::EEXIST);

    let dump = split_msgs(seed(&c, "link_dump_bridge_veth")).unwrap();
    assert_eq!(dump.last().unwrap().ty, NLMSG_DONE);
    let links: Vec<_> = dump
        .iter()
        .filter(|m| m.ty == RTM_NEWLINK)
        .map(|m| parse_link(m.payload).unwrap())
        .collect();
    let by_name = |n: &str| {
        links
            .iter()
            .find(|l| l.name == n)
            .unwrap_or_else(|| panic!("{n} not in {links:?}"))
    };
    let br = by_name("wasp0");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    let port = by_name("wp-x-1");
    assert_eq!(port.kind.as_deref(), Some("veth"));
    assert_eq!(port.master, Some(br.index));
    assert_eq!(port.alias.as_deref(), Some("wasp:x:1"));
    assert_eq!(by_name("lo").master, None);
}

#[test]
fn http_response_corpus() {
    let c = corpus("http_response");
    for (name, data) in &c {
        let _ = fault_message_of(data);
        if let Ok(Some((resp, used))) = parse_response(data) {
            assert!(used <= data.len() && resp.body.len() <= MAX_BODY, "{name}");
            let _ = fault_message_of(&resp.body);
            let (again, used2) = parse_response(&data[..used]).unwrap().unwrap();
            assert_eq!(
                (again.status, again.body, used2),
                (resp.status, resp.body, used),
                "{name}"
            );
        }
    }

    let (r, _) = parse_response(seed(&c, "fc_put_machine_config_204"))
        .unwrap()
        .unwrap();
    assert_eq!((r.status, r.body.len()), (204, 0));
    let (r, _) = parse_response(seed(&c, "fc_get_root")).unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with(b"{\"id\":\"anonymous-instance\""));
    let two = seed(&c, "pipelined_400_then_204");
    let (r, n) = parse_response(two).unwrap().unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        fault_message_of(&r.body),
        "Start microvm error: Cannot start microvm without kernel configuration."
    );
    let (r, m) = parse_response(&two[n..]).unwrap().unwrap();
    assert_eq!((r.status, n + m), (204, two.len()));
    assert_eq!(parse_response(seed(&c, "partial_head")).unwrap(), None);
}

#[test]
fn standin_request_corpus() {
    let c = corpus("standin_request");
    for (name, data) in &c {
        if let Ok(Some((req, used))) = parse_request(data) {
            assert!(used <= data.len(), "{name}");
            let again = parse_request(&data[..used]).unwrap().unwrap();
            assert_eq!(again, (req, used), "{name}");
        }
    }

    let two = seed(&c, "pipelined_patch_vm_get_mmds");
    let (r, n) = parse_request(two).unwrap().unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), &r.body[..]),
        ("PATCH", "/vm", &br#"{"state":"Paused"}"#[..])
    );
    let (r, m) = parse_request(&two[n..]).unwrap().unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), n + m),
        ("GET", "/mmds", two.len())
    );
    let (r, _) = parse_request(seed(&c, "put_snapshot_load"))
        .unwrap()
        .unwrap();
    assert_eq!(r.path, "/snapshot/load");
    assert_eq!(parse_request(seed(&c, "partial_body")).unwrap(), None);
}

#[test]
fn vmstate_corpus() {
    let c = corpus("vmstate");
    for (name, data) in &c {
        if let Ok(s) = VmState::from_bytes(data, name) {
            assert_eq!(VmState::from_bytes(&s.to_bytes(), name).unwrap(), s);
        }
    }

    let s = VmState::from_bytes(seed(&c, "sample"), "sample").unwrap();
    assert_eq!(s.to_bytes(), seed(&c, "sample"), "seed is to_bytes output");
    assert_eq!((s.mem_size_mib, s.guest.agent_port), (128, 8080));
    assert!(VmState::from_bytes(seed(&c, "no_mmds_no_net"), "x")
        .unwrap()
        .mmds
        .is_none());
    assert!(matches!(
        VmState::from_bytes(seed(&c, "future_version"), "x"),
        Err(VmStateError::BadVersion { found: 2, .. })
    ));
    assert!(matches!(
        VmState::from_bytes(seed(&c, "truncated"), "x"),
        Err(VmStateError::Parse { .. })
    ));
    assert!(matches!(
        VmState::from_bytes(seed(&c, "firecracker_binary_magic"), "x"),
        Err(VmStateError::BadMagic { .. })
    ));
}

#[test]
fn inotify_events_corpus() {
    let c = corpus("inotify_events");
    for (name, data) in &c {
        assert!(parse_events(data).len() <= data.len() / 16, "{name}");
    }

    // Captured from a real inotify fd watching IN_CREATE|IN_MOVED_TO|
    // IN_DELETE: create api.sock, rename it to firecracker.sock, mkdir x.
    let ev = parse_events(seed(&c, "create_move"));
    let masks: Vec<u32> = ev.iter().map(|&(_, m)| m).collect();
    assert_eq!(
        masks,
        [
            libc::IN_CREATE,
            libc::IN_MOVED_TO,
            libc::IN_CREATE | libc::IN_ISDIR
        ]
    );
    assert!(ev.iter().all(|&(wd, _)| wd == ev[0].0));
}

#[test]
fn manifest_corpus() {
    let c = corpus("manifest");
    for (name, data) in &c {
        if let Ok(m) = Manifest::from_bytes(data, name) {
            let bytes = m.to_bytes();
            if bytes.len() as u64 <= MAX_MANIFEST_SIZE {
                assert_eq!(Manifest::from_bytes(&bytes, name).unwrap(), m);
            }
        }
    }
    assert!(Manifest::from_bytes(seed(&c, "firecracker.json"), "x").is_ok());
    assert!(Manifest::from_bytes(seed(&c, "truncated.json"), "x").is_err());
}

#[test]
fn env_file_corpus() {
    let c = corpus("env_file");
    for (name, data) in &c {
        let mut env = Env::new();
        match env.add_text(data) {
            Err(e) => {
                let lines = 1 + data.iter().filter(|&&b| b == b'\n').count();
                assert!((1..=lines).contains(&e.line), "{name}: {e:?}");
            }
            Ok(()) => {
                assert!(env.keys().all(valid_key), "{name}");
                let body: serde_json::Value = serde_json::from_slice(&env.mmds_body("x")).unwrap();
                let mut text = String::new();
                for k in env.keys() {
                    let v = body["env"][k].as_str().unwrap();
                    text.push_str(&format!("{k}=\"{v}\"\n"));
                }
                let mut again = Env::new();
                again.add_text(text.as_bytes()).unwrap();
                assert_eq!(again, env, "{name}");
            }
        }
    }

    let mut env = Env::new();
    env.add_text(seed(&c, "typical")).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&env.mmds_body("x")).unwrap();
    assert_eq!(body["env"]["API_URL"], "http://10.0.0.1:8080/");
    assert_eq!(body["env"]["ANTHROPIC_API_KEY"], "sk-ant-test");
    assert_eq!(body["env"]["QUOTED"], "a b=c");
    assert_eq!(body["env"]["EMPTY"], "");
    assert_eq!(env.len(), 4);
    let err = |s| Env::new().add_text(seed(&c, s)).unwrap_err();
    let at = |line, problem| LineError { line, problem };
    assert_eq!(err("key_with_colon"), at(2, LineProblem::BadKey));
    assert_eq!(err("duplicate_key"), at(2, LineProblem::Duplicate));
    assert_eq!(err("not_utf8"), at(2, LineProblem::NotUtf8));
    assert_eq!(err("nul_value"), at(1, LineProblem::Nul));
    assert_eq!(err("no_equals"), at(2, LineProblem::NotKeyValue));
    assert_eq!(err("agent_id"), at(1, LineProblem::Reserved));
}
