//! The stand-in VMM (see `src/bin/wasp-standin.rs`).
