//! Test-only stop points, so crash tests can SIGKILL wasp at an exact place
//! instead of guessing with sleeps.
//!
//! With `WASP_STOP_AT=NAME:N` in its environment, wasp stops itself
//! (SIGSTOP, the whole process) the `N`th time it passes the point `NAME`;
//! the test sees the stop with `waitpid(WUNTRACED)` and sends SIGKILL.
//! Without the variable a point costs one atomic load. The points:
//!
//! | name | where |
//! |---|---|
//! | `slot-built` | the pool finished building a slot (warm-up, refill) |
//! | `clone-launched` | spawn started a clone's VMM (before restore) |
//! | `clone-recorded` | spawn wrote a ready clone's record |
//! | `teardown-vmm-stopped` | teardown stopped a VMM, before its files and record go |
//! | `storage-formatted` | `storage init` formatted the store image and renamed it into place, before attaching it |
//! | `storage-attached` | `storage init` attached the image to a loop device, before mounting it |
//!
//! A malformed value is ignored with a warning; it never changes what wasp
//! does otherwise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The environment variable.
pub const ENV: &str = "WASP_STOP_AT";

static WANT: OnceLock<Option<(String, usize)>> = OnceLock::new();
static HITS: AtomicUsize = AtomicUsize::new(0);

/// Parses `NAME:N` (N >= 1).
pub fn parse(v: &str) -> Option<(String, usize)> {
    let (name, n) = v.rsplit_once(':')?;
    let n: usize = n.parse().ok().filter(|n| *n >= 1)?;
    (!name.is_empty()).then(|| (name.to_owned(), n))
}

fn want() -> Option<&'static (String, usize)> {
    WANT.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let p = parse(&v);
        if p.is_none() {
            tracing::warn!("{ENV}={v:?} is not NAME:N; ignored");
        }
        p
    })
    .as_ref()
}

/// Passes the stop point `name`.
pub fn point(name: &str) {
    let Some((want, n)) = want() else {
        return;
    };
    if want != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::AcqRel) + 1 == *n {
        eprintln!("wasp: {ENV}: stopping at {name} #{n}");
        if let Err(e) = crate::sys::stop_self() {
            tracing::warn!("{ENV}: cannot stop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse("slot-built:3"), Some(("slot-built".into(), 3)));
        assert_eq!(parse("a:b:2"), Some(("a:b".into(), 2)));
        assert_eq!(parse("slot-built:0"), None);
        assert_eq!(parse("slot-built"), None);
        assert_eq!(parse(":4"), None);
    }
}
