//! Conformance: one suite of API calls run against the real pinned
//! Firecracker 1.12.1 and against the stand-in VMM, each process inside its
//! own throwaway network namespace. Every step's status code and error
//! message (with the per-run directory replaced by `$DIR`) must be the same
//! for both; any divergence fails.
//!
//! Firecracker boots wasp's built-in test guest (its marker must show on
//! Firecracker's stdout) and snapshots it; the stand-in snapshots itself
//! (its own `PUT /snapshot/create`, the stand-in vmstate format). Loads then
//! run in fresh processes in fresh namespaces, where the recorded tap does not
//! exist: both create it bare and answer 204.

use wasp_testkit as testkit;
use wasp_testkit::root_or_skip;

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use testkit::TestNetns;
use wasp::vmm::api::{Client, Method};

/// Generous bound for a VMM to show up; a failure bound, not a delay.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Firecracker,
    Standin,
}

impl Kind {
    fn bin(self) -> PathBuf {
        match self {
            Kind::Firecracker => testkit::firecracker_bin(),
            Kind::Standin => PathBuf::from(env!("CARGO_BIN_EXE_wasp-standin")),
        }
    }
}

/// A VMM process in its own namespace; killed on drop (before the namespace
/// goes).
struct Vmm {
    kind: Kind,
    child: Child,
    client: Client,
    stdout: Receiver<String>,
    dir: PathBuf,
    ns: TestNetns,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `sock` accepts connections, using inotify on its directory;
/// fails if the child exits or the limit passes.
fn wait_for_socket(sock: &Path, child: &mut Child) -> UnixStream {
    let dir = sock.parent().unwrap();
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    ino.add_watch(dir, AddWatchFlags::IN_CREATE).unwrap();
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return s,
            // Bound but not yet listening: the next step is microseconds away.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::yield_now();
                continue;
            }
            Err(_) => {}
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "VMM exited ({st}) before its API socket {} appeared",
                sock.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "API socket {} never appeared",
            sock.display()
        );
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        let _ = ino.read_events();
    }
}

impl Vmm {
    fn start(kind: Kind, dir: &Path, tag: &str) -> Vmm {
        Self::start_with(kind, dir, tag, &[])
    }

    fn start_with(kind: Kind, dir: &Path, tag: &str, extra: &[&str]) -> Vmm {
        let ns = TestNetns::new(tag);
        let sock = dir.join(format!("{tag}.sock"));
        let _ = std::fs::remove_file(&sock);
        // Logs go to a file so that stdout carries only the guest's serial
        // bytes (Firecracker writes them one at a time, and log lines would
        // otherwise interleave with them).
        let log = dir.join(format!("{tag}.log"));
        std::fs::write(&log, b"").unwrap();
        let mut cmd = Command::new(kind.bin());
        cmd.arg("--api-sock")
            .arg(&sock)
            .arg("--log-path")
            .arg(&log)
            .args(extra);
        // stdin is a pipe held open: Firecracker drops serial output when stdin
        // is /dev/null (it cannot be added to its epoll set).
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::piped());
        // Spawned from a thread inside the namespace: the child starts there.
        let mut child = ns.run(|| cmd.spawn()).expect("spawn VMM");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            // Serial output need not be UTF-8: split on bytes.
            let mut r = BufReader::new(out);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        drop(wait_for_socket(&sock, &mut child));
        let client = Client::connect(&sock).expect("connect");
        Vmm {
            kind,
            child,
            client,
            stdout: rx,
            dir: dir.to_owned(),
            ns,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One call; returns (status, normalized body).
    fn call(&mut self, method: Method, path: &str, body: &str) -> (u16, String) {
        let dir = self.dir.display().to_string();
        let body = body.replace("$DIR", &dir);
        let r = self
            .client
            .raw(method, path, (!body.is_empty()).then_some(body.as_bytes()))
            .unwrap_or_else(|e| panic!("{:?}: {method:?} {path}: {e}", self.kind));
        let text = String::from_utf8_lossy(&r.body).replace(&dir, "$DIR");
        (r.status, text)
    }

    fn state(&mut self) -> String {
        let (s, b) = self.call(Method::Get, "/", "");
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        let version = v["vmm_version"].as_str().unwrap();
        match self.kind {
            Kind::Firecracker => assert_eq!(version, "1.12.1"),
            Kind::Standin => assert!(version.contains("standin"), "{version}"),
        }
        assert_eq!(v["id"], "anonymous-instance");
        v["state"].as_str().unwrap().to_owned()
    }

    /// Waits for the process to exit and returns its exit code.
    fn exit_code(&mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }

    fn wait_stdout(&self, needle: &str) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("{:?}: {needle:?} never showed on stdout: {e}", self.kind),
            }
        }
    }

    fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid())).unwrap()
    }

    fn open_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .collect()
    }
}

