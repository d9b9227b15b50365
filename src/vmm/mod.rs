//! The VMM layer: everything wasp knows about the process that runs a
//! clone. Firecracker's API client ([`api`], with the HTTP framing of crate
//! `http1`), finding Firecracker and the jailer and checking their
//! versions ([`firecracker`]), jailer mode ([`jailer`]) and per-clone
//! cgroups ([`cgroup`]), and what became of a stopped VMM ([`VmmFate`],
//! told by the engine and by `ops::teardown`).
//!
//! May use: `sys`, `state`, `sweep`, `trust`, the leaves. Nothing of the
//! pipeline above it.

pub mod api;
pub mod cgroup;
pub mod firecracker;
pub mod jailer;

/// What happened to a clone's VMM when it was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmFate {
    /// Exited after SIGTERM.
    Terminated,
    /// Needed SIGKILL.
    Killed,
    /// Was already gone (or its pid now belongs to another process, which
    /// was left alone).
    AlreadyGone,
}
