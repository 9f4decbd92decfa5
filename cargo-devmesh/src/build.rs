//! Building services: one `cargo build` for all the binaries asked for, its
//! diagnostics shown as cargo shows them. With `--keep-going`, one service
//! that fails to build does not keep the others from getting new binaries.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use cargo_metadata::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

/// A binary of a workspace package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinTarget {
    pub package: String,
    pub bin: String,
}

/// Runs cargo builds, one at a time.
#[derive(Debug)]
pub struct Builder {
    manifest_path: PathBuf,
    flags: Vec<String>,
    /// Cargo locks the target dir anyway; this keeps our output in order.
    one_at_a_time: Mutex<()>,
}

/// What a build produced.
#[derive(Debug, Default)]
pub struct Built {
    /// The executable of each target that built.
    pub binaries: HashMap<BinTarget, PathBuf>,
    /// Whether cargo succeeded; when not, the targets missing from
    /// `binaries` failed.
    pub success: bool,
}

impl Builder {
    pub fn new(manifest_path: PathBuf, flags: Vec<String>) -> Builder {
        Builder {
            manifest_path,
            flags,
            one_at_a_time: Mutex::new(()),
        }
    }

    /// Builds `targets`. Cargo renders diagnostics on stderr itself, with
    /// its progress line on a terminal; stdout carries the JSON read here.
    pub async fn build(&self, targets: &[BinTarget]) -> std::io::Result<Built> {
        let _turn = self.one_at_a_time.lock().await;
        let mut command = tokio::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        command
            .args([
                "build",
                "--message-format=json-render-diagnostics",
                "--keep-going",
                "--manifest-path",
            ])
            .arg(&self.manifest_path)
            .args(&self.flags);
        let mut packages: Vec<&str> = targets.iter().map(|t| t.package.as_str()).collect();
        packages.dedup();
        for package in packages {
            command.args(["-p", package]);
        }
        for target in targets {
            command.args(["--bin", &target.bin]);
        }
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let mut child = command.spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut built = Built::default();
        while let Some(line) = lines.next_line().await? {
            match serde_json::from_str::<Message>(&line) {
                Ok(Message::CompilerArtifact(artifact)) => {
                    let target = targets.iter().find(|t| t.bin == artifact.target.name);
                    if let (Some(target), Some(executable)) = (target, artifact.executable) {
                        built.binaries.insert(target.clone(), executable.into_std_path_buf());
                    }
                }
                Ok(Message::BuildFinished(finished)) => built.success = finished.success,
                _ => {}
            }
        }
        built.success &= child.wait().await?.success();
        Ok(built)
    }
}
