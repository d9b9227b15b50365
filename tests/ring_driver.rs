//! Both restore drivers (io_uring and the syscall fallback) against fake
//! VMM API servers on real unix sockets: the same batch must give the same
//! outcomes. No root needed.

use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use wasp::pipeline::ready::Ready;
use wasp::pipeline::restore::{Job, LinkSync, Phase, Plan, RestoreError, Timeouts};
use wasp::pipeline::ring::{self, DriverKind, Feed, Next, Outcome};
use wasp::sys::tap::EventFd;
use wasp::vmm::api::BackendType;
use zeroize::Zeroizing;

use wasp_testkit::fake_vmm::{good_response, read_request};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Good,
    Fault400OnLoad,
    HangOnResume,
    ExitDuringLoad,
}

/// A fake VMM: binds `sock` once `go` fires (so the driver must wait for
/// the file), serves one connection. `link` is the far end of the job's
/// link-sync socket: when `PUT /mmds` arrives, what was sent on it by then
/// is reported as `link <bytes>`.
fn fake_vmm(
    sock: PathBuf,
    behaviour: Behaviour,
    child_pid: i32,
    go: mpsc::Receiver<()>,
    seen: mpsc::Sender<String>,
    link: UnixDatagram,
) {
    std::thread::spawn(move || {
        let _ = go.recv();
        let l = UnixListener::bind(&sock).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        link.set_nonblocking(true).unwrap();
        while let Some((line, body)) = read_request(&mut r) {
            if line.starts_with("PUT /mmds") {
                let mut buf = [0u8; 64];
                if let Ok(n) = link.recv(&mut buf) {
                    let _ = seen.send(format!("link {}", String::from_utf8_lossy(&buf[..n])));
                }
            }
            let _ = seen.send(format!("{line} {}", String::from_utf8_lossy(&body)));
            let resp: String = match (behaviour, line.as_str()) {
                (Behaviour::Fault400OnLoad, l) if l.starts_with("PUT /snapshot/load") => {
                    let b = r#"{"fault_message":"Load snapshot error: bad vmstate"}"#;
                    format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{b}",
                        b.len()
                    )
                }
                (Behaviour::ExitDuringLoad, l) if l.starts_with("PUT /snapshot/load") => {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child_pid),
                        nix::sys::signal::SIGKILL,
                    )
                    .unwrap();
                    // A dead VMM's socket closes without an answer.
                    return;
                }
                (Behaviour::HangOnResume, l) if l.starts_with("PATCH /vm") => {
                    let mut sink = Vec::new();
                    let _ = r.read_to_end(&mut sink);
                    return;
                }
                (_, l) => good_response(l),
            };
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    });
}

struct Batch {
    jobs: Vec<Job>,
    gos: Vec<mpsc::Sender<()>>,
    outcomes: Vec<Outcome>,
}

impl Feed for Batch {
    fn next_job(&mut self) -> Option<Job> {
        let job = self.jobs.pop()?;
        // Let its fake VMM bind only now, after the driver has the job.
        let _ = self.gos[job.index].send(());
        Some(job)
    }
    fn done(&mut self, o: Outcome) {
        self.outcomes.push(o);
    }
}

/// Jobs (in reverse order), their fake VMMs' go switches, the stand-in
/// children, what the fake VMMs saw, the plan, and the temp dir.
type World = (
    Vec<Job>,
    Vec<mpsc::Sender<()>>,
    Vec<Child>,
    mpsc::Receiver<String>,
    Arc<Plan>,
    tempfile::TempDir,
);

