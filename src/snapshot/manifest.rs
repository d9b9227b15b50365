//! `wasp-snapshot.json`: what a snapshot directory holds and how the VMM
//! that made it saw the world.
//!
//! Parsing is strict: the size is limited before any byte is parsed, the
//! format version is read first (so a newer manifest gets "unknown format
//! version" and not a confusing field error), unknown fields are refused,
//! and every field is checked before it is trusted. File names are plain
//! names inside the snapshot directory: never a path, never `..`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The manifest's file name inside a snapshot directory.
pub const MANIFEST_FILE: &str = "wasp-snapshot.json";
/// The manifest format this wasp writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Manifests larger than this are refused before parsing.
pub const MAX_MANIFEST_SIZE: u64 = 256 * 1024;
/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;

/// Which VMM made the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    /// Real Firecracker: the vmstate is Firecracker's own binary format.
    Firecracker,
    /// wasp's stand-in VMM: the vmstate is [`crate::standin::vmstate::VmState`].
    Standin,
}

impl std::fmt::Display for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vmm::Firecracker => "firecracker",
            Vmm::Standin => "standin",
        })
    }
}

/// A file in the snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Plain file name inside the snapshot directory.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the contents, checked by `check --deep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A block device as the VMM recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Firecracker drive id, e.g. `rootfs`.
    pub drive_id: String,
    /// The path the VMM reopens on load (Firecracker 1.12 cannot override
    /// it). For per-clone disks it must resolve to each clone's own file,
    /// e.g. through a mount namespace: see [`super::CLONE_ROOTFS_PATH`].
    pub path_on_host: String,
    /// The base image's plain file name inside the snapshot directory.
    pub file: String,
    /// The base image's size in bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the base image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Opened read-only by the VMM.
    pub read_only: bool,
    /// The root device.
    #[serde(default)]
    pub is_root_device: bool,
}

impl Drive {
    /// The base image as a [`FileEntry`].
    pub fn image(&self) -> FileEntry {
        FileEntry {
            file: self.file.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }
}

/// A network interface as the VMM recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetIface {
    /// Firecracker iface id, e.g. `eth0`.
    pub iface_id: String,
    /// The tap device the VMM opens on load (each clone's slot provides one
    /// with this name, or load overrides it).
    pub host_dev_name: String,
    /// Guest MAC, `aa:bb:cc:dd:ee:ff`.
    pub guest_mac: String,
    /// The guest's IPv4 address on this link, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<String>,
}

