//! The host netns side of the clone network, with real kernel objects in a
//! private host netns, `wasp` run as a user runs it, and stand-in clones:
//! - which local uids may open connections to the clone CIDR
//!   (`pool.connect_uids` / `--connect-uids`): a uid not allowed is refused
//!   (ECONNREFUSED, not a hang), root and allowed uids get through, and
//!   `any` opens it again;
//! - egress: a pool warmed with `--egress-uplink` lets every clone reach a
//!   peer beyond the uplink, including clones in slots that `spawn` built
//!   later; without egress a clone does not reach it.

use wasp_testkit as testkit;
use wasp_testkit::netutil;
use wasp_testkit::{root_or_skip, wasp_bin};

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use testkit::cli::World;
use testkit::TestNetns;
use wasp::pipeline::slot::{HostNet, Kernel, SlotNet, SlotOps};
use wasp::standin::guestnet::{GuestIface, GuestNet, GuestNetConfig, Outbound};
use wasp::sys::{netns, tap};

/// A safety net against a hung test, never a synchronisation point.
const NET: Duration = Duration::from_secs(15);
/// The peer beyond the uplink, and the uplink's own address.
const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The stand-in guest's agent port (synthesized snapshots).
const AGENT_PORT: u16 = 8080;

/// The outcome of one TCP connect + HTTP GET from the host netns as `uid`,
/// run by a child process (bash's /dev/tcp) that starts as that uid.
#[derive(Debug)]
struct Attempt {
    ok: bool,
    out: String,
    err: String,
}

