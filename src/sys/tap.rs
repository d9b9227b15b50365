//! Tap devices (`/dev/net/tun`) and the raw fd I/O around them: frame
//! read/write, an eventfd for wake-ups and `poll(2)`.
//!
//! All calls act on the calling thread's network namespace: run them on a
//! thread inside the slot's namespace (see [`crate::sys::netns::run_in`]).
//! A tap fd stays bound to the namespace its device lives in.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// The clone device.
pub const TUN_PATH: &CStr = c"/dev/net/tun";

/// Longest interface name (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// `struct ifreq` as TUNSETIFF uses it: the name and the flags (the rest of
/// the union is padding, 40 bytes in all on 64-bit).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> io::Result<Self> {
        check_ifname(name)?;
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in r.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(r)
    }
}

/// Checks an interface name: 1..=15 bytes, no `/`, whitespace or NUL.
pub fn check_ifname(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}: use 1-{MAX_IFNAME_LEN} printable characters without '/', ':' or spaces"),
        ))
    }
}

/// Checks /dev/net/tun opens (taps can be made).
pub fn check_tun() -> io::Result<()> {
    open_tun().map(drop)
}

fn open_tun() -> io::Result<OwnedFd> {
    // SAFETY: TUN_PATH is a valid NUL-terminated string; open reads only it.
    let fd = cvt(unsafe {
        libc::open(
            TUN_PATH.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    })?;
    // SAFETY: on success open returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_iff(fd: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<()> {
    let mut req = IfReq::new(name, flags)?;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a
    // properly sized and aligned ifreq that lives across the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) })?;
    Ok(())
}

fn set_persist(fd: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is read.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(on)) })?;
    Ok(())
}

/// Creates a persistent tap `name` (IFF_TAP | IFF_NO_PI) in the calling
/// thread's namespace. It stays, down and without address, after the fd is
/// closed. Fails with `EBUSY` when a tap of that name is attached elsewhere
/// and `EINVAL` when the name belongs to a non-tap link.
pub fn create_persistent(name: &str) -> io::Result<()> {
    let fd = open_tun()?;
    set_iff(&fd, name, libc::IFF_TAP | libc::IFF_NO_PI)?;
    set_persist(&fd, true)
}

/// Deletes the persistent tap `name`: attaches, clears the persist flag and
/// closes, which removes the device.
pub fn delete_persistent(name: &str) -> io::Result<()> {
    let fd = open_tun()?;
    set_iff(&fd, name, libc::IFF_TAP | libc::IFF_NO_PI)?;
    set_persist(&fd, false)
}

/// Attaches to the tap `name` as Firecracker does: IFF_TAP | IFF_NO_PI, plus
/// IFF_VNET_HDR when `vnet_hdr` (then each frame carries a 12-byte
/// `virtio_net_hdr_v1`, as Firecracker sets with TUNSETVNETHDRSZ). The fd is
/// non-blocking.
///
/// As root, a missing `name` is *created* (bare, not persistent): check that
/// the tap exists first when that matters. A tap already attached elsewhere
/// fails with `EBUSY`.
pub fn open_tap(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    let fd = open_tun()?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    set_iff(&fd, name, flags)?;
    if vnet_hdr {
        let sz: libc::c_int = VNET_HDR_V1_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer,
        // which points at a live local.
        cvt(unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &sz as *const libc::c_int,
            )
        })?;
    }
    Ok(fd)
}

/// Size of `virtio_net_hdr_v1`, the header Firecracker uses.
pub const VNET_HDR_V1_LEN: usize = 12;

/// The length of the virtio-net header every frame on this tap fd carries:
/// 0 without IFF_VNET_HDR, else the TUNGETVNETHDRSZ size.
pub fn vnet_hdr_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes one `struct ifreq` into `req`, which is
    // properly sized and lives across the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req as *mut IfReq) })?;
    if libc::c_int::from(req.flags) & libc::IFF_VNET_HDR == 0 {
        return Ok(0);
    }
    let mut sz: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one c_int into the live local `sz`.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETVNETHDRSZ,
            &mut sz as *mut libc::c_int,
        )
    })?;
    Ok(sz.max(0) as usize)
}

