//! Raw stream sockets for the restore drivers: the io_uring driver needs
//! stable `sockaddr` storage and bare fds; the fallback uses the same calls
//! nonblocking.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::cvt;

/// A socket address with its length, in storage that does not move while
/// an io_uring connect points at it (keep it boxed or otherwise pinned).
#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockAddr")
            .field("family", &self.storage.ss_family)
            .finish()
    }
}

impl SockAddr {
    /// A unix socket path (at most 107 bytes).
    pub fn unix(path: &Path) -> io::Result<Self> {
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_un fits in sockaddr_storage and has a compatible
        // layout; we write through a correctly aligned pointer into it.
        let un = unsafe {
            &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>()
        };
        if bytes.len() >= un.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} is longer than {} bytes",
                    path.display(),
                    un.sun_path.len() - 1
                ),
            ));
        }
        un.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in un.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        Ok(Self { storage, len })
    }

    /// An IPv4 address.
    pub fn inet(addr: SocketAddrV4) -> Self {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_in fits in sockaddr_storage with compatible
        // alignment.
        let sin = unsafe {
            &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
        };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = addr.port().to_be();
        sin.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
        Self {
            storage,
            len: std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        }
    }

    /// Pointer for connect(2) / io_uring; valid while `self` is alive and
    /// unmoved.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// Length for connect(2).
    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    /// Never empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A new stream socket (`AF_UNIX` or `AF_INET`), close-on-exec, optionally
/// nonblocking, in the calling thread's network namespace.
pub fn stream_socket(domain: i32, nonblock: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblock {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket takes only integers.
    let fd = cvt(unsafe { libc::socket(domain, ty, 0) })?;
    // SAFETY: the kernel returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec `NETLINK_ROUTE` socket in the calling thread's network
/// namespace (unbound: the kernel binds it on first send).
pub fn route_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes only integers.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: the kernel returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// connect(2). A nonblocking TCP socket returns `EINPROGRESS` as an error.
pub fn connect(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: addr points to initialised storage of at least addr.len bytes.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len()) })?;
    Ok(())
}

/// send(2) with `MSG_NOSIGNAL`.
pub fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a live slice of buf.len() bytes.
    let n = cvt(unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    })?;
    Ok(n as usize)
}

/// recv(2).
pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live, writable slice of buf.len() bytes.
    let n = cvt(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })?;
    Ok(n as usize)
}

/// The pending error of a socket (`SO_ERROR`), e.g. after a nonblocking
/// connect became writable.
pub fn take_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are live locals of the sizes passed.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_connect_send_recv() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let fd = stream_socket(libc::AF_UNIX, false).unwrap();
        connect(&fd, &SockAddr::unix(&p).unwrap()).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        assert_eq!(send(&fd, b"ping").unwrap(), 4);
        let mut b = [0u8; 4];
        std::io::Read::read_exact(&mut peer, &mut b).unwrap();
        assert_eq!(&b, b"ping");
        std::io::Write::write_all(&mut peer, b"pong").unwrap();
        let mut r = [0u8; 8];
        assert_eq!(recv(&fd, &mut r).unwrap(), 4);
        assert_eq!(take_error(&fd).unwrap().map(|e| e.kind()), None);
    }

    #[test]
    fn missing_unix_path_is_enoent_and_long_path_is_refused() {
        let fd = stream_socket(libc::AF_UNIX, true).unwrap();
        let e = connect(
            &fd,
            &SockAddr::unix(Path::new("/nonexistent/wasp.sock")).unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(SockAddr::unix(Path::new(&"x".repeat(200))).is_err());
    }

    #[test]
    fn tcp_refused_on_loopback() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let fd = stream_socket(libc::AF_INET, false).unwrap();
        let e = connect(
            &fd,
            &SockAddr::inet(SocketAddrV4::new([127, 0, 0, 1].into(), port)),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}