fn connect_as(host: &TestNetns, uid: u32, to: SocketAddrV4) -> Attempt {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3 && cat <&3",
        to.ip(),
        to.port()
    );
    // The child is forked from a thread inside the host netns, so it runs
    // there; it drops to `uid` before exec.
    let out = host.run(|| {
        let mut c = Command::new("bash");
        c.args(["-c", &script]).current_dir("/");
        if uid != 0 {
            c.uid(uid).gid(uid);
        }
        c.output().expect("run bash")
    });
    Attempt {
        ok: out.status.success(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_reaches(host: &TestNetns, uid: u32, to: SocketAddrV4, agent: &str) {
    let a = connect_as(host, uid, to);
    assert!(a.ok, "uid {uid} could not reach {to}: {a:?}");
    assert!(
        a.out.contains(&format!("\"agent_id\":\"{agent}\"")),
        "uid {uid} got no agent answer from {to}: {a:?}"
    );
}

fn assert_refused(host: &TestNetns, uid: u32, to: SocketAddrV4) {
    let a = connect_as(host, uid, to);
    assert!(!a.ok, "uid {uid} reached {to}: {a:?}");
    assert!(
        a.err.contains("Connection refused"),
        "uid {uid} to {to} is refused, not dropped: {a:?}"
    );
    assert!(a.out.is_empty(), "{a:?}");
}

/// The clones of a `spawn --json` answer: (id, which is their AGENT_ID,
/// clone IP).
fn clones(report: &serde_json::Value) -> Vec<(String, Ipv4Addr)> {
    report["clones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["error"].is_null(), "{c}");
            (
                c["id"].as_str().unwrap().to_owned(),
                c["clone_ip"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn only_allowed_local_uids_may_connect_to_clones() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "cu");
    // Default: root only. wasp's own readiness probe (tcp:22, as root)
    // gets through.
    s.json(s.wasp(&["pool", "warm", "--size", "1", "--json"], true));
    let list_chain = format!("nft list chain ip wasp connect_{}", s.pool);
    let table = s.host.sh(&list_chain);
    assert!(
        table.contains("ip daddr 10.0.0.0/16 ct state new meta skuid != 0 reject"),
        "{table}"
    );
    let rep = s.json(s.spawn_ready("1", "tcp:22"));
    let (id, ip) = clones(&rep).pop().unwrap();
    let agent = SocketAddrV4::new(ip, AGENT_PORT);
    assert_reaches(s.host.netns(), 0, agent, &id);
    assert_refused(s.host.netns(), 65534, agent);
    assert_refused(s.host.netns(), 1000, agent);

    // A list: root is always allowed, and so are the uids named.
    s.json(s.wasp(
        &[
            "pool",
            "warm",
            "--size",
            "1",
            "--connect-uids",
            "65534",
            "--json",
        ],
        true,
    ));
    let table = s.host.sh(&list_chain);
    assert_eq!(
        table.matches("reject").count(),
        1,
        "the rule is replaced, not added: {table}"
    );
    assert_reaches(s.host.netns(), 65534, agent, &id);
    assert_reaches(s.host.netns(), 0, agent, &id);
    assert_refused(s.host.netns(), 1000, agent);

    // `any`: today's open behaviour, the chain is gone.
    s.json(s.wasp(
        &[
            "pool",
            "warm",
            "--size",
            "1",
            "--connect-uids",
            "any",
            "--json",
        ],
        true,
    ));
    assert!(!s.host.sh_ok(&list_chain));
    assert_reaches(s.host.netns(), 65534, agent, &id);
    assert_reaches(s.host.netns(), 1000, agent, &id);
    assert_reaches(s.host.netns(), 0, agent, &id);

    // A bad value is one clear error naming the flag, and changes nothing.
    let out = s
        .wasp(
            &["pool", "warm", "--size", "1", "--connect-uids", "0,bob"],
            true,
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--connect-uids"), "{err}");
    assert!(err.contains("bob"), "{err}");
    assert!(!s.host.sh_ok(&list_chain));
    s.kill_drain_and_assert_zero();
}

/// The "internet": a peer netns behind uplink `wup0` of `host`, forwarding
/// on in `host`. Returns the peer netns.
fn uplink(host: &TestNetns) -> TestNetns {
    let inet = TestNetns::new("up");
    host.sh(&format!(
        "ip link add wup0 type veth peer name wupi netns {} && \
         ip addr add {UPLINK}/24 dev wup0 && ip link set wup0 up && \
         sysctl -qw net.ipv4.ip_forward=1",
        inet.name()
    ));
    inet.sh(&format!(
        "ip addr add {PEER}/24 dev wupi && ip link set wupi up"
    ));
    inet
}

#[test]
fn egress_reaches_every_clone_of_a_pool_warmed_with_an_uplink() {
    root_or_skip!();
    let s = World::new(wasp_bin!(), "eg");
    let inet = uplink(s.host.netns());
    let srv = inet.run(|| TcpListener::bind((PEER, 7070)).expect("bind"));
    // One slot warmed with egress; spawn builds the second itself.
    s.json(s.wasp(
        &[
            "pool",
            "warm",
            "--size",
            "1",
            "--egress-uplink",
            "wup0",
            "--json",
        ],
        true,
    ));
    let mut c = s.spawn_ready("2", "running");
    c.args(["--env", &format!("API_URL=http://{PEER}:7070/")]);
    let rep = s.json(c);
    let mut want: Vec<String> = clones(&rep).into_iter().map(|(id, _)| id).collect();
    want.sort();
    assert_eq!(want.len(), 2);
    // Each clone polls the peer once; each poll arrives masqueraded as the
    // uplink's address.
    let mut got = Vec::new();
    for i in 0..2 {
        eprintln!("waiting for poll {} of 2", i + 1);
        let (mut conn, peer) = netutil::accept_within(&srv, NET);
        assert_eq!(peer.ip(), std::net::IpAddr::V4(UPLINK));
        conn.set_read_timeout(Some(NET)).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 512];
        while !req.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "request cut short: {req:?}");
            req.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let req = String::from_utf8_lossy(&req).into_owned();
        let id = req
            .lines()
            .find_map(|l| l.strip_prefix("X-Agent-Id: "))
            .unwrap_or_else(|| panic!("no agent id in {req}"))
            .to_owned();
        got.push(id);
    }
    got.sort();
    // The spawn report's ids are wasp's clone ids; each guest names its
    // AGENT_ID, which wasp sets to the clone id.
    assert_eq!(got, want);
    s.kill_drain_and_assert_zero();
}

#[test]
fn without_egress_a_clone_does_not_reach_the_uplink() {
    root_or_skip!();
    let host = TestNetns::new("ne");
    let inet = uplink(&host);
    let srv = inet.run(|| TcpListener::bind((PEER, 7070)).expect("bind"));
    let k = Kernel::setup(
        SlotNet {
            pool: format!("ne{}", std::process::id()),
            ..SlotNet::default()
        },
        &HostNet {
            netns: Some(host.name().to_owned()),
            ..HostNet::default()
        },
    )
    .expect("set up the host side");
    let slot = k.build(0).expect("build slot 0");
    let ns = netns::open_named(&slot.netns).unwrap();
    let fd = netns::run_in(&ns, || tap::open_tap("tap0", false))
        .unwrap()
        .expect("open slot tap");
    let (tx, rx) = mpsc::channel();
    let g = GuestNet::start(
        fd,
        GuestNetConfig {
            addr: GuestIface {
                mac: [0x06, 0, 0xac, 0x10, 0, 2],
                ip: Ipv4Addr::new(192, 168, 241, 2),
                prefix_len: 29,
                gateway: Ipv4Addr::new(192, 168, 241, 1),
                ready_port: 22,
                agent_port: 8081,
            },
            agent_body: Arc::new(|| b"{}".to_vec()),
            outbound: Some(Outbound {
                to: SocketAddrV4::new(PEER, 7070),
                request: b"hello\n".to_vec(),
                on_response: Box::new(move |r| {
                    let _ = tx.send(r.map_err(|e| e.to_string()));
                }),
            }),
        },
    )
    .expect("start guest");
    // The guest gives up on its own (its connect times out) and says so.
    let r = rx.recv_timeout(NET * 2).expect("outbound callback");
    assert!(r.is_err(), "the clone reached the uplink peer: {r:?}");
    srv.set_nonblocking(true).unwrap();
    assert!(srv.accept().is_err(), "nothing arrived at the peer");
    g.stop().expect("guest ran cleanly");
    k.destroy(0).expect("destroy slot 0");
    k.remove_host().expect("remove host objects");
}
