//! The pipeline stages, one module per stage, in the order a clone goes
//! through them:
//!
//! ```text
//! slot -> pool -> storage -> launch -> restore (load, inject, resume) -> ready
//! ```
//!
//! - [`slot`]: one network slot (netns, veth, tap, NAT) over raw netlink;
//! - [`pool`]: the pre-warmed pool of slots, with [`lease`] (which process
//!   owns a slot) and [`registry`] (which pools a state dir set up);
//! - [`storage`]: per-clone disks (reflink, copy), memory never copied;
//! - [`launch`]: the VMM started inside its slot, in its own mount namespace;
//! - [`restore`]: the per-clone state machine (load, MMDS with [`env`],
//!   resume), [`ready`]: readiness kinds;
//! - [`limits`]: the host limits a pool of N clones needs, checked before
//!   anything is built;
//! - [`ring`]: the drivers that run many restores at once (io_uring, and
//!   a poll(2) fallback).
//!
//! May use: `sys`, `netlink`, `vmm`, `snapshot`, `state`, the leaves.
//! Nothing of `engine`, `ops`, `config` or `bench`.

pub mod env;
pub mod launch;
pub mod lease;
pub mod limits;
pub mod pool;
pub mod ready;
pub mod registry;
pub mod restore;
pub mod ring;
pub mod slot;
pub mod storage;