type Step = (Method, &'static str, &'static str);
type Outcome = Vec<(String, u16, String)>;

/// A load of `$DIR/vmstate` with `$DIR/mem` as its File memory backend.
const LOAD_PLAIN: &str = r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"File","backend_path":"$DIR/mem"}}"#;
/// Steps many call lists share.
const START: Step = (
    Method::Put,
    "/actions",
    r#"{"action_type":"InstanceStart"}"#,
);
const PAUSE: Step = (Method::Patch, "/vm", r#"{"state":"Paused"}"#);
const CREATE: Step = (
    Method::Put,
    "/snapshot/create",
    r#"{"snapshot_path":"$DIR/vmstate","mem_file_path":"$DIR/mem"}"#,
);
const LOAD: Step = (Method::Put, "/snapshot/load", LOAD_PLAIN);
const MACHINE_64: Step = (
    Method::Put,
    "/machine-config",
    r#"{"vcpu_count":1,"mem_size_mib":64}"#,
);

fn run_steps(vmm: &mut Vmm, steps: &[Step]) -> Outcome {
    steps
        .iter()
        .map(|(m, p, b)| {
            let (s, t) = vmm.call(*m, p, b);
            (format!("{m:?} {p} {b}"), s, t)
        })
        .collect()
}

fn assert_same(fc: &Outcome, si: &Outcome) {
    assert_eq!(fc.len(), si.len());
    let mut diffs = Vec::new();
    for (f, s) in fc.iter().zip(si) {
        if f != s {
            diffs.push(format!(
                "step {}\n  firecracker: {} {}\n  stand-in:    {} {}",
                f.0, f.1, f.2, s.1, s.2
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "stand-in diverges from Firecracker 1.12.1:\n{}",
        diffs.join("\n")
    );
}

fn fault(o: &Outcome, i: usize) -> &str {
    &o[i].2
}

/// Pre-boot config calls, MMDS before and after config, start, pause and a
/// Full snapshot. Returns the outcome; the snapshot lands in `dir`.
const CONFIG_STEPS: &[Step] = &[
    PAUSE,
    CREATE,
    (Method::Get, "/mmds", ""),
    (Method::Patch, "/mmds", r#"{"a":1}"#),
    (Method::Put, "/mmds", r#"{"a":{"b":"c"}}"#),
    (Method::Patch, "/mmds", r#"{"a":{"d":"e"}}"#),
    (Method::Get, "/mmds", ""),
    (
        Method::Put,
        "/machine-config",
        r#"{"vcpu_count":0,"mem_size_mib":64}"#,
    ),
    (Method::Put, "/machine-config", r#"{"vcpu_count":1}"#),
    (
        Method::Put,
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":64,"bogus":1}"#,
    ),
    (Method::Put, "/machine-config", "nonsense"),
    MACHINE_64,
    (Method::Get, "/machine-config", ""),
    (
        Method::Put,
        "/boot-source",
        r#"{"kernel_image_path":"$DIR/missing"}"#,
    ),
    (
        Method::Put,
        "/boot-source",
        r#"{"kernel_image_path":"$DIR/guest.elf","boot_args":"console=ttyS0"}"#,
    ),
    (
        Method::Put,
        "/drives/rootfs",
        r#"{"drive_id":"other","path_on_host":"$DIR/disk.img","is_root_device":true,"is_read_only":false}"#,
    ),
    (
        Method::Put,
        "/drives/rootfs",
        r#"{"drive_id":"rootfs","path_on_host":"$DIR/missing","is_root_device":true,"is_read_only":false}"#,
    ),
    (
        Method::Put,
        "/drives/rootfs",
        r#"{"drive_id":"rootfs","path_on_host":"$DIR/disk.img","is_root_device":true,"is_read_only":false}"#,
    ),
    (
        Method::Put,
        "/mmds/config",
        r#"{"network_interfaces":["eth0"]}"#,
    ),
    (Method::Put, "/mmds/config", r#"{"network_interfaces":[]}"#),
    (
        Method::Put,
        "/network-interfaces/eth1",
        r#"{"iface_id":"eth0","host_dev_name":"wasptap0"}"#,
    ),
    (
        Method::Put,
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"wasptap0","guest_mac":"06:00:c0:a8:f1:02"}"#,
    ),
    (
        Method::Put,
        "/network-interfaces/eth1",
        r#"{"iface_id":"eth1","host_dev_name":"wasptap0"}"#,
    ),
    (
        Method::Put,
        "/mmds/config",
        r#"{"network_interfaces":["eth0"],"version":"V3"}"#,
    ),
    (
        Method::Put,
        "/mmds/config",
        r#"{"network_interfaces":["eth0"],"version":"V2"}"#,
    ),
    (Method::Put, "/mmds", r#"{"AGENT_ID":"vm0"}"#),
    (Method::Get, "/mmds", ""),
    LOAD,
    (Method::Put, "/actions", r#"{"action_type":"Bogus"}"#),
    (Method::Put, "/nonexistent", "{}"),
    (Method::Put, "/actions", ""),
    START,
    MACHINE_64,
    (
        Method::Put,
        "/drives/rootfs",
        r#"{"drive_id":"rootfs","path_on_host":"$DIR/disk.img","is_root_device":true,"is_read_only":false}"#,
    ),
    START,
    LOAD,
    CREATE,
    (Method::Put, "/mmds", r#"{"AGENT_ID":"vm1"}"#),
    (Method::Patch, "/vm", r#"{"state":"Bogus"}"#),
    PAUSE,
    PAUSE,
    (
        Method::Put,
        "/snapshot/create",
        r#"{"snapshot_path":"$DIR/vmstate","mem_file_path":"$DIR/mem","snapshot_type":"Diff"}"#,
    ),
    (
        Method::Put,
        "/snapshot/create",
        r#"{"snapshot_path":"$DIR/vmstate","mem_file_path":"$DIR/mem","snapshot_type":"Full"}"#,
    ),
];

/// Loads of a snapshot made by the same VMM kind, in a fresh process whose
/// namespace has no tap yet.
const LOAD_STEPS: &[Step] = &[
    (Method::Patch, "/vm", r#"{"state":"Resumed"}"#),
    (
        Method::Put,
        "/snapshot/load",
        r#"{"snapshot_path":"$DIR/vmstate"}"#,
    ),
    (
        Method::Put,
        "/snapshot/load",
        r#"{"snapshot_path":"$DIR/vmstate","mem_file_path":"$DIR/mem","mem_backend":{"backend_type":"File","backend_path":"$DIR/mem"}}"#,
    ),
    (
        Method::Put,
        "/snapshot/load",
        r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"File","backend_path":"$DIR/mem"},"track_dirty_pages":true}"#,
    ),
    (
        Method::Put,
        "/snapshot/load",
        r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"Bogus","backend_path":"$DIR/mem"}}"#,
    ),
    (Method::Put, "/mmds", r#"{"AGENT_ID":"before-load"}"#),
    (
        Method::Put,
        "/snapshot/load",
        r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"File","backend_path":"$DIR/mem"},"network_overrides":[{"iface_id":"eth0","host_dev_name":"wasptap7"}]}"#,
    ),
    LOAD,
    (Method::Get, "/mmds", ""),
    (
        Method::Put,
        "/mmds",
        r#"{"AGENT_ID":"vm2","env":{"AGENT_ID":"vm2"}}"#,
    ),
    (Method::Patch, "/mmds", r#"{"x":"y"}"#),
    (Method::Get, "/mmds", ""),
    MACHINE_64,
    (
        Method::Put,
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"wasptap0"}"#,
    ),
    (
        Method::Put,
        "/mmds/config",
        r#"{"network_interfaces":["eth0"]}"#,
    ),
    START,
    (Method::Patch, "/vm", r#"{"state":"Resumed"}"#),
    PAUSE,
    (
        Method::Put,
        "/snapshot/create",
        r#"{"snapshot_path":"$DIR/vmstate2","mem_file_path":"$DIR/mem2"}"#,
    ),
];

/// A small snapshot (`$DIR/vmstate`, `$DIR/mem`) made by a fresh VMM of
/// `kind` named `name` in `dir`: a 16 MiB machine config when
/// `machine_config`, the built-in guest as boot source, then `devices`,
/// InstanceStart, pause and a Full snapshot. Every call must answer 204.
fn make_snapshot(kind: Kind, dir: &Path, name: &str, machine_config: bool, devices: &[Step]) {
    const MACHINE: Step = (
        Method::Put,
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":16}"#,
    );
    const BOOT: Step = (
        Method::Put,
        "/boot-source",
        r#"{"kernel_image_path":"$DIR/guest.elf"}"#,
    );
    const FINISH: &[Step] = &[START, PAUSE, CREATE];
    let mut v = Vmm::start(kind, dir, name);
    let machine = machine_config.then_some(MACHINE);
    for (m, p, b) in machine
        .iter()
        .chain([BOOT].iter())
        .chain(devices)
        .chain(FINISH)
    {
        assert_eq!(v.call(*m, p, b).0, 204, "{kind:?} {name} {p}");
    }
}

fn prepare_dir(tag: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("wasp-conf-{tag}-"))
        .tempdir()
        .unwrap();
    wasp::standin::testguest::write(&d.path().join("guest.elf")).unwrap();
    std::fs::write(d.path().join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    d
}

struct KindRun {
    config: Outcome,
    load: Outcome,
    states: Vec<String>,
}

fn run_kind(kind: Kind) -> KindRun {
    let tag = match kind {
        Kind::Firecracker => "fc",
        Kind::Standin => "si",
    };
    let dir = prepare_dir(tag);
    let mut states = Vec::new();

    let mut a = Vmm::start(kind, dir.path(), &format!("{tag}-cfg"));
    states.push(a.state());
    // A second client is served while the first keeps its connection open.
    let mut second = Client::connect(&dir.path().join(format!("{tag}-cfg.sock"))).unwrap();
    assert_eq!(second.get_instance_info().unwrap().state, "Not started");
    // Up to InstanceStart; Firecracker's guest must print its marker before
    // it is paused and snapshotted.
    let start_at = 31;
    let mut config = run_steps(&mut a, &CONFIG_STEPS[..=start_at]);
    if kind == Kind::Firecracker {
        a.wait_stdout(wasp::standin::testguest::MARKER.trim_end());
    }
    config.extend(run_steps(&mut a, &CONFIG_STEPS[start_at + 1..]));
    states.push(a.state());
    // The configured tap exists in the first namespace only.
    assert!(a.ns.sh("ip -d link show wasptap0").contains("tun type tap"));
    drop(a);
    assert!(dir.path().join("vmstate").exists() && dir.path().join("mem").exists());

    let mut b = Vmm::start(kind, dir.path(), &format!("{tag}-load"));
    assert!(
        !b.ns.sh_ok("ip link show wasptap7"),
        "tap must not exist before load"
    );
    let load_at = 6;
    let load = {
        let mut out = run_steps(&mut b, &LOAD_STEPS[..=load_at]);
        // Right after the load: the VM is paused, memory is mapped private,
        // the drive is held open and the overridden tap exists (bare, down).
        states.push(b.state());
        let mem = dir.path().join("mem").display().to_string();
        let maps = b.maps();
        assert!(
            maps.lines()
                .any(|l| l.ends_with(&mem) && l.split_whitespace().nth(1) == Some("rw-p")),
            "{kind:?}: {mem} not mapped rw-p (MAP_PRIVATE):\n{maps}"
        );
        let disk = dir.path().join("disk.img");
        assert!(
            b.open_files().contains(&disk),
            "{kind:?}: drive not held open"
        );
        let link = b.ns.sh("ip -d link show wasptap7");
        assert!(
            link.contains("tun type tap") && link.contains("state DOWN"),
            "{link}"
        );
        assert!(
            !b.ns.sh("ip -4 addr show wasptap7").contains("inet"),
            "tap must be bare"
        );
        assert!(
            !b.ns.sh_ok("ip link show wasptap0"),
            "recorded tap was overridden"
        );
        out.extend(run_steps(&mut b, &LOAD_STEPS[load_at + 1..]));
        out
    };
    states.push(b.state());
    drop(b);
    KindRun {
        config,
        load,
        states,
    }
}

#[test]
fn same_answers_as_firecracker() {
    root_or_skip!();
    let fc = run_kind(Kind::Firecracker);
    let si = run_kind(Kind::Standin);
    assert_same(&fc.config, &si.config);
    assert_same(&fc.load, &si.load);
    assert_eq!(fc.states, si.states);
    assert_eq!(fc.states, ["Not started", "Paused", "Paused", "Paused"]);
    // Anchors from Firecracker itself, so the suite cannot pass vacuously.
    assert_eq!(
        fault(&fc.config, 0),
        r#"{"fault_message":"The requested operation is not supported before starting the microVM."}"#
    );
    assert_eq!(
        fault(&fc.config, 3),
        r#"{"fault_message":"MMDS error: The MMDS data store is not initialized."}"#
    );
    assert_eq!(fc.config[6].2, r#"{"a":{"b":"c","d":"e"}}"#);
    assert_eq!(fc.config[31].1, 204, "InstanceStart");
    assert_eq!(fc.config[42].1, 204, "Full snapshot");
    assert_eq!(fc.load[6].1, 204, "load with a missing tap");
    assert!(
        fault(&fc.load, 7).contains("not supported after starting"),
        "load twice"
    );
    assert_eq!(
        fc.load[8].2, r#"{"AGENT_ID":"before-load"}"#,
        "MMDS data survives a load"
    );
}

/// Failed loads: both answer 400 and then exit with code 1.
#[test]
fn failed_loads_answer_then_exit() {
    root_or_skip!();
    let cases: &[(&str, &str)] = &[
        (
            "nostate",
            r#"{"snapshot_path":"$DIR/missing","mem_backend":{"backend_type":"File","backend_path":"$DIR/mem"}}"#,
        ),
        (
            "nomem",
            r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"File","backend_path":"$DIR/missing"}}"#,
        ),
        (
            "small",
            r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"File","backend_path":"$DIR/small"}}"#,
        ),
        (
            "uffd",
            r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"Uffd","backend_path":"$DIR/missing.sock"}}"#,
        ),
        (
            "iface",
            r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"File","backend_path":"$DIR/mem"},"network_overrides":[{"iface_id":"eth9","host_dev_name":"wasptap9"}]}"#,
        ),
        ("nodisk", LOAD_PLAIN),
        ("busytap", LOAD_PLAIN),
    ];
    let mut results = Vec::new();
    for kind in [Kind::Firecracker, Kind::Standin] {
        let tag = if kind == Kind::Firecracker {
            "fcx"
        } else {
            "six"
        };
        let dir = prepare_dir(tag);
        // A small snapshot made by this kind.
        make_snapshot(
            kind,
            dir.path(),
            &format!("{tag}-mk"),
            true,
            &[
                (
                    Method::Put,
                    "/drives/rootfs",
                    r#"{"drive_id":"rootfs","path_on_host":"$DIR/disk.img","is_root_device":true,"is_read_only":false}"#,
                ),
                (
                    Method::Put,
                    "/network-interfaces/eth0",
                    r#"{"iface_id":"eth0","host_dev_name":"wasptap0"}"#,
                ),
            ],
        );
        std::fs::write(dir.path().join("small"), vec![0u8; 4096]).unwrap();
        let mut out = Vec::new();
        for (name, body) in cases {
            let mut v = Vmm::start(kind, dir.path(), &format!("{tag}-{name}"));
            let disk = dir.path().join("disk.img");
            let away = dir.path().join("disk.away");
            if *name == "nodisk" {
                std::fs::rename(&disk, &away).unwrap();
            }
            // Another holder of the recorded tap: TUNSETIFF answers EBUSY.
            let _holder = (*name == "busytap").then(|| {
                v.ns.run(|| wasp::sys::tap::open_tap("wasptap0", true))
                    .unwrap()
            });
            let (s, t) = v.call(Method::Put, "/snapshot/load", body);
            let code = v.exit_code();
            if *name == "nodisk" {
                std::fs::rename(&away, &disk).unwrap();
            }
            out.push((name.to_string(), s, t, code));
        }
        results.push(out);
    }
    let (fc, si) = (&results[0], &results[1]);
    for (f, s) in fc.iter().zip(si) {
        assert_eq!(
            f, s,
            "stand-in diverges from Firecracker on failed load {}",
            f.0
        );
    }
    assert!(
        fc.iter()
            .all(|(_, s, _, code)| *s == 400 && *code == Some(1)),
        "{fc:?}"
    );
}

/// Stand-in only: honesty and fault injection.
#[test]
fn standin_is_honest_and_injects_faults() {
    root_or_skip!();
    let out = Command::new(Kind::Standin.bin())
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.contains("stand-in") && v.contains("not Firecracker"),
        "{v}"
    );
    let bad = Command::new(Kind::Standin.bin())
        .args([
            "--api-sock",
            "/nonexistent-dir/x.sock",
            "--fault",
            "explode",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown fault \"explode\""));

    let dir = prepare_dir("fault");
    // Make a stand-in snapshot to load.
    make_snapshot(Kind::Standin, dir.path(), "mk", false, &[]);
    let load = LOAD_PLAIN;

    let mut v = Vmm::start_with(
        Kind::Standin,
        dir.path(),
        "exit",
        &["--fault", "exit-on-load"],
    );
    let sock = dir.path().join("exit.sock");
    let body = load.replace("$DIR", &dir.path().display().to_string());
    let err = v
        .client
        .raw(Method::Put, "/snapshot/load", Some(body.as_bytes()));
    assert!(err.is_err(), "exit-on-load must not answer");
    assert_eq!(v.exit_code(), Some(1));
    assert!(sock.exists());

    let mut v = Vmm::start_with(Kind::Standin, dir.path(), "l400", &["--fault", "load-400"]);
    let (s, t) = v.call(Method::Put, "/snapshot/load", load);
    assert_eq!(s, 400);
    assert!(t.contains("fault injection"), "{t}");
    assert_eq!(v.exit_code(), Some(1));

    let mut v = Vmm::start_with(
        Kind::Standin,
        dir.path(),
        "slow",
        &["--fault", "slow-load=30"],
    );
    // (The delay itself is checked by the unit test against a recording
    // fake; wall-clock times are never asserted.)
    assert_eq!(v.call(Method::Put, "/snapshot/load", load).0, 204);

    let mut v = Vmm::start_with(
        Kind::Standin,
        dir.path(),
        "hang",
        &["--fault", "hang-on-resume"],
    );
    assert_eq!(v.call(Method::Put, "/snapshot/load", load).0, 204);
    v.client.set_timeout(Duration::from_millis(300));
    let r = v
        .client
        .raw(Method::Patch, "/vm", Some(br#"{"state":"Resumed"}"#));
    assert!(
        matches!(r, Err(wasp::vmm::api::ApiError::Io { .. })),
        "resume must hang: {r:?}"
    );
    assert!(
        v.child.try_wait().unwrap().is_none(),
        "a hang is not an exit"
    );

    // no-socket: the process stays up and the socket never appears.
    let ns = TestNetns::new("nosock");
    let sock = dir.path().join("nosock.sock");
    let mut cmd = Command::new(Kind::Standin.bin());
    cmd.arg("--api-sock")
        .arg(&sock)
        .env("WASP_STANDIN_FAULT", "no-socket");
    cmd.stderr(Stdio::piped());
    let mut child = ns.run(|| cmd.spawn()).unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("stand-in") && line.contains("never creating"),
        "{line}"
    );
    assert!(child.try_wait().unwrap().is_none());
    assert!(!sock.exists());
    let _ = child.kill();
    let _ = child.wait();
}

/// Stand-in only: after load + MMDS + resume, the userspace guest answers
/// ping, TCP on the readiness port and the agent endpoint on the slot's tap,
/// and polls API_URL naming its AGENT_ID, without ever echoing a secret.
#[test]
fn standin_guest_answers_on_the_tap() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    root_or_skip!();
    let dir = prepare_dir("net");
    make_snapshot(
        Kind::Standin,
        dir.path(),
        "netmk",
        false,
        &[(
            Method::Put,
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","host_dev_name":"wasptap0","guest_mac":"06:00:c0:a8:f1:02"}"#,
        )],
    );
    let mut v = Vmm::start(Kind::Standin, dir.path(), "netrun");
    // The slot's side: a configured tap with the gateway address.
    v.ns.sh("ip tuntap add wasptap0 mode tap && ip addr add 192.168.241.1/29 dev wasptap0 && ip link set wasptap0 up");
    let api = v.ns.run(|| TcpListener::bind("192.168.241.1:0")).unwrap();
    let port = api.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let (mut s, _) = api.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .unwrap();
        let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
    });
    let load = LOAD_PLAIN;
    assert_eq!(v.call(Method::Put, "/snapshot/load", load).0, 204);
    let mmds = format!(
        r#"{{"env":{{"AGENT_ID":"vm7","API_URL":"http://192.168.241.1:{port}","GITHUB_TOKEN":"s3cret-token"}}}}"#
    );
    let r = v
        .client
        .raw(Method::Put, "/mmds", Some(mmds.as_bytes()))
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        v.call(Method::Patch, "/vm", r#"{"state":"Resumed"}"#).0,
        204
    );

    let poll_req = rx
        .recv_timeout(STARTUP_LIMIT)
        .expect("guest never polled API_URL");
    assert!(poll_req.contains("X-Agent-Id: vm7\r\n"), "{poll_req}");
    assert!(!poll_req.contains("s3cret"));

    let gip = std::net::Ipv4Addr::new(192, 168, 241, 2);
    assert!(
        v.ns.run(|| icmp_echo(gip, STARTUP_LIMIT)),
        "guest does not answer ICMP echo"
    );
    let guest = |port: u16| SocketAddr::from(([192, 168, 241, 2], port));
    v.ns.run(|| TcpStream::connect_timeout(&guest(22), STARTUP_LIMIT))
        .expect("readiness port 22");
    let body =
        v.ns.run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&guest(8080), STARTUP_LIMIT)?;
            s.set_read_timeout(Some(STARTUP_LIMIT))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .expect("agent endpoint");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        !body.contains("s3cret"),
        "the agent must never echo a value"
    );
    let json: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["agent_id"], "vm7");
    assert_eq!(
        json["env_keys"],
        serde_json::json!(["AGENT_ID", "API_URL", "GITHUB_TOKEN"])
    );
    // Pause stops the guest.
    assert_eq!(v.call(Method::Patch, "/vm", r#"{"state":"Paused"}"#).0, 204);
    assert!(
        !v.ns.run(|| icmp_echo(gip, Duration::from_secs(1))),
        "a paused guest must not answer"
    );
}

/// Sends one ICMP echo request to `dst` from a raw socket (in the calling
/// thread's namespace; `ping` is not installed here) and waits up to
/// `limit` for the matching reply.
fn icmp_echo(dst: std::net::Ipv4Addr, limit: Duration) -> bool {
    use nix::sys::socket::{
        recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
        SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .expect("raw ICMP socket (needs root)");
    let id: u16 = (std::process::id() & 0xffff) as u16;
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"wasp-conformance");
    let mut sum: u32 = pkt
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    pkt[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
    sendto(fd.as_raw_fd(), &pkt, &to, MsgFlags::empty()).expect("send echo");
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let tv = nix::sys::time::TimeVal::new(left.as_secs() as _, left.subsec_micros() as _);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).unwrap();
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => return false,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("recv: {e}"),
        };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let src = std::net::Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        if n >= ihl + 8 && src == dst && buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == id.to_be_bytes()
        {
            return true;
        }
    }
}

