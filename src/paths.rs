//! Default locations and the naming prefix of everything wasp creates.

/// Prefix of every kernel object, file and directory wasp creates. Reconcile
/// only ever touches names that start with it.
pub const PREFIX: &str = "wasp";

/// Default directory for per-clone files (rootfs copies, sockets, logs).
pub const DEFAULT_RUNTIME_DIR: &str = "/var/lib/wasp";

/// Default directory for state files (clone records, pool state).
pub const DEFAULT_STATE_DIR: &str = "/run/wasp";
