//! Default locations and the naming prefix of everything wasp creates, and
//! the guest network every slot and snapshot shares by default: each
//! constant here is the one place its value is written.

use std::net::Ipv4Addr;

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

/// Default clone address space (`pool.cidr`): its network, `10.0.0.0`...
pub const DEFAULT_CIDR_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
/// ... and its prefix length, `/16`.
pub const DEFAULT_CIDR_PREFIX: u8 = 16;
/// Default host bridge name (`pool.bridge`); it starts with [`PREFIX`].
pub const DEFAULT_BRIDGE: &str = "wasp0";
/// Default tap name a snapshot's VM is attached to (`guest.tap`).
pub const DEFAULT_TAP: &str = "tap0";
/// Default tap address, the guest's gateway (`guest.tap_ip`).
pub const DEFAULT_TAP_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 241, 1);
/// Default tap network prefix length (`guest.tap_prefix`).
pub const DEFAULT_TAP_PREFIX: u8 = 29;
/// Default guest address behind the tap (`guest.guest_ip`), the same in
/// every clone.
pub const DEFAULT_GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 241, 2);
/// The guest MAC wasp's snapshots record (Firecracker's convention: `06:00`
/// and the default guest IP).
pub const GUEST_MAC: &str = "06:00:c0:a8:f1:02";
/// The Firecracker network interface id wasp's snapshots use.
pub const GUEST_IFACE_ID: &str = "eth0";
/// The MMDS address wasp's snapshots configure.
pub const MMDS_IPV4: &str = "169.254.169.254";

/// The path a snapshot records for drive `drive_id`.
pub fn stable_drive_path(drive_id: &str) -> std::path::PathBuf {
    std::path::Path::new(STABLE_DRIVE_DIR).join(drive_id)
}
