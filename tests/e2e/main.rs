//! End-to-end tests: the real `cargo-devmesh` binary on fixture workspaces.
//! One test binary for all, as nextest recommends.

mod errors;
mod harness;
mod shop;
mod supervise;
