//! Network namespaces owned by a user namespace of wasp's own, not by the
//! host's initial one.
//!
//! Why: the kernel broadcasts every uevent that belongs to no network
//! namespace (KVM sends one when a VM is created and one when it is
//! destroyed) to each namespace owned by the initial user namespace, one
//! socket check per namespace under a global mutex (`uevent_sock_list` in
//! `lib/kobject_uevent.c`). With a slot namespace per clone, every VMM's
//! start and exit then cost O(live slots): 7 % of all CPU of a 5 000-clone
//! Firecracker batch was `netlink_has_listeners` in that loop. Namespaces
//! owned by another user namespace are not on that list.
//!
//! How: a namespace's owner is the user namespace of the task that
//! creates it, and a multithreaded process cannot enter another user
//! namespace. So one small child, forked once and single-threaded, enters
//! a fresh user namespace (root mapped to root: `0 0 1`, the only mapping
//! a process may write for itself) and then makes a namespace per request
//! (`unshare(CLONE_NEWNET)`), handing back an fd on it over a socketpair
//! (`SCM_RIGHTS`). wasp's threads `setns` into it as before: root of the
//! initial user namespace holds every capability in a descendant, so
//! nothing else changes for wasp, `ip netns exec`, the VMM or the jailer.
//! The child holds none of wasp's fds but its end of the socketpair and
//! exits when wasp's end closes.
//!
//! Where user namespaces cannot be made (`user.max_user_namespaces = 0`,
//! or a seccomp policy), [`new_netns`] says so once and the caller
//! unshares in the initial user namespace as before.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::cvt;

/// The running child: wasp's end of the socketpair and the child's pid.
struct Factory {
    sock: OwnedFd,
    pid: libc::pid_t,
}

/// The child, started on first use; `None` before that or after it died.
static FACTORY: Mutex<Option<Factory>> = Mutex::new(None);
/// Set once the child could not be started: callers unshare themselves.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Why [`new_netns`] gave no namespace.
#[derive(Debug)]
pub enum NewNetnsError {
    /// No user namespace of wasp's can be made here (said once in the
    /// log); the caller should make the namespace itself.
    Unavailable,
    /// The child could not make the namespace (its errno: e.g. ENOSPC at
    /// `user.max_net_namespaces`).
    Failed(io::Error),
}

/// A new network namespace owned by wasp's user namespace, as an fd (the
/// namespace lives as long as the fd or anything else that holds it).
pub fn new_netns() -> Result<OwnedFd, NewNetnsError> {
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return Err(NewNetnsError::Unavailable);
    }
    let mut guard = FACTORY.lock().unwrap_or_else(|p| p.into_inner());
    // A child that died (killed from outside) is started again once.
    for attempt in 0..2 {
        if guard.is_none() {
            match start() {
                Ok(f) => *guard = Some(f),
                Err(e) => {
                    UNAVAILABLE.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        error = %e,
                        "cannot make a user namespace for slot network namespaces; \
                         they are owned by the host's (each VMM start and exit then \
                         costs O(slots) in the kernel's uevent broadcast)"
                    );
                    return Err(NewNetnsError::Unavailable);
                }
            }
        }
        let f = guard.as_ref().expect("started above");
        match request(f) {
            Ok(Ok(fd)) => return Ok(fd),
            Ok(Err(errno)) => return Err(NewNetnsError::Failed(errno)),
            Err(e) if attempt == 0 => {
                tracing::debug!(error = %e, "the netns child is gone; starting it again");
                if let Some(old) = guard.take() {
                    reap(old.pid);
                }
            }
            Err(e) => return Err(NewNetnsError::Failed(e)),
        }
    }
    unreachable!("the loop returns on its second attempt")
}

