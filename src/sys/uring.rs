//! A small, safe io_uring executor for the restore driver.
//!
//! Buffer lifetimes: every buffer an operation reads or writes (socket
//! addresses, send bytes, receive buffers, timespecs) is owned by the
//! [`Ring`] from `push` until that operation's completion is reaped, keyed
//! by its user_data. Callers never hand the kernel a pointer into memory they
//! still own, so no caller can free or move a buffer under an in-flight
//! operation. If the ring is dropped with operations still in flight, their
//! buffers are leaked rather than freed (the kernel may still touch them).

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use zeroize::Zeroizing;

use super::sock::SockAddr;

/// One operation, with the data it needs.
#[derive(Debug)]
pub enum Op {
    /// connect(2) `fd` to `addr`.
    Connect {
        /// The socket.
        fd: RawFd,
        /// The address (moved into the ring).
        addr: SockAddr,
    },
    /// send(2) all of `data` (one attempt; may be partial).
    Send {
        /// The socket.
        fd: RawFd,
        /// Bytes (zeroized when the ring drops them: they may be secret).
        data: Zeroizing<Vec<u8>>,
    },
    /// send(2) of all of `data`, always from an io-wq worker
    /// (`IOSQE_ASYNC`): for requests the kernel serves under a sleeping
    /// lock (rtnetlink's RTNL), which would otherwise be taken on the
    /// submitting thread.
    SendAsync {
        /// The socket.
        fd: RawFd,
        /// Bytes.
        data: Vec<u8>,
    },
    /// recv(2) up to `len` bytes.
    Recv {
        /// The socket.
        fd: RawFd,
        /// Buffer size.
        len: usize,
    },
    /// read(2) up to `len` bytes (inotify events).
    Read {
        /// The fd.
        fd: RawFd,
        /// Buffer size.
        len: usize,
    },
    /// Completes when `fd` is readable (a pidfd: the process exited).
    PollIn {
        /// The fd.
        fd: RawFd,
    },
    /// Completes after `after` with -ETIME.
    Timeout {
        /// Delay.
        after: Duration,
    },
    /// Cancels the operation pushed with `target` user_data.
    Cancel {
        /// The user_data to cancel.
        target: u64,
    },
}

/// Owned storage kept alive for an in-flight operation. The boxed fields
/// are never read: holding them is the point.
#[allow(dead_code)]
enum Held {
    None,
    Addr(Box<SockAddr>),
    Bytes(Zeroizing<Vec<u8>>),
    Time(Box<types::Timespec>),
}

/// A reaped completion.
#[derive(Debug)]
pub struct Completion {
    /// The operation's user_data.
    pub user_data: u64,
    /// Result: >= 0 success (bytes for I/O), < 0 is -errno.
    pub result: i32,
    /// For `Recv`/`Read`: the bytes received.
    pub data: Vec<u8>,
}

/// Opcodes the driver needs.
pub const REQUIRED: &[(&str, u8)] = &[
    ("connect", opcode::Connect::CODE),
    ("send", opcode::Send::CODE),
    ("recv", opcode::Recv::CODE),
    ("read", opcode::Read::CODE),
    ("poll_add", opcode::PollAdd::CODE),
    ("timeout", opcode::Timeout::CODE),
    ("async_cancel", opcode::AsyncCancel::CODE),
];

/// The executor.
pub struct Ring {
    ring: IoUring,
    held: HashMap<u64, Held>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.held.len())
            .finish()
    }
}

