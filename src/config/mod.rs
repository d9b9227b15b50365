//! The operator's configuration: one TOML file and the effective settings.
//!
//! Every default the commands use is resolved here, once. Precedence,
//! highest first: a command-line flag ([`Setting::flag`]), an environment
//! variable (only `WASP_FIRECRACKER` and `WASP_JAILER`), the config file, the
//! built-in default ([`SlotNet::default`], [`crate::paths`], [`DEFAULT_READY`],
//! [`DEFAULT_PARALLEL`]).
//!
//! The file is `--config FILE`, else `$WASP_CONFIG`, else
//! [`DEFAULT_CONFIG_PATH`] when it exists, else there is none. Unknown keys
//! and bad values are errors that name the file, the line and the key.
//! The keys, their defaults and an example file are in
//! `docs/operations.md` (section "The config file"); a test parses that
//! example.
//!
//! - this file: [`Config`], [`Setting`], [`Source`], the defaults, the
//!   precedence ([`Config::load_with`]) and the accessors the commands use;
//! - `error`: [`ConfigError`];
//! - `file`: the TOML schema and its parse ([`Config::from_toml`]);
//! - `show`: `wasp config show`'s [`Entry`] list.

mod error;
mod file;
mod show;

pub use error::ConfigError;
pub use show::Entry;

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use crate::paths::{DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR};
use crate::pipeline::ready::Ready;
use crate::pipeline::slot::{Cidr, ConnectUids, HostNet, Layout, SlotNet};
use crate::snapshot::manifest::Manifest;
use crate::vmm::firecracker::Chosen;
use crate::vmm::jailer::{IdRange, DEFAULT_ID_RANGE};

/// The config file read when no `--config` or `WASP_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wasp/wasp.toml";
/// Environment variable naming the config file (below `--config`).
pub const CONFIG_ENV: &str = "WASP_CONFIG";
/// Environment variable naming the firecracker binary.
pub const FIRECRACKER_ENV: &str = "WASP_FIRECRACKER";
/// Environment variable naming the jailer binary.
pub const JAILER_ENV: &str = "WASP_JAILER";
/// Clones in flight at once.
pub const DEFAULT_PARALLEL: usize = 32;
/// Readiness after resume.
pub const DEFAULT_READY: Ready = Ready::Tcp(22);
/// The host port clones may reach on the bridge address unless
/// `pool.allow_host` says otherwise.
pub const DEFAULT_ALLOW_HOST_PORT: u16 = 8080;
/// `wasp serve`'s default API socket.
pub const DEFAULT_SOCKET: &str = "/run/wasp/wasp.sock";
/// `wasp serve`'s default largest `count` of one request.
pub const DEFAULT_MAX_COUNT: usize = 1000;
/// `wasp serve`'s default largest request body, bytes.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// `wasp serve`'s default warm pool: free slots built at start.
pub const DEFAULT_SERVE_WARM: usize = 16;
/// `wasp serve`'s default refill mark.
pub const DEFAULT_SERVE_LOW_WATER: usize = 8;
/// `wasp serve`'s default high-water mark.
pub const DEFAULT_SERVE_HIGH_WATER: usize = 256;