/// Asks the child for one namespace. The outer error is the transport
/// (the child is gone), the inner one the child's errno.
fn request(f: &Factory) -> io::Result<Result<OwnedFd, io::Error>> {
    let sock = f.sock.as_raw_fd();
    // SAFETY: a 1-byte buffer on our stack; MSG_NOSIGNAL: a dead child is
    // an EPIPE, not a SIGPIPE.
    let n = cvt(unsafe { libc::send(sock, b"n".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) })?;
    if n != 1 {
        return Err(io::Error::other("short write to the netns child"));
    }
    let mut errno = [0u8; 4];
    let mut iov = libc::iovec {
        iov_base: errno.as_mut_ptr().cast(),
        iov_len: errno.len(),
    };
    // Room for one SCM_RIGHTS fd (CMSG_SPACE(4) = 24 on 64-bit).
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg points to the iovec and control buffer above, which
    // outlive the call; MSG_CMSG_CLOEXEC marks a received fd close-on-exec.
    let n = cvt(unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR only reads it.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    let mut fd: Option<OwnedFd> = None;
    // SAFETY: a non-null cmsg from CMSG_FIRSTHDR lies within cbuf.
    if !cmsg.is_null() && unsafe { (*cmsg).cmsg_type } == libc::SCM_RIGHTS {
        // SAFETY: an SCM_RIGHTS cmsg carries at least one int after its
        // header; read_unaligned copes with the data's alignment.
        let raw: RawFd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
        // SAFETY: the kernel installed this fd for us; nothing else owns it.
        fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    let code = i32::from_ne_bytes(errno);
    Ok(match (code, fd) {
        (0, Some(fd)) => Ok(fd),
        (0, None) => Err(io::Error::other("the netns child sent no fd")),
        (e, _) => Err(io::Error::from_raw_os_error(e)),
    })
}

fn reap(pid: libc::pid_t) {
    // SAFETY: kill and waitpid only read their integer arguments; the pid
    // is our own child, not yet reaped (nothing else waits for it).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Forks the child and waits for its ready byte (its user namespace made
/// and mapped), or its errno.
fn start() -> io::Result<Factory> {
    let mut pair = [0 as RawFd; 2];
    // SAFETY: pair is a 2-int out buffer on our stack.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair returned two fresh fds that nothing else owns.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    // SAFETY: fork in a multithreaded process: the child only runs
    // `child_main`, which makes async-signal-safe raw syscalls on data
    // prepared before the fork (static byte strings, its stack) and never
    // returns.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        child_main(theirs.as_raw_fd())
    }
    drop(theirs);
    let f = Factory { sock: ours, pid };
    let mut ready = [0u8; 4];
    // SAFETY: a 4-byte buffer on our stack.
    let n = cvt(unsafe {
        libc::recv(
            f.sock.as_raw_fd(),
            ready.as_mut_ptr().cast(),
            ready.len(),
            0,
        )
    });
    match n {
        Ok(4) if ready == [0; 4] => Ok(f),
        Ok(4) => {
            reap(f.pid);
            Err(io::Error::from_raw_os_error(i32::from_ne_bytes(ready)))
        }
        Ok(_) => {
            reap(f.pid);
            Err(io::Error::other("the netns child exited at start"))
        }
        Err(e) => {
            reap(f.pid);
            Err(e)
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Writes `data` to `path`; false on any failure.
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> bool {
    // SAFETY: path is a NUL-terminated C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: data is a live slice; fd was just opened and is closed once.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    // SAFETY: fd is ours (opened above).
    unsafe { libc::close(fd) };
    n == data.len() as isize
}

/// Sends a 4-byte status and, with it, `fd` when given.
fn send_status(sock: RawFd, code: i32, fd: Option<RawFd>) {
    let bytes = code.to_ne_bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer holds CMSG_SPACE(4) bytes, so the
        // first header and its 4 data bytes lie within it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: msg points to live buffers on our stack.
    unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
}

/// The child: its own user namespace, then one network namespace per
/// request. Only async-signal-safe raw syscalls (it is a fork of a
/// multithreaded process); never returns.
fn child_main(sock: RawFd) -> ! {
    // Nothing of wasp's but the socket: close every other fd (a held copy
    // of a VMM's socket or pidfd would outlive wasp's own).
    // SAFETY: close_range only reads its integer arguments.
    unsafe {
        if sock > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (sock - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (sock + 1) as u32, u32::MAX, 0u32);
    }
    // Default signal dispositions and an empty mask: a handler of wasp's
    // would run on this copy of wasp's memory.
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: signal only reads its arguments; failures (glibc's
        // internal signals) are ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an all-zero sigset_t is valid; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t on our stack; a null old set is
    // allowed.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    let fail = |code: i32| -> ! {
        send_status(sock, code, None);
        // SAFETY: _exit ends the child without running wasp's destructors.
        unsafe { libc::_exit(1) }
    };
    // SAFETY: unshare only reads its flags.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        fail(errno());
    }
    // Root inside is root outside (the one mapping a process may write for
    // itself); setgroups must be denied before a gid map of one's own.
    if !write_file(c"/proc/self/uid_map", b"0 0 1")
        || !write_file(c"/proc/self/setgroups", b"deny")
        || !write_file(c"/proc/self/gid_map", b"0 0 1")
    {
        fail(errno());
    }
    // A base namespace owned by the new user namespace to go back to
    // between requests (the host's is out of reach from in here), so the
    // child never holds a slot's namespace after handing it out.
    // SAFETY: unshare only reads its flags.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        fail(errno());
    }
    // SAFETY: a NUL-terminated static path.
    let base = unsafe {
        libc::open(
            c"/proc/self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if base < 0 {
        fail(errno());
    }
    send_status(sock, 0, None);
    loop {
        let mut req = [0u8; 1];
        // SAFETY: a 1-byte buffer on our stack.
        let n = unsafe { libc::recv(sock, req.as_mut_ptr().cast(), 1, 0) };
        if n <= 0 {
            // wasp closed its end (or is gone).
            // SAFETY: _exit ends the child.
            unsafe { libc::_exit(0) }
        }
        // SAFETY: unshare only reads its flags.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            send_status(sock, errno(), None);
            continue;
        }
        // SAFETY: a NUL-terminated static path.
        let fd = unsafe {
            libc::open(
                c"/proc/self/ns/net".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            send_status(sock, errno(), None);
        } else {
            send_status(sock, 0, Some(fd));
            // SAFETY: fd was opened above and is closed once.
            unsafe { libc::close(fd) };
        }
        // SAFETY: setns only reads its arguments; base is our own fd on a
        // namespace owned by our user namespace.
        if unsafe { libc::setns(base, libc::CLONE_NEWNET) } != 0 {
            // SAFETY: _exit ends the child; wasp starts a new one.
            unsafe { libc::_exit(1) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn owner_of(ns: impl AsFd) -> u64 {
        crate::sys::netns::owner_inode(ns).unwrap()
    }

    #[test]
    fn namespaces_are_new_distinct_and_owned_by_wasps_user_namespace() {
        if !crate::sys::is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs tests as root");
            return;
        }
        let a = new_netns().map_err(|e| format!("{e:?}")).unwrap();
        let b = new_netns().map_err(|e| format!("{e:?}")).unwrap();
        let ino = |f: &OwnedFd| crate::sys::netns::inode_of(f).unwrap();
        let ours = crate::sys::netns::open_current().unwrap();
        assert_ne!(ino(&a), ino(&b));
        assert_ne!(ino(&a), ino(&ours));
        let host_users = std::fs::metadata("/proc/self/ns/user")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        assert_eq!(owner_of(&ours), host_users);
        assert_ne!(owner_of(&a), host_users, "not the host's user namespace");
        assert_eq!(owner_of(&a), owner_of(&b), "one user namespace of wasp's");
        // A thread of ours can enter it and build in it as before.
        let r = crate::sys::netns::run_in(&a, || {
            crate::netlink::Socket::route()
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(r, Ok(()));
        // A child killed from outside is started again.
        let pid = FACTORY.lock().unwrap().as_ref().unwrap().pid;
        // SAFETY: kill only reads its arguments; pid is our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let c = new_netns().map_err(|e| format!("{e:?}")).unwrap();
        assert_ne!(FACTORY.lock().unwrap().as_ref().unwrap().pid, pid);
        assert_ne!(owner_of(&c), host_users);
    }
}
