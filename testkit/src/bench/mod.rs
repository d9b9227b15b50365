//! Bench helpers: the regression gate's benches ([`gate`]), measured in
//! thread CPU time ([`cputime`]), run by `benches/pure.rs` and in-process
//! by `tests/bench_gate.rs`; and the netlink-crate comparison of
//! `benches/pure.rs` ([`rtnl_crate`]).

pub mod cputime;
pub mod gate;
pub mod rtnl_crate;
