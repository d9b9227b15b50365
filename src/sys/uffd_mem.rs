//! userfaultfd for guest memory: create and register a range (the VMM's
//! side of Firecracker's Uffd backend) and serve faults with UFFDIO_COPY
//! (the page-fault handler's side).
//!
//! Constants and layouts are from `<linux/userfaultfd.h>`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;
use super::mem::GuestMapping;

const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)` (24 bytes).
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)` (32 bytes).
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)` (40 bytes).
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A userfaultfd.
#[derive(Debug)]
pub struct Userfault {
    fd: OwnedFd,
}

impl AsFd for Userfault {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Userfault {
    /// A new non-blocking, close-on-exec userfaultfd with the API handshake
    /// done (no extra features).
    pub fn new() -> io::Result<Self> {
        // SAFETY: userfaultfd takes only a flags integer.
        let fd = cvt(unsafe {
            libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK)
        })?;
        // SAFETY: the kernel returned a fresh fd that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, a live
        // local of the right layout.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) })?;
        Ok(Self { fd })
    }

    /// Wraps a userfaultfd received from elsewhere (a VMM, over SCM_RIGHTS).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Registers all of `mem` for missing-page faults: every first touch of
    /// a page then waits until a handler fills it.
    pub fn register_missing(&self, mem: &GuestMapping) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: mem.as_slice().as_ptr() as u64,
                len: mem.len() as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct
        // uffdio_register` (a live local). The range is our own live mapping;
        // registering changes only how its faults are resolved.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                UFFDIO_REGISTER,
                &mut reg as *mut UffdioRegister,
            )
        })?;
        Ok(())
    }

    /// Reads one event; returns the faulting address of a page fault,
    /// `Ok(None)` when nothing is queued or the event is not a page fault.
    pub fn read_fault(&self) -> io::Result<Option<u64>> {
        let mut msg = [0u8; 32];
        // SAFETY: read writes at most 32 bytes into the live local buffer.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        if n as usize != msg.len() || msg[0] != UFFD_EVENT_PAGEFAULT {
            return Ok(None);
        }
        // struct uffd_msg: event (u8), 7 reserved bytes, then pagefault
        // { flags: u64, address: u64, ... }.
        let addr = u64::from_ne_bytes(msg[16..24].try_into().expect("8 bytes"));
        Ok(Some(addr))
    }

    /// Fills the page(s) at `dst` (in the registered process) with `src` and
    /// wakes the faulting thread. A page filled meanwhile is not an error.
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<()> {
        let mut c = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `len` bytes from `src` (a live slice we
        // borrow for the call) and writes them into the registered range of
        // the process owning the userfaultfd; the kernel checks that `dst`
        // lies in that range. It writes nothing of ours but the struct.
        let r = cvt(unsafe {
            libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut c as *mut UffdioCopy)
        });
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The handler's side of the handover: receives one message and the
/// userfaultfd attached to it (SCM_RIGHTS) from a VMM on `stream`.
pub fn recv_uffd(stream: &std::os::unix::net::UnixStream) -> io::Result<(Vec<u8>, Userfault)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::RawFd;
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: SCM_RIGHTS installed a fresh fd in our table;
                    // nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        (msg.bytes, fd)
    };
    let fd = fd.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the VMM's message carried no userfaultfd",
        )
    })?;
    buf.truncate(n);
    Ok((buf, Userfault::from_fd(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_served_by_copy() {
        let Ok(uffd) = Userfault::new() else {
            // No userfaultfd here (not root / disabled): nothing to test.
            return;
        };
        let page = super::super::mem::page_size();
        let mem = GuestMapping::anon(page * 4).unwrap();
        uffd.register_missing(&mem).unwrap();
        let base = mem.as_slice().as_ptr() as u64;
        let handler = std::thread::scope(|s| {
            let h = s.spawn(|| {
                // Serve exactly one fault.
                loop {
                    let mut fds = [nix::poll::PollFd::new(
                        uffd.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE).unwrap();
                    if let Some(addr) = uffd.read_fault().unwrap() {
                        let at = addr & !(page as u64 - 1);
                        uffd.copy(at, &vec![0x5a; page]).unwrap();
                        return at;
                    }
                }
            });
            let v = mem.as_slice()[page * 2 + 7];
            (h.join().unwrap(), v)
        });
        assert_eq!(handler, (base + 2 * page as u64, 0x5a));
    }
}
