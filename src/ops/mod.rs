//! Operations on what wasp left on the host: crash recovery
//! ([`reconcile`]), stopping exactly the VMMs wasp started ([`teardown`]),
//! and the host checks of `wasp doctor` ([`doctor`]).
//!
//! May use: everything below it (`sys`, `netlink`, `vmm`, `snapshot`,
//! `pipeline`, `state`, the leaves). Not `engine`, `config` or `bench`.

pub mod doctor;
pub mod reconcile;
pub mod teardown;