/// MMDS configuration recorded in the snapshot (the data store is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mmds {
    /// `V1` or `V2`.
    pub version: String,
    /// The address MMDS answers on, e.g. `169.254.169.254`.
    pub ipv4_address: String,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`] when written by this wasp.
    pub format_version: u32,
    /// The VMM that made the snapshot.
    pub vmm: Vmm,
    /// Its version, e.g. `1.12.1`. Firecracker snapshots are not backward
    /// compatible, so a loader refuses a mismatch.
    pub vmm_version: String,
    /// The vmstate (Firecracker's `snapshot_path`).
    pub vmstate: FileEntry,
    /// The guest memory file (Firecracker's File backend). Never copied:
    /// clones map it MAP_PRIVATE, so it must stay immutable.
    pub memory: FileEntry,
    /// Guest memory in MiB; the memory file must be at least this large.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Block devices.
    pub drives: Vec<Drive>,
    /// Network interfaces.
    pub network_interfaces: Vec<NetIface>,
    /// MMDS config, if the VM had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmds: Option<Mmds>,
    /// When the manifest was written, RFC 3339 UTC.
    pub created_at: String,
}

/// Why a manifest was refused.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Over [`MAX_MANIFEST_SIZE`].
    #[error("manifest {path} is {size} bytes, over the {MAX_MANIFEST_SIZE}-byte limit; it is not a wasp snapshot manifest")]
    TooLarge {
        /// File.
        path: String,
        /// Size.
        size: u64,
    },
    /// Not JSON, truncated, a missing or unknown field, a wrong type.
    #[error("manifest {path} is not a valid wasp snapshot manifest; fix it or regenerate it with `wasp snapshot adopt`")]
    Parse {
        /// File.
        path: String,
        /// Cause (names the field and line).
        #[source]
        source: serde_json::Error,
    },
    /// A format version this wasp does not know.
    #[error("manifest {path} has format_version {found}; this wasp reads version {FORMAT_VERSION} (use a matching wasp, or re-adopt the snapshot)")]
    UnknownFormatVersion {
        /// File.
        path: String,
        /// Found version.
        found: u64,
    },
    /// A drive recorded at a path other than its per-clone path: the VMM
    /// reopens the recorded path on load (Firecracker 1.12 cannot override
    /// it), so every clone would open that one file instead of its own copy.
    #[error("manifest {path}: drive {drive_id} is recorded at {recorded}, not at its per-clone path {expected}: the VMM reopens the recorded path on load, so every clone would open that one file (read-write unless the drive is really read-only) instead of its own copy. Re-create the snapshot with `wasp snapshot create`, which attaches the drive at {expected}, or take the snapshot with the drive attached at {expected}")]
    DriveNotPerClone {
        /// File.
        path: String,
        /// Drive.
        drive_id: String,
        /// The recorded `path_on_host`.
        recorded: String,
        /// The per-clone path, [`crate::paths::stable_drive_path`].
        expected: String,
    },
    /// A field that parsed but makes no sense.
    #[error("manifest {path}: field {field}: {reason}")]
    Invalid {
        /// File.
        path: String,
        /// Dotted field name, e.g. `drives[0].file`.
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

impl Manifest {
    /// Parses and validates manifest bytes read from `path` (used only in
    /// error messages). Never panics.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge {
                path: path.into(),
                size: bytes.len() as u64,
            });
        }
        #[derive(Deserialize)]
        struct Version {
            format_version: serde_json::Value,
        }
        let parse_err = |source| ManifestError::Parse {
            path: path.into(),
            source,
        };
        let v: Version = serde_json::from_slice(bytes).map_err(parse_err)?;
        match v.format_version.as_u64() {
            Some(n) if n == u64::from(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(ManifestError::UnknownFormatVersion {
                    path: path.into(),
                    found,
                })
            }
            None => {
                return Err(ManifestError::Invalid {
                    path: path.into(),
                    field: "format_version".into(),
                    reason: format!(
                        "{} is not a version number (expected {FORMAT_VERSION})",
                        v.format_version
                    ),
                })
            }
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(parse_err)?;
        m.validate(path)?;
        Ok(m)
    }

    /// Serializes as pretty JSON with a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Every file the snapshot directory must hold, with its role
    /// (`vmstate`, `memory`, `drive rootfs`).
    pub fn files(&self) -> Vec<(String, FileEntry)> {
        let mut v = vec![
            ("vmstate".to_string(), self.vmstate.clone()),
            ("memory".to_string(), self.memory.clone()),
        ];
        for d in &self.drives {
            v.push((format!("drive {}", d.drive_id), d.image()));
        }
        v
    }

    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib.saturating_mul(MIB)
    }

    /// Refuses a drive whose recorded `path_on_host` is not its per-clone
    /// path `/run/wasp/drives/<drive_id>` ([`crate::paths::stable_drive_path`]),
    /// the only path the launch stage binds each clone's own file over.
    /// Firecracker reopens drives at the recorded path, so a drive recorded
    /// elsewhere would make every clone open that host file (the golden
    /// disk itself, read-write, when the drive is writable). Read-only
    /// drives are held to it too: wasp cannot read Firecracker's vmstate,
    /// so the manifest's `read_only` is a claim, and a file elsewhere is
    /// not the one `check` verified. `path` is used only in messages.
    pub fn check_drive_paths(&self, path: &str) -> Result<(), ManifestError> {
        for d in &self.drives {
            let expected = crate::paths::stable_drive_path(&d.drive_id);
            if d.path_on_host.as_bytes() != expected.as_os_str().as_encoded_bytes() {
                return Err(ManifestError::DriveNotPerClone {
                    path: path.into(),
                    drive_id: d.drive_id.clone(),
                    recorded: d.path_on_host.clone(),
                    expected: expected.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Checks every field's meaning (the structure is serde's job).
    pub fn validate(&self, path: &str) -> Result<(), ManifestError> {
        let bad = |field: String, reason: String| ManifestError::Invalid {
            path: path.into(),
            field,
            reason,
        };
        if self.vmm_version.is_empty()
            || self.vmm_version.len() > 64
            || !self
                .vmm_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-+_".contains(&b))
        {
            return Err(bad(
                "vmm_version".into(),
                format!("{:?} is not a version like 1.12.1", self.vmm_version),
            ));
        }
        check_entry(&self.vmstate, "vmstate").map_err(|(f, r)| bad(f, r))?;
        check_entry(&self.memory, "memory").map_err(|(f, r)| bad(f, r))?;
        if self.vmstate.size == 0 {
            return Err(bad(
                "vmstate.size".into(),
                "a vmstate is never empty".into(),
            ));
        }
        if self.mem_mib == 0 || self.mem_mib > 1 << 20 {
            return Err(bad(
                "mem_mib".into(),
                format!("{} is out of range 1..=1048576", self.mem_mib),
            ));
        }
        if self.memory.size < self.mem_bytes() {
            return Err(bad(
                "memory.size".into(),
                format!(
                    "{} bytes is smaller than mem_mib {} ({} bytes); Firecracker would SIGBUS on the missing pages",
                    self.memory.size,
                    self.mem_mib,
                    self.mem_bytes()
                ),
            ));
        }
        if self.vcpus == 0 || self.vcpus > 32 {
            return Err(bad(
                "vcpus".into(),
                format!("{} is out of range 1..=32", self.vcpus),
            ));
        }
        let mut names = vec![self.vmstate.file.as_str(), self.memory.file.as_str()];
        let mut ids: Vec<&str> = Vec::new();
        for (i, d) in self.drives.iter().enumerate() {
            let f = |s: &str| format!("drives[{i}].{s}");
            if !is_id(&d.drive_id) {
                return Err(bad(
                    f("drive_id"),
                    format!("{:?} is not an id (1-64 of A-Z a-z 0-9 _ -)", d.drive_id),
                ));
            }
            if ids.contains(&d.drive_id.as_str()) {
                return Err(bad(
                    f("drive_id"),
                    format!("{:?} appears twice", d.drive_id),
                ));
            }
            ids.push(&d.drive_id);
            if !d.path_on_host.starts_with('/')
                || d.path_on_host.len() > 4096
                || d.path_on_host.contains('\0')
            {
                return Err(bad(
                    f("path_on_host"),
                    format!("{:?} is not an absolute path", d.path_on_host),
                ));
            }
            check_entry(&d.image(), &format!("drives[{i}]")).map_err(|(f, r)| bad(f, r))?;
            names.push(&d.file);
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(
                "file".into(),
                format!("{:?} is used for two different roles", w[0]),
            ));
        }
        let mut iface_ids: Vec<&str> = Vec::new();
        for (i, n) in self.network_interfaces.iter().enumerate() {
            let f = |s: &str| format!("network_interfaces[{i}].{s}");
            if !is_id(&n.iface_id) || iface_ids.contains(&n.iface_id.as_str()) {
                return Err(bad(
                    f("iface_id"),
                    format!("{:?} is not a unique id", n.iface_id),
                ));
            }
            iface_ids.push(&n.iface_id);
            if n.host_dev_name.is_empty()
                || n.host_dev_name.len() > 15
                || !n
                    .host_dev_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            {
                return Err(bad(
                    f("host_dev_name"),
                    format!(
                        "{:?} is not an interface name (1-15 of A-Z a-z 0-9 _ - .)",
                        n.host_dev_name
                    ),
                ));
            }
            if !is_mac(&n.guest_mac) {
                return Err(bad(
                    f("guest_mac"),
                    format!("{:?} is not a MAC like 06:00:c0:a8:f1:02", n.guest_mac),
                ));
            }
            if let Some(ip) = &n.guest_ip {
                if ip.parse::<Ipv4Addr>().is_err() {
                    return Err(bad(f("guest_ip"), format!("{ip:?} is not an IPv4 address")));
                }
            }
        }
        if let Some(m) = &self.mmds {
            if m.version != "V1" && m.version != "V2" {
                return Err(bad(
                    "mmds.version".into(),
                    format!("{:?} is not V1 or V2", m.version),
                ));
            }
            if m.ipv4_address.parse::<Ipv4Addr>().is_err() {
                return Err(bad(
                    "mmds.ipv4_address".into(),
                    format!("{:?} is not an IPv4 address", m.ipv4_address),
                ));
            }
        }
        if self.created_at.is_empty() || self.created_at.len() > 64 {
            return Err(bad(
                "created_at".into(),
                "expected an RFC 3339 time like 2026-11-28T22:35:16Z".into(),
            ));
        }
        Ok(())
    }
}

fn check_entry(e: &FileEntry, field: &str) -> Result<(), (String, String)> {
    if !is_plain_file_name(&e.file) {
        return Err((
            format!("{field}.file"),
            format!(
                "{:?} must be a plain file name inside the snapshot directory (no '/', not '.' or '..', not the manifest)",
                e.file
            ),
        ));
    }
    if let Some(h) = &e.sha256 {
        if h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err((
                format!("{field}.sha256"),
                format!("{h:?} is not 64 lower-case hex digits"),
            ));
        }
    }
    Ok(())
}

/// A plain name inside one directory: no separators, no `.`/`..`, no NUL,
/// not the manifest itself, at most 255 bytes.
pub fn is_plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s != MANIFEST_FILE
        && !s.contains('/')
        && !s.contains('\0')
}

/// 1-64 of `A-Z a-z 0-9 _ -`.
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `aa:bb:cc:dd:ee:ff`, hex digits either case.
pub fn is_mac(s: &str) -> bool {
    parse_mac(s).is_some()
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `time` as RFC 3339 UTC with second precision.
pub fn rfc3339_utc(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            vmm: Vmm::Firecracker,
            vmm_version: "1.12.1".into(),
            vmstate: FileEntry {
                file: "vm.snapshot".into(),
                size: 12_345,
                sha256: None,
            },
            memory: FileEntry {
                file: "vm.mem".into(),
                size: 256 * MIB,
                sha256: Some("ab".repeat(32)),
            },
            mem_mib: 256,
            vcpus: 2,
            drives: vec![Drive {
                drive_id: "rootfs".into(),
                path_on_host: "/wasp/rootfs".into(),
                file: "rootfs.ext4".into(),
                size: 1 << 30,
                sha256: None,
                read_only: false,
                is_root_device: true,
            }],
            network_interfaces: vec![NetIface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: "06:00:c0:a8:f1:02".into(),
                guest_ip: Some("192.168.241.2".into()),
            }],
            mmds: Some(Mmds {
                version: "V2".into(),
                ipv4_address: "169.254.169.254".into(),
            }),
            created_at: "2026-11-28T22:35:16Z".into(),
        }
    }

    fn reject(m: &Manifest) -> ManifestError {
        Manifest::from_bytes(&m.to_bytes(), "m").unwrap_err()
    }

    fn field_of(e: ManifestError) -> String {
        match e {
            ManifestError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::from_bytes(&m.to_bytes(), "m").unwrap(), m);
        let v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(v["drives"][0]["file"], "rootfs.ext4");
        assert_eq!(v["vmm"], "firecracker");
    }

    #[test]
    fn unknown_version_is_named_before_fields() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["format_version"] = 7.into();
        v["some_future_field"] = 1.into();
        let e = Manifest::from_bytes(v.to_string().as_bytes(), "m").unwrap_err();
        assert!(
            matches!(e, ManifestError::UnknownFormatVersion { found: 7, .. }),
            "{e:?}"
        );
        v["format_version"] = "one".into();
        let e = Manifest::from_bytes(v.to_string().as_bytes(), "m").unwrap_err();
        assert_eq!(field_of(e), "format_version");
    }

    #[test]
    fn unknown_fields_and_garbage_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["drives"][0]["surprise"] = true.into();
        let e = Manifest::from_bytes(v.to_string().as_bytes(), "m").unwrap_err();
        assert!(matches!(e, ManifestError::Parse { .. }), "{e:?}");
        for junk in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"\xff\xfe",
            b"{\"format_version\":1}",
        ] {
            assert!(Manifest::from_bytes(junk, "m").is_err());
        }
        let big = vec![b' '; MAX_MANIFEST_SIZE as usize + 1];
        assert!(matches!(
            Manifest::from_bytes(&big, "m"),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_file_names_are_refused() {
        for name in [
            "../etc/shadow",
            "/etc/passwd",
            "a/b",
            "..",
            ".",
            "",
            MANIFEST_FILE,
        ] {
            let mut m = sample();
            m.drives[0].file = name.into();
            assert_eq!(field_of(reject(&m)), "drives[0].file", "{name:?}");
        }
        let mut m = sample();
        m.memory.file = "vm.snapshot".into();
        assert_eq!(field_of(reject(&m)), "file");
    }

    #[test]
    fn semantic_checks_name_the_field() {
        type Mutate = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("memory.size", Box::new(|m| m.memory.size = 255 * MIB)),
            ("mem_mib", Box::new(|m| m.mem_mib = 0)),
            ("vcpus", Box::new(|m| m.vcpus = 0)),
            (
                "vmm_version",
                Box::new(|m| m.vmm_version = "1.12 ; rm".into()),
            ),
            ("vmstate.size", Box::new(|m| m.vmstate.size = 0)),
            (
                "memory.sha256",
                Box::new(|m| m.memory.sha256 = Some("XYZ".into())),
            ),
            (
                "drives[0].drive_id",
                Box::new(|m| m.drives[0].drive_id = "a b".into()),
            ),
            (
                "drives[0].path_on_host",
                Box::new(|m| m.drives[0].path_on_host = "rel".into()),
            ),
            (
                "network_interfaces[0].host_dev_name",
                Box::new(|m| m.network_interfaces[0].host_dev_name = "x".repeat(16)),
            ),
            (
                "network_interfaces[0].guest_mac",
                Box::new(|m| m.network_interfaces[0].guest_mac = "06:00".into()),
            ),
            (
                "network_interfaces[0].guest_ip",
                Box::new(|m| m.network_interfaces[0].guest_ip = Some("300.1.1.1".into())),
            ),
            (
                "mmds.version",
                Box::new(|m| m.mmds.as_mut().unwrap().version = "V3".into()),
            ),
            (
                "mmds.ipv4_address",
                Box::new(|m| m.mmds.as_mut().unwrap().ipv4_address = "x".into()),
            ),
        ];
        for (field, mutate) in cases {
            let mut m = sample();
            mutate(&mut m);
            assert_eq!(field_of(reject(&m)), field);
        }
    }

    #[test]
    fn rfc3339() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_795_905_316)),
            "2026-11-28T22:35:16Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
