//! The VMM layer: everything wasp knows about the process that runs a
//! clone. Firecracker's API client ([`api`], with the HTTP framing of crate
//! `http1`), finding Firecracker and the jailer and checking their
//! versions ([`firecracker`]), jailer mode ([`jailer`]) and per-clone
//! cgroups ([`cgroup`]).
//!
//! May use: `sys`, `state`, `sweep`, `trust`, the leaves. Nothing of the
//! pipeline above it.

pub mod api;
pub mod cgroup;
pub mod firecracker;
pub mod jailer;