/// A userfaultfd page-fault handler for one VMM: serves every fault from the
/// memory file. Returns the VMM's handover message and the pages served.
fn spawn_uffd_handler(
    sock: &Path,
    mem_file: PathBuf,
) -> (
    UnixStream,
    std::thread::JoinHandle<(serde_json::Value, usize)>,
) {
    use std::os::unix::fs::FileExt;
    let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
    let (stop_tx, stop_rx) = UnixStream::pair().unwrap();
    let h = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let (msg, uffd) = wasp::sys::uffd_mem::recv_uffd(&conn).unwrap();
        let msg: serde_json::Value = serde_json::from_slice(&msg).unwrap();
        let base = msg[0]["base_host_virt_addr"].as_u64().unwrap();
        let page = msg[0]["page_size"].as_u64().unwrap();
        let file = std::fs::File::open(&mem_file).unwrap();
        let mut buf = vec![0u8; page as usize];
        let mut served = 0;
        loop {
            let mut fds = [
                PollFd::new(uffd.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop_rx.as_fd(), PollFlags::POLLIN),
            ];
            poll(&mut fds, PollTimeout::NONE).unwrap();
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return (msg, served);
            }
            while let Some(addr) = uffd.read_fault().unwrap() {
                let at = addr & !(page - 1);
                file.read_exact_at(&mut buf, at - base).unwrap();
                uffd.copy(at, &buf).unwrap();
                served += 1;
            }
        }
    });
    (stop_tx, h)
}

