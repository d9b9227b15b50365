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
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::paths::{GUEST_IFACE_ID as IFACE_ID, GUEST_MAC, MMDS_IPV4};
use crate::pipeline::launch::{self, LaunchSpec, Vmm};
use crate::pipeline::slot::SlotNet;
use crate::snapshot::manifest::{self, Drive, FileEntry, Manifest, Mmds, NetIface};
use crate::snapshot::{self, MANIFEST_FILE};
use crate::sys;
use crate::vmm::api::{ApiError, Client};

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
    #[error("cannot start the VMM to boot the golden guest{output}")]
    Launch {
        /// Cause.
        #[source]
        source: launch::LaunchError,
        /// The VMM's last output ([`VmmOutput`]; its log files are
        /// removed with the work dir).
        output: VmmOutput,
    },
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
    #[error("the guest did not become ready ({what}) within {timeout:?}{output}")]
    NotReady {
        /// The readiness check.
        what: String,
        /// Limit.
        timeout: Duration,
        /// The console's and the VMM's last output.
        output: VmmOutput,
    },
    /// The VMM exited while booting.
    #[error("the VMM exited while the guest booted{0}")]
    VmmExited(VmmOutput),
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

/// The last lines the VMM wrote to its stdout (the serial console) and
/// stderr, carried in the error itself: the work dir holding the log files
/// is removed when creation fails. Displays as `; the VMM's last output:`
/// and the lines, or `; the VMM wrote nothing`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmmOutput {
    /// `(stream, last lines)`, for `stdout`, `stderr` and Firecracker's
    /// `log` when not empty.
    pub streams: Vec<(&'static str, Vec<String>)>,
}

/// Lines kept per stream.
const TAIL_LINES: usize = 10;
/// Bytes read from the end of each log.
const TAIL_BYTES: u64 = 8 * 1024;
/// Characters kept per line.
const TAIL_LINE_CHARS: usize = 240;

impl VmmOutput {
    /// Reads the tails of `vmm.stdout`, `vmm.stderr` and `vmm.log` in `dir` (the
    /// launch's log dir); a missing or unreadable log counts as empty.
    pub fn read(dir: &Path) -> Self {
        let mut streams = Vec::new();
        for name in ["stdout", "stderr", "log"] {
            let lines = tail_lines(&dir.join(format!("vmm.{name}")));
            if !lines.is_empty() {
                streams.push((name, lines));
            }
        }
        VmmOutput { streams }
    }
}

fn tail_lines(path: &Path) -> Vec<String> {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text
        .lines()
        // A cut first line is partial.
        .skip(usize::from(from > 0))
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.chars().take(TAIL_LINE_CHARS).collect())
        .collect();
    let drop = lines.len().saturating_sub(TAIL_LINES);
    lines.drain(..drop);
    lines
}

impl std::fmt::Display for VmmOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.streams.is_empty() {
            return f.write_str("; the VMM wrote nothing");
        }
        f.write_str("; the VMM's last output:")?;
        for (name, lines) in &self.streams {
            for l in lines {
                write!(f, "\n  {name}| {l}")?;
            }
        }
        Ok(())
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
            Some(1) => {
                return Err(GoldenError::VmmExited(VmmOutput::read(
                    log.parent().unwrap_or(Path::new(".")),
                )))
            }
            Some(_) => {
                let _ = sys::inotify::read_events(&ino);
            }
            None => {}
        }
    }
}

/// Waits up to `left` for the VMM to exit (its pidfd turns readable).
/// True when it exited.
fn vmm_exits_within(pidfd: RawFd, left: Duration) -> std::io::Result<bool> {
    let ms = left.as_millis().min(i32::MAX as u128) as i32;
    Ok(sys::poll::wait_readable(&[pidfd], ms)?.is_some())
}

