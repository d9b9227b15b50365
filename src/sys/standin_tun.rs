//! Interim tap opener for the stand-in VMM until `sys::tap` lands: TUNSETIFF
//! with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as Firecracker opens its taps.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::cvt;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches to (as root: creates, bare and not persistent) the tap `name` in
/// the calling thread's network namespace. Non-blocking, close-on-exec.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/')
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads (and may update) one `struct ifreq`; `req` is
    // a properly sized, live local for the duration of the call.
    cvt(unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) })?;
    Ok(f.into())
}

use std::os::unix::fs::OpenOptionsExt;