/// True when no one is attached to the tap `name`: attaching succeeds
/// (and is dropped again at once); `EBUSY` means a VMM still holds it.
/// Call it only for a tap known to exist: as root a missing name would be
/// created (and vanish again on close) and report free.
pub fn is_free(name: &str) -> io::Result<bool> {
    match open_tap(name, false) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads one frame (or datagram) from a non-blocking fd. `Ok(None)` when
/// nothing is queued (`EAGAIN`).
pub fn read_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Writes one frame to a tap fd. A full queue (`EAGAIN`) drops the frame, as
/// a NIC would; that is `Ok(false)`.
pub fn write_frame(fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<bool> {
    loop {
        // SAFETY: frame is valid for reads of frame.len() bytes.
        let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n >= 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// A non-blocking eventfd used to wake a poll loop.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd with counter 0.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes two integers and returns a new fd or -1.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: on success eventfd returned a fresh fd that we now own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds 1 to the counter, waking any poller.
    pub fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local u64, as eventfd requires.
        cvt(unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) })?;
        Ok(())
    }

    /// Reads and resets the counter; 0 when it was not signalled.
    pub fn drain(&self) -> io::Result<u64> {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live local u64, as eventfd requires.
        let r = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(v)
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes (-1: no
/// timeout). Returns, per fd, whether it is readable (or errored/hung up,
/// which a following read reports). `EINTR` counts as "nothing ready".
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pfds.len() pollfd structs.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// `struct ifreq` as SIOCGIFINDEX uses it: the name and the index.
#[repr(C)]
struct IfReqIndex {
    name: [libc::c_char; libc::IFNAMSIZ],
    index: libc::c_int,
    _pad: [u8; 20],
}

/// `SIOCGIFINDEX`.
const SIOCGIFINDEX: libc::c_ulong = 0x8933;

/// The interface index of `name` in the namespace of the socket `sock`
/// (any socket, a netlink one too: the kernel answers SIOCGIFINDEX for
/// every family), without opening a socket as `if_nametoindex(3)` does.
pub fn ifindex_via(sock: BorrowedFd<'_>, name: &str) -> io::Result<u32> {
    check_ifname(name)?;
    let mut req = IfReqIndex {
        name: [0; libc::IFNAMSIZ],
        index: 0,
        _pad: [0; 20],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX reads the name from and writes the index into
    // one `struct ifreq`; `req` is a properly sized ifreq (40 bytes) that
    // lives across the call.
    cvt(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            SIOCGIFINDEX as _,
            &mut req as *mut IfReqIndex,
        )
    })?;
    Ok(req.index as u32)
}

/// The interface index of `name` in the calling thread's namespace
/// (`if_nametoindex(3)`).
pub fn ifindex(name: &str) -> io::Result<u32> {
    check_ifname(name)?;
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames_are_checked() {
        assert!(check_ifname("tap0").is_ok());
        assert!(check_ifname("wasp-p-12345678").is_ok());
        for bad in ["", ".", "a/b", "a b", "a:b", "0123456789abcdef"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ifreq_is_40_bytes() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<IfReqIndex>(), 40);
    }

    #[test]
    fn eventfd_signals_poll() {
        let e = EventFd::new().unwrap();
        assert_eq!(poll_readable(&[e.as_fd()], 0).unwrap(), vec![false]);
        e.signal().unwrap();
        e.signal().unwrap();
        assert_eq!(poll_readable(&[e.as_fd()], -1).unwrap(), vec![true]);
        assert_eq!(e.drain().unwrap(), 2);
        assert_eq!(e.drain().unwrap(), 0);
    }
}
