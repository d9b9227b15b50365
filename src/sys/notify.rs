//! systemd's readiness protocol (`sd_notify`) without libsystemd: one
//! datagram to the unix socket `$NOTIFY_SOCKET` names (a path, or an
//! abstract name when it starts with `@`).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `READY=1`, `STOPPING=1`) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is not set (not run by systemd).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        None => Ok(false),
        Some(s) => {
            use std::os::unix::ffi::OsStrExt;
            notify_to(s.as_bytes(), state).map(|()| true)
        }
    }
}

/// Sends `state` to the notify socket `name` (`/path` or `@abstract`).
pub fn notify_to(name: &[u8], state: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let addr = match name.split_first() {
        Some((b'@', rest)) => SocketAddr::from_abstract_name(rest)?,
        Some((b'/', _)) => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        use std::os::unix::ffi::OsStrExt;
        notify_to(p.as_os_str().as_bytes(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(notify_to(b"relative", "READY=1").is_err());
    }
}
