//! Creating the child: `clone3` with its arguments (`CLONE_PIDFD`,
//! `CLONE_INTO_CGROUP` and their fallbacks), the vfork-style clone on a
//! stack of this thread's (the x86-64 trampoline, the guard-paged stack,
//! every signal blocked across the clone), and the fork-style clone, else
//! `fork` + `pidfd_open`. The child then runs [`child_main`].

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::plan::{child_main, ChildPlan};
use super::waitpid;
use crate::sys::cvt;

/// `CLONE_VM` (linux/sched.h).
const CLONE_VM: u64 = 0x100;
/// `CLONE_VFORK` (linux/sched.h).
const CLONE_VFORK: u64 = 0x4000;
/// `CLONE_FILES` (linux/sched.h).
const CLONE_FILES: u64 = 0x400;
/// `CLONE_PIDFD` (linux/sched.h).
const CLONE_PIDFD: u64 = 0x1000;
/// `CLONE_INTO_CGROUP` (linux/sched.h, 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `CLONE_ARGS_SIZE_VER0`: up to `tls` (5.3).
const CLONE_ARGS_SIZE_VER0: usize = 64;
/// `CLONE_ARGS_SIZE_VER2`: with `cgroup` (5.7).
const CLONE_ARGS_SIZE_VER2: usize = 88;

/// `struct clone_args` from linux/sched.h (all fields u64, 8-aligned).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The entry of a vfork-style child, called by the trampoline on the
/// child's own stack.
extern "C" fn vfork_child_entry(plan: *mut libc::c_void) -> ! {
    // SAFETY: `plan` is the `&ChildPlan` that `clone3_vfork` passed, which
    // lives on the stack of the parent thread; that thread sleeps in
    // clone3 (CLONE_VFORK) until this child has exec'd or exited, so the
    // plan and everything it borrows (CStrings, pointer arrays, fds) stay
    // alive and unchanged while the child reads them. Nothing writes them.
    let plan = unsafe { &*(plan as *const ChildPlan) };
    child_main(plan)
}

/// The stack a vfork-style child runs on: anonymous memory with a
/// PROT_NONE guard page below it, so an overflow faults in the child
/// instead of writing into wasp's memory. Reused by later spawns of the
/// same thread (see [`with_child_stack`]).
struct ChildStack {
    /// The whole mapping (guard page included).
    map: *mut libc::c_void,
    map_len: usize,
    guard: usize,
}

impl ChildStack {
    /// Usable bytes. The child's frames (`child_steps` and the libc calls
    /// under it) use a few KiB.
    const SIZE: usize = 64 * 1024;

