//! The restore driver: runs up to `parallel` clone [`Machine`]s at once on
//! one thread, on io_uring ([`DriverKind::Uring`]) or, where io_uring or an
//! opcode is missing, on nonblocking syscalls and poll(2)
//! ([`DriverKind::Syscalls`]). Both make the same decisions: they only
//! execute what the machines ask for.
//!
//! Per clone, in flight at once: at most one API/readiness operation (connect,
//! send, recv, timeout) and one poll on the VMM's pidfd, so a VMM that exits
//! fails its clone in whatever phase it is. The API socket's appearance is
//! watched with inotify. Sockets for `tcp:` readiness are created on the
//! driver's thread, so run the driver inside the host network namespace.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use zeroize::Zeroizing;

use crate::pipeline::restore::{Job, Machine, PhaseTimes, Plan, RestoreError, Want};
use crate::sys::inotify;
use crate::sys::sock::{self, SockAddr};
use crate::sys::tap::EventFd;
use crate::sys::uring::{Op, Ring};

/// Which driver runs the machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// io_uring.
    Uring,
    /// Nonblocking syscalls and poll(2).
    Syscalls,
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriverKind::Uring => "io_uring",
            DriverKind::Syscalls => "syscalls",
        })
    }
}

/// Probes io_uring and its opcodes; falls back to syscalls with the reason.
pub fn choose() -> (DriverKind, Option<String>) {
    match Ring::new(8) {
        Ok(_) => (DriverKind::Uring, None),
        Err(e) => (DriverKind::Syscalls, Some(e.to_string())),
    }
}

