//! The real host side of the stand-in: files, taps, guest memory and the
//! userspace guest.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use super::api::{GuestMem, GuestParams, Host, MemLoadError, RunningGuest};
use crate::sys::mem::GuestMapping;
use crate::vmstate::{VmState, VmStateError};

/// Writes one log line to stderr, marked as the stand-in's.
pub fn log_line(id: &str, msg: &str) {
    // One write per line, so lines from several VMMs never interleave.
    let line = format!("[{id}:wasp-standin] stand-in: {msg}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// The real host.
#[derive(Debug)]
pub struct RealHost {
    id: String,
}

impl RealHost {
    /// A host logging under instance id `id`.
    pub fn new(id: &str) -> Self {
        Self { id: id.to_owned() }
    }
}

impl Host for RealHost {
    fn read_kernel(&mut self, path: &str) -> io::Result<Vec<u8>> {
        let f = File::open(path)?;
        // An ELF test guest is tiny; read at most what fits a small guest.
        let mut v = Vec::new();
        use std::io::Read;
        f.take(64 << 20).read_to_end(&mut v)?;
        Ok(v)
    }

    fn open_drive(&mut self, path: &str, read_only: bool) -> io::Result<OwnedFd> {
        let f = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Ok(f.into())
    }

    fn open_tap(&mut self, name: &str) -> io::Result<OwnedFd> {
        crate::sys::standin_tun::open_tap(name)
    }

    fn anon_memory(&mut self, len: usize) -> io::Result<Box<dyn GuestMem>> {
        Ok(Box::new(GuestMapping::anon(len)?))
    }

    fn file_memory(&mut self, path: &str, len: usize) -> Result<Box<dyn GuestMem>, MemLoadError> {
        let f = File::open(path).map_err(MemLoadError::Open)?;
        let size = f.metadata().map_err(MemLoadError::Open)?.len();
        if size < len as u64 {
            return Err(MemLoadError::TooSmall);
        }
        Ok(Box::new(
            GuestMapping::file_private(&f, len).map_err(MemLoadError::Map)?,
        ))
    }

    fn uffd_memory(
        &mut self,
        socket: &str,
        _len: usize,
    ) -> Result<Box<dyn GuestMem>, MemLoadError> {
        // Firecracker first connects to the handler; do the same so a
        // missing handler fails identically, then say what is missing.
        std::os::unix::net::UnixStream::connect(socket).map_err(MemLoadError::UffdConnect)?;
        Err(MemLoadError::UffdUnsupported)
    }

    fn read_vmstate(&mut self, path: &str) -> Result<VmState, VmStateError> {
        VmState::read(Path::new(path))
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        f.sync_data()
    }

    fn start_guest(&mut self, tap: OwnedFd, p: GuestParams) -> io::Result<Box<dyn RunningGuest>> {
        start_userspace_guest(tap, p)
    }

    fn delay_ms(&mut self, ms: u64) {
        // Fault injection only: this *is* the slowness being injected.
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    fn log(&mut self, msg: &str) {
        log_line(&self.id, msg);
    }
}

fn start_userspace_guest(_tap: OwnedFd, _p: GuestParams) -> io::Result<Box<dyn RunningGuest>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this build has no userspace TCP/IP guest yet (src/guestnet.rs)",
    ))
}