impl Ring {
    /// A ring with `entries` submission slots, after checking that every
    /// opcode in [`REQUIRED`] is supported. Fails with `Unsupported` naming
    /// the first missing opcode.
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if let Some((name, _)) = REQUIRED.iter().find(|(_, c)| !probe.is_supported(*c)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring opcode {name} is not supported by this kernel"),
            ));
        }
        Ok(Self {
            ring,
            held: HashMap::new(),
        })
    }

    /// Operations pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// Queues `op` with `user_data` (which must be unique among in-flight
    /// operations). Submits first if the submission queue is full.
    pub fn push(&mut self, user_data: u64, op: Op) -> io::Result<()> {
        assert!(
            !self.held.contains_key(&user_data),
            "user_data {user_data:#x} already in flight"
        );
        let (entry, held) = match op {
            Op::Connect { fd, addr } => {
                let addr = Box::new(addr);
                let e = opcode::Connect::new(types::Fd(fd), addr.as_ptr(), addr.len()).build();
                (e, Held::Addr(addr))
            }
            Op::Send { fd, data } => {
                let e = opcode::Send::new(types::Fd(fd), data.as_ptr(), data.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build();
                (e, Held::Bytes(data))
            }
            Op::SendAsync { fd, data } => {
                let e = opcode::Send::new(types::Fd(fd), data.as_ptr(), data.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .flags(squeue::Flags::ASYNC);
                (e, Held::Bytes(Zeroizing::new(data)))
            }
            Op::Recv { fd, len } => {
                let mut buf = Zeroizing::new(vec![0u8; len]);
                let e = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), len as u32).build();
                (e, Held::Bytes(buf))
            }
            Op::Read { fd, len } => {
                let mut buf = Zeroizing::new(vec![0u8; len]);
                let e = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), len as u32).build();
                (e, Held::Bytes(buf))
            }
            Op::PollIn { fd } => (
                opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build(),
                Held::None,
            ),
            Op::Timeout { after } => {
                let ts = Box::new(
                    types::Timespec::new()
                        .sec(after.as_secs())
                        .nsec(after.subsec_nanos()),
                );
                let e = opcode::Timeout::new(&*ts as *const types::Timespec).build();
                (e, Held::Time(ts))
            }
            Op::Cancel { target } => (opcode::AsyncCancel::new(target).build(), Held::None),
        };
        let entry = entry.user_data(user_data);
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: every pointer in `entry` points into `held`, heap storage
        // that moves into `self.held` below and is only dropped when this
        // user_data's completion is reaped (or leaked if the ring drops
        // first). The Vec/Box heap allocations do not move when the owning
        // value is moved into the map. fds are the caller's and stay open
        // until it sees the completion.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .map_err(|_| io::Error::other("io_uring submission queue full after submit"))?;
        }
        self.held.insert(user_data, held);
        Ok(())
    }

    /// Submits queued operations and waits for at least one completion or
    /// until `timeout` passes (`None`: no limit).
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reaps every available completion and releases its buffers.
    pub fn reap(&mut self) -> Vec<Completion> {
        let raw: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        raw.into_iter()
            .map(|(user_data, result)| {
                let data = match self.held.remove(&user_data) {
                    Some(Held::Bytes(b)) if result > 0 => b[..result as usize].to_vec(),
                    _ => Vec::new(),
                };
                Completion {
                    user_data,
                    result,
                    data,
                }
            })
            .collect()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still write into buffers of in-flight operations
        // after the ring fd closes: leak them rather than free them.
        for (_, h) in self.held.drain() {
            std::mem::forget(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn send_recv_timeout_and_cancel() {
        let mut ring = Ring::new(16).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.push(
            1,
            Op::Send {
                fd: a.as_raw_fd(),
                data: Zeroizing::new(b"hello".to_vec()),
            },
        )
        .unwrap();
        ring.push(
            2,
            Op::Recv {
                fd: b.as_raw_fd(),
                len: 64,
            },
        )
        .unwrap();
        let mut got = HashMap::new();
        while got.len() < 2 {
            ring.submit_and_wait(None).unwrap();
            for c in ring.reap() {
                got.insert(c.user_data, c);
            }
        }
        assert_eq!(got[&1].result, 5);
        assert_eq!(got[&2].data, b"hello");
        // A recv that never completes, then cancelled.
        ring.push(
            3,
            Op::Recv {
                fd: b.as_raw_fd(),
                len: 8,
            },
        )
        .unwrap();
        ring.push(
            4,
            Op::Timeout {
                after: Duration::from_millis(1),
            },
        )
        .unwrap();
        let mut seen = HashMap::new();
        while !seen.contains_key(&4) {
            ring.submit_and_wait(None).unwrap();
            for c in ring.reap() {
                seen.insert(c.user_data, c.result);
            }
        }
        assert_eq!(seen[&4], -libc::ETIME);
        ring.push(5, Op::Cancel { target: 3 }).unwrap();
        while !seen.contains_key(&3) {
            ring.submit_and_wait(None).unwrap();
            for c in ring.reap() {
                seen.insert(c.user_data, c.result);
            }
        }
        assert_eq!(seen[&3], -libc::ECANCELED);
        assert_eq!(ring.in_flight(), usize::from(!seen.contains_key(&5)));
    }
}

#[cfg(test)]
mod eof_tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn recv_sees_eof_when_the_peer_closes_later() {
        let mut ring = Ring::new(8).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.push(
            1,
            Op::Recv {
                fd: a.as_raw_fd(),
                len: 64,
            },
        )
        .unwrap();
        ring.submit_and_wait(Some(Duration::from_millis(1)))
            .unwrap();
        assert!(ring.reap().is_empty());
        drop(b);
        let mut done = Vec::new();
        while done.is_empty() {
            ring.submit_and_wait(None).unwrap();
            done = ring.reap();
        }
        assert_eq!(done[0].result, 0);
    }
}
