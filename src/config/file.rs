//! The TOML file: its schema (`Raw*`, every table `deny_unknown_fields`),
//! values parsed with their own `FromStr` so a bad one names its key, and
//! the parse itself with `serde_path_to_error`, whose errors are sorted
//! into unknown key, bad value and syntax, each with file and line.

use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::error::ConfigError;
use super::{Config, Source, MAX_FILE_BYTES};
use crate::pipeline::ready::Ready;
use crate::pipeline::slot::Layout;
use crate::pipeline::slot::{Cidr, ConnectUids};
use crate::sys::netns;
use crate::vmm::jailer::IdRange;

/// A value written as a string in the file and parsed with `FromStr`, so a
/// bad one is reported with its key and line.
#[derive(Debug)]
struct Parsed<T>(T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Parsed).map_err(serde::de::Error::custom)
    }
}

/// An absolute path.
#[derive(Debug)]
struct AbsPath(PathBuf);

impl FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            Ok(AbsPath(p))
        } else {
            Err(format!("{s:?} is not an absolute path; write it from /"))
        }
    }
}

/// A named network namespace (`/run/netns/NAME`).
#[derive(Debug)]
struct NetnsName(String);

impl FromStr for NetnsName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        netns::validate_name(s)
            .map(|()| NetnsName(s.to_owned()))
            .map_err(|e| format!("{s:?} is not a network namespace name: {e}"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    guest: RawGuest,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    spawn: RawSpawn,
    #[serde(default)]
    jailer: RawJailer,
    #[serde(default)]
    serve: RawServe,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    listen: Option<Vec<Parsed<super::Listen>>>,
    socket_group: Option<String>,
    token_file: Option<Parsed<AbsPath>>,
    metrics: Option<Parsed<std::net::SocketAddr>>,
    max_count: Option<NonZeroUsize>,
    body_limit: Option<NonZeroUsize>,
    warm: Option<usize>,
    low_water: Option<usize>,
    high_water: Option<usize>,
    standby: Option<usize>,
    allow_copy: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJailer {
    id_range: Option<Parsed<IdRange>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Option<String>,
    cidr: Option<Parsed<Cidr>>,
    bridge: Option<String>,
    layout: Option<Parsed<Layout>>,
    host_netns: Option<Parsed<NetnsName>>,
    allow_host: Option<Vec<Parsed<SocketAddrV4>>>,
    connect_uids: Option<ConnectUids>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    tap: Option<String>,
    tap_ip: Option<Parsed<Ipv4Addr>>,
    tap_prefix: Option<u8>,
    guest_ip: Option<Parsed<Ipv4Addr>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    runtime_dir: Option<Parsed<AbsPath>>,
    state_dir: Option<Parsed<AbsPath>>,
    firecracker: Option<Parsed<AbsPath>>,
    jailer: Option<Parsed<AbsPath>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpawn {
    ready: Option<Parsed<Ready>>,
    parallel: Option<NonZeroUsize>,
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turns a deserialization error into one naming the key.
fn classify(
    path: &Path,
    text: &str,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let at = e.path().to_string();
    let inner = e.inner();
    let line = inner.span().map(|s| line_of(text, s.start));
    let msg = inner.message().trim().to_owned();
    let path = path.to_owned();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            // The path already ends with the unknown field itself.
            let key = if at == "." || at.is_empty() {
                field.to_owned()
            } else if at == field || at.ends_with(&format!(".{field}")) {
                at.clone()
            } else {
                format!("{at}.{field}")
            };
            let expected = expected.trim_start_matches(',').trim();
            let expected = if expected.is_empty() {
                "no keys are allowed there".to_owned()
            } else {
                expected.to_owned()
            };
            return ConfigError::UnknownKey {
                path,
                line,
                key,
                expected,
            };
        }
    }
    if at == "." || at.is_empty() {
        ConfigError::Syntax {
            path,
            line,
            message: msg,
        }
    } else {
        ConfigError::BadValue {
            path,
            line,
            key: at,
            reason: msg,
        }
    }
}

impl Config {
    /// Reads one file over the built-in defaults (no environment).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::from_toml(path, &text)
    }

    /// Parses `text` (the contents of `path`) over the built-in defaults.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawFile =
            serde_path_to_error::deserialize(de).map_err(|e| classify(path, text, e))?;
        let mut c = Config {
            file: Some(path.to_owned()),
            ..Config::default()
        };
        let src = || Source::File(path.to_owned());
        let RawFile {
            pool,
            guest,
            paths,
            spawn,
            jailer,
            serve,
        } = raw;
        c.pool.set(pool.name, src);
        c.cidr.set(pool.cidr.map(|v| v.0), src);
        c.bridge.set(pool.bridge, src);
        c.layout.set(pool.layout.map(|v| v.0), src);
        c.host_netns.set(pool.host_netns.map(|v| Some(v.0 .0)), src);
        c.allow_host.set(
            pool.allow_host
                .map(|v| Some(v.into_iter().map(|a| a.0).collect())),
            src,
        );
        c.connect_uids.set(pool.connect_uids, src);
        c.tap.set(guest.tap, src);
        c.tap_ip.set(guest.tap_ip.map(|v| v.0), src);
        c.tap_prefix.set(guest.tap_prefix, src);
        c.guest_ip.set(guest.guest_ip.map(|v| v.0), src);
        c.runtime_dir.set(paths.runtime_dir.map(|v| v.0 .0), src);
        c.state_dir.set(paths.state_dir.map(|v| v.0 .0), src);
        c.firecracker
            .set(paths.firecracker.map(|v| Some(v.0 .0)), src);
        c.jailer.set(paths.jailer.map(|v| Some(v.0 .0)), src);
        c.ready.set(spawn.ready.map(|v| v.0), src);
        c.parallel.set(spawn.parallel.map(NonZeroUsize::get), src);
        c.jailer_ids.set(jailer.id_range.map(|v| v.0), src);
        c.serve_listen.set(
            serve.listen.map(|v| v.into_iter().map(|l| l.0).collect()),
            src,
        );
        c.serve_socket_group.set(serve.socket_group.map(Some), src);
        c.serve_token_file
            .set(serve.token_file.map(|v| Some(v.0 .0)), src);
        c.serve_metrics.set(serve.metrics.map(|v| Some(v.0)), src);
        c.serve_max_count
            .set(serve.max_count.map(NonZeroUsize::get), src);
        c.serve_body_limit
            .set(serve.body_limit.map(NonZeroUsize::get), src);
        c.serve_warm.set(serve.warm, src);
        c.serve_low_water.set(serve.low_water, src);
        c.serve_high_water.set(serve.high_water, src);
        c.serve_standby.set(serve.standby, src);
        c.serve_allow_copy.set(serve.allow_copy, src);
        c.slot_net()
            .validate()
            .map_err(|source| ConfigError::Invalid {
                path: path.to_owned(),
                source,
            })?;
        Ok(c)
    }
}