/// Connects to the guest's port from inside the slot, retrying refused
/// connects until the deadline. Between attempts it waits on the VMM's
/// pidfd, so a VMM that dies ends the wait at once.
fn wait_tcp(
    netns: &str,
    guest: Ipv4Addr,
    port: u16,
    vm: &Vm,
    log_dir: &Path,
    deadline: Instant,
) -> Result<bool, GoldenError> {
    let fd = sys::netns::open_named(netns).map_err(io("open netns", Path::new(netns)))?;
    let pidfd = sys::poll::raw(&vm.launched.pidfd);
    // Some(ready?) until the deadline, None when the VMM exited.
    let waited = sys::netns::run_in(fd, || -> std::io::Result<Option<bool>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Some(false));
            }
            let addr = SocketAddrV4::new(guest, port).into();
            if TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))).is_ok() {
                return Ok(Some(true));
            }
            // The service is not up yet; a refused connect returns at once,
            // so pace retries with a short bounded wait on the pidfd.
            if vmm_exits_within(pidfd, Duration::from_millis(20).min(left))? {
                return Ok(None);
            }
        }
    })
    .map_err(io("enter netns", Path::new(netns)))?
    .map_err(io("watch the VMM's pidfd", log_dir))?;
    waited.ok_or_else(|| GoldenError::VmmExited(VmmOutput::read(log_dir)))
}

