//! Finding the Firecracker and jailer binaries and checking their versions.
//!
//! Lookup order: an explicit `--firecracker PATH`, then `WASP_FIRECRACKER`,
//! then `paths.firecracker` in the config file (see [`crate::config`]), then
//! `PATH`. The jailer is looked up as `WASP_JAILER`, then `paths.jailer`,
//! then next to the firecracker binary, then on `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Oldest Firecracker wasp supports: `network_overrides` on load came in 1.12.
pub const MIN_VERSION: Version = Version(1, 12, 0);

/// The version tests and CI pin.
pub const PINNED_VERSION: Version = Version(1, 12, 1);

/// A `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl std::str::FromStr for Version {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let s = s.trim().trim_start_matches('v');
        let core = s.split(['-', '+']).next().ok_or(())?;
        let mut it = core.split('.').map(|p| p.parse::<u32>().map_err(|_| ()));
        let v = Version(
            it.next().ok_or(())??,
            it.next().ok_or(())??,
            it.next().ok_or(())??,
        );
        if it.next().is_some() {
            return Err(());
        }
        Ok(v)
    }
}

/// Parses the first line of `firecracker --version` / `jailer --version`,
/// e.g. `Firecracker v1.12.1` or `Jailer v1.12.1`.
pub fn parse_version_output(out: &str) -> Option<Version> {
    let line = out.lines().next()?;
    let mut words = line.split_whitespace();
    let name = words.next()?;
    if !name.eq_ignore_ascii_case("firecracker") && !name.eq_ignore_ascii_case("jailer") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Errors finding or running a VMM binary.
#[derive(Debug, Error)]
pub enum FirecrackerError {
    /// No binary was found anywhere we looked.
    #[error("{what} not found (looked at {looked}); install Firecracker >= {MIN_VERSION} from its official releases, or pass --firecracker PATH / set WASP_FIRECRACKER / set paths.firecracker in the config file")]
    NotFound {
        /// firecracker or jailer.
        what: &'static str,
        /// Where we looked.
        looked: String,
    },
    /// The binary did not run.
    #[error("cannot run {path} --version")]
    Run {
        /// The binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The version line was not understood.
    #[error("{path} --version printed {output:?}, which is not a Firecracker version line")]
    BadVersion {
        /// The binary.
        path: PathBuf,
        /// What it printed.
        output: String,
    },
    /// Too old.
    #[error("{path} is version {found}, but wasp needs >= {MIN_VERSION}; install a newer official release")]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// Its version.
        found: Version,
    },
    /// /dev/kvm cannot be opened.
    #[error("cannot open {KVM_DEV} read-write: Firecracker needs KVM. Load kvm_intel or kvm_amd (modprobe), run as root or in the kvm group; `wasp doctor` checks it")]
    NoKvm(#[source] std::io::Error),
}

/// The KVM device Firecracker opens.
pub const KVM_DEV: &str = "/dev/kvm";

/// Checks that /dev/kvm opens read-write, so a batch fails once, up front,
/// instead of once per clone.
pub fn check_kvm() -> Result<(), FirecrackerError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEV)
        .map(drop)
        .map_err(FirecrackerError::NoKvm)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A binary path someone chose, and who chose it (for error messages), e.g.
/// `--firecracker /x`, `WASP_FIRECRACKER=/x` or `paths.firecracker in FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The path.
    pub path: PathBuf,
    /// Where it came from.
    pub origin: String,
}

/// Finds `what` (`firecracker` or `jailer`): the chosen path, which must be
/// executable; else `beside/<what>` when that is executable; else `PATH`.
pub fn locate(
    what: &'static str,
    chosen: Option<&Chosen>,
    beside: Option<&Path>,
) -> Result<PathBuf, FirecrackerError> {
    if let Some(c) = chosen {
        return if is_executable(&c.path) {
            Ok(c.path.clone())
        } else {
            Err(FirecrackerError::NotFound {
                what,
                looked: c.origin.clone(),
            })
        };
    }
    if let Some(p) = beside
        .map(|dir| dir.join(what))
        .filter(|p| is_executable(p))
    {
        return Ok(p);
    }
    on_path(what).ok_or(FirecrackerError::NotFound {
        what,
        looked: if what == "jailer" {
            "WASP_JAILER, paths.jailer, beside firecracker, PATH".into()
        } else {
            "--firecracker, WASP_FIRECRACKER, paths.firecracker, PATH".into()
        },
    })
}

/// Finds the jailer binary, preferring the one beside `firecracker`.
pub fn locate_jailer(firecracker: Option<&Path>) -> Result<PathBuf, FirecrackerError> {
    if let Some(p) = std::env::var_os("WASP_JAILER") {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    locate("jailer", None, firecracker.and_then(Path::parent))
}

/// Runs `BIN --version` and checks it is at least [`MIN_VERSION`].
pub fn version_of(path: &Path) -> Result<Version, FirecrackerError> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|source| FirecrackerError::Run {
            path: path.to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = parse_version_output(&text).ok_or_else(|| FirecrackerError::BadVersion {
        path: path.to_owned(),
        output: text.lines().next().unwrap_or("").to_owned(),
    })?;
    if v < MIN_VERSION {
        return Err(FirecrackerError::TooOld {
            path: path.to_owned(),
            found: v,
        });
    }
    Ok(v)
}

/// [`locate`] then [`version_of`]: the binary a command runs, found and
/// checked to be at least [`MIN_VERSION`], with one error if it is not.
pub fn locate_checked(
    what: &'static str,
    chosen: Option<&Chosen>,
    beside: Option<&Path>,
) -> Result<PathBuf, FirecrackerError> {
    let p = locate(what, chosen, beside)?;
    version_of(&p)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_lines() {
        assert_eq!(
            parse_version_output(
                "Firecracker v1.12.1\n\nSupported snapshot data format versions: v5.0.0\n"
            ),
            Some(Version(1, 12, 1))
        );
        assert_eq!(
            parse_version_output("Jailer v1.12.1"),
            Some(Version(1, 12, 1))
        );
        assert_eq!(
            parse_version_output("Firecracker v1.13.0-dev"),
            Some(Version(1, 13, 0))
        );
        assert_eq!(parse_version_output("wasp-standin v0.1.0"), None);
        assert_eq!(parse_version_output("Firecracker 1.x"), None);
        assert_eq!(parse_version_output(""), None);
        assert!(Version(1, 11, 9) < MIN_VERSION);
        assert!(PINNED_VERSION >= MIN_VERSION);
    }

    #[test]
    fn explicit_missing_path_is_a_clear_error() {
        let chosen = Chosen {
            path: "/nonexistent/fc".into(),
            origin: "--firecracker /nonexistent/fc".into(),
        };
        let e = locate("firecracker", Some(&chosen), None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/fc"), "{msg}");
        assert!(msg.contains("official releases"), "{msg}");
    }
}
