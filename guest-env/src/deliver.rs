//! Handing the environment to the agent: an `export K='V'` file written
//! atomically with mode 0600, or `exec` of the agent with the variables set.

use std::ffi::OsString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::env::GuestEnv;

/// Where the env file goes by default.
pub const DEFAULT_ENV_FILE: &str = "/run/wasp/env";

/// Errors delivering the environment.
#[derive(Debug, Error)]
pub enum DeliverError {
    /// The file path has no parent or file name.
    #[error("env file path {0} must name a file in a directory")]
    BadPath(PathBuf),
    /// The parent directory could not be made.
    #[error("cannot create directory {dir} (mode 0700) for the env file")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing, syncing or renaming failed; nothing was left behind.
    #[error("cannot write env file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `exec` failed.
    #[error("cannot exec {program:?}")]
    Exec {
        /// The program (argv[0]; arguments are not shown).
        program: OsString,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// `v` in single quotes for POSIX sh: every byte literal, `'` written as
/// `'\''`. Newlines, `$`, backticks, `"` and `\` need nothing else.
pub fn shell_quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' {
            s.push_str("'\\''");
        } else {
            s.push(c);
        }
    }
    s.push('\'');
    s
}

/// The env file's text: a comment, then one `export K='V'` line per key.
pub fn render(env: &GuestEnv) -> String {
    let mut s = String::from("# Written by wasp-guest-env from MMDS. Source it: . FILE\n");
    for (k, v) in env.iter() {
        s.push_str("export ");
        s.push_str(k);
        s.push('=');
        s.push_str(&shell_quote(v));
        s.push('\n');
    }
    s
}

/// Writes [`render`]`(env)` to `path` atomically: a mode-0600 temporary file
/// in the same directory, fsync, rename over `path`, fsync the directory.
/// The directory is created with mode 0700 if missing. On failure the
/// temporary file is removed and `path` is left as it was.
pub fn write_env_file(path: &Path, env: &GuestEnv) -> Result<(), DeliverError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(DeliverError::BadPath(path.into()));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DeliverError::Dir {
            dir: dir.into(),
            source,
        })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let werr = |source| DeliverError::Write {
        path: path.into(),
        source,
    };
    // A temporary file of a dead process with our pid: ours to replace.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(werr(e)),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    let written = (|| {
        // Exactly 0600 whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(render(env).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Ok(())
}

/// Replaces this process with `program args…`, its environment being this
/// process's plus `env` (MMDS wins on a clash). Returns only on failure.
pub fn exec(program: &OsString, args: &[OsString], env: &GuestEnv) -> DeliverError {
    let source = std::process::Command::new(program)
        .args(args)
        .envs(env.iter())
        .exec();
    DeliverError::Exec {
        program: program.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$x`y`\"\\\n"), "'$x`y`\"\\\n'");
    }

    #[test]
    fn file_is_atomic_0600_in_a_0700_dir() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("run/wasp/env");
        let mut env = GuestEnv::default();
        env.insert("A", "1".into()).unwrap();
        write_env_file(&path, &env).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().nth(1),
            Some("export A='1'")
        );
        // Rewriting replaces the file and leaves no temporary behind.
        env.insert("B", "2".into()).unwrap();
        write_env_file(&path, &env).unwrap();
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["env"]);
    }
}
