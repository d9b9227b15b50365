//! Default locations and the naming prefix of everything wasp creates.

/// Prefix of every kernel object, file and directory wasp creates. Reconcile
/// only ever touches names that start with it.
pub const PREFIX: &str = "wasp";

/// Default directory for per-clone files (rootfs copies, sockets, logs).
pub const DEFAULT_RUNTIME_DIR: &str = "/var/lib/wasp";

/// Default directory for state files (clone records, pool state).
pub const DEFAULT_STATE_DIR: &str = "/run/wasp";

/// Directory under which every VMM's private mount namespace shows that
/// clone's own drives: drive `ID` is at `STABLE_DRIVE_DIR/ID`. Golden
/// snapshots record these paths, so Firecracker (which reopens drives at the
/// recorded path on load, with no override) opens each clone's own file.
pub const STABLE_DRIVE_DIR: &str = "/run/wasp/drives";

/// The path a snapshot records for drive `drive_id`.
pub fn stable_drive_path(drive_id: &str) -> std::path::PathBuf {
    std::path::Path::new(STABLE_DRIVE_DIR).join(drive_id)
}
