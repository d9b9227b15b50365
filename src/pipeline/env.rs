//! A clone's environment: plain `--env` values, `--env-file` values and
//! `--secret-env` values, validated once and sent to the guest only inside
//! the MMDS request body.
//!
//! Secret values live in [`Secret`], which zeroizes its bytes on drop and
//! prints `***` in `Debug`. Nothing here ever logs a value, and no error
//! ever quotes the text of an env file (not even a key: a token such as
//! `ghp_...` is a valid identifier); a bad line is named by its number.
//!
//! An env file is opened once ([`read_env_file`]): every directory on its
//! path is walked with `openat(O_NOFOLLOW)` and must be one only root can
//! change, the file itself is opened with `O_NOFOLLOW | O_NONBLOCK`, and
//! every check (regular file, owner root, mode 0600, size) is made on that
//! open fd, which is the one read.

use std::collections::BTreeMap;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use zeroize::Zeroizing;

/// Longest value accepted (MMDS's data store limit is 51 200 bytes in all).
pub const MAX_VALUE_LEN: usize = 32 * 1024;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 128;
/// Largest env file read. MMDS holds 51 200 bytes in all, so this leaves
/// room for comments and nothing more.
pub const MAX_FILE_LEN: u64 = 64 * 1024;

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
    /// Env file that is not a regular file owned by root with mode 0600.
    #[error("env file {path} is {what}; it holds secrets, so it must be a regular file owned by root with mode 0600 (chown root:root, chmod 600)")]
    FileUnsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A directory on an env file's path that someone other than root can
    /// change (and so swap the file in it).
    #[error("env file {path}: directory {dir} is {what}; whoever can change a directory on the path can swap the file, so each must be owned by root and not writable by group or others unless sticky (chown root, chmod go-w)")]
    DirUnsafe {
        /// The file.
        path: PathBuf,
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Env file over [`MAX_FILE_LEN`].
    #[error("env file {path} is {len} bytes, over the {MAX_FILE_LEN}-byte limit for env files (MMDS holds 51200 bytes in all)")]
    FileTooBig {
        /// The file.
        path: PathBuf,
        /// Its size (at least).
        len: u64,
    },
    /// A bad line in an env file. Only its number is shown: the line may
    /// hold a secret anywhere, even where a key belongs.
    #[error(
        "env file {path} line {line}: {problem} (the line is not shown: env files hold secrets)"
    )]
    FileLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: LineProblem,
    },
}

/// What is wrong with one line of an env file. It carries no text of the
/// line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LineProblem {
    /// No `=`.
    #[error("expected KEY=VALUE")]
    NotKeyValue,
    /// Bytes that are not UTF-8.
    #[error("it is not valid UTF-8")]
    NotUtf8,
    /// Bad key.
    #[error("its key is not a valid identifier: use [A-Za-z_][A-Za-z0-9_]*, at most {MAX_KEY_LEN} characters")]
    BadKey,
    /// AGENT_ID.
    #[error("its key is AGENT_ID, which wasp sets to each clone's id; do not pass it")]
    Reserved,
    /// Value with a NUL byte.
    #[error("its value holds a NUL byte, which no environment can carry")]
    Nul,
    /// Value over [`MAX_VALUE_LEN`]; the length.
    #[error("its value is {0} bytes, over the {MAX_VALUE_LEN}-byte limit")]
    TooLong(usize),
    /// Key given before.
    #[error("its key is given twice (by an earlier line, an earlier env file or --env)")]
    Duplicate,
}

