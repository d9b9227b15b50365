//! The TCP listener's bearer token: read once from a root-owned mode-0600
//! file, kept only as its SHA-256, compared in constant time.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;
/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token file was refused.
#[derive(Debug, Error)]
pub enum TokenError {
    /// Cannot open or read it.
    #[error("cannot read token file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Wrong owner, mode or kind.
    #[error("token file {path} is {what}; it must be a regular file owned by root with mode 0600 (chown root:root {path}; chmod 600 {path})")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Empty, too short, too long or not one line of text.
    #[error("token file {path}: {what}; write one line of at least {MIN_TOKEN_LEN} printable characters (e.g. `head -c 32 /dev/urandom | base64 > {path}`)")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the token).
        what: &'static str,
    },
}

/// A bearer token, held as its SHA-256.
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// A token from its text (tests; the daemon reads [`Token::from_file`]).
    pub fn new(text: &str) -> Self {
        Self {
            digest: Sha256::digest(text.as_bytes()).into(),
        }
    }

    /// Reads the token file: no symlink, a regular file, owned by root
    /// (or the daemon's own uid), mode 0600 or stricter, one line.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        use std::os::unix::fs::OpenOptionsExt;
        let read = |source| TokenError::Read {
            path: path.to_owned(),
            source,
        };
        let unsafe_ = |what: String| TokenError::Unsafe {
            path: path.to_owned(),
            what,
        };
        let bad = |what| TokenError::Bad {
            path: path.to_owned(),
            what,
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    unsafe_("a symlink".into())
                } else {
                    read(e)
                }
            })?;
        let m = f.metadata().map_err(read)?;
        if !m.file_type().is_file() {
            return Err(unsafe_("not a regular file".into()));
        }
        let me = nix::unistd::geteuid().as_raw();
        if m.uid() != 0 && m.uid() != me {
            return Err(unsafe_(format!("owned by uid {}", m.uid())));
        }
        if m.mode() & 0o077 != 0 {
            return Err(unsafe_(format!("mode {:04o}", m.mode() & 0o7777)));
        }
        let mut buf = Zeroizing::new(Vec::new());
        f.take(MAX_TOKEN_FILE + 1)
            .read_to_end(&mut buf)
            .map_err(read)?;
        if buf.len() as u64 > MAX_TOKEN_FILE {
            return Err(bad("it is larger than 4 KiB"));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| bad("it is not UTF-8"))?;
        let t = text.trim_end_matches(['\n', '\r']);
        if t.contains(['\n', '\r']) {
            return Err(bad("it holds more than one line"));
        }
        if t.len() < MIN_TOKEN_LEN {
            return Err(bad("the token is too short"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("the token holds spaces or non-printable characters"));
        }
        Ok(Self::new(t))
    }

    /// Whether `given` is the token (constant time over the digests).
    pub fn matches(&self, given: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        d.ct_eq(&self.digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_good_file_is_read_and_a_loose_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("token");
        std::fs::write(&p, "0123456789abcdef-secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Token::from_file(&p).unwrap();
        assert!(t.matches("0123456789abcdef-secret"));
        assert!(!t.matches("0123456789abcdef-secreT"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("secret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Token::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("abcdef"), "{e}");
        let l = tmp.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(Token::from_file(&l)
            .unwrap_err()
            .to_string()
            .contains("symlink"));
        let s = tmp.path().join("short");
        std::fs::write(&s, "abc").unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::from_file(&s)
            .unwrap_err()
            .to_string()
            .contains("too short"));
    }
}
