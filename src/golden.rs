//! Golden snapshots: boot a guest inside a slot with the network-for-clones
//! addressing and an MMDS V2 config, wait until it is ready, pause, take a
//! Full snapshot and write the manifest. Used by `wasp snapshot create` and
//! by `wasp snapshot synth --vmm firecracker` (with wasp's built-in test
//! guest).
//!
//! Everything is written into a temporary directory beside `--out` and
//! renamed into place at the end, so a failure leaves nothing at `--out`.
//! The drive path recorded in the snapshot is the stable path every clone's
//! mount namespace provides ([`crate::paths::stable_drive_path`]), never a
//! path into one clone's files.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::launch::{self, LaunchSpec, Vmm};
use crate::slot::SlotNet;
use crate::snapshot::manifest::{self, Drive, FileEntry, Manifest, Mmds, NetIface};
use crate::snapshot::{self, MANIFEST_FILE};
use crate::sys;
use crate::vmm_api::{self, ApiError, Client};

/// The guest's addressing behind the slot's tap: the same in every clone
/// (the slot's NAT maps the clone IP to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestAddr {
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// The tap's address, the guest's gateway.
    pub gateway: Ipv4Addr,
    /// The tap network's prefix length.
    pub prefix: u8,
}

impl GuestAddr {
    /// The addressing of the slots of `net` (`guest.*` in the config).
    pub fn of(net: &SlotNet) -> Self {
        GuestAddr {
            ip: net.guest_ip,
            gateway: net.tap_ip,
            prefix: net.tap_prefix,
        }
    }

    /// The netmask, e.g. `255.255.255.248` for /29.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }
}

impl Default for GuestAddr {
    /// The built-in slot addressing ([`SlotNet::default`]).
    fn default() -> Self {
        Self::of(&SlotNet::default())
    }
}
/// The fixed guest MAC.
pub const GUEST_MAC: &str = "06:00:c0:a8:f1:02";
/// The interface id.
pub const IFACE_ID: &str = "eth0";
/// MMDS address.
pub const MMDS_IP: &str = "169.254.169.254";

/// When the booted guest counts as ready to snapshot.
#[derive(Debug, Clone)]
pub enum GoldenReady {
    /// A line on the serial console matches this regex.
    Serial(regex::Regex),
    /// A TCP connect to the guest's port (from inside the slot) succeeds.
    Tcp(u16),
    /// An explicit, user-chosen delay.
    Delay(Duration),
}

impl std::str::FromStr for GoldenReady {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(re) = s.strip_prefix("serial:") {
            return regex::Regex::new(re)
                .map(GoldenReady::Serial)
                .map_err(|e| format!("--ready serial:{re}: not a valid regex: {e}"));
        }
        if let Some(p) = s.strip_prefix("tcp:") {
            return match p.parse::<u16>() {
                Ok(p) if p > 0 => Ok(GoldenReady::Tcp(p)),
                _ => Err(format!("--ready tcp:{p}: not a TCP port (1-65535)")),
            };
        }
        if let Some(ms) = s.strip_prefix("delay:") {
            return ms
                .parse::<u64>()
                .map(|m| GoldenReady::Delay(Duration::from_millis(m)))
                .map_err(|_| format!("--ready delay:{ms}: not a number of milliseconds"));
        }
        Err(format!(
            "--ready {s:?}: use tcp:PORT, serial:REGEX or delay:MS"
        ))
    }
}

/// What to boot and where to put the snapshot.
#[derive(Debug, Clone)]
pub struct GoldenOptions {
    /// The VMM.
    pub vmm: Vmm,
    /// Kernel image (an ELF for x86-64).
    pub kernel: PathBuf,
    /// Root filesystem image; copied into the snapshot as its base.
    pub rootfs: PathBuf,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory.
    pub mem_mib: u64,
    /// Extra kernel arguments (the `ip=` and console arguments are added).
    pub boot_args: String,
    /// Readiness.
    pub ready: GoldenReady,
    /// How long readiness may take.
    pub timeout: Duration,
    /// Output directory (must not exist).
    pub out: PathBuf,
    /// The slot netns to boot in (with `tap` configured as the gateway).
    pub netns: String,
    /// The slot's tap.
    pub tap: String,
    /// The guest's addressing behind the tap (the slot's `guest.*`).
    pub guest: GuestAddr,
    /// Record sha256 sums.
    pub sha256: bool,
}

