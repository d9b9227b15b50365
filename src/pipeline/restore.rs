//! Pipeline stages "restore", "inject" and "resume" for one clone, as a pure
//! state machine over its API socket: connect, `PUT /snapshot/load`,
//! `PUT /mmds`, `PATCH /vm`, then the readiness check of [`crate::pipeline::ready`].
//!
//! The machine does no I/O. A driver ([`crate::pipeline::ring`]: io_uring, or the
//! plain-syscall fallback) performs what [`Machine::want`] asks for and
//! reports back, so both drivers share every decision and tests can drive a
//! machine with made-up events.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::pipeline::ready::Ready;
use crate::vmm::api::{BackendType, MemBackend, Method, NetworkOverride, SnapshotLoad, VmRunState};

/// A phase of one clone's life, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Waiting for the API socket to accept.
    Socket,
    /// `PUT /snapshot/load`.
    Load,
    /// `PUT /mmds`.
    Mmds,
    /// `PATCH /vm` Resumed.
    Resume,
    /// The readiness check.
    Ready,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Socket => "socket",
            Phase::Load => "load",
            Phase::Mmds => "mmds",
            Phase::Resume => "resume",
            Phase::Ready => "ready",
        })
    }
}

/// Per-phase time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Socket accepting after launch.
    pub socket: Duration,
    /// Snapshot load.
    pub load: Duration,
    /// MMDS put and resume, each.
    pub api: Duration,
    /// Readiness.
    pub ready: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            socket: Duration::from_secs(10),
            load: Duration::from_secs(30),
            api: Duration::from_secs(10),
            ready: Duration::from_secs(20),
        }
    }
}

/// How long a silent close of the API socket waits for the VMM's exit to
/// show on its pidfd.
pub const EXIT_GRACE: Duration = Duration::from_millis(500);

/// What every clone of one request shares (snapshot, readiness, limits).
/// A driver has a default plan; a [`Job`] may carry its own, so one driver
/// serves requests for many snapshots at once.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The vmstate file.
    pub snapshot_path: PathBuf,
    /// The memory file (shared, never copied).
    pub mem_path: PathBuf,
    /// File or Uffd.
    pub backend: BackendType,
    /// Readiness check.
    pub ready: Ready,
    /// Limits.
    pub timeouts: Timeouts,
    /// Retry delay for a refused readiness connect (the guest's service is
    /// not listening yet).
    pub ready_retry: Duration,
}

/// One clone handed to a driver.
pub struct Job {
    /// The job's key, unique among the jobs one driver has in flight (the
    /// position in a batch, or an engine's sequence number).
    pub index: usize,
    /// This job's plan; `None`: the driver's.
    pub plan: Option<Arc<Plan>>,
    /// Clone id (also AGENT_ID).
    pub id: String,
    /// API socket path.
    pub api_sock: PathBuf,
    /// The VMM's pid.
    pub pid: i32,
    /// A pidfd on the VMM, watched for exit in every phase.
    pub pidfd: std::os::fd::OwnedFd,
    /// When the VMM was spawned (start of the socket phase).
    pub launched_at: Instant,
    /// Tap rename for `network_overrides`, when the slot's tap name differs.
    pub net_override: Option<NetworkOverride>,
    /// The clone's address, for `tcp:` readiness.
    pub clone_ip: Ipv4Addr,
    /// The `PUT /mmds` body (holds secrets; zeroized on drop).
    pub mmds_body: Zeroizing<Vec<u8>>,
    /// Syncs the tap's link state once the VMM holds it (see [`LinkSync`]).
    pub link_sync: Option<LinkSync>,
}

/// A route socket inside the clone's slot netns and a request for it, sent
/// once the load answered (the VMM has opened the tap): an `RTM_GETLINK`
/// for the tap, then (when the guest's address and MAC are known) the
/// slot's probing neighbour entry for the guest (see `spawn::link_sync`).
///
/// Opening the tap turns its carrier on, but the kernel only starts the
/// tap's queue in its link-watch worker, later and under the RTNL lock;
/// until then every packet towards the guest is dropped. Under load that
/// drops the first ARP request for the guest, and the clone answers a
/// second late (the ARP retry). A link request for the tap runs that work
/// at once (rtnl_getlink syncs the link watch), so the tap transmits before
/// the VM resumes. The answers are never read: the work is done when the
/// send returns, and the socket closes with the job.
#[derive(Debug)]
pub struct LinkSync {
    /// `NETLINK_ROUTE`, opened inside the slot netns.
    pub sock: std::os::fd::OwnedFd,
    /// The request.
    pub request: Vec<u8>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("index", &self.index)
            .field("id", &self.id)
            .field("api_sock", &self.api_sock)
            .field("pid", &self.pid)
            .field("clone_ip", &self.clone_ip)
            .field("mmds_body", &"***")
            .finish()
    }
}

