//! The stand-in's side effects as a trait: everything that touches the host
//! (files, taps, guest memory, the userspace guest) goes through [`Host`], so
//! the state machine is tested without root against a recording fake. The
//! real implementation is `standin::host`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::standin::vmstate::{VmState, VmStateError};

/// Guest memory as the state machine sees it.
pub trait GuestMem: Send {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// The bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl GuestMem for crate::sys::mem::GuestMapping {
    fn bytes(&self) -> &[u8] {
        self.as_slice()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl GuestMem for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// A running userspace guest.
pub trait RunningGuest: Send {
    /// Stops it (on pause).
    fn stop(self: Box<Self>) -> io::Result<()>;
}

/// What the userspace guest needs to run.
#[derive(Clone)]
pub struct GuestParams {
    /// Addressing and service ports.
    pub addr: crate::standin::guestnet::GuestIface,
    /// The MMDS data store (shared: the agent reads it live).
    pub mmds: Arc<Mutex<Option<Value>>>,
}

/// Why guest memory could not be set up on load.
#[derive(Debug)]
pub enum MemLoadError {
    /// The memory file could not be opened.
    Open(io::Error),
    /// The memory file is shorter than the guest.
    TooSmall,
    /// Mapping failed.
    Map(io::Error),
    /// The Uffd handler socket could not be reached.
    UffdConnect(io::Error),
    /// Setting up or handing over the userfaultfd failed.
    UffdSetup(io::Error),
    /// The Uffd backend is not available (test fakes).
    UffdUnsupported,
}

/// The stand-in's side effects.
pub trait Host {
    /// Reads the kernel image (Firecracker opens it at `PUT /boot-source`).
    fn read_kernel(&mut self, path: &str) -> io::Result<Vec<u8>>;
    /// Opens a drive's backing file.
    fn open_drive(&mut self, path: &str, read_only: bool) -> io::Result<OwnedFd>;
    /// Opens (as root: creates if missing) the tap `name` with TUNSETIFF.
    fn open_tap(&mut self, name: &str) -> io::Result<OwnedFd>;
    /// Fresh zeroed guest memory for a boot.
    fn anon_memory(&mut self, len: usize) -> io::Result<Box<dyn GuestMem>>;
    /// The File backend: checks the size, maps MAP_PRIVATE.
    fn file_memory(&mut self, path: &str, len: usize) -> Result<Box<dyn GuestMem>, MemLoadError>;
    /// The Uffd backend.
    fn uffd_memory(&mut self, socket: &str, len: usize) -> Result<Box<dyn GuestMem>, MemLoadError>;
    /// Reads a stand-in vmstate.
    fn read_vmstate(&mut self, path: &str) -> Result<VmState, VmStateError>;
    /// Writes a snapshot file (memory or vmstate), replacing it.
    fn write_file(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Starts the userspace guest on `tap`.
    fn start_guest(&mut self, tap: OwnedFd, p: GuestParams) -> io::Result<Box<dyn RunningGuest>>;
    /// Waits `ms` milliseconds (the `slow-load` fault only).
    fn delay_ms(&mut self, ms: u64);
    /// One log line (the server prefixes "stand-in").
    fn log(&mut self, msg: &str);
}