/// Why creation failed. Nothing is left at `--out`.
#[derive(Debug, Error)]
pub enum GoldenError {
    /// `--out` exists.
    #[error(
        "{0} already exists; snapshot create never overwrites (pick a new --out or remove it)"
    )]
    OutExists(PathBuf),
    /// A file problem.
    #[error("cannot {what} {path}")]
    Io {
        /// What.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Launching the VMM.
    #[error("cannot start the VMM to boot the golden guest")]
    Launch(#[source] launch::LaunchError),
    /// An API call failed.
    #[error("{step} failed")]
    Api {
        /// Which call.
        step: &'static str,
        /// Cause.
        #[source]
        source: ApiError,
    },
    /// The guest did not become ready.
    #[error(
        "the guest did not become ready ({what}) within {timeout:?}; see the console log {log}"
    )]
    NotReady {
        /// The readiness check.
        what: String,
        /// Limit.
        timeout: Duration,
        /// Where the console went.
        log: PathBuf,
    },
    /// The VMM exited while booting.
    #[error("the VMM exited while the guest booted; see {0}")]
    VmmExited(PathBuf),
    /// The written manifest does not validate.
    #[error("the new snapshot does not validate")]
    Check(#[source] snapshot::CheckError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> GoldenError + 'a {
    move |source| GoldenError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn api<T>(step: &'static str, r: Result<T, ApiError>) -> Result<T, GoldenError> {
    r.map_err(|source| GoldenError::Api { step, source })
}

/// The kernel command line: console, clone addressing, then the user's.
pub fn boot_args(guest: &GuestAddr, extra: &str) -> String {
    let mut s = format!(
        "console=ttyS0 reboot=k panic=1 ip={}::{}:{}::{IFACE_ID}:off",
        guest.ip,
        guest.gateway,
        guest.netmask()
    );
    if !extra.trim().is_empty() {
        s.push(' ');
        s.push_str(extra.trim());
    }
    s
}

struct Vm {
    launched: launch::Launched,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = sys::pidfd::pidfd_send_signal(&self.launched.pidfd, libc::SIGKILL);
        let _ = self.launched.child.wait();
    }
}

/// Waits until the console log matches `re`, watching the file with
/// inotify (no polling), the VMM's pidfd, and a deadline.
fn wait_serial(
    log: &Path,
    re: &regex::Regex,
    vm: &Vm,
    deadline: Instant,
) -> Result<bool, GoldenError> {
    let ino = sys::inotify::init().map_err(io("watch", log))?;
    sys::inotify::add_watch(&ino, log, libc::IN_MODIFY).map_err(io("watch", log))?;
    let mut f = fs::File::open(log).map_err(io("open", log))?;
    let mut text = String::new();
    loop {
        let mut chunk = String::new();
        let _ = f.read_to_string(&mut chunk);
        text.push_str(&chunk);
        if text.lines().any(|l| re.is_match(l)) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let fds = [sys::poll::raw(&ino), sys::poll::raw(&vm.launched.pidfd)];
        match sys::poll::wait_readable(&fds, left.as_millis().min(i32::MAX as u128) as i32)
            .map_err(io("watch", log))?
        {
            Some(1) => return Err(GoldenError::VmmExited(log.to_owned())),
            Some(_) => {
                let _ = sys::inotify::read_events(&ino);
            }
            None => {}
        }
    }
}

/// Connects to the guest's port from inside the slot, retrying refused
/// connects until the deadline.
fn wait_tcp(
    netns: &str,
    guest: Ipv4Addr,
    port: u16,
    deadline: Instant,
) -> Result<bool, GoldenError> {
    let fd = sys::netns::open_named(netns).map_err(io("open netns", Path::new(netns)))?;
    sys::netns::run_in(fd, || loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let addr = SocketAddrV4::new(guest, port).into();
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
            Ok(_) => return true,
            // The service is not up yet; a refused connect returns at once,
            // so pace retries with a short bounded wait.
            Err(_) => std::thread::park_timeout(Duration::from_millis(20).min(left)),
        }
    })
    .map_err(io("enter netns", Path::new(netns)))
}

