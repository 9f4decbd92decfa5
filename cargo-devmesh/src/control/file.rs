//! `<state>/control.json`: where a running supervisor's API listens, the
//! token it wants, and whose it is. Written 0600 by the state keeper;
//! read by the CLI, and by a second `run` to refuse itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::errors::StartError;

/// `<state>/control.json`: where the API listens and the token it wants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlFile {
    pub addr: SocketAddr,
    pub token: String,
    pub pid: u32,
    /// The OTLP endpoint the services export to.
    #[serde(default)]
    pub otlp: Option<SocketAddr>,
}

pub fn control_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.json")
}

/// Reads `control.json`, if a supervisor left one.
pub fn read(state_dir: &Path) -> Option<ControlFile> {
    serde_json::from_slice(&std::fs::read(control_path(state_dir)).ok()?).ok()
}

/// Fails when another live supervisor runs for this workspace.
pub fn ensure_not_running(state_dir: &Path) -> Result<(), StartError> {
    match read(state_dir) {
        Some(control) if control.pid != std::process::id() && crate::platform::process_exists(control.pid) => {
            Err(StartError::AlreadyRunning {
                pid: control.pid,
                addr: control.addr,
            })
        }
        _ => Ok(()),
    }
}

/// Removes `control.json` (on shutdown).
pub fn remove(state_dir: &Path) {
    let _ = std::fs::remove_file(control_path(state_dir));
}