fn setup(behaviours: &[Behaviour], ready: Ready) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (seen_tx, seen_rx) = mpsc::channel();
    let mut jobs = Vec::new();
    let mut gos = Vec::new();
    let mut children = Vec::new();
    for (i, b) in behaviours.iter().enumerate() {
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = child.id() as i32;
        let sock = dir.join(format!("c{i}")).join("api.sock");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let (go_tx, go_rx) = mpsc::channel();
        let (link, link_peer) = UnixDatagram::pair().unwrap();
        fake_vmm(sock.clone(), *b, pid, go_rx, seen_tx.clone(), link_peer);
        gos.push(go_tx);
        jobs.push(Job {
            index: i,
            plan: None,
            id: format!("wasp-test-{i}"),
            api_sock: sock,
            pid,
            pidfd: wasp::sys::pidfd::pidfd_open(pid).unwrap(),
            launched_at: Instant::now(),
            net_override: None,
            clone_ip: Ipv4Addr::LOCALHOST,
            mmds_body: Zeroizing::new(
                format!(r#"{{"env":{{"AGENT_ID":"wasp-test-{i}"}}}}"#).into_bytes(),
            ),
            link_sync: Some(LinkSync {
                sock: link.into(),
                request: format!("sync-tap-of-{i}").into_bytes(),
            }),
        });
        children.push(child);
    }
    jobs.reverse();
    let plan = Arc::new(Plan {
        snapshot_path: "/snap/vmstate".into(),
        mem_path: "/snap/mem".into(),
        backend: BackendType::File,
        ready,
        timeouts: Timeouts {
            socket: Duration::from_secs(20),
            load: Duration::from_secs(20),
            api: Duration::from_millis(300),
            ready: Duration::from_millis(300),
        },
        ready_retry: Duration::from_millis(20),
    });
    (jobs, gos, children, seen_rx, plan, tmp)
}

fn run_batch(
    kind: DriverKind,
    behaviours: &[Behaviour],
    ready: Ready,
) -> (Vec<Outcome>, Vec<Child>, mpsc::Receiver<String>) {
    let (jobs, gos, children, seen_rx, plan, tmp) = setup(behaviours, ready);
    let mut batch = Batch {
        jobs,
        gos,
        outcomes: Vec::new(),
    };
    ring::run(kind, plan, 4, &mut batch).unwrap();
    drop(tmp);
    batch.outcomes.sort_by_key(|o| o.job.index);
    (batch.outcomes, children, seen_rx)
}

fn kinds() -> Vec<DriverKind> {
    let mut v = vec![DriverKind::Syscalls];
    match ring::choose() {
        (DriverKind::Uring, _) => v.push(DriverKind::Uring),
        (_, why) => eprintln!("io_uring unavailable ({why:?}); testing the fallback only"),
    }
    v
}

fn cleanup(children: Vec<Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_good_batch_restores_every_clone_in_order_of_phases() {
    for kind in kinds() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let (outs, children, seen) = run_batch(kind, &[Behaviour::Good; 10], Ready::Tcp(port));
        assert_eq!(outs.len(), 10, "{kind}");
        for o in &outs {
            assert!(o.result.is_ok(), "{kind}: {:?}", o.result);
        }
        let reqs: Vec<String> = seen.try_iter().collect();
        // Every clone: load, then mmds with its own AGENT_ID, then resume.
        for i in 0..10 {
            let id = format!("wasp-test-{i}\"");
            assert!(
                reqs.iter()
                    .any(|r| r.starts_with("PUT /mmds") && r.contains(&id)),
                "{kind}: {reqs:?}"
            );
        }
        assert_eq!(
            reqs.iter()
                .filter(|r| r.starts_with("PUT /snapshot/load"))
                .count(),
            10
        );
        // Every clone's tap link sync went out after its load and before
        // its MMDS put.
        for i in 0..10 {
            let want = format!("link sync-tap-of-{i}");
            assert!(reqs.contains(&want), "{kind}: {want} missing: {reqs:?}");
        }
        assert_eq!(
            reqs.iter()
                .filter(|r| r.starts_with("PATCH /vm") && r.contains("Resumed"))
                .count(),
            10
        );
        cleanup(children);
    }
}

#[test]
fn running_readiness_uses_get_root() {
    for kind in kinds() {
        let (outs, children, seen) = run_batch(kind, &[Behaviour::Good; 3], Ready::Running);
        assert!(outs.iter().all(|o| o.result.is_ok()), "{kind}");
        assert_eq!(
            seen.try_iter().filter(|r| r.starts_with("GET / ")).count(),
            3
        );
        cleanup(children);
    }
}