/// The Uffd memory backend: both VMMs hand the same region list and a
/// userfaultfd to the handler, then run on the pages it serves.
#[test]
fn uffd_backend_handover_matches() {
    root_or_skip!();
    let mut seen = Vec::new();
    for kind in [Kind::Firecracker, Kind::Standin] {
        let tag = if kind == Kind::Firecracker {
            "fcu"
        } else {
            "siu"
        };
        let dir = prepare_dir(tag);
        make_snapshot(kind, dir.path(), &format!("{tag}-mk"), true, &[]);
        let (stop, handler) =
            spawn_uffd_handler(&dir.path().join("uffd.sock"), dir.path().join("mem"));
        let mut v = Vmm::start(kind, dir.path(), &format!("{tag}-run"));
        let load = r#"{"snapshot_path":"$DIR/vmstate","mem_backend":{"backend_type":"Uffd","backend_path":"$DIR/uffd.sock"}}"#;
        let outcome = run_steps(
            &mut v,
            &[
                (Method::Put, "/snapshot/load", load),
                (Method::Patch, "/vm", r#"{"state":"Resumed"}"#),
            ],
        );
        let state = v.state();
        drop(v);
        drop(stop);
        let (mut msg, served) = handler.join().unwrap();
        assert!(served > 0, "{kind:?}: no page was ever faulted in");
        assert!(msg[0]["base_host_virt_addr"].as_u64().unwrap() > 0);
        msg[0]["base_host_virt_addr"] = serde_json::json!("ADDR");
        seen.push((outcome, state, msg));
    }
    assert_eq!(
        seen[0], seen[1],
        "stand-in diverges from Firecracker on the Uffd backend"
    );
    assert_eq!(
        seen[0].2,
        serde_json::json!([{"base_host_virt_addr":"ADDR","size":16<<20,"offset":0,"page_size":4096,"page_size_kib":4096}])
    );
}

/// Payload and MMDS size limits: a body over 51200 bytes is refused by the
/// HTTP layer (400, `{ "error": ... }`, connection dropped); a PATCH that
/// would grow the store past the limit answers 413.
#[test]
fn mmds_limits_match() {
    root_or_skip!();
    let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(60_000));
    let half = format!(r#"{{"k":"{}"}}"#, "x".repeat(30_000));
    let more = format!(r#"{{"k2":"{}"}}"#, "y".repeat(30_000));
    let mut seen = Vec::new();
    for kind in [Kind::Firecracker, Kind::Standin] {
        let dir = prepare_dir("lim");
        let mut v = Vmm::start(kind, dir.path(), "lim");
        let mut out = Vec::new();
        // Over the payload limit: the client refuses to send it, and a raw
        // sender gets the HTTP layer's 400 (compared on the first answer
        // only; the connection is unusable afterwards).
        assert!(matches!(
            v.client.raw(Method::Put, "/mmds", Some(big.as_bytes())),
            Err(wasp::vmm::api::ApiError::BodyTooLarge { .. })
        ));
        // Kept open to the end: Firecracker goes on answering the rest of
        // the body as garbage requests, and is killed by SIGSYS (its own
        // seccomp filter) if that connection is gone while it still writes
        // (seen on 1.12.1).
        let mut raw = UnixStream::connect(dir.path().join("lim.sock")).unwrap();
        {
            use std::io::{Read, Write};
            raw.write_all(&wasp::vmm::api::encode_request(
                Method::Put,
                "/mmds",
                Some(big.as_bytes()),
            ))
            .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let r = loop {
                if let Some((r, _)) = wasp::vmm::api::parse_response(&buf).unwrap() {
                    break r;
                }
                let n = raw.read(&mut chunk).unwrap();
                assert!(n > 0, "{kind:?} closed without an answer");
                buf.extend_from_slice(&chunk[..n]);
            };
            out.push((r.status, String::from_utf8_lossy(&r.body).into_owned()));
        }
        for (m, body) in [
            (Method::Put, half.as_str()),
            (Method::Patch, more.as_str()),
            (Method::Patch, r#"{"k3":"z"}"#),
        ] {
            let r = v.client.raw(m, "/mmds", Some(body.as_bytes())).unwrap();
            out.push((r.status, String::from_utf8_lossy(&r.body).into_owned()));
        }
        let (s, data) = v.call(Method::Get, "/mmds", "");
        out.push((s, format!("{} bytes", data.len())));
        seen.push(out);
    }
    assert_eq!(
        seen[0], seen[1],
        "stand-in diverges from Firecracker on size limits"
    );
    assert_eq!(seen[0][0].0, 400);
    assert!(
        seen[0][0].1.contains("larger than the limit of 51200"),
        "{}",
        seen[0][0].1
    );
    assert_eq!(seen[0][1].0, 204, "under the limit");
    assert_eq!(seen[0][2].0, 413, "{}", seen[0][2].1);
    assert_eq!(seen[0][3].0, 204);
}
