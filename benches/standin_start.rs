//! Stand-in VMM start cost: process spawn -> API socket accepting, p50 over
//! many runs (budget: < 2 ms p50, so spawn benchmarks measure wasp, not the
//! stand-in). Also runs the pinned Firecracker the same way for comparison
//! when `WASP_FIRECRACKER` is set.
//!
//! `cargo bench --bench standin_start` (release build of the stand-in).
//! Waiting uses inotify on the socket's directory, never a sleep. No network
//! namespace is needed: without a `PUT /network-interfaces` neither VMM
//! touches the network.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use wasp::stats::{ms, Percentiles};

fn start_once(bin: &Path, dir: &Path, i: usize) -> f64 {
    let sock = dir.join(format!("b{i}.sock"));
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    ino.add_watch(dir, AddWatchFlags::IN_CREATE).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let elapsed = loop {
        match UnixStream::connect(&sock) {
            Ok(_) => break t0.elapsed(),
            // Bound, not yet listening: give the CPU to the child.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::yield_now();
                continue;
            }
            Err(_) => {}
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{} exited early: {st}", bin.display());
        }
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        let _ = ino.read_events();
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&sock);
    ms(elapsed)
}

/// The floor every process pays here: spawn -> exit of `BIN --version`
/// (exec, dynamic linking, runtime start, exit, reap).
fn floor_once(bin: &Path) -> f64 {
    let t0 = Instant::now();
    let st = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    ms(t0.elapsed())
}

fn measure(name: &str, bin: &Path, runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    // Warm the page cache once.
    start_once(bin, dir.path(), usize::MAX);
    let samples: Vec<f64> = (0..runs).map(|i| start_once(bin, dir.path(), i)).collect();
    let p = Percentiles::of(&samples);
    println!(
        "{name}: process start -> API socket accepting, n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        p.n, p.p50, p.p90, p.p99, p.max
    );
    let floor: Vec<f64> = (0..runs).map(|_| floor_once(bin)).collect();
    let f = Percentiles::of(&floor);
    println!(
        "{name}: floor (spawn -> exit of --version), n={} p50={:.3} ms p90={:.3} ms",
        f.n, f.p50, f.p90
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // then this only checks that the stand-in starts once.
    if !std::env::args().any(|a| a == "--bench") {
        let dir = tempfile::tempdir().unwrap();
        start_once(
            &PathBuf::from(env!("CARGO_BIN_EXE_wasp-standin")),
            dir.path(),
            0,
        );
        return;
    }
    let runs = std::env::var("WASP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    measure(
        "wasp-standin",
        &PathBuf::from(env!("CARGO_BIN_EXE_wasp-standin")),
        runs,
    );
    if let Some(fc) = std::env::var_os("WASP_FIRECRACKER") {
        measure("firecracker", &PathBuf::from(fc), runs);
    }
}
