//! Tunnels: a service on a laptop gets a URL remote services can call back
//! on, through a relay the team runs in its sandbox.
//!
//! - `wire`: the protocol, frame by frame;
//! - `link`: one connection carrying many streams, with flow control;
//! - `relay`: the relay (`cargo devmesh relay`, `devmesh-relay`);
//! - `client`: the supervisor's side, which exposes services.

pub mod client;
pub mod link;
pub mod relay;
pub mod wire;