/// Why a clone failed, always with the phase it was in.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// The VMM answered with an error status.
    #[error("{phase}: the VMM answered {status}: {fault_message}")]
    Api {
        /// Phase.
        phase: Phase,
        /// HTTP status.
        status: u16,
        /// Firecracker's `fault_message`.
        fault_message: String,
    },
    /// Socket I/O failed.
    #[error("{phase}: API socket I/O failed")]
    Io {
        /// Phase.
        phase: Phase,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM sent something that is not HTTP.
    #[error("{phase}: malformed API response")]
    Parse {
        /// Phase.
        phase: Phase,
        /// Cause.
        #[source]
        source: crate::vmm::api::ParseError,
    },
    /// The VMM closed the connection mid-response.
    #[error("{phase}: the VMM closed the API connection before answering")]
    Closed {
        /// Phase.
        phase: Phase,
    },
    /// The VMM process exited.
    #[error("{phase}: the VMM process exited")]
    VmmExited {
        /// Phase.
        phase: Phase,
    },
    /// A phase ran over its limit.
    #[error("{phase}: no progress within {limit:?}")]
    Timeout {
        /// Phase.
        phase: Phase,
        /// Limit.
        limit: Duration,
    },
    /// The VM is not running after resume.
    #[error("{phase}: the VM state is {state:?}, not Running")]
    NotRunning {
        /// Phase.
        phase: Phase,
        /// Reported state.
        state: String,
    },
}

impl RestoreError {
    /// The phase the clone failed in.
    pub fn phase(&self) -> Phase {
        match self {
            RestoreError::Api { phase, .. }
            | RestoreError::Io { phase, .. }
            | RestoreError::Parse { phase, .. }
            | RestoreError::Closed { phase }
            | RestoreError::VmmExited { phase }
            | RestoreError::Timeout { phase, .. }
            | RestoreError::NotRunning { phase, .. } => *phase,
        }
    }
}

/// Time spent in each phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseTimes {
    /// Spawn to socket accepting.
    pub socket: Duration,
    /// Load.
    pub load: Duration,
    /// MMDS put.
    pub mmds: Duration,
    /// Resume.
    pub resume: Duration,
    /// Readiness.
    pub ready: Duration,
}

/// What the machine needs the driver to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Connect to the API socket (again).
    ConnectApi,
    /// Send `tx_pending()` on the API socket.
    Send,
    /// Receive more bytes on the API socket.
    Recv,
    /// Send `tx_pending()` (one netlink request) on the job's
    /// [`LinkSync`] socket, then report [`Machine::link_synced`].
    SendLink,
    /// Connect to this address from the host netns.
    ConnectTcp(SocketAddrV4),
    /// Wait until this instant, then connect again (readiness retry).
    RetryTcpAt(Instant),
    /// The VMM closed its API socket without answering: wait until this
    /// instant for its pidfd to report an exit (then the failure is
    /// `VmmExited`), else the failure is `Closed`.
    AwaitExit(Instant),
    /// Finished; see [`Machine::outcome`].
    Done,
}

/// One clone's state machine.
#[derive(Debug)]
pub struct Machine {
    job: Job,
    plan: Arc<Plan>,
    phase: Phase,
    phase_start: Instant,
    want: Want,
    tx: Zeroizing<Vec<u8>>,
    tx_off: usize,
    rx: Vec<u8>,
    times: PhaseTimes,
    result: Option<Result<(), RestoreError>>,
    /// Readiness uses GET / when `Ready::Running`.
    checking_running: bool,
    /// The VMM exited while a response was awaited; the socket is drained
    /// first so its last answer (e.g. a 400 before exiting) is not lost.
    vmm_gone: bool,
}

impl Machine {
    /// A machine for `job`, starting in the socket phase (whose clock started
    /// at launch).
    pub fn new(job: Job, plan: Arc<Plan>) -> Self {
        let phase_start = job.launched_at;
        Self {
            job,
            plan,
            phase: Phase::Socket,
            phase_start,
            want: Want::ConnectApi,
            tx: Zeroizing::new(Vec::new()),
            tx_off: 0,
            rx: Vec::new(),
            times: PhaseTimes::default(),
            result: None,
            checking_running: false,
            vmm_gone: false,
        }
    }

