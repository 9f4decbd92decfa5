//! Building services: one `cargo build` for all the run's binaries, its
//! diagnostics shown as cargo shows them. With `--keep-going`, one service
//! that fails to build does not keep the others from getting new binaries.
//!
//! A restart or a `--watch` rebuild builds the same set with the same
//! flags as the run's first build, and takes the binaries it wants: cargo
//! unifies features across the packages of one build, so `cargo build -p
//! catalog` alone resolved them differently and recompiled 21 unchanged
//! crates (38.5 s for a first restart). The same set costs only the check
//! that nothing changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use cargo_metadata::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

/// A binary of a workspace package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct BinTarget {
    pub package: String,
    pub bin: String,
}

/// Runs cargo builds, one at a time.
#[derive(Debug)]
pub struct Builder {
    manifest_path: PathBuf,
    flags: Vec<String>,
    /// Every binary of the run, built together each time.
    targets: Vec<BinTarget>,
    /// Cargo locks the target dir anyway; this keeps our output in order.
    one_at_a_time: Mutex<()>,
    /// Cargo's own output kept in [`Built::output`], not shown (a test's).
    quiet: bool,
}

/// What a build produced.
#[derive(Debug, Default)]
pub struct Built {
    /// The executable of each target that built.
    pub binaries: HashMap<BinTarget, PathBuf>,
    /// Whether cargo succeeded; when not, the targets missing from
    /// `binaries` failed.
    pub success: bool,
    /// What cargo printed (its errors), when the builder is quiet.
    pub output: String,
}

impl Builder {
    pub fn new(manifest_path: PathBuf, flags: Vec<String>, targets: Vec<BinTarget>) -> Builder {
        Builder {
            manifest_path,
            flags,
            targets,
            quiet: false,
            one_at_a_time: Mutex::new(()),
        }
    }

    /// The run's binaries.
    pub fn targets(&self) -> &[BinTarget] {
        &self.targets
    }

    /// A builder that keeps cargo's output in [`Built::output`] rather
    /// than showing it: a test's, whose output is the test's own.
    pub fn quiet(mut self) -> Builder {
        self.quiet = true;
        self
    }

    /// Builds the run's binaries. Cargo renders diagnostics on stderr
    /// itself, with its progress line on a terminal; stdout carries the
    /// JSON read here.
    pub async fn build(&self) -> std::io::Result<Built> {
        let targets = &self.targets;
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
        let stderr = if self.quiet { Stdio::piped() } else { Stdio::inherit() };
        command.stdout(Stdio::piped()).stderr(stderr).stdin(Stdio::null());
        let mut child = crate::supervisor::process::spawn_other(&mut command)?;
        let output = child.stderr.take().map(|mut stderr| {
            tokio::spawn(async move {
                let mut text = String::new();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
                text
            })
        });
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
        if let Some(output) = output {
            built.output = output.await.unwrap_or_default();
        }
        Ok(built)
    }
}