/// Where `wasp serve` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket (mode 0660, `serve.socket_group`).
    Unix(PathBuf),
    /// TCP (only with a token file).
    Tcp(std::net::SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(format!("{s:?}: the socket path must be absolute"));
            }
            Ok(Listen::Unix(p))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("{s:?}: {a:?} is not ADDR:PORT ({e})"))
        } else {
            Err(format!(
                "{s:?} is not unix:PATH or tcp:ADDR:PORT (e.g. unix:{DEFAULT_SOCKET}, tcp:0.0.0.0:7070)"
            ))
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Largest config file wasp reads.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// wasp's built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl Source {
    /// `default`, `file`, `env` or `flag`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File(_) => "file",
            Source::Env(_) => "env",
            Source::Flag(_) => "flag",
        }
    }

    /// The file path, variable name or flag; `None` for the default.
    pub fn origin(&self) -> Option<String> {
        match self {
            Source::Default => None,
            Source::File(p) => Some(p.display().to_string()),
            Source::Env(v) | Source::Flag(v) => Some((*v).to_owned()),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin() {
            None => f.write_str(self.kind()),
            Some(o) => write!(f, "{} {o}", self.kind()),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The effective value.
    pub value: T,
    /// Its source.
    pub source: Source,
}

impl<T> Setting<T> {
    fn default(value: T) -> Self {
        Setting {
            value,
            source: Source::Default,
        }
    }

    fn set(&mut self, v: Option<T>, source: impl FnOnce() -> Source) {
        if let Some(v) = v {
            self.value = v;
            self.source = source();
        }
    }

    /// A flag the user gave (`Some`) wins over everything else.
    pub fn flag(&mut self, flag: &'static str, v: Option<T>) {
        self.set(v, || Source::Flag(flag));
    }
}

/// The effective configuration, each value with its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// `pool.name`: slot namespaces are `wasp-<name>-<n>`.
    pub pool: Setting<String>,
    /// `pool.cidr`: the clone address space.
    pub cidr: Setting<Cidr>,
    /// `pool.bridge`: the host bridge.
    pub bridge: Setting<String>,
    /// `pool.layout`: how slots reach the host netns (`routed` or
    /// `bridge`).
    pub layout: Setting<Layout>,
    /// `pool.host_netns`: the host netns for the bridge (`None`: current).
    pub host_netns: Setting<Option<String>>,
    /// `pool.allow_host` (`None`: the bridge address, port
    /// [`DEFAULT_ALLOW_HOST_PORT`]); see [`Config::allow_host`].
    pub allow_host: Setting<Option<Vec<SocketAddrV4>>>,
    /// `pool.connect_uids`: which local uids of the host netns may open
    /// connections to the clone CIDR (default: root only).
    pub connect_uids: Setting<ConnectUids>,
    /// `guest.tap`: the tap name the snapshot expects.
    pub tap: Setting<String>,
    /// `guest.tap_ip`: the tap address, the guest's gateway.
    pub tap_ip: Setting<Ipv4Addr>,
    /// `guest.tap_prefix`.
    pub tap_prefix: Setting<u8>,
    /// `guest.guest_ip`: the guest's own address behind the tap.
    pub guest_ip: Setting<Ipv4Addr>,
    /// `paths.runtime_dir`: per-clone files.
    pub runtime_dir: Setting<PathBuf>,
    /// `paths.state_dir`: clone records.
    pub state_dir: Setting<PathBuf>,
    /// `paths.firecracker` (`None`: look on `PATH`).
    pub firecracker: Setting<Option<PathBuf>>,
    /// `paths.jailer` (`None`: beside firecracker, then `PATH`).
    pub jailer: Setting<Option<PathBuf>>,
    /// `spawn.ready`.
    pub ready: Setting<Ready>,
    /// `spawn.parallel`: clones in flight at once.
    pub parallel: Setting<usize>,
    /// `jailer.id_range`: in jailer mode each clone's uid and gid, one
    /// number of this range per clone.
    pub jailer_ids: Setting<IdRange>,
    /// `serve.listen`: the daemon's API listeners.
    pub serve_listen: Setting<Vec<Listen>>,
    /// `serve.socket_group`: the unix sockets' group (`None`: root's).
    pub serve_socket_group: Setting<Option<String>>,
    /// `serve.token_file`: the TCP listeners' bearer token file.
    pub serve_token_file: Setting<Option<PathBuf>>,
    /// `serve.metrics`: a separate metrics listener.
    pub serve_metrics: Setting<Option<std::net::SocketAddr>>,
    /// `serve.max_count`: the largest `count` of one request.
    pub serve_max_count: Setting<usize>,
    /// `serve.body_limit`: the largest request body, bytes.
    pub serve_body_limit: Setting<usize>,
    /// `serve.warm`: free slots the daemon's pool holds warm.
    pub serve_warm: Setting<usize>,
    /// `serve.low_water`: the background refill starts below this.
    pub serve_low_water: Setting<usize>,
    /// `serve.high_water`: free slots above this are destroyed.
    pub serve_high_water: Setting<usize>,
    /// `serve.standby`: VMMs the daemon holds started ahead in their slots
    /// for its first snapshot (experimental; 0: none).
    pub serve_standby: Setting<usize>,
    /// `serve.allow_copy`: accept snapshots on another filesystem than the
    /// runtime dir whose clones would copy their disks (refused by default).
    pub serve_allow_copy: Setting<bool>,
}

impl Default for Config {
    /// The built-in defaults, with no file and no environment.
    fn default() -> Self {
        let net = SlotNet::default();
        Config {
            file: None,
            pool: Setting::default(net.pool),
            cidr: Setting::default(net.cidr),
            bridge: Setting::default(net.bridge),
            layout: Setting::default(net.layout),
            host_netns: Setting::default(None),
            allow_host: Setting::default(None),
            connect_uids: Setting::default(ConnectUids::default()),
            tap: Setting::default(net.tap),
            tap_ip: Setting::default(net.tap_ip),
            tap_prefix: Setting::default(net.tap_prefix),
            guest_ip: Setting::default(net.guest_ip),
            runtime_dir: Setting::default(DEFAULT_RUNTIME_DIR.into()),
            state_dir: Setting::default(DEFAULT_STATE_DIR.into()),
            firecracker: Setting::default(None),
            jailer: Setting::default(None),
            ready: Setting::default(DEFAULT_READY),
            parallel: Setting::default(DEFAULT_PARALLEL),
            jailer_ids: Setting::default(DEFAULT_ID_RANGE),
            serve_listen: Setting::default(vec![Listen::Unix(DEFAULT_SOCKET.into())]),
            serve_socket_group: Setting::default(None),
            serve_token_file: Setting::default(None),
            serve_metrics: Setting::default(None),
            serve_max_count: Setting::default(DEFAULT_MAX_COUNT),
            serve_body_limit: Setting::default(DEFAULT_BODY_LIMIT),
            serve_warm: Setting::default(DEFAULT_SERVE_WARM),
            serve_low_water: Setting::default(DEFAULT_SERVE_LOW_WATER),
            serve_high_water: Setting::default(DEFAULT_SERVE_HIGH_WATER),
            serve_standby: Setting::default(0),
            serve_allow_copy: Setting::default(false),
        }
    }
}

impl Config {
    /// Loads the configuration: the file (`explicit`, else `$WASP_CONFIG`,
    /// else [`DEFAULT_CONFIG_PATH`] when it exists), then the environment.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(explicit, Path::new(DEFAULT_CONFIG_PATH), |k| {
            std::env::var_os(k)
        })
    }

    /// [`Config::load`] with the default file location and the environment
    /// given (for tests).
    pub fn load_with(
        explicit: Option<&Path>,
        default_path: &Path,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let file = match (explicit, env(CONFIG_ENV)) {
            (Some(p), _) => Some(p.to_owned()),
            (None, Some(p)) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => default_path.exists().then(|| default_path.to_owned()),
        };
        let mut cfg = match &file {
            Some(p) => Self::from_file(p)?,
            None => Config::default(),
        };
        let env_path = |k: &'static str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        cfg.firecracker
            .set(env_path(FIRECRACKER_ENV).map(Some), || {
                Source::Env(FIRECRACKER_ENV)
            });
        cfg.jailer
            .set(env_path(JAILER_ENV).map(Some), || Source::Env(JAILER_ENV));
        Ok(cfg)
    }

    /// The host ports clones may reach: `pool.allow_host`, else the bridge
    /// address (the CIDR's first host) at [`DEFAULT_ALLOW_HOST_PORT`].
    pub fn allow_host(&self) -> Vec<SocketAddrV4> {
        self.allow_host.value.clone().unwrap_or_else(|| {
            vec![SocketAddrV4::new(
                self.cidr.value.gateway(),
                DEFAULT_ALLOW_HOST_PORT,
            )]
        })
    }

    /// The slot network these settings describe (not yet validated:
    /// [`SlotNet::validate`]).
    pub fn slot_net(&self) -> SlotNet {
        SlotNet {
            pool: self.pool.value.clone(),
            cidr: self.cidr.value,
            bridge: self.bridge.value.clone(),
            tap: self.tap.value.clone(),
            tap_ip: self.tap_ip.value,
            tap_prefix: self.tap_prefix.value,
            guest_ip: self.guest_ip.value,
            allow_host: self.allow_host(),
            // Egress is the host side's: `Kernel::setup` turns it on for an
            // uplink, or when the host netns holds the masquerade an
            // earlier `pool warm --egress-uplink` made.
            egress: false,
            layout: self.layout.value,
        }
    }

    /// The host side (no egress uplink: a masquerade `pool warm
    /// --egress-uplink` made is kept, and gives the slots egress, see
    /// [`crate::pipeline::slot::Kernel::setup`]).
    pub fn host_net(&self) -> HostNet {
        HostNet {
            netns: self.host_netns.value.clone(),
            egress_uplink: None,
            connect_uids: self.connect_uids.value.clone(),
            registry: Some(crate::pipeline::registry::Registry::dir_of(
                &self.state_dir.value,
            )),
            owner: None,
        }
    }

    /// Checks the snapshot's guest address (when its manifest records one)
    /// is `guest.guest_ip`: the slots DNAT clone traffic to that address.
    pub fn check_guest(&self, m: &Manifest) -> Result<(), ConfigError> {
        let recorded = m
            .network_interfaces
            .first()
            .and_then(|n| n.guest_ip.as_ref());
        match recorded {
            Some(ip) if ip.parse::<Ipv4Addr>().ok() != Some(self.guest_ip.value) => {
                Err(ConfigError::GuestMismatch {
                    snapshot: ip.clone(),
                    configured: self.guest_ip.value,
                    from: self.guest_ip.source.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    fn chosen(s: &Setting<Option<PathBuf>>, key: &str) -> Option<Chosen> {
        let path = s.value.clone()?;
        let origin = match &s.source {
            Source::Flag(f) => format!("{f} {}", path.display()),
            Source::Env(v) => format!("{v}={}", path.display()),
            Source::File(file) => format!("{key} = {} in {}", path.display(), file.display()),
            Source::Default => path.display().to_string(),
        };
        Some(Chosen { path, origin })
    }

    /// The chosen firecracker binary, for [`crate::vmm::firecracker::locate`].
    pub fn firecracker_choice(&self) -> Option<Chosen> {
        Self::chosen(&self.firecracker, "paths.firecracker")
    }

    /// The chosen jailer binary, for [`crate::vmm::firecracker::locate`].
    pub fn jailer_choice(&self) -> Option<Chosen> {
        Self::chosen(&self.jailer, "paths.jailer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("/etc/wasp/test.toml"), text)
    }

    #[test]
    fn the_serve_section_parses_and_refuses_bad_values() {
        let c = parse(
            "[serve]\nlisten = [\"unix:/run/x.sock\", \"tcp:127.0.0.1:7070\"]\nmax_count = 5\nwarm = 2\ntoken_file = \"/etc/wasp/t\"\nmetrics = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(
            c.serve_listen.value,
            vec![
                Listen::Unix("/run/x.sock".into()),
                Listen::Tcp("127.0.0.1:7070".parse().unwrap())
            ]
        );
        assert_eq!((c.serve_max_count.value, c.serve_warm.value), (5, 2));
        assert_eq!(c.serve_low_water.value, DEFAULT_SERVE_LOW_WATER);
        let e = err("[serve]\nlisten = [\"http://x\"]\n");
        assert!(e.contains("serve.listen") && e.contains("unix:PATH"), "{e}");
        let e = err("[serve]\nlisten = [\"unix:relative.sock\"]\n");
        assert!(e.contains("absolute"), "{e}");
        let e = err("[serve]\nmax_count = 0\n");
        assert!(e.contains("serve.max_count"), "{e}");
        let e = err("[serve]\nport = 1\n");
        assert!(e.contains("serve.port"), "{e}");
        let e = err("[serve]\ntoken_file = \"token\"\n");
        assert!(e.contains("absolute"), "{e}");
    }

    fn err(text: &str) -> String {
        crate::error::chain(&parse(text).unwrap_err())
    }

    const FULL: &str = r#"
[pool]
name = "batch"
cidr = "10.20.0.0/16"
bridge = "wasp1"
layout = "bridge"
host_netns = "wasp-host"
allow_host = ["10.20.0.1:9000", "10.20.0.1:9001"]
connect_uids = [990]

[guest]
tap = "tap1"
tap_ip = "172.16.0.1"
tap_prefix = 30
guest_ip = "172.16.0.2"

[paths]
runtime_dir = "/srv/wasp"
state_dir = "/run/wasp2"
firecracker = "/opt/fc/firecracker"
jailer = "/opt/fc/jailer"

[spawn]
ready = "running"
parallel = 64

[jailer]
id_range = "80000-80999"

[serve]
listen = ["unix:/run/wasp2/api.sock"]
socket_group = "wasp"
token_file = "/etc/wasp/token"
metrics = "127.0.0.1:9464"
max_count = 50
body_limit = 4096
warm = 4
low_water = 2
high_water = 8
standby = 1
allow_copy = true
"#;

    #[test]
    fn empty_file_is_the_defaults_and_defaults_match_slotnet() {
        let c = parse("").unwrap();
        assert_eq!(c.file.as_deref(), Some(Path::new("/etc/wasp/test.toml")));
        assert_eq!(
            Config {
                file: None,
                ..c.clone()
            },
            Config::default()
        );
        assert_eq!(c.slot_net(), SlotNet::default());
        assert_eq!(c.runtime_dir.value, Path::new(DEFAULT_RUNTIME_DIR));
        assert_eq!(c.ready.value, Ready::Tcp(22));
        assert!(c.entries().iter().all(|e| e.source == Source::Default));
    }

    #[test]
    fn every_key_is_read_with_the_file_as_source() {
        let c = parse(FULL).unwrap();
        let net = c.slot_net();
        assert_eq!(net.pool, "batch");
        assert_eq!(net.cidr.to_string(), "10.20.0.0/16");
        assert_eq!(net.bridge, "wasp1");
        assert_eq!(net.tap, "tap1");
        assert_eq!(net.tap_ip, Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(net.tap_prefix, 30);
        assert_eq!(net.guest_ip, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(net.allow_host.len(), 2);
        assert_eq!(c.host_net().netns.as_deref(), Some("wasp-host"));
        assert_eq!(
            c.host_net().connect_uids,
            crate::pipeline::slot::ConnectUids::only([990])
        );
        assert_eq!(c.runtime_dir.value, Path::new("/srv/wasp"));
        assert_eq!(c.state_dir.value, Path::new("/run/wasp2"));
        assert_eq!(c.ready.value, Ready::Running);
        assert_eq!(c.parallel.value, 64);
        assert_eq!(c.slot_net().layout, crate::pipeline::slot::Layout::Bridge);
        assert_eq!(c.jailer_ids.value.to_string(), "80000-80999");
        assert_eq!(c.serve_standby.value, 1);
        assert!(c.serve_allow_copy.value);
        let fc = c.firecracker_choice().unwrap();
        assert_eq!(fc.path, Path::new("/opt/fc/firecracker"));
        assert!(fc.origin.contains("paths.firecracker"), "{}", fc.origin);
        assert!(fc.origin.contains("/etc/wasp/test.toml"), "{}", fc.origin);
        let file = Source::File("/etc/wasp/test.toml".into());
        for e in c.entries() {
            assert_eq!(e.source, file, "{}", e.key);
        }
        // Every entry key appears in the example, so show and file agree.
        for e in c.entries() {
            let (section, key) = e.key.split_once('.').unwrap();
            assert!(FULL.contains(&format!("[{section}]")), "{section}");
            assert!(FULL.contains(&format!("\n{key} = ")), "{key}");
        }
    }

    #[test]
    fn allow_host_follows_the_cidr_unless_set() {
        let c = parse("[pool]\ncidr = \"10.9.0.0/24\"\n").unwrap();
        assert_eq!(c.allow_host(), ["10.9.0.1:8080".parse().unwrap()]);
        let c = parse("[pool]\nallow_host = []\n").unwrap();
        assert!(c.allow_host().is_empty());
        assert_eq!(c.allow_host.source.kind(), "file");
    }

    #[test]
    fn unknown_keys_name_the_key_the_file_and_the_line() {
        let e = err("[pool]\nname = \"a\"\ncidrr = \"10.0.0.0/16\"\n");
        assert!(e.contains("unknown key `pool.cidrr`"), "{e}");
        assert!(e.contains("/etc/wasp/test.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("`cidr`"), "{e}");
        let e = err("[pools]\nname = \"a\"\n");
        assert!(e.contains("unknown key `pools`"), "{e}");
        let e = err("parallel = 3\n");
        assert!(e.contains("unknown key `parallel`"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                "[pool]\ncidr = \"10.0.0.0\"\n",
                "`pool.cidr`",
                "10.0.0.0/16",
            ),
            (
                "[pool]\nallow_host = [\"10.0.0.1\"]\n",
                "`pool.allow_host",
                "",
            ),
            ("[pool]\nhost_netns = \"a/b\"\n", "`pool.host_netns`", ""),
            (
                "[guest]\nguest_ip = \"300.1.1.1\"\n",
                "`guest.guest_ip`",
                "",
            ),
            ("[guest]\ntap_prefix = 300\n", "`guest.tap_prefix`", ""),
            (
                "[paths]\nruntime_dir = \"var/lib\"\n",
                "`paths.runtime_dir`",
                "absolute",
            ),
            ("[spawn]\nready = \"ssh\"\n", "`spawn.ready`", "tcp:PORT"),
            ("[spawn]\nparallel = 0\n", "`spawn.parallel`", "nonzero"),
            ("[spawn]\nparallel = \"many\"\n", "`spawn.parallel`", ""),
            ("[pool]\nname = 3\n", "`pool.name`", ""),
            (
                "[jailer]\nid_range = \"0-9\"\n",
                "`jailer.id_range`",
                "root",
            ),
            (
                "[jailer]\nid_range = \"9-3\"\n",
                "`jailer.id_range`",
                "LAST",
            ),
        ];
        for (text, key, hint) in cases {
            let e = err(text);
            assert!(e.contains(key), "{text}: {e}");
            assert!(e.contains(hint), "{text}: {e}");
            assert!(e.contains("line 2"), "{text}: {e}");
            assert!(e.contains("/etc/wasp/test.toml"), "{text}: {e}");
        }
    }

    #[test]
    fn syntax_and_network_errors_name_the_file() {
        let e = err("[pool\n");
        assert!(e.contains("not valid TOML"), "{e}");
        assert!(e.contains("/etc/wasp/test.toml"), "{e}");
        let e = err("[pool]\nbridge = \"br0\"\n");
        assert!(e.contains("unusable slot network"), "{e}");
        assert!(e.contains("must start with"), "{e}");
        let e = err("[guest]\ntap_ip = \"10.0.0.1\"\nguest_ip = \"10.0.0.2\"\n");
        assert!(e.contains("overlaps the clone CIDR"), "{e}");
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wasp.toml");
        std::fs::write(
            &file,
            "[pool]\ncidr = \"10.5.0.0/16\"\nbridge = \"wasp5\"\n[paths]\nfirecracker = \"/f/fc\"\n",
        )
        .unwrap();
        let missing = dir.path().join("none.toml");
        let no_env = |_: &str| None;

        // No file anywhere: the defaults.
        let c = Config::load_with(None, &missing, no_env).unwrap();
        assert_eq!(c.file, None);
        assert_eq!(c, Config::default());

        // The default location, when it exists.
        let c = Config::load_with(None, &file, no_env).unwrap();
        assert_eq!(c.file.as_deref(), Some(file.as_path()));
        assert_eq!(c.cidr.source, Source::File(file.clone()));

        // WASP_CONFIG names the file; an explicit path beats it.
        let env_cfg = |k: &str| (k == CONFIG_ENV).then(|| file.clone().into_os_string());
        let c = Config::load_with(None, &missing, env_cfg).unwrap();
        assert_eq!(c.bridge.value, "wasp5");
        let e = Config::load_with(Some(&missing), &file, env_cfg).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("none.toml"), "{e}");

        // The environment beats the file; a flag beats both.
        let env_fc = |k: &str| (k == FIRECRACKER_ENV).then(|| "/e/fc".into());
        let mut c = Config::load_with(Some(&file), &missing, env_fc).unwrap();
        assert_eq!(c.firecracker.value.as_deref(), Some(Path::new("/e/fc")));
        assert_eq!(c.firecracker.source, Source::Env(FIRECRACKER_ENV));
        assert_eq!(
            c.firecracker_choice().unwrap().origin,
            "WASP_FIRECRACKER=/e/fc"
        );
        c.firecracker
            .flag("--firecracker", Some(Some("/flag/fc".into())));
        assert_eq!(c.firecracker.source, Source::Flag("--firecracker"));
        c.cidr.flag("--cidr", None);
        assert_eq!(c.cidr.source, Source::File(file.clone()));
        c.cidr.flag("--cidr", Some("10.7.0.0/16".parse().unwrap()));
        assert_eq!(c.cidr.source.to_string(), "flag --cidr");
        // The derived allow_host default follows the flag's CIDR.
        assert_eq!(c.allow_host(), ["10.7.0.1:8080".parse().unwrap()]);
        assert!(c.slot_net().validate().is_ok());
    }

    #[test]
    fn a_snapshot_with_another_guest_address_is_refused() {
        let mut m = crate::snapshot::manifest::tests::sample();
        assert!(Config::default().check_guest(&m).is_ok());
        let c = parse("[guest]\nguest_ip = \"192.168.241.3\"\n").unwrap();
        let e = c.check_guest(&m).unwrap_err().to_string();
        assert!(e.contains("192.168.241.2"), "{e}");
        assert!(e.contains("guest.guest_ip is 192.168.241.3"), "{e}");
        assert!(e.contains("/etc/wasp/test.toml"), "{e}");
        m.network_interfaces[0].guest_ip = None;
        assert!(c.check_guest(&m).is_ok());
    }

    #[test]
    fn entries_serialize_with_kind_and_origin() {
        let c = parse(FULL).unwrap();
        let v = serde_json::to_value(c.entries()).unwrap();
        assert_eq!(v[0]["key"], "pool.name");
        assert_eq!(v[0]["value"], "batch");
        assert_eq!(v[0]["source"]["kind"], "file");
        assert_eq!(v[0]["source"]["origin"], "/etc/wasp/test.toml");
        let d = serde_json::to_value(Config::default().entries()).unwrap();
        assert_eq!(d[3]["key"], "pool.host_netns");
        assert!(d[3]["value"].is_null());
        assert!(d[3]["source"]["origin"].is_null());
    }
}
