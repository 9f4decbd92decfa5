//! The mesh that `cargo devmesh run` starts, as a library: a [`Mesh`] is
//! built from a [`Plan`] (a workspace, the services chosen, how to build
//! them), runs them behind stable front ports with the inspector and the
//! local API, and stops every process when it is shut down or dropped.
//! The `cargo devmesh` binary is one front door to it (arguments, terminal,
//! Ctrl-C); a test is another. Services never compile this crate: they link
//! only the light `devmesh` crate.
//!
//! # Layout
//!
//! The composition root is [`mesh`]: the only module that knows every part.
//! The parts, each a folder or a file:
//!
//! - `workspace`, `dotenv`: which services there are (cargo metadata,
//!   `devmesh.toml`, `.env` files) — the plan's input;
//! - `build`: `cargo build` for the services' binaries;
//! - `ports`: stable front ports, kept in `ports.json`;
//! - `state`: the files others read (registry, ports, `control.json`),
//!   written whole and put back when damaged;
//! - `supervisor/`: one task per service, owning its processes; its
//!   handles are how everything else acts on a service;
//! - `proxy/`: the front ports, forwarding to the ready instance and
//!   capturing each exchange;
//! - `as_test/`: a captured trace written as a `#[devmesh_testing::test]`;
//! - `inspector/`: captured traffic: storage, masking, traces, the call
//!   map, exports, the page;
//! - `logs/`: interleaved terminal output and per-service log files;
//! - `dns`: a DNS server answering `<svc>.devmesh.` for programs that
//!   don't link devmesh;
//! - `control/`: the local API (and its client) other terminals and the
//!   page use, on the supervisor's handles;
//! - `watch`: `--watch`, rebuilding what changed, on the same handles;
//! - `platform`: every call that is Linux's own (`/proc`, `sock_diag`,
//!   `flock`, `madvise`), each with its portable fallback named;
//! - `tunnel/`: the relay, and the link that exposes services through it;
//! - `share`: services shared in the team's etcd, on a lease;
//! - `secret`: random tokens and owner-only files; `time`: timestamps;
//!   `form`: query strings and form bodies;
//! - `errors`: errors that end a command.
//!
//! Arrows go one way: `mesh` → every part; `control`, `watch` →
//! `supervisor`, `inspector`, `logs`; `supervisor` → `proxy` (routes),
//! `inspector` (callers), `logs`, `state`; `proxy` → `inspector`; `logs` →
//! `inspector` (trace ids in lines); `telemetry` → `logs`. A new subsystem (remote front ports,
//! the tunnel, a DNS server) is a part of its own, started in
//! [`Mesh::start`] beside the others and given the handles it needs.

mod accept;
pub mod as_test;
pub mod build;
pub mod control;
mod dns;
mod dotenv;
pub mod errors;
mod form;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspector;
pub mod logs;
pub mod mesh;
mod platform;
mod ports;
mod proxy;
mod secret;
mod share;
mod state;
pub mod supervisor;
pub mod telemetry;
pub mod time;
pub mod tunnel;
mod watch;
pub mod workspace;

pub use mesh::{Mesh, Plan};
pub use proxy::switch::ModeRefused;
pub use proxy::{Faults, Traffic};