    /// Gives the job back (after the machine is done).
    pub fn into_job(self) -> Job {
        self.job
    }

    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// What to do next.
    pub fn want(&self) -> Want {
        self.want
    }

    /// Bytes still to send (none once done).
    ///
    /// Buffer lifetime: the slice stays valid and unmoved until the next
    /// call to a `&mut self` event method, and its allocation lives until
    /// the machine drops, so a driver may hand it to an in-flight send.
    pub fn tx_pending(&self) -> &[u8] {
        if self.want == Want::Done {
            return &[];
        }
        &self.tx[self.tx_off..]
    }

    /// The phase times so far.
    pub fn times(&self) -> PhaseTimes {
        self.times
    }

    /// The result once `want() == Done`.
    pub fn take_outcome(&mut self) -> Option<Result<(), RestoreError>> {
        self.result.take()
    }

    /// When the current phase runs out of time.
    pub fn deadline(&self) -> Instant {
        let t = &self.plan.timeouts;
        self.phase_start
            + match self.phase {
                Phase::Socket => t.socket,
                Phase::Load => t.load,
                Phase::Mmds | Phase::Resume => t.api,
                Phase::Ready => t.ready,
            }
    }

    fn limit(&self) -> Duration {
        self.deadline() - self.phase_start
    }

    fn finish(&mut self, r: Result<(), RestoreError>) {
        if self.result.is_none() && self.want != Want::Done {
            self.result = Some(r);
        }
        // The request buffer stays allocated (a driver may still have a send
        // in flight that points into it); it is zeroized when the machine
        // drops.
        self.want = Want::Done;
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        let spent = now.saturating_duration_since(self.phase_start);
        match self.phase {
            Phase::Socket => self.times.socket = spent,
            Phase::Load => self.times.load = spent,
            Phase::Mmds => self.times.mmds = spent,
            Phase::Resume => self.times.resume = spent,
            Phase::Ready => self.times.ready = spent,
        }
        self.phase = phase;
        self.phase_start = now;
    }

    fn request(&mut self, method: Method, path: &str, body: Option<&[u8]>) {
        self.tx = Zeroizing::new(crate::vmm::api::encode_request(method, path, body));
        self.tx_off = 0;
        self.rx.clear();
        self.want = Want::Send;
    }

    fn load_request(&mut self) {
        let load = SnapshotLoad {
            snapshot_path: self.plan.snapshot_path.display().to_string(),
            mem_backend: MemBackend {
                backend_type: self.plan.backend,
                backend_path: self.plan.mem_path.display().to_string(),
            },
            resume_vm: false,
            network_overrides: self.job.net_override.iter().cloned().collect(),
            track_dirty_pages: false,
        };
        let body = serde_json::to_vec(&load).expect("json");
        self.request(Method::Put, "/snapshot/load", Some(&body));
    }

    /// The API socket accepted.
    pub fn api_connected(&mut self, now: Instant) {
        if self.want != Want::ConnectApi {
            return;
        }
        self.enter(Phase::Load, now);
        self.load_request();
    }

    fn mmds_request(&mut self, now: Instant) {
        self.enter(Phase::Mmds, now);
        let body = std::mem::take(&mut self.job.mmds_body);
        self.request(Method::Put, "/mmds", Some(&body));
    }

    /// The link request ([`Want::SendLink`]) went out, or failed with
    /// `err`. Either way the restore goes on: without the sync the
    /// kernel's own worker starts the tap a little later.
    pub fn link_synced(&mut self, err: Option<std::io::Error>, now: Instant) {
        if self.want != Want::SendLink {
            return;
        }
        if let Some(e) = err {
            tracing::debug!(clone = %self.job.id, error = %e, "tap link sync failed");
        }
        self.mmds_request(now);
    }

    /// `n` bytes of `tx_pending()` went out.
    pub fn sent(&mut self, n: usize) {
        self.tx_off = (self.tx_off + n).min(self.tx.len());
        if self.tx_off == self.tx.len() {
            self.want = Want::Recv;
        }
    }

