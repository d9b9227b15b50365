//! Clone storage: the pipeline stage that gives each clone its own writable
//! disk without copying what can be shared.

pub mod probe;