#[test]
fn faults_are_typed_per_clone_and_the_rest_of_the_batch_completes() {
    for kind in kinds() {
        let b = [
            Behaviour::Good,
            Behaviour::Fault400OnLoad,
            Behaviour::HangOnResume,
            Behaviour::ExitDuringLoad,
            Behaviour::Good,
        ];
        let (outs, children, _) = run_batch(kind, &b, Ready::None);
        assert_eq!(outs.len(), 5);
        assert!(outs[0].result.is_ok() && outs[4].result.is_ok(), "{kind}");
        match &outs[1].result {
            Err(RestoreError::Api {
                phase: Phase::Load,
                status: 400,
                fault_message,
            }) => {
                assert!(fault_message.contains("bad vmstate"))
            }
            other => panic!("{kind}: {other:?}"),
        }
        assert!(
            matches!(
                outs[2].result,
                Err(RestoreError::Timeout {
                    phase: Phase::Resume,
                    ..
                })
            ),
            "{kind}: {:?}",
            outs[2].result
        );
        assert!(
            matches!(
                outs[3].result,
                Err(RestoreError::VmmExited { phase: Phase::Load })
            ),
            "{kind}: {:?}",
            outs[3].result
        );
        cleanup(children);
    }
}

#[test]
fn refused_readiness_times_out_in_the_ready_phase() {
    for kind in kinds() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (outs, children, _) = run_batch(kind, &[Behaviour::Good; 2], Ready::Tcp(port));
        for o in &outs {
            assert!(
                matches!(
                    o.result,
                    Err(RestoreError::Timeout {
                        phase: Phase::Ready,
                        ..
                    })
                ),
                "{kind}: {:?}",
                o.result
            );
        }
        cleanup(children);
    }
}

/// Jobs made on another thread, as `wasp spawn`'s admission thread makes
/// them: `poll_job` never blocks, the eventfd wakes the driver.
struct ThreadFeed<'a> {
    jobs: mpsc::Receiver<Job>,
    outcomes: mpsc::Sender<Outcome>,
    wake: &'a EventFd,
    later: usize,
}

impl Feed for ThreadFeed<'_> {
    fn next_job(&mut self) -> Option<Job> {
        self.jobs.recv().ok()
    }
    fn poll_job(&mut self) -> Next {
        match self.jobs.try_recv() {
            Ok(j) => Next::Job(j),
            Err(mpsc::TryRecvError::Empty) => {
                self.later += 1;
                Next::Later
            }
            Err(mpsc::TryRecvError::Disconnected) => Next::End,
        }
    }
    fn wake(&self) -> Option<&EventFd> {
        Some(self.wake)
    }
    fn done(&mut self, o: Outcome) {
        self.outcomes.send(o).unwrap();
    }
}

#[test]
fn jobs_from_another_thread_wake_the_driver() {
    for kind in kinds() {
        let (mut jobs, gos, children, _seen, plan, _tmp) =
            setup(&[Behaviour::Good; 5], Ready::None);
        let wake = EventFd::new().unwrap();
        let (job_tx, job_rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let mut feed = ThreadFeed {
            jobs: job_rx,
            outcomes: out_tx,
            wake: &wake,
            later: 0,
        };
        let waker = &wake;
        let outs = std::thread::scope(|s| {
            let producer = s.spawn(move || {
                // One job at a time, the next only after the last one's
                // outcome: the driver idles with nothing in flight between
                // jobs and must be woken each time.
                let mut outs = Vec::new();
                while let Some(job) = jobs.pop() {
                    let go = gos[job.index].clone();
                    job_tx.send(job).unwrap();
                    waker.signal().unwrap();
                    let _ = go.send(());
                    outs.push(out_rx.recv().unwrap());
                }
                drop(job_tx);
                waker.signal().unwrap();
                outs
            });
            ring::run(kind, plan.clone(), 4, &mut feed).unwrap();
            producer.join().unwrap()
        });
        assert_eq!(outs.len(), 5, "{kind}");
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(o.job.index, i, "{kind}");
            assert!(o.result.is_ok(), "{kind}: {:?}", o.result);
        }
        // Waiting is on the eventfd, not a spin on `poll_job`: a few
        // `Later`s per job at most.
        assert!(feed.later <= 5 * 4, "{kind}: {} Later answers", feed.later);
        cleanup(children);
    }
}