    /// Bytes arrived on the API socket; an empty slice means EOF.
    pub fn received(&mut self, data: &[u8], now: Instant) {
        if self.want != Want::Recv {
            return;
        }
        if data.is_empty() {
            let phase = self.phase;
            if self.vmm_gone {
                return self.finish(Err(RestoreError::VmmExited { phase }));
            }
            // A VMM that is exiting closes its socket a moment before its
            // pidfd reports the exit: give the exit a short grace to show.
            self.want = Want::AwaitExit(now + EXIT_GRACE);
            return;
        }
        self.rx.extend_from_slice(data);
        let resp = match crate::vmm::api::parse_response(&self.rx) {
            Ok(None) => return,
            Ok(Some((r, _))) => r,
            Err(source) => {
                let phase = self.phase;
                return self.finish(Err(RestoreError::Parse { phase, source }));
            }
        };
        let ok = if self.checking_running { 200 } else { 204 };
        if resp.status != ok {
            let phase = self.phase;
            return self.finish(Err(RestoreError::Api {
                phase,
                status: resp.status,
                fault_message: crate::vmm::api::fault_message_of(&resp.body),
            }));
        }
        match self.phase {
            Phase::Socket => {}
            Phase::Load => {
                if let Some(l) = &self.job.link_sync {
                    self.tx = Zeroizing::new(l.request.clone());
                    self.tx_off = 0;
                    self.want = Want::SendLink;
                } else {
                    self.mmds_request(now);
                }
            }
            Phase::Mmds => {
                self.enter(Phase::Resume, now);
                let body = serde_json::to_vec(&crate::vmm::api::Vm {
                    state: VmRunState::Resumed,
                })
                .expect("json");
                self.request(Method::Patch, "/vm", Some(&body));
            }
            Phase::Resume => {
                self.enter(Phase::Ready, now);
                match self.plan.ready {
                    Ready::None => {
                        self.enter(Phase::Ready, now);
                        self.finish(Ok(()));
                    }
                    Ready::Running => {
                        self.checking_running = true;
                        self.request(Method::Get, "/", None);
                    }
                    Ready::Tcp(port) => {
                        self.want = Want::ConnectTcp(SocketAddrV4::new(self.job.clone_ip, port))
                    }
                }
            }
            Phase::Ready => {
                let state = serde_json::from_slice::<serde_json::Value>(&resp.body)
                    .ok()
                    .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                if state == "Running" {
                    self.enter(Phase::Ready, now);
                    self.finish(Ok(()));
                } else {
                    self.finish(Err(RestoreError::NotRunning {
                        phase: Phase::Ready,
                        state,
                    }));
                }
            }
        }
    }

    /// The readiness connect succeeded.
    pub fn tcp_connected(&mut self, now: Instant) {
        if matches!(self.want, Want::ConnectTcp(_)) {
            self.enter(Phase::Ready, now);
            self.finish(Ok(()));
        }
    }

    /// The readiness connect failed (refused, unreachable): retry after
    /// the plan's delay, within the phase's deadline.
    pub fn tcp_failed(&mut self, now: Instant) {
        if let Want::ConnectTcp(_) = self.want {
            let at = now + self.plan.ready_retry;
            if at >= self.deadline() {
                let limit = self.limit();
                return self.finish(Err(RestoreError::Timeout {
                    phase: Phase::Ready,
                    limit,
                }));
            }
            self.want = Want::RetryTcpAt(at);
        }
    }

    /// The retry delay passed.
    pub fn retry_due(&mut self) {
        if let (Want::RetryTcpAt(_), Ready::Tcp(port)) = (self.want, self.plan.ready) {
            self.want = Want::ConnectTcp(SocketAddrV4::new(self.job.clone_ip, port));
        }
    }

    /// An I/O error on the API socket.
    pub fn io_failed(&mut self, source: std::io::Error) {
        let phase = self.phase;
        self.finish(Err(if self.vmm_gone {
            RestoreError::VmmExited { phase }
        } else {
            RestoreError::Io { phase, source }
        }));
    }

    /// The grace after a silent close ran out with the VMM still alive.
    pub fn exit_grace_over(&mut self) {
        if let Want::AwaitExit(_) = self.want {
            let phase = self.phase;
            self.finish(Err(RestoreError::Closed { phase }));
        }
    }

    /// The VMM process exited. While a response is awaited, the machine
    /// keeps reading: the VMM may have answered before exiting (Firecracker
    /// exits after a failed load), and that answer names the cause. The
    /// closed socket then ends the read.
    pub fn vmm_exited(&mut self) {
        if self.want == Want::Recv && !self.vmm_gone {
            self.vmm_gone = true;
            return;
        }
        let phase = self.phase;
        self.finish(Err(RestoreError::VmmExited { phase }));
    }