/// Driver failures (not per-clone failures, which are [`RestoreError`]s).
#[derive(Debug, Error)]
pub enum DriverError {
    /// Setting up or waiting on io_uring / poll / inotify failed.
    #[error("the restore driver ({kind}) failed")]
    Io {
        /// Driver.
        kind: DriverKind,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// One clone's result.
#[derive(Debug)]
pub struct Outcome {
    /// The job, handed back (pidfd and all).
    pub job: Job,
    /// Success or the typed failure with its phase.
    pub result: Result<(), RestoreError>,
    /// Time per phase.
    pub times: PhaseTimes,
    /// When the clone finished.
    pub finished_at: Instant,
}

/// What a feed has for the driver right now.
#[derive(Debug)]
pub enum Next {
    /// A clone to start.
    Job(Job),
    /// Nothing yet: the feed signals its [`Feed::wake`] eventfd when it has.
    Later,
    /// No more clones.
    End,
}

/// Where jobs come from and outcomes go.
///
/// A feed either makes jobs on the driver's thread ([`Feed::next_job`],
/// called only while the driver has room), or on another thread: then it
/// answers [`Feed::poll_job`] without blocking and signals [`Feed::wake`]
/// after each job it makes available, so the driver never stalls its
/// clones' I/O behind admission work.
pub trait Feed {
    /// The next clone to start, or `None` when there are no more.
    fn next_job(&mut self) -> Option<Job>;
    /// A clone finished.
    fn done(&mut self, outcome: Outcome);
    /// The next clone if one is ready, without blocking. The default asks
    /// [`Feed::next_job`] (a feed that never has to wait).
    fn poll_job(&mut self) -> Next {
        match self.next_job() {
            Some(job) => Next::Job(job),
            None => Next::End,
        }
    }
    /// An eventfd the feed signals when [`Feed::poll_job`] may have
    /// something new after answering [`Next::Later`]; the driver watches it
    /// and drains it. `None` for feeds that never answer `Later`.
    fn wake(&self) -> Option<&EventFd> {
        None
    }
}

/// Runs every job `feed` yields, `parallel` at a time; `plan` serves the
/// jobs that carry none of their own.
pub fn run(
    kind: DriverKind,
    plan: Arc<Plan>,
    parallel: usize,
    feed: &mut dyn Feed,
) -> Result<(), DriverError> {
    let parallel = parallel.max(1);
    match kind {
        DriverKind::Uring => UringDriver::new(plan, parallel)
            .and_then(|mut d| d.run(feed))
            .map_err(|source| DriverError::Io { kind, source }),
        DriverKind::Syscalls => SyscallDriver::new(plan, parallel)
            .and_then(|mut d| d.run(feed))
            .map_err(|source| DriverError::Io { kind, source }),
    }
}

/// Per-clone driver state shared by both drivers.
struct Entry {
    m: Machine,
    api: Option<OwnedFd>,
    tcp: Option<OwnedFd>,
    /// An inotify watch on the socket's directory, while waiting for it.
    wd: Option<i32>,
    /// Waiting for the socket file to appear.
    waiting_file: bool,
    /// The VMM's exit was reported to the machine (reported once, as the
    /// io_uring driver's one-shot poll does).
    exit_seen: bool,
}

impl Entry {
    fn new(m: Machine) -> Self {
        Self {
            m,
            api: None,
            tcp: None,
            wd: None,
            waiting_file: false,
            exit_seen: false,
        }
    }

    fn sock_path(&self) -> &Path {
        &self.m.job().api_sock
    }

    /// A connect to the API socket failed with `errno`: decide whether to
    /// wait for the file, retry, or fail.
    fn api_connect_failed(
        &mut self,
        ino: &OwnedFd,
        wds: &mut HashMap<i32, Vec<usize>>,
        errno: i32,
    ) {
        self.api = None;
        match errno {
            libc::ENOENT => {
                if self.wd.is_none() {
                    let dir = self
                        .sock_path()
                        .parent()
                        .unwrap_or(Path::new("/"))
                        .to_owned();
                    match inotify::add_watch(ino, &dir, inotify::IN_APPEAR) {
                        Ok(wd) => {
                            self.wd = Some(wd);
                            wds.entry(wd).or_default().push(self.m.job().index);
                        }
                        Err(e) => return self.m.io_failed(e),
                    }
                }
                // The watch is in place: if the file appeared meanwhile,
                // retry now; otherwise wait for the event.
                self.waiting_file = !self.sock_path().exists();
            }
            // bind() done, listen() not yet: retry on the next turn.
            libc::ECONNREFUSED | libc::EAGAIN => self.waiting_file = false,
            e => self.m.io_failed(io::Error::from_raw_os_error(e)),
        }
    }

    fn unwatch(&mut self, ino: &OwnedFd, wds: &mut HashMap<i32, Vec<usize>>) {
        if let Some(wd) = self.wd.take() {
            let idx = self.m.job().index;
            if let Some(v) = wds.get_mut(&wd) {
                v.retain(|i| *i != idx);
                if v.is_empty() {
                    wds.remove(&wd);
                    let _ = inotify::rm_watch(ino, wd);
                }
            }
        }
    }

    fn outcome(mut self) -> Outcome {
        let result = self.m.take_outcome().unwrap_or(Err(RestoreError::Closed {
            phase: self.m.phase(),
        }));
        let times = self.m.times();
        Outcome {
            job: self.m.into_job(),
            result,
            times,
            finished_at: Instant::now(),
        }
    }
}

/// The clones waiting on the watches that `events` fired.
fn watchers(events: &[(i32, u32)], wds: &HashMap<i32, Vec<usize>>) -> Vec<usize> {
    events
        .iter()
        .flat_map(|(wd, _)| wds.get(wd).into_iter().flatten().copied())
        .collect()
}

// ---------------------------------------------------------------- io_uring

const OP_API_CONNECT: u64 = 1;
const OP_SEND: u64 = 2;
const OP_RECV: u64 = 3;
const OP_TCP_CONNECT: u64 = 4;
const OP_TIMEOUT: u64 = 5;
const OP_PIDFD: u64 = 6;
const OP_CANCEL_IO: u64 = 7;
const OP_CANCEL_POLL: u64 = 8;
const OP_LINK_SEND: u64 = 9;
const UD_INOTIFY: u64 = u64::MAX;
const UD_WAKE: u64 = u64::MAX - 1;
const RECV_LEN: usize = 4096;

fn ud(idx: usize, op: u64) -> u64 {
    ((idx as u64) << 8) | op
}

struct UringEntry {
    e: Entry,
    /// user_data of the in-flight I/O op.
    io: Option<u64>,
    /// The pidfd poll is in flight.
    poll: bool,
    cancel_io_sent: bool,
    cancel_poll_sent: bool,
}

struct UringDriver {
    ring: Ring,
    ino: OwnedFd,
    plan: Arc<Plan>,
    parallel: usize,
}

impl UringDriver {
    fn new(plan: Arc<Plan>, parallel: usize) -> io::Result<Self> {
        let entries = ((parallel * 3 + 8) as u32)
            .next_power_of_two()
            .clamp(16, 4096);
        Ok(Self {
            ring: Ring::new(entries)?,
            ino: inotify::init()?,
            plan,
            parallel,
        })
    }

    /// (Re-)arms the one read on the shared inotify fd.
    fn arm_inotify(&mut self) -> io::Result<()> {
        self.ring.push(
            UD_INOTIFY,
            Op::Read {
                fd: self.ino.as_raw_fd(),
                len: 4096,
            },
        )
    }

    fn run(&mut self, feed: &mut dyn Feed) -> io::Result<()> {
        let mut entries: HashMap<usize, UringEntry> = HashMap::new();
        let mut wds: HashMap<i32, Vec<usize>> = HashMap::new();
        let mut exhausted = false;
        self.arm_inotify()?;
        let wake_fd = feed.wake().map(|w| w.as_fd().as_raw_fd());
        if let Some(fd) = wake_fd {
            self.ring.push(UD_WAKE, Op::PollIn { fd })?;
        }
        // Ask the feed only when it may have something: at the start, after
        // its wake-up, and when a clone finished (room was made).
        let mut may_pull = true;
        let mut held = 0;
        loop {
            may_pull |= entries.len() < held;
            while may_pull && !exhausted && entries.len() < self.parallel {
                match feed.poll_job() {
                    Next::Later => may_pull = false,
                    Next::Job(job) => {
                        let idx = job.index;
                        let pidfd = job.pidfd.as_raw_fd();
                        self.ring
                            .push(ud(idx, OP_PIDFD), Op::PollIn { fd: pidfd })?;
                        let plan = job.plan.clone().unwrap_or_else(|| self.plan.clone());
                        let ue = UringEntry {
                            e: Entry::new(Machine::new(job, plan)),
                            io: None,
                            poll: true,
                            cancel_io_sent: false,
                            cancel_poll_sent: false,
                        };
                        entries.insert(idx, ue);
                        self.advance(idx, &mut entries, &mut wds, feed)?;
                    }
                    Next::End => exhausted = true,
                }
            }
            held = entries.len();
            if entries.is_empty() && exhausted {
                break;
            }
            let now = Instant::now();
            let wait = entries
                .values()
                .filter(|u| u.e.m.want() != Want::Done)
                .map(|u| u.e.m.deadline().saturating_duration_since(now))
                .min();
            let any_ready = entries
                .values()
                .any(|u| u.io.is_none() && !u.e.waiting_file && u.e.m.want() != Want::Done);
            self.ring.submit_and_wait(if any_ready {
                Some(Duration::ZERO)
            } else {
                wait
            })?;
            for c in self.ring.reap() {
                if c.user_data == UD_WAKE {
                    // Jobs are pulled at the top of the loop; re-arm while
                    // more may come.
                    may_pull = true;
                    if let (Some(w), Some(fd)) = (feed.wake(), wake_fd) {
                        w.drain()?;
                        if !exhausted {
                            self.ring.push(UD_WAKE, Op::PollIn { fd })?;
                        }
                    }
                    continue;
                }
                if c.user_data == UD_INOTIFY {
                    for idx in watchers(&inotify::parse_events(&c.data), &wds) {
                        if let Some(u) = entries.get_mut(&idx) {
                            u.e.waiting_file = false;
                        }
                    }
                    self.arm_inotify()?;
                    continue;
                }
                let idx = (c.user_data >> 8) as usize;
                let op = c.user_data & 0xff;
                let Some(u) = entries.get_mut(&idx) else {
                    continue;
                };
                let res = c.result;
                let now = Instant::now();
                match op {
                    OP_API_CONNECT => {
                        u.io = None;
                        if res == 0 {
                            u.e.unwatch(&self.ino, &mut wds);
                            u.e.m.api_connected(now);
                        } else {
                            u.e.api_connect_failed(&self.ino, &mut wds, -res);
                        }
                    }
                    OP_SEND => {
                        u.io = None;
                        if res >= 0 {
                            u.e.m.sent(res as usize);
                        } else {
                            u.e.m.io_failed(io::Error::from_raw_os_error(-res));
                        }
                    }
                    OP_RECV => {
                        u.io = None;
                        if res >= 0 {
                            u.e.m.received(&c.data, now);
                        } else {
                            u.e.m.io_failed(io::Error::from_raw_os_error(-res));
                        }
                    }
                    OP_TCP_CONNECT => {
                        u.io = None;
                        u.e.tcp = None;
                        if res == 0 {
                            u.e.m.tcp_connected(now);
                        } else {
                            u.e.m.tcp_failed(now);
                        }
                    }
                    OP_LINK_SEND => {
                        u.io = None;
                        let err = (res < 0).then(|| io::Error::from_raw_os_error(-res));
                        u.e.m.link_synced(err, now);
                    }
                    OP_TIMEOUT => {
                        u.io = None;
                        u.e.m.retry_due();
                        u.e.m.exit_grace_over();
                    }
                    OP_PIDFD => {
                        u.poll = false;
                        if res > 0 {
                            u.e.m.vmm_exited();
                        }
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            let idxs: Vec<usize> = entries.keys().copied().collect();
            for idx in idxs {
                if let Some(u) = entries.get_mut(&idx) {
                    u.e.m.check_deadline(now);
                }
                self.advance(idx, &mut entries, &mut wds, feed)?;
            }
        }
        Ok(())
    }

    /// Issues the next operation for `idx`, or finalizes it.
    fn advance(
        &mut self,
        idx: usize,
        entries: &mut HashMap<usize, UringEntry>,
        wds: &mut HashMap<i32, Vec<usize>>,
        feed: &mut dyn Feed,
    ) -> io::Result<()> {
        let Some(u) = entries.get_mut(&idx) else {
            return Ok(());
        };
        if u.e.m.want() == Want::Done {
            u.e.unwatch(&self.ino, wds);
            if let (Some(target), false) = (u.io, u.cancel_io_sent) {
                self.ring
                    .push(ud(idx, OP_CANCEL_IO), Op::Cancel { target })?;
                u.cancel_io_sent = true;
            }
            if u.poll && !u.cancel_poll_sent {
                self.ring.push(
                    ud(idx, OP_CANCEL_POLL),
                    Op::Cancel {
                        target: ud(idx, OP_PIDFD),
                    },
                )?;
                u.cancel_poll_sent = true;
            }
            if u.io.is_none() && !u.poll {
                let u = entries.remove(&idx).expect("present");
                feed.done(u.e.outcome());
            }
            return Ok(());
        }
        if u.io.is_some() {
            return Ok(());
        }
        let (op, code) = match u.e.m.want() {
            Want::Done => unreachable!(),
            Want::ConnectApi => {
                if u.e.waiting_file {
                    return Ok(());
                }
                let addr = match SockAddr::unix(u.e.sock_path()) {
                    Ok(a) => a,
                    Err(e) => {
                        u.e.m.io_failed(e);
                        return self.advance(idx, entries, wds, feed);
                    }
                };
                let fd = sock::stream_socket(libc::AF_UNIX, false)?;
                let raw = fd.as_raw_fd();
                u.e.api = Some(fd);
                (Op::Connect { fd: raw, addr }, OP_API_CONNECT)
            }
            Want::Send => {
                let fd = u.e.api.as_ref().expect("connected").as_raw_fd();
                let data = Zeroizing::new(u.e.m.tx_pending().to_vec());
                (Op::Send { fd, data }, OP_SEND)
            }
            Want::Recv => {
                let fd = u.e.api.as_ref().expect("connected").as_raw_fd();
                (Op::Recv { fd, len: RECV_LEN }, OP_RECV)
            }
            Want::SendLink => {
                let fd =
                    u.e.m
                        .job()
                        .link_sync
                        .as_ref()
                        .expect("link sync")
                        .sock
                        .as_raw_fd();
                let data = u.e.m.tx_pending().to_vec();
                (Op::SendAsync { fd, data }, OP_LINK_SEND)
            }
            Want::ConnectTcp(addr) => {
                let fd = sock::stream_socket(libc::AF_INET, false)?;
                let raw = fd.as_raw_fd();
                u.e.tcp = Some(fd);
                (
                    Op::Connect {
                        fd: raw,
                        addr: SockAddr::inet(addr),
                    },
                    OP_TCP_CONNECT,
                )
            }
            Want::RetryTcpAt(at) | Want::AwaitExit(at) => (
                Op::Timeout {
                    after: at.saturating_duration_since(Instant::now()),
                },
                OP_TIMEOUT,
            ),
        };
        let user_data = ud(idx, code);
        self.ring.push(user_data, op)?;
        u.io = Some(user_data);
        Ok(())
    }
}

// ---------------------------------------------------------------- syscalls

/// poll(2) slots that belong to the driver, not to a clone.
const OWNER_INOTIFY: usize = usize::MAX;
const OWNER_WAKE: usize = usize::MAX - 1;

struct SyscallDriver {
    ino: OwnedFd,
    plan: Arc<Plan>,
    parallel: usize,
}

/// What an entry waits on in poll(2).
enum Wait {
    /// Nothing: call `step` again at once.
    Now,
    /// An fd for these events.
    Fd(i32, i16),
    /// A point in time.
    Until(Instant),
    /// An inotify event or its deadline.
    File,
    /// Finished.
    Done,
}

impl SyscallDriver {
    fn new(plan: Arc<Plan>, parallel: usize) -> io::Result<Self> {
        Ok(Self {
            ino: inotify::init()?,
            plan,
            parallel,
        })
    }

    /// Performs the entry's wanted syscall without blocking, as far as it
    /// can go, and says what to wait for.
    fn step(&self, e: &mut Entry, wds: &mut HashMap<i32, Vec<usize>>) -> Wait {
        let mut buf = [0u8; RECV_LEN];
        for _ in 0..64 {
            let now = Instant::now();
            match e.m.want() {
                Want::Done => return Wait::Done,
                Want::ConnectApi => {
                    if e.waiting_file {
                        return Wait::File;
                    }
                    let addr = match SockAddr::unix(e.sock_path()) {
                        Ok(a) => a,
                        Err(err) => {
                            e.m.io_failed(err);
                            continue;
                        }
                    };
                    let fd = match sock::stream_socket(libc::AF_UNIX, true) {
                        Ok(fd) => fd,
                        Err(err) => {
                            e.m.io_failed(err);
                            continue;
                        }
                    };
                    match sock::connect(&fd, &addr) {
                        Ok(()) => {
                            e.unwatch(&self.ino, wds);
                            e.api = Some(fd);
                            e.m.api_connected(now);
                        }
                        Err(err) => {
                            let errno = err.raw_os_error().unwrap_or(libc::EIO);
                            e.api_connect_failed(&self.ino, wds, errno);
                            if errno == libc::ECONNREFUSED || errno == libc::EAGAIN {
                                return Wait::Now;
                            }
                        }
                    }
                }
                Want::Send => {
                    let fd = e.api.as_ref().expect("connected");
                    match sock::send(fd, e.m.tx_pending()) {
                        Ok(n) => e.m.sent(n),
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            return Wait::Fd(fd.as_raw_fd(), libc::POLLOUT)
                        }
                        Err(err) => e.m.io_failed(err),
                    }
                }
                Want::SendLink => {
                    let l = e.m.job().link_sync.as_ref().expect("link sync");
                    // A blocking send: the kernel serves it at once.
                    let err = sock::send(&l.sock, e.m.tx_pending()).err();
                    e.m.link_synced(err, now);
                }
                Want::Recv => {
                    let fd = e.api.as_ref().expect("connected");
                    match sock::recv(fd, &mut buf) {
                        Ok(n) => e.m.received(&buf[..n], now),
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            return Wait::Fd(fd.as_raw_fd(), libc::POLLIN)
                        }
                        Err(err) => e.m.io_failed(err),
                    }
                }
                Want::ConnectTcp(addr) => match &e.tcp {
                    None => {
                        let fd = match sock::stream_socket(libc::AF_INET, true) {
                            Ok(fd) => fd,
                            Err(err) => {
                                e.m.io_failed(err);
                                continue;
                            }
                        };
                        match sock::connect(&fd, &SockAddr::inet(addr)) {
                            Ok(()) => e.m.tcp_connected(now),
                            Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {
                                let raw = fd.as_raw_fd();
                                e.tcp = Some(fd);
                                return Wait::Fd(raw, libc::POLLOUT);
                            }
                            Err(_) => e.m.tcp_failed(now),
                        }
                    }
                    Some(fd) => {
                        let r = sock::take_error(fd);
                        e.tcp = None;
                        match r {
                            Ok(None) => e.m.tcp_connected(now),
                            _ => e.m.tcp_failed(now),
                        }
                    }
                },
                Want::RetryTcpAt(at) | Want::AwaitExit(at) => {
                    if now >= at {
                        e.m.retry_due();
                        e.m.exit_grace_over();
                    } else {
                        return Wait::Until(at);
                    }
                }
            }
        }
        Wait::Now
    }

    fn run(&mut self, feed: &mut dyn Feed) -> io::Result<()> {
        let mut entries: HashMap<usize, Entry> = HashMap::new();
        let mut wds: HashMap<i32, Vec<usize>> = HashMap::new();
        let mut exhausted = false;
        // As in the io_uring driver: ask the feed at the start, after its
        // wake-up, and when a clone finished.
        let mut may_pull = true;
        loop {
            while may_pull && !exhausted && entries.len() < self.parallel {
                match feed.poll_job() {
                    Next::Job(job) => {
                        let plan = job.plan.clone().unwrap_or_else(|| self.plan.clone());
                        entries.insert(job.index, Entry::new(Machine::new(job, plan)));
                    }
                    Next::Later => may_pull = false,
                    Next::End => exhausted = true,
                }
            }
            if entries.is_empty() && exhausted {
                break;
            }
            // Step everything; collect waits.
            let mut pfds: Vec<libc::pollfd> = vec![libc::pollfd {
                fd: self.ino.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut owners: Vec<(usize, bool)> = vec![(OWNER_INOTIFY, false)];
            if let (Some(w), false) = (feed.wake(), exhausted) {
                pfds.push(libc::pollfd {
                    fd: w.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                owners.push((OWNER_WAKE, false));
            }
            let mut timeout: Option<Instant> = None;
            let mut immediate = false;
            let mut finished = false;
            let idxs: Vec<usize> = entries.keys().copied().collect();
            for idx in idxs {
                let e = entries.get_mut(&idx).expect("present");
                e.m.check_deadline(Instant::now());
                match self.step(e, &mut wds) {
                    Wait::Done => {
                        let mut e = entries.remove(&idx).expect("present");
                        e.unwatch(&self.ino, &mut wds);
                        feed.done(e.outcome());
                        finished = true;
                        may_pull = true;
                        continue;
                    }
                    Wait::Now => immediate = true,
                    Wait::Fd(fd, ev) => {
                        pfds.push(libc::pollfd {
                            fd,
                            events: ev,
                            revents: 0,
                        });
                        owners.push((idx, false));
                    }
                    Wait::Until(t) => timeout = Some(timeout.map_or(t, |x: Instant| x.min(t))),
                    Wait::File => {}
                }
                let e = &entries[&idx];
                let d = e.m.deadline();
                timeout = Some(timeout.map_or(d, |x: Instant| x.min(d)));
                if !e.exit_seen {
                    pfds.push(libc::pollfd {
                        fd: e.m.job().pidfd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    owners.push((idx, true));
                }
            }
            // Room was made: take more jobs first. (With nothing in flight
            // and nothing finished, the feed answered `Later`: wait for its
            // wake-up below.)
            if entries.is_empty() && (finished || exhausted) {
                continue;
            }
            let ms = if immediate {
                0
            } else {
                timeout.map_or(-1, |t| {
                    let d = t.saturating_duration_since(Instant::now());
                    // Round up so a deadline is never polled a hair early.
                    d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
                })
            };
            let ready = crate::sys::poll::poll_many(&mut pfds, ms)?;
            if ready == 0 {
                continue;
            }
            for (p, (idx, is_pidfd)) in pfds.iter().zip(&owners) {
                if p.revents == 0 {
                    continue;
                }
                if *idx == OWNER_WAKE {
                    may_pull = true;
                    if let Some(w) = feed.wake() {
                        w.drain()?;
                    }
                } else if *idx == OWNER_INOTIFY {
                    for idx in watchers(&inotify::read_events(&self.ino)?, &wds) {
                        if let Some(e) = entries.get_mut(&idx) {
                            e.waiting_file = false;
                        }
                    }
                } else if *is_pidfd {
                    if let Some(e) = entries.get_mut(idx) {
                        e.exit_seen = true;
                        e.m.vmm_exited();
                    }
                }
            }
        }
        Ok(())
    }
}