/// Boots, waits, snapshots, and writes the manifest. Returns it.
pub fn create(o: &GoldenOptions) -> Result<Manifest, GoldenError> {
    if o.out.exists() {
        return Err(GoldenError::OutExists(o.out.clone()));
    }
    let parent = o
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io("create", parent))?;
    let name = o
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("snapshot");
    let tmp = parent.join(format!(".{name}.wasp-tmp-{}", std::process::id()));
    let work = parent.join(format!(".{name}.wasp-work-{}", std::process::id()));
    let result = create_in(o, &tmp, &work);
    let _ = fs::remove_dir_all(&work);
    match result {
        Ok(m) => {
            fs::rename(&tmp, &o.out).map_err(|e| {
                let _ = fs::remove_dir_all(&tmp);
                io("rename into place", &o.out)(e)
            })?;
            Ok(m)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn create_in(o: &GoldenOptions, tmp: &Path, work: &Path) -> Result<Manifest, GoldenError> {
    fs::create_dir(tmp).map_err(io("create", tmp))?;
    fs::create_dir(work).map_err(io("create", work))?;
    let rootfs = tmp.join("rootfs.ext4");
    fs::copy(&o.rootfs, &rootfs).map_err(io("copy the rootfs to", &rootfs))?;
    let spec = LaunchSpec {
        vmm: o.vmm.clone(),
        id: "wasp-golden".into(),
        api_sock: work.join("api.sock"),
        netns: Some(o.netns.clone()),
        drives: vec![(rootfs.clone(), "rootfs".into())],
        log_dir: work.to_owned(),
        extra_args: vec![],
        stdin_pipe: true,
        isolation: Default::default(),
        snapshot_files: vec![],
    };
    let console = work.join("vmm.stdout");
    let vm = Vm {
        launched: launch::launch(&spec).map_err(GoldenError::Launch)?,
    };
    launch::wait_for_socket(
        &spec.api_sock,
        &vm.launched.pidfd,
        vm.launched.pid,
        &work.join("vmm.stderr"),
        Duration::from_secs(10),
    )
    .map_err(GoldenError::Launch)?;
    let mut c = api("connect", Client::connect(&spec.api_sock))?;
    api(
        "PUT /machine-config",
        c.put_machine_config(&vmm_api::MachineConfig {
            vcpu_count: o.vcpus,
            mem_size_mib: o.mem_mib,
            smt: None,
            track_dirty_pages: None,
        }),
    )?;
    api(
        "PUT /boot-source",
        c.put_boot_source(&vmm_api::BootSource {
            kernel_image_path: o.kernel.display().to_string(),
            boot_args: Some(boot_args(&o.guest, &o.boot_args)),
            initrd_path: None,
        }),
    )?;
    let drive_path = crate::paths::stable_drive_path("rootfs")
        .display()
        .to_string();
    api(
        "PUT /drives/rootfs",
        c.put_drive(&vmm_api::Drive {
            drive_id: "rootfs".into(),
            path_on_host: drive_path.clone(),
            is_root_device: true,
            is_read_only: false,
        }),
    )?;
    api(
        "PUT /network-interfaces/eth0",
        c.put_network_interface(&vmm_api::NetworkInterface {
            iface_id: IFACE_ID.into(),
            host_dev_name: o.tap.clone(),
            guest_mac: Some(GUEST_MAC.into()),
        }),
    )?;
    api(
        "PUT /mmds/config",
        c.put_mmds_config(&vmm_api::MmdsConfig {
            version: Some("V2".into()),
            network_interfaces: vec![IFACE_ID.into()],
            ipv4_address: Some(MMDS_IP.into()),
        }),
    )?;
    api("InstanceStart", c.instance_start())?;

    let deadline = Instant::now() + o.timeout;
    let (ok, what) = match &o.ready {
        GoldenReady::Serial(re) => (
            wait_serial(&console, re, &vm, deadline)?,
            format!("serial:{re}"),
        ),
        GoldenReady::Tcp(p) => (
            wait_tcp(&o.netns, o.guest.ip, *p, deadline)?,
            format!("tcp:{p}"),
        ),
        GoldenReady::Delay(d) => {
            std::thread::park_timeout(*d);
            (true, format!("delay:{}", d.as_millis()))
        }
    };
    if !ok {
        return Err(GoldenError::NotReady {
            what,
            timeout: o.timeout,
            log: console,
        });
    }
    let info = api("GET /", c.get_instance_info())?;
    api("PATCH /vm Paused", c.patch_vm(vmm_api::VmRunState::Paused))?;
    let vmstate = tmp.join("vm.snapshot");
    let mem = tmp.join("vm.mem");
    api(
        "PUT /snapshot/create",
        c.snapshot_create(&vmm_api::SnapshotCreate {
            snapshot_type: Some(vmm_api::SnapshotType::Full),
            snapshot_path: vmstate.display().to_string(),
            mem_file_path: mem.display().to_string(),
        }),
    )?;
    drop(c);
    drop(vm);

    let entry = |p: &Path| -> Result<FileEntry, GoldenError> {
        let size = fs::metadata(p).map_err(io("stat", p))?.len();
        let sha256 = if o.sha256 {
            Some(snapshot::sha256_file(p).map_err(io("hash", p))?)
        } else {
            None
        };
        Ok(FileEntry {
            file: p.file_name().unwrap().to_string_lossy().into_owned(),
            size,
            sha256,
        })
    };
    let rootfs_entry = entry(&rootfs)?;
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        vmm: match o.vmm {
            Vmm::Firecracker(_) => manifest::Vmm::Firecracker,
            Vmm::Standin(_) => manifest::Vmm::Standin,
        },
        vmm_version: info.vmm_version.clone(),
        vmstate: entry(&vmstate)?,
        memory: entry(&mem)?,
        mem_mib: o.mem_mib,
        vcpus: o.vcpus,
        drives: vec![Drive {
            drive_id: "rootfs".into(),
            path_on_host: drive_path,
            file: rootfs_entry.file,
            size: rootfs_entry.size,
            sha256: rootfs_entry.sha256,
            read_only: false,
            is_root_device: true,
        }],
        network_interfaces: vec![NetIface {
            iface_id: IFACE_ID.into(),
            host_dev_name: o.tap.clone(),
            guest_mac: GUEST_MAC.into(),
            guest_ip: Some(o.guest.ip.to_string()),
        }],
        mmds: Some(Mmds {
            version: "V2".into(),
            ipv4_address: MMDS_IP.into(),
        }),
        created_at: manifest::rfc3339_utc(std::time::SystemTime::now()),
    };
    snapshot::write_atomic(tmp, MANIFEST_FILE, &manifest.to_bytes(), 0o444)
        .map_err(io("write", &tmp.join(MANIFEST_FILE)))?;
    // The base files must stay immutable while any clone lives.
    use std::os::unix::fs::PermissionsExt;
    for p in [&vmstate, &mem, &rootfs] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o444))
            .map_err(io("make read-only", p))?;
    }
    snapshot::check(tmp, o.sha256).map_err(GoldenError::Check)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_parsing() {
        assert!(matches!(
            "tcp:22".parse::<GoldenReady>(),
            Ok(GoldenReady::Tcp(22))
        ));
        assert!(matches!(
            "serial:ready$".parse::<GoldenReady>(),
            Ok(GoldenReady::Serial(_))
        ));
        assert!(
            matches!("delay:250".parse::<GoldenReady>(), Ok(GoldenReady::Delay(d)) if d.as_millis() == 250)
        );
        for bad in ["tcp:0", "serial:(", "delay:x", "ssh"] {
            assert!(bad.parse::<GoldenReady>().is_err(), "{bad}");
        }
    }

    #[test]
    fn boot_args_carry_the_clone_addressing() {
        let a = boot_args(&GuestAddr::default(), " quiet ");
        assert!(
            a.contains("ip=192.168.241.2::192.168.241.1:255.255.255.248::eth0:off"),
            "{a}"
        );
        assert!(a.ends_with(" quiet"));
        let other = GuestAddr {
            ip: "172.16.5.6".parse().unwrap(),
            gateway: "172.16.5.5".parse().unwrap(),
            prefix: 30,
        };
        assert!(boot_args(&other, "").contains("ip=172.16.5.6::172.16.5.5:255.255.255.252::"));
        assert_eq!(
            GuestAddr { prefix: 0, ..other }.netmask(),
            std::net::Ipv4Addr::UNSPECIFIED
        );
    }
}
