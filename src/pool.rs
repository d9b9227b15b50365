//! The slot pool (pipeline stage "slot pool"): see `Pool`.