    /// Fails the clone if its phase is past its deadline. Returns true when
    /// it did.
    pub fn check_deadline(&mut self, now: Instant) -> bool {
        if self.want != Want::Done && now >= self.deadline() {
            let (phase, limit) = (self.phase, self.limit());
            self.finish(Err(RestoreError::Timeout { phase, limit }));
            return true;
        }
        false
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn job(index: usize) -> Job {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Job {
            index,
            plan: None,
            id: format!("wasp-{index}"),
            api_sock: "/tmp/x.sock".into(),
            pid: 1,
            pidfd: a.into(),
            launched_at: Instant::now(),
            net_override: Some(NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap1".into(),
            }),
            clone_ip: Ipv4Addr::new(10, 0, 0, 2),
            mmds_body: Zeroizing::new(br#"{"env":{"AGENT_ID":"wasp-0","K":"canary"}}"#.to_vec()),
            link_sync: None,
        }
    }

    pub(crate) fn plan(ready: Ready) -> Arc<Plan> {
        Arc::new(Plan {
            snapshot_path: "/snap/vmstate".into(),
            mem_path: "/snap/mem".into(),
            backend: BackendType::File,
            ready,
            timeouts: Timeouts::default(),
            ready_retry: crate::pipeline::ready::READY_RETRY,
        })
    }

    fn answer(m: &mut Machine, status: &str, body: &str) {
        assert_eq!(m.want(), Want::Send);
        let n = m.tx_pending().len();
        m.sent(n);
        assert_eq!(m.want(), Want::Recv);
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // Deliver in two pieces to exercise partial parsing.
        let (a, b) = resp.as_bytes().split_at(resp.len() / 2);
        m.received(a, Instant::now());
        m.received(b, Instant::now());
    }

    #[test]
    fn happy_path_with_tcp_readiness() {
        let mut m = Machine::new(job(0), plan(Ready::Tcp(22)));
        assert_eq!(m.want(), Want::ConnectApi);
        m.api_connected(Instant::now());
        let req = String::from_utf8(m.tx_pending().to_vec()).unwrap();
        assert!(req.starts_with("PUT /snapshot/load HTTP/1.1\r\n"), "{req}");
        let body: serde_json::Value =
            serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["mem_backend"]["backend_type"], "File");
        assert_eq!(body["mem_backend"]["backend_path"], "/snap/mem");
        assert_eq!(body["network_overrides"][0]["host_dev_name"], "tap1");
        assert!(body.get("resume_vm").is_none() || body["resume_vm"] == false);
        answer(&mut m, "204 No Content", "");
        assert_eq!(m.phase(), Phase::Mmds);
        let req = String::from_utf8(m.tx_pending().to_vec()).unwrap();
        assert!(req.starts_with("PUT /mmds "), "{req}");
        assert!(req.contains("canary"));
        answer(&mut m, "204 No Content", "");
        let req = String::from_utf8(m.tx_pending().to_vec()).unwrap();
        assert!(
            req.starts_with("PATCH /vm ") && req.contains("Resumed"),
            "{req}"
        );
        answer(&mut m, "204 No Content", "");
        assert_eq!(m.want(), Want::ConnectTcp("10.0.0.2:22".parse().unwrap()));
        m.tcp_failed(Instant::now());
        assert!(matches!(m.want(), Want::RetryTcpAt(_)));
        m.retry_due();
        m.tcp_connected(Instant::now());
        assert_eq!(m.want(), Want::Done);
        assert!(m.take_outcome().unwrap().is_ok());
        // The secret-bearing buffers are gone once done.
        assert!(m.tx_pending().is_empty());
        assert!(!format!("{m:?}").contains("canary"));
    }

    fn job_with_link_sync() -> Job {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Job {
            link_sync: Some(LinkSync {
                sock: a.into(),
                request: b"getlink tap0".to_vec(),
            }),
            ..job(0)
        }
    }

