//! A clone's environment: plain `--env` values, `--env-file` values and
//! `--secret-env` values, validated once and sent to the guest only inside
//! the MMDS request body.
//!
//! Secret values live in [`Secret`], which zeroizes its bytes on drop and
//! prints `***` in `Debug`. Nothing here ever logs a value.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use zeroize::Zeroizing;

/// Longest value accepted (MMDS's data store limit is 51 200 bytes in all).
pub const MAX_VALUE_LEN: usize = 32 * 1024;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 128;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value.
    pub fn new(v: String) -> Self {
        Self(Zeroizing::new(v))
    }

    /// The value, for the MMDS body only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One variable's value and whether it is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Non-secret (`--env`); still only sent through MMDS.
    Plain(String),
    /// Secret (`--env-file`, `--secret-env`).
    Secret(Secret),
}

impl Value {
    fn as_str(&self) -> &str {
        match self {
            Value::Plain(s) => s,
            Value::Secret(s) => s.expose(),
        }
    }
}

/// Errors building an environment.
#[derive(Debug, Error)]
pub enum EnvError {
    /// `--env` without `=`.
    #[error("--env {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// Bad key.
    #[error("environment key {key:?} is not a valid identifier: use [A-Za-z_][A-Za-z0-9_]*, at most {MAX_KEY_LEN} characters")]
    BadKey {
        /// The key (keys are not secret).
        key: String,
    },
    /// Value with a NUL byte.
    #[error("the value of {key} holds a NUL byte, which no environment can carry")]
    Nul {
        /// The key.
        key: String,
    },
    /// Value too long.
    #[error("the value of {key} is {len} bytes, over the {MAX_VALUE_LEN}-byte limit")]
    TooLong {
        /// The key.
        key: String,
        /// Its length.
        len: usize,
    },
    /// Key given twice.
    #[error("environment key {key} is given twice")]
    Duplicate {
        /// The key.
        key: String,
    },
    /// Reserved key.
    #[error("environment key AGENT_ID is set by wasp to each clone's id; do not pass it")]
    Reserved,
    /// `--secret-env NAME` not in wasp's environment.
    #[error("--secret-env {name}: {name} is not set in wasp's environment")]
    SecretMissing {
        /// The name.
        name: String,
    },
    /// Env file unreadable.
    #[error("cannot read env file {path}")]
    FileIo {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Env file with unsafe ownership or mode.
    #[error("env file {path} is {what}; it holds secrets, so it must be a regular file owned by root with mode 0600 (chown root:root, chmod 600)")]
    FileUnsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A bad key or value on a line of an env file (the value is never
    /// shown: it is a secret).
    #[error("env file {path} line {line}")]
    FileLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        #[source]
        source: Box<EnvError>,
    },
    /// Env file syntax.
    #[error("env file {path} line {line}: expected KEY=VALUE")]
    FileSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// True for `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_KEY_LEN`] bytes.
pub fn valid_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_KEY_LEN
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The environment shared by every clone of a batch (AGENT_ID is added per
/// clone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, Value>,
}

impl Env {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one variable after validating it.
    pub fn insert(&mut self, key: &str, value: Value) -> Result<(), EnvError> {
        if !valid_key(key) {
            return Err(EnvError::BadKey { key: key.into() });
        }
        if key == "AGENT_ID" {
            return Err(EnvError::Reserved);
        }
        let v = value.as_str();
        if v.contains('\0') {
            return Err(EnvError::Nul { key: key.into() });
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(EnvError::TooLong {
                key: key.into(),
                len: v.len(),
            });
        }
        if self.vars.insert(key.to_owned(), value).is_some() {
            return Err(EnvError::Duplicate { key: key.into() });
        }
        Ok(())
    }

    /// Adds `--env KEY=VAL` (non-secret).
    pub fn add_plain(&mut self, kv: &str) -> Result<(), EnvError> {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| EnvError::NotKeyValue(kv.into()))?;
        self.insert(k, Value::Plain(v.to_owned()))
    }

    /// Adds `--secret-env NAME`, reading NAME from `lookup` (wasp's own
    /// environment in production).
    pub fn add_secret_from(
        &mut self,
        name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), EnvError> {
        if !valid_key(name) {
            return Err(EnvError::BadKey { key: name.into() });
        }
        let v = lookup(name).ok_or_else(|| EnvError::SecretMissing { name: name.into() })?;
        self.insert(name, Value::Secret(Secret::new(v)))
    }

    /// Adds every `KEY=VALUE` line of an env file as secrets. The file must
    /// be a regular file owned by root with mode 0600 (no group/other bits).
    /// Blank lines and `#` comments are skipped; one pair of matching
    /// surrounding quotes is removed from a value.
    pub fn add_file(&mut self, path: &Path) -> Result<(), EnvError> {
        check_env_file(path)?;
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| EnvError::FileIo {
                    path: path.into(),
                    source,
                })?,
            );
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=').ok_or(EnvError::FileSyntax {
                path: path.into(),
                line: i + 1,
            })?;
            let v = unquote(v);
            self.insert(k.trim(), Value::Secret(Secret::new(v.to_owned())))
                .map_err(|e| EnvError::FileLine {
                    path: path.into(),
                    line: i + 1,
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The keys (never the values).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// The MMDS body for one clone: `{"env":{...,"AGENT_ID":id}}` (what
    /// `wasp-guest-env` reads at `/env`; see docs/mmds.md).
    /// The bytes hold secrets: they are zeroized when dropped.
    pub fn mmds_body(&self, agent_id: &str) -> Zeroizing<Vec<u8>> {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.vars {
            m.insert(k.clone(), serde_json::Value::String(v.as_str().to_owned()));
        }
        m.insert(
            "AGENT_ID".into(),
            serde_json::Value::String(agent_id.to_owned()),
        );
        let doc = serde_json::json!({ "env": m });
        let bytes = Zeroizing::new(serde_json::to_vec(&doc).expect("json"));
        // Wipe the intermediate String copies inside `doc` as it drops.
        if let serde_json::Value::Object(mut o) = doc {
            if let Some(serde_json::Value::Object(env)) = o.get_mut("env") {
                for (_, v) in env.iter_mut() {
                    if let serde_json::Value::String(s) = v {
                        zeroize::Zeroize::zeroize(s);
                    }
                }
            }
        }
        bytes
    }
}

fn unquote(v: &str) -> &str {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// Refuses an env file that is not a regular file owned by root with mode
/// 0600 or stricter.
pub fn check_env_file(path: &Path) -> Result<(), EnvError> {
    let md = std::fs::symlink_metadata(path).map_err(|source| EnvError::FileIo {
        path: path.into(),
        source,
    })?;
    let unsafe_because = |what: String| EnvError::FileUnsafe {
        path: path.into(),
        what,
    };
    if !md.file_type().is_file() {
        return Err(unsafe_because(
            "not a regular file (symlinks are refused)".into(),
        ));
    }
    if md.uid() != 0 {
        return Err(unsafe_because(format!("owned by uid {}", md.uid())));
    }
    if md.mode() & 0o077 != 0 {
        return Err(unsafe_because(format!("mode {:04o}", md.mode() & 0o7777)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_identifiers() {
        for k in ["A", "_x", "API_URL", "a1"] {
            assert!(valid_key(k), "{k}");
        }
        for k in ["", "1A", "A-B", "A B", "Ä", "A=B", &"K".repeat(129)] {
            assert!(!valid_key(k), "{k}");
        }
    }

    #[test]
    fn values_are_checked() {
        let mut e = Env::new();
        assert!(matches!(
            e.add_plain("NOEQUALS"),
            Err(EnvError::NotKeyValue(_))
        ));
        assert!(matches!(e.add_plain("A=x\0y"), Err(EnvError::Nul { .. })));
        let long = format!("A={}", "x".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(e.add_plain(&long), Err(EnvError::TooLong { .. })));
        assert!(matches!(e.add_plain("AGENT_ID=x"), Err(EnvError::Reserved)));
        e.add_plain("A=1=2").unwrap();
        assert!(matches!(
            e.add_plain("A=3"),
            Err(EnvError::Duplicate { .. })
        ));
        assert_eq!(e.keys().collect::<Vec<_>>(), ["A"]);
    }

    #[test]
    fn secrets_never_print() {
        let mut e = Env::new();
        e.add_secret_from("TOKEN", |_| Some("canary-s3cret".into()))
            .unwrap();
        let dbg = format!("{e:?}");
        assert!(!dbg.contains("canary"), "{dbg}");
        assert!(dbg.contains("***"));
        assert!(matches!(
            e.add_secret_from("MISSING", |_| None),
            Err(EnvError::SecretMissing { .. })
        ));
    }

    #[test]
    fn mmds_body_carries_agent_id_and_values() {
        let mut e = Env::new();
        e.add_plain("API_URL=http://10.0.0.1:8080").unwrap();
        e.add_secret_from("KEY", |_| Some("v\"q'$".into())).unwrap();
        let body = e.mmds_body("wasp-7");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["env"]["AGENT_ID"], "wasp-7");
        assert_eq!(v["env"]["API_URL"], "http://10.0.0.1:8080");
        assert_eq!(v["env"]["KEY"], "v\"q'$");
    }

    #[test]
    fn env_file_mode_and_owner_are_enforced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        std::fs::write(&p, "# secrets\nexport A='x y'\nB=\"z\"\n\nC=plain\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut e = Env::new();
        let err = e.add_file(&p).unwrap_err();
        if nix::unistd::geteuid().is_root() {
            assert!(err.to_string().contains("mode 0644"), "{err}");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            e.add_file(&p).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&e.mmds_body("x")).unwrap();
            assert_eq!(v["env"]["A"], "x y");
            assert_eq!(v["env"]["B"], "z");
            assert_eq!(v["env"]["C"], "plain");
            std::fs::write(&p, "NOT A PAIR\n").unwrap();
            let err = Env::new().add_file(&p).unwrap_err();
            assert!(matches!(err, EnvError::FileSyntax { line: 1, .. }), "{err}");
        } else {
            assert!(err.to_string().contains("owned by uid"), "{err}");
        }
    }
}
