//! Error formatting shared by every layer. A leaf: it uses nothing of
//! wasp's, so any module may use it.

use std::error::Error;

/// An error and its sources, as `a: caused by b: caused by c`: how wasp
/// shows every error chain (CLI, logs, reports).
pub fn chain(e: &dyn Error) -> String {
    chain_with(e, ": caused by ")
}

/// An error and its sources joined with `sep` (the stand-in joins with
/// `": "`, as Firecracker's fault messages do).
pub fn chain_with(e: &dyn Error, sep: &str) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(sep);
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn chains_every_source() {
        let e = E("a", Some(Box::new(E("b", Some(Box::new(E("c", None)))))));
        assert_eq!(chain(&e), "a: caused by b: caused by c");
        assert_eq!(chain_with(&e, ": "), "a: b: c");
        assert_eq!(chain(&E("alone", None)), "alone");
    }
}
