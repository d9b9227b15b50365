//! Directory chains only root can change.
//!
//! Root wasp reads files that other users may be able to reach: a
//! snapshot's files, an env file of secrets. Checking a file is worth
//! nothing if someone else can rename it, or a directory above it, between
//! the check and the use. [`open_dir`] walks a path from `/` one name at a
//! time with `openat(O_PATH | O_NOFOLLOW)`, so it holds each directory it
//! checked and the next name is looked up inside that very directory, and
//! refuses any directory another user can change: one not owned by root
//! (or an owner the caller allows), or one writable by group or others
//! without the sticky bit (with it, others cannot rename or remove what
//! they do not own, like `/tmp`). The caller then opens its files relative
//! to the returned fd, again without following a symlink.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use crate::sys::fs::open_at_nofollow;

/// How [`open_dir`] judges a chain.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// An owner besides root that may own the directories (the user wasp
    /// runs as, when not root).
    pub also_owner: Option<u32>,
    /// Follow a symlink among the directories when root owns it (a symlink
    /// another user owns is refused; with `false` every symlink is refused).
    pub follow_root_symlinks: bool,
    /// The last directory must not be writable by group or others even
    /// when it is sticky (others could add a missing file to it).
    pub last_strict: bool,
}

/// What is wrong with a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Owned by someone else.
    Owner,
    /// Writable by group or others; `sticky` says whether the sticky bit
    /// (which would have been enough for an ancestor) is set.
    Writable {
        /// The sticky bit is set.
        sticky: bool,
    },
    /// A symlink that someone else owns.
    Symlink,
}

/// A directory another user can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// The directory (or symlink) as walked.
    pub dir: PathBuf,
    /// Its owner.
    pub uid: u32,
    /// Its permission bits.
    pub mode: u32,
    /// What is wrong.
    pub problem: Problem,
}

impl Untrusted {
    /// What is wrong, in words that follow "… is": e.g. `owned by uid
    /// 65534, not root`.
    pub fn reason(&self) -> String {
        match self.problem {
            Problem::Owner => format!("owned by uid {}, not root", self.uid),
            Problem::Writable { sticky: true } => "writable by group or others".into(),
            Problem::Writable { sticky: false } => {
                "writable by group or others and not sticky".into()
            }
            Problem::Symlink => format!("a symlink owned by uid {}", self.uid),
        }
    }
}

/// Why [`open_dir`] failed.
#[derive(Debug)]
pub enum WalkError {
    /// A directory on the path another user can change.
    Untrusted(Untrusted),
    /// A name could not be opened or inspected (missing, not a directory,
    /// or a symlink where none is followed: `ELOOP`).
    Io {
        /// The path walked so far.
        dir: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Symlinks followed in one walk at most, as the kernel's own limit.
const MAX_SYMLINKS: usize = 40;

/// Opens the directory `path` (relative paths from the working directory,
/// which `getcwd` reports without symlinks) through a chain of directories
/// only root (or `rules.also_owner`) can change; returns an `O_PATH` fd of
/// it to open files relative to.
pub fn open_dir(path: &Path, rules: Rules) -> Result<OwnedFd, WalkError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|source| WalkError::Io {
            dir: path.into(),
            source,
        })?;
        cwd.join(path)
    };
    let mut pending = components(&abs);
    let mut dir_path = PathBuf::from("/");
    let io = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |source| WalkError::Io { dir, source }
    };
    let root = || open_at_nofollow(None, OsStr::new("/"), libc::O_PATH);
    let mut dir = root().map_err(io(&dir_path))?;
    check(&dir_path, &dir, rules, pending.is_empty())?;
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        let next_path = dir_path.join(&name);
        let next =
            open_at_nofollow(Some(dir.as_fd()), &name, libc::O_PATH).map_err(io(&next_path))?;
        let st = fstat(&next).map_err(io(&next_path))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                if !rules.follow_root_symlinks {
                    return Err(io(&next_path)(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                // `dir` only root can change, or sticky (like /tmp), where
                // anyone may add a link: followed only when root owns it.
                if st.st_uid != 0 {
                    return Err(WalkError::Untrusted(Untrusted {
                        dir: next_path,
                        uid: st.st_uid,
                        mode: st.st_mode & 0o7777,
                        problem: Problem::Symlink,
                    }));
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io(&next_path)(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let target = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name.as_os_str())
                    .map_err(|e| io(&next_path)(e.into()))?;
                let target = Path::new(&target);
                for c in components(target).into_iter().rev() {
                    pending.push_front(c);
                }
                if target.is_absolute() {
                    dir_path = PathBuf::from("/");
                    dir = root().map_err(io(&dir_path))?;
                }
                continue;
            }
            libc::S_IFDIR => {}
            _ => return Err(io(&next_path)(io::Error::from_raw_os_error(libc::ENOTDIR))),
        }
        dir = next;
        dir_path = next_path;
        check(&dir_path, &dir, rules, pending.is_empty())?;
    }
    Ok(dir)
}

/// The names of `p` in order, `..` kept, `/` and `.` dropped.
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Refuses a directory someone other than root (or the allowed owner) can
/// change.
fn check(path: &Path, dir: &OwnedFd, rules: Rules, last: bool) -> Result<(), WalkError> {
    let st = fstat(dir).map_err(|source| WalkError::Io {
        dir: path.into(),
        source,
    })?;
    let bad = |problem| {
        Err(WalkError::Untrusted(Untrusted {
            dir: path.into(),
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
            problem,
        }))
    };
    if st.st_uid != 0 && Some(st.st_uid) != rules.also_owner {
        return bad(Problem::Owner);
    }
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if st.st_mode & 0o022 != 0 && (!sticky || (last && rules.last_strict)) {
        return bad(Problem::Writable { sticky });
    }
    Ok(())
}

/// `fstat` of an fd (an `O_PATH` one too).
fn fstat(fd: &OwnedFd) -> io::Result<nix::sys::stat::FileStat> {
    nix::sys::stat::fstat(fd.as_raw_fd()).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn writable_and_sticky_directories() {
        // Runs as whoever runs the tests: allow that owner too.
        let me = nix::unistd::geteuid().as_raw();
        let rules = Rules {
            also_owner: Some(me),
            ..Rules::default()
        };
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = a.join("b");
        std::fs::create_dir_all(&b).unwrap();
        set_mode(&a, 0o755);
        set_mode(&b, 0o755);
        assert!(open_dir(&b, rules).is_ok());
        // A sticky world-writable ancestor is fine; the last dir may be
        // sticky unless the rules say otherwise.
        set_mode(&a, 0o1777);
        assert!(open_dir(&b, rules).is_ok());
        assert!(open_dir(&a, rules).is_ok());
        let strict = Rules {
            last_strict: true,
            ..rules
        };
        match open_dir(&a, strict) {
            Err(WalkError::Untrusted(u)) => {
                assert_eq!(u.problem, Problem::Writable { sticky: true });
                assert_eq!(u.reason(), "writable by group or others");
            }
            other => panic!("{other:?}"),
        }
        // Group-writable without the sticky bit: refused wherever it is.
        set_mode(&a, 0o775);
        match open_dir(&b, rules) {
            Err(WalkError::Untrusted(u)) => {
                assert_eq!(u.dir, a);
                assert_eq!(u.reason(), "writable by group or others and not sticky");
            }
            other => panic!("{other:?}"),
        }
        // A symlink is never followed when the rules say so.
        set_mode(&a, 0o755);
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&b, &link).unwrap();
        match open_dir(&link, rules) {
            Err(WalkError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ELOOP))
            }
            other => panic!("{other:?}"),
        }
    }
}