/// A bad line of env-file text: its 1-based number and what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("line {line}: {problem}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub problem: LineProblem,
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
        self.try_insert(key, value).map_err(|p| {
            let key = key.to_owned();
            match p {
                LineProblem::BadKey => EnvError::BadKey { key },
                LineProblem::Reserved => EnvError::Reserved,
                LineProblem::Nul => EnvError::Nul { key },
                LineProblem::TooLong(len) => EnvError::TooLong { key, len },
                LineProblem::Duplicate => EnvError::Duplicate { key },
                LineProblem::NotKeyValue | LineProblem::NotUtf8 => EnvError::NotKeyValue(key),
            }
        })
    }

    /// The checks of [`Env::insert`], failing with what is wrong only.
    fn try_insert(&mut self, key: &str, value: Value) -> Result<(), LineProblem> {
        if !valid_key(key) {
            return Err(LineProblem::BadKey);
        }
        if key == "AGENT_ID" {
            return Err(LineProblem::Reserved);
        }
        let v = value.as_str();
        if v.contains('\0') {
            return Err(LineProblem::Nul);
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(LineProblem::TooLong(v.len()));
        }
        if self.vars.contains_key(key) {
            return Err(LineProblem::Duplicate);
        }
        self.vars.insert(key.to_owned(), value);
        Ok(())
    }

    /// Every variable with its value, by key (for a client that sends them
    /// on to a daemon; secret values stay [`Secret`]s).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v))
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

    /// Adds every `KEY=VALUE` line of an env file as secrets. The file is
    /// read by [`read_env_file`] (regular, root, 0600, on a path only root
    /// can change, at most [`MAX_FILE_LEN`] bytes); its text by
    /// [`Env::add_text`]. A bad line is named by its number only.
    pub fn add_file(&mut self, path: &Path) -> Result<(), EnvError> {
        let text = read_env_file(path)?;
        self.add_text(&text).map_err(|e| EnvError::FileLine {
            path: path.into(),
            line: e.line,
            problem: e.problem,
        })
    }

    /// Adds every `KEY=VALUE` line of env-file text as secrets. Blank lines
    /// and `#` comments are skipped, as is an `export ` prefix; the key is
    /// trimmed; one pair of matching surrounding quotes is removed from a
    /// value. The text must be UTF-8. The error holds no text of the line.
    pub fn add_text(&mut self, text: &[u8]) -> Result<(), LineError> {
        let text = std::str::from_utf8(text).map_err(|e| LineError {
            line: 1 + text[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            problem: LineProblem::NotUtf8,
        })?;
        for (i, line) in text.lines().enumerate() {
            let fail = |problem| LineError {
                line: i + 1,
                problem,
            };
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=').ok_or(fail(LineProblem::NotKeyValue))?;
            let v = unquote(v);
            self.try_insert(k.trim(), Value::Secret(Secret::new(v.to_owned())))
                .map_err(fail)?;
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

/// Reads an env file, opened once: the directories of its path one by one
/// with `openat(O_NOFOLLOW)` from `/` (or the working directory's real
/// path), each owned by root and not writable by group or others unless
/// sticky (a symlink among them is followed only when root owns it, so
/// only root could have placed it); then the file itself with
/// `O_NOFOLLOW | O_NONBLOCK` (a symlink is refused, a FIFO cannot block).
/// On that fd: a regular file, owned by root, no group or other bits, at
/// most [`MAX_FILE_LEN`] bytes. The bytes are zeroized when dropped.
pub fn read_env_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, EnvError> {
    let io = |source| EnvError::FileIo {
        path: path.into(),
        source,
    };
    let unsafe_because = |what: String| EnvError::FileUnsafe {
        path: path.into(),
        what,
    };
    let file = File::from(open_env_file(path)?);
    let md = file.metadata().map_err(io)?;
    let ft = md.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "something else"
        };
        return Err(unsafe_because(format!("not a regular file ({kind})")));
    }
    if md.uid() != 0 {
        return Err(unsafe_because(format!("owned by uid {}", md.uid())));
    }
    if md.mode() & 0o077 != 0 {
        return Err(unsafe_because(format!("mode {:04o}", md.mode() & 0o7777)));
    }
    let too_big = |len| EnvError::FileTooBig {
        path: path.into(),
        len,
    };
    if md.len() > MAX_FILE_LEN {
        return Err(too_big(md.len()));
    }
    // Room for one byte more than the cap, so the read never reallocates
    // (which would leave a copy of the secrets behind) and a file that grew
    // since the fstat is caught.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN as usize + 1));
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > MAX_FILE_LEN {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// Opens `path` for [`read_env_file`]: walks its directories
/// ([`crate::trust::open_dir`]: each owned by root and not writable by
/// group or others unless sticky; root's symlinks among them followed) and
/// opens the last name with `O_RDONLY | O_NOFOLLOW | O_NONBLOCK`.
fn open_env_file(path: &Path) -> Result<OwnedFd, EnvError> {
    use crate::sys::fs::open_at_nofollow;
    use crate::trust::{self, Rules, WalkError};
    let io = |source| EnvError::FileIo {
        path: path.into(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::from_raw_os_error(libc::EISDIR)))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let rules = Rules {
        follow_root_symlinks: true,
        ..Rules::default()
    };
    let dir = trust::open_dir(parent, rules).map_err(|e| match e {
        WalkError::Untrusted(u) => EnvError::DirUnsafe {
            path: path.into(),
            dir: u.dir.clone(),
            what: match u.problem {
                trust::Problem::Writable { .. } => format!("{} (mode {:04o})", u.reason(), u.mode),
                _ => u.reason(),
            },
        },
        WalkError::Io { source, .. } => io(source),
    })?;
    open_at_nofollow(Some(dir.as_fd()), name, libc::O_RDONLY | libc::O_NONBLOCK).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ELOOP) => EnvError::FileUnsafe {
                path: path.into(),
                what: "a symlink (symlinks are refused: pass the file itself)".into(),
            },
            _ => io(e),
        },
    )
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
            assert!(
                matches!(
                    err,
                    EnvError::FileLine {
                        line: 1,
                        problem: LineProblem::NotKeyValue,
                        ..
                    }
                ),
                "{err}"
            );
        } else {
            assert!(err.to_string().contains("owned by uid"), "{err}");
        }
    }

    #[test]
    fn env_text_is_parsed_and_bad_lines_are_numbered_without_text() {
        let mut e = Env::new();
        e.add_text(b"# c\n\n  export A='x y'\r\nB=\"z\"\n C = v=w \nD=\nE='\n")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.mmds_body("x")).unwrap();
        assert_eq!(v["env"]["A"], "x y");
        assert_eq!(v["env"]["B"], "z");
        assert_eq!(v["env"]["C"], " v=w ");
        assert_eq!(v["env"]["D"], "");
        assert_eq!(v["env"]["E"], "'");
        let err = |t: &[u8]| Env::new().add_text(t).unwrap_err();
        let at = |line, problem| LineError { line, problem };
        assert_eq!(
            err(b"A=1\nDB_PASSWORD: hunter2=x"),
            at(2, LineProblem::BadKey)
        );
        assert_eq!(err(b"\n\nnope\n"), at(3, LineProblem::NotKeyValue));
        assert_eq!(err(b"A=1\nA=2\n"), at(2, LineProblem::Duplicate));
        assert_eq!(err(b"AGENT_ID=1\n"), at(1, LineProblem::Reserved));
        assert_eq!(err(b"A=\0\n"), at(1, LineProblem::Nul));
        let long = format!("A=1\n\nB={}", "x".repeat(MAX_VALUE_LEN + 1));
        assert_eq!(
            err(long.as_bytes()),
            at(3, LineProblem::TooLong(MAX_VALUE_LEN + 1))
        );
        assert_eq!(err(b"A=1\nB=2\nC=\xff\n"), at(3, LineProblem::NotUtf8));
        // The error types hold no text: Display and Debug show the number.
        let e = err(b"ghp_s3cret=1\nghp_s3cret=2\n");
        assert!(!format!("{e} {e:?}").contains("s3cret"));
        // A key already given by --env is a duplicate too.
        let mut e = Env::new();
        e.add_plain("A=1").unwrap();
        assert_eq!(
            e.add_text(b"A=2\n").unwrap_err(),
            at(1, LineProblem::Duplicate)
        );
    }
}