    fn new() -> io::Result<Self> {
        // SAFETY: sysconf only reads its argument.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let guard = if page > 0 { page as usize } else { 4096 };
        let map_len = guard + Self::SIZE;
        // SAFETY: a fresh private anonymous mapping at an address the
        // kernel picks; nothing else refers to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self {
            map,
            map_len,
            guard,
        };
        // SAFETY: [map + guard, map + map_len) lies inside the mapping
        // just made, which we own.
        cvt(unsafe {
            libc::mprotect(
                map.cast::<u8>().add(guard).cast(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        })?;
        Ok(stack)
    }

    /// The lowest usable address (`clone_args.stack`).
    fn low(&self) -> u64 {
        self.map as u64 + self.guard as u64
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no child runs on it any more (a
        // vfork-style child has exec'd or exited before its clone returns).
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

thread_local! {
    /// This thread's spare child stack.
    static SPARE_STACK: std::cell::Cell<Option<ChildStack>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with this thread's child stack (made on first use).
fn with_child_stack<T>(f: impl FnOnce(&ChildStack) -> T) -> io::Result<T> {
    let stack = match SPARE_STACK.take() {
        Some(s) => s,
        None => ChildStack::new()?,
    };
    let r = f(&stack);
    SPARE_STACK.set(Some(stack));
    Ok(r)
}

/// Blocks every signal in the calling thread until dropped (then restores
/// the old mask), so that no handler runs on this thread while a
/// vfork-style child shares its memory, and the child starts with every
/// signal blocked until it has reset the handlers.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> io::Result<Self> {
        // SAFETY: all-zero sigset_t values are valid; sigfillset fills
        // `all` in place.
        let (mut all, mut old): (libc::sigset_t, libc::sigset_t) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: all is a valid sigset_t on our stack.
        unsafe { libc::sigfillset(&mut all) };
        // SAFETY: both sets are valid; pthread_sigmask returns an error
        // number instead of setting errno.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(Self(old))
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: self.0 is the mask pthread_sigmask returned.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// `clone3(args)` whose child starts in [`vfork_child_entry`] with `plan`,
/// on the stack in `args` (`CLONE_VM | CLONE_VFORK` set by the caller).
/// Returns the child's pid in the parent, once the child has exec'd or
/// exited.
#[cfg(target_arch = "x86_64")]
fn clone3_vfork(args: &mut CloneArgs, size: usize, plan: &ChildPlan) -> io::Result<i32> {
    debug_assert!(args.flags & (CLONE_VM | CLONE_VFORK) == CLONE_VM | CLONE_VFORK);
    debug_assert!(args.stack != 0 && (args.stack + args.stack_size) % 16 == 0);
    let entry: extern "C" fn(*mut libc::c_void) -> ! = vfork_child_entry;
    let ret: i64;
    // SAFETY: the raw clone3 syscall (rax = nr, rdi = args, rsi = size;
    // the syscall instruction clobbers rcx and r11). In the parent it
    // returns the pid or -errno like any syscall and the asm falls through
    // with every other register intact. The child returns 0 on its own
    // stack (rsp = args.stack + args.stack_size, 16-byte aligned, inside a
    // live `ChildStack` of this thread) with the parent's other registers,
    // so r12 = plan and r13 = entry are there; it clears rbp (the end of
    // any backtrace), calls `entry(plan)` (rsp is then 8 mod 16, as the
    // ABI wants at a function's entry) and never comes back: the entry
    // execs or _exits (ud2 guards the impossible return). The child thus
    // never runs on this thread's stack or returns into this function,
    // whose frame the parent still needs. Sharing memory (CLONE_VM) is
    // sound because the child only reads `plan` (but for its atomic
    // `lost`, written before it exits; alive: this thread sleeps
    // in the syscall until the child execs or exits, CLONE_VFORK), makes
    // raw calls, never allocates and takes no lock (`child_steps`); the
    // errno it may set is this sleeping thread's.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") size,
            in("r12") plan as *const ChildPlan,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret as i32))
    } else {
        Ok(ret as i32)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn clone3_vfork(_: &mut CloneArgs, _: usize, _: &ChildPlan) -> io::Result<i32> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// A created child, seen from the parent.
pub(super) struct Created {
    /// Its pid.
    pub(super) pid: i32,
    /// Its pidfd.
    pub(super) pidfd: OwnedFd,
    /// Whether CLONE_INTO_CGROUP placed it.
    pub(super) into: bool,
}

/// The vfork-style clone: `CLONE_VM | CLONE_VFORK | CLONE_PIDFD`, plus
/// `CLONE_INTO_CGROUP` when `cgroup` (dir fd, `cgroup.procs` fd) is given
/// and not refused (then the child writes itself to `cgroup.procs`).
/// `Ok(None)`: no clone3 here, use the fork-style path.
pub(super) fn create_vfork(
    plan: &mut ChildPlan,
    cgroup: Option<(RawFd, RawFd)>,
) -> io::Result<Option<Created>> {
    let _blocked = SignalsBlocked::new()?;
    // A child that makes its own fd table before exec shares ours until
    // then instead of copying it (see `plan::own_fd_table`).
    let shared_fds = if plan.shared_fds { CLONE_FILES } else { 0 };
    with_child_stack(|stack| {
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: CLONE_PIDFD | CLONE_VM | CLONE_VFORK | shared_fds,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.low(),
            stack_size: ChildStack::SIZE as u64,
            ..CloneArgs::default()
        };
        let mut into = false;
        let r = match cgroup {
            Some((dir, procs)) => {
                args.flags |= CLONE_INTO_CGROUP;
                args.cgroup = dir as u64;
                plan.procs = None;
                match clone3_vfork(&mut args, CLONE_ARGS_SIZE_VER2, plan) {
                    Err(e) if is_unsupported(&e) => {
                        args.flags &= !CLONE_INTO_CGROUP;
                        args.cgroup = 0;
                        plan.procs = Some(procs);
                        clone3_vfork(&mut args, CLONE_ARGS_SIZE_VER0, plan)
                    }
                    r => {
                        into = r.is_ok();
                        r
                    }
                }
            }
            None => clone3_vfork(&mut args, CLONE_ARGS_SIZE_VER0, plan),
        };
        match r {
            Ok(pid) => Ok(Some(Created {
                pid,
                // SAFETY: with CLONE_PIDFD the kernel stored a fresh pidfd
                // we own.
                pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
                into,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(None),
            Err(e) => Err(e),
        }
    })?
}

/// Which clone the kernel did (fork-style).
pub(super) enum Cloned {
    Parent { pid: i32, pidfd: OwnedFd },
    Child,
}

/// `clone3` with `args` of `size` bytes (fork-style: no CLONE_VM).
fn clone3(args: &mut CloneArgs, size: usize) -> io::Result<i64> {
    debug_assert!(args.flags & CLONE_VM == 0);
    // SAFETY: args is a valid, initialised clone_args of at least `size`
    // bytes; without CLONE_VM the child gets a copy of our memory and
    // continues on its own copy of this stack, like fork(2).
    cvt(unsafe { libc::syscall(libc::SYS_clone3, args as *mut CloneArgs, size) })
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::E2BIG) | Some(libc::EINVAL)
    )
}

/// Creates the child fork-style: clone3 with CLONE_PIDFD (and
/// CLONE_INTO_CGROUP when `cgroup_fd` is given and not refused), else
/// clone3 without it, else fork + pidfd_open. Returns whether
/// CLONE_INTO_CGROUP was used.
pub(super) fn create_fork(cgroup_fd: Option<RawFd>) -> io::Result<(Cloned, bool)> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    let mut into = false;
    let r = match cgroup_fd {
        Some(fd) => {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
            match clone3(&mut args, CLONE_ARGS_SIZE_VER2) {
                Err(e) if is_unsupported(&e) => {
                    args.flags &= !CLONE_INTO_CGROUP;
                    args.cgroup = 0;
                    clone3(&mut args, CLONE_ARGS_SIZE_VER0)
                }
                r => {
                    into = r.is_ok();
                    r
                }
            }
        }
        None => clone3(&mut args, CLONE_ARGS_SIZE_VER0),
    };
    match r {
        Ok(0) => Ok((Cloned::Child, into)),
        Ok(pid) => {
            // SAFETY: with CLONE_PIDFD the kernel stored a fresh pidfd we own.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok((
                Cloned::Parent {
                    pid: pid as i32,
                    pidfd,
                },
                into,
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // No clone3 at all (or a filter hides it): fork(2).
            // SAFETY: the child only runs `child_main` (raw syscalls on data
            // prepared before the fork) and then execs or _exits.
            let pid = cvt(unsafe { libc::fork() })?;
            if pid == 0 {
                return Ok((Cloned::Child, false));
            }
            match crate::sys::pidfd::pidfd_open(pid) {
                Ok(pidfd) => Ok((Cloned::Parent { pid, pidfd }, false)),
                Err(e) => {
                    // SAFETY: pid is our unreaped child; kill only reads
                    // its integer arguments.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    let _ = waitpid(pid);
                    Err(e)
                }
            }
        }
        Err(e) => Err(e),
    }
}