    #[test]
    fn the_tap_link_sync_goes_out_between_load_and_mmds() {
        for err in [None, Some(std::io::Error::from_raw_os_error(libc::ENODEV))] {
            let failed = err.is_some();
            let mut m = Machine::new(job_with_link_sync(), plan(Ready::None));
            m.api_connected(Instant::now());
            answer(&mut m, "204 No Content", "");
            assert_eq!(m.want(), Want::SendLink);
            assert_eq!(m.phase(), Phase::Load);
            assert_eq!(m.tx_pending(), b"getlink tap0");
            // A failed sync only delays the tap's start: the restore goes on.
            m.link_synced(err, Instant::now());
            assert_eq!(m.phase(), Phase::Mmds, "failed sync: {failed}");
            let req = String::from_utf8(m.tx_pending().to_vec()).unwrap();
            assert!(req.starts_with("PUT /mmds "), "{req}");
        }
        // The VMM dying meanwhile fails the clone in the load phase.
        let mut m = Machine::new(job_with_link_sync(), plan(Ready::None));
        m.api_connected(Instant::now());
        answer(&mut m, "204 No Content", "");
        m.vmm_exited();
        assert!(matches!(
            m.take_outcome(),
            Some(Err(RestoreError::VmmExited { phase: Phase::Load }))
        ));
    }

    #[test]
    fn running_readiness_checks_state() {
        let mut m = Machine::new(job(0), plan(Ready::Running));
        m.api_connected(Instant::now());
        for _ in 0..3 {
            answer(&mut m, "204 No Content", "");
        }
        assert!(String::from_utf8_lossy(m.tx_pending()).starts_with("GET / "));
        answer(&mut m, "200 OK", r#"{"state":"Paused"}"#);
        let e = m.take_outcome().unwrap().unwrap_err();
        assert!(matches!(e, RestoreError::NotRunning { .. }), "{e}");

        let mut m = Machine::new(job(0), plan(Ready::Running));
        m.api_connected(Instant::now());
        for _ in 0..3 {
            answer(&mut m, "204 No Content", "");
        }
        answer(&mut m, "200 OK", r#"{"state":"Running","id":"x"}"#);
        assert!(m.take_outcome().unwrap().is_ok());
    }

    #[test]
    fn a_fault_names_phase_and_message() {
        let mut m = Machine::new(job(0), plan(Ready::None));
        m.api_connected(Instant::now());
        answer(
            &mut m,
            "400 Bad Request",
            r#"{"fault_message":"Loading a microVM snapshot not allowed after configuring boot-specific resources."}"#,
        );
        let e = m.take_outcome().unwrap().unwrap_err();
        assert_eq!(e.phase(), Phase::Load);
        assert!(
            e.to_string()
                .contains("load: the VMM answered 400: Loading a microVM"),
            "{e}"
        );
    }

    #[test]
    fn exits_timeouts_and_eof_are_typed() {
        let mut m = Machine::new(job(0), plan(Ready::None));
        m.vmm_exited();
        assert!(matches!(
            m.take_outcome().unwrap(),
            Err(RestoreError::VmmExited {
                phase: Phase::Socket
            })
        ));

        let mut m = Machine::new(job(0), plan(Ready::None));
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(m.check_deadline(later));
        assert!(matches!(
            m.take_outcome().unwrap(),
            Err(RestoreError::Timeout {
                phase: Phase::Socket,
                ..
            })
        ));

        let mut m = Machine::new(job(0), plan(Ready::None));
        m.api_connected(Instant::now());
        let n = m.tx_pending().len();
        m.sent(n);
        m.received(b"", Instant::now());
        assert!(matches!(m.want(), Want::AwaitExit(_)));
        m.vmm_exited();
        assert!(matches!(
            m.take_outcome().unwrap(),
            Err(RestoreError::VmmExited { phase: Phase::Load })
        ));

        let mut m = Machine::new(job(0), plan(Ready::None));
        m.api_connected(Instant::now());
        let n = m.tx_pending().len();
        m.sent(n);
        m.received(b"", Instant::now());
        m.exit_grace_over();
        assert!(matches!(
            m.take_outcome().unwrap(),
            Err(RestoreError::Closed { phase: Phase::Load })
        ));

        let mut m = Machine::new(job(0), plan(Ready::None));
        m.api_connected(Instant::now());
        let n = m.tx_pending().len();
        m.sent(n);
        m.received(b"\x00\x01 not http\r\n\r\n", Instant::now());
        assert!(matches!(
            m.take_outcome().unwrap(),
            Err(RestoreError::Parse { .. })
        ));
    }

    #[test]
    fn partial_sends_continue() {
        let mut m = Machine::new(job(0), plan(Ready::None));
        m.api_connected(Instant::now());
        let total = m.tx_pending().len();
        m.sent(10);
        assert_eq!(m.want(), Want::Send);
        assert_eq!(m.tx_pending().len(), total - 10);
        m.sent(total - 10);
        assert_eq!(m.want(), Want::Recv);
    }
}
