//! Pipeline stage "ready": how wasp decides a resumed clone is usable.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a readiness check that failed waits before it tries again
/// (the default of every spawn request).
pub const READY_RETRY: Duration = Duration::from_millis(5);

/// Readiness check after resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    /// A TCP connect to `clone_ip:PORT` from the host netns succeeds, as a
    /// user of the clone would connect.
    Tcp(u16),
    /// `GET /` reports the VM state `Running`.
    Running,
    /// Resumed is enough.
    None,
}

impl std::fmt::Display for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ready::Tcp(p) => write!(f, "tcp:{p}"),
            Ready::Running => f.write_str("running"),
            Ready::None => f.write_str("none"),
        }
    }
}

impl FromStr for Ready {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "running" => Ok(Ready::Running),
            "none" => Ok(Ready::None),
            _ => {
                let port = s
                    .strip_prefix("tcp:")
                    .ok_or_else(|| format!("readiness {s:?} is not tcp:PORT, running or none"))?;
                match port.parse::<u16>() {
                    Ok(p) if p != 0 => Ok(Ready::Tcp(p)),
                    _ => Err(format!(
                        "readiness {s:?}: {port:?} is not a TCP port (1-65535)"
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in ["tcp:22", "running", "none"] {
            assert_eq!(s.parse::<Ready>().unwrap().to_string(), s);
        }
        assert!("tcp:0".parse::<Ready>().is_err());
        assert!("tcp:x".parse::<Ready>().is_err());
        assert!("ssh".parse::<Ready>().unwrap_err().contains("tcp:PORT"));
    }
}
