//! End-to-end tests: the real `cargo-devmesh` binary on fixture workspaces.
//! One test binary for all, as nextest recommends.

mod as_test;
mod browser;
mod dns;
mod errors;
mod faults;
mod grpc;
mod harness;
mod inspector;
mod library;
mod real_use;
mod remote;
mod routes;
mod shop;
mod state;
mod supervise;
mod telemetry;
mod tunnel;