/// The user's explicit delay, ended early (as a failure) when the VMM
/// exits.
fn wait_delay(vm: &Vm, log_dir: &Path, d: Duration) -> Result<bool, GoldenError> {
    if vmm_exits_within(sys::poll::raw(&vm.launched.pidfd), d)
        .map_err(io("watch the VMM's pidfd", log_dir))?
    {
        return Err(GoldenError::VmmExited(VmmOutput::read(log_dir)));
    }
    Ok(true)
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
    // 0755 whatever the umask: `check` refuses a snapshot directory that
    // group or others can write.
    fs::create_dir(tmp)
        .and_then(|()| fs::set_permissions(tmp, fs::Permissions::from_mode(0o755)))
        .map_err(io("create", tmp))?;
    fs::create_dir(work).map_err(io("create", work))?;
    let rootfs = tmp.join("rootfs.ext4");
    fs::copy(&o.rootfs, &rootfs).map_err(io("copy the rootfs to", &rootfs))?;
    // Firecracker logs to stdout unless told otherwise, and stdout is the
    // serial console: its log lines would cut the guest's lines in two
    // (seen: `was<log line>p-testguest ready`). Its log goes to a file.
    let mut extra_args = vec![];
    if let Vmm::Firecracker(_) = o.vmm {
        let log = work.join("vmm.log");
        fs::File::create(&log).map_err(io("create", &log))?;
        extra_args = vec!["--log-path".into(), log.display().to_string()];
    }
    let spec = LaunchSpec {
        vmm: o.vmm.clone(),
        id: "wasp-golden".into(),
        api_sock: work.join("api.sock"),
        netns: Some(o.netns.clone()),
        drives: vec![(rootfs.clone(), "rootfs".into())],
        log_dir: work.to_owned(),
        extra_args,
        stdin_pipe: true,
        isolation: Default::default(),
        snapshot_files: vec![],
    };
    let console = work.join("vmm.stdout");
    let launch_err = |source| GoldenError::Launch {
        source,
        output: VmmOutput::read(work),
    };
    let vm = Vm {
        launched: launch::launch(&spec).map_err(launch_err)?,
    };
    launch::wait_for_socket(
        &spec.api_sock,
        &vm.launched.pidfd,
        vm.launched.pid,
        &work.join("vmm.stderr"),
        Duration::from_secs(10),
    )
    .map_err(launch_err)?;
    let mut c = api("connect", Client::connect(&spec.api_sock))?;
    api(
        "PUT /machine-config",
        c.put_machine_config(&crate::vmm::api::MachineConfig {
            vcpu_count: o.vcpus,
            mem_size_mib: o.mem_mib,
            smt: None,
            track_dirty_pages: None,
        }),
    )?;
    api(
        "PUT /boot-source",
        c.put_boot_source(&crate::vmm::api::BootSource {
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
        c.put_drive(&crate::vmm::api::Drive {
            drive_id: "rootfs".into(),
            path_on_host: drive_path.clone(),
            is_root_device: true,
            is_read_only: false,
        }),
    )?;
    api(
        "PUT /network-interfaces/eth0",
        c.put_network_interface(&crate::vmm::api::NetworkInterface {
            iface_id: IFACE_ID.into(),
            host_dev_name: o.tap.clone(),
            guest_mac: Some(GUEST_MAC.into()),
        }),
    )?;
    api(
        "PUT /mmds/config",
        c.put_mmds_config(&crate::vmm::api::MmdsConfig {
            version: Some("V2".into()),
            network_interfaces: vec![IFACE_ID.into()],
            ipv4_address: Some(MMDS_IPV4.into()),
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
            wait_tcp(&o.netns, o.guest.ip, *p, &vm, work, deadline)?,
            format!("tcp:{p}"),
        ),
        GoldenReady::Delay(d) => (
            wait_delay(&vm, work, *d)?,
            format!("delay:{}", d.as_millis()),
        ),
    };
    if !ok {
        return Err(GoldenError::NotReady {
            what,
            timeout: o.timeout,
            output: VmmOutput::read(work),
        });
    }
    let info = api("GET /", c.get_instance_info())?;
    api(
        "PATCH /vm Paused",
        c.patch_vm(crate::vmm::api::VmRunState::Paused),
    )?;
    let vmstate = tmp.join("vm.snapshot");
    let mem = tmp.join("vm.mem");
    api(
        "PUT /snapshot/create",
        c.snapshot_create(&crate::vmm::api::SnapshotCreate {
            snapshot_type: Some(crate::vmm::api::SnapshotType::Full),
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
            ipv4_address: MMDS_IPV4.into(),
        }),
        created_at: manifest::rfc3339_utc(std::time::SystemTime::now()),
    };
    snapshot::write_atomic(tmp, MANIFEST_FILE, &manifest.to_bytes(), 0o444)
        .map_err(io("write", &tmp.join(MANIFEST_FILE)))?;
    // The base files must stay immutable while any clone lives.
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
    fn vmm_output_keeps_the_last_lines_of_each_log() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            VmmOutput::read(d.path()).to_string(),
            "; the VMM wrote nothing"
        );
        let mut text: String = (0..20).map(|i| format!("line {i}\n")).collect();
        text.push_str(&"x".repeat(1000));
        std::fs::write(d.path().join("vmm.stdout"), &text).unwrap();
        std::fs::write(d.path().join("vmm.stderr"), "\n\nboom\n").unwrap();
        let out = VmmOutput::read(d.path());
        let stdout = &out.streams[0];
        assert_eq!(stdout.0, "stdout");
        assert_eq!(stdout.1.len(), TAIL_LINES);
        assert_eq!(stdout.1[0], "line 11");
        assert_eq!(stdout.1[9].len(), TAIL_LINE_CHARS);
        assert_eq!(out.streams[1], ("stderr", vec!["boom".to_owned()]));
        let shown = out.to_string();
        assert!(shown.starts_with("; the VMM's last output:\n  stdout| line 11\n"));
        assert!(shown.ends_with("\n  stderr| boom"), "{shown}");
        // A log larger than the tail window: its cut first line is dropped.
        let big: String = (0..2000).map(|i| format!("entry {i}\n")).collect();
        std::fs::write(d.path().join("vmm.stdout"), big).unwrap();
        let out = VmmOutput::read(d.path());
        assert_eq!(out.streams[0].1.last().unwrap(), "entry 1999");
        assert!(out.streams[0].1.iter().all(|l| l.starts_with("entry ")));
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
