//! The live file registry: `<target>/devmesh/registry.json`.
//!
//! The supervisor writes it; every service reads it. This module owns the
//! file format, finding the file, and writing it safely; [`live`] owns the
//! in-memory snapshot readers answer from.
//!
//! # Format (version 1)
//!
//! ```json
//! {
//!   "version": 1,
//!   "supervisor_pid": 4242,
//!   "services": {
//!     "orders": {
//!       "url": "http://127.0.0.1:41001",
//!       "status": "ready",
//!       "pid": 4251,
//!       "callback_url": "https://orders-alice.relay.example.com"
//!     }
//!   }
//! }
//! ```
//!
//! `url` is the service's front address: stable while the workspace exists.
//! Readers ignore fields they don't know, so a version adds fields freely and
//! is bumped only for a change old readers would misread.
//!
//! # Writing
//!
//! Every write goes to a temporary file in the same folder that is then
//! renamed over the registry, so a reader sees the old file or the new one,
//! never half of one. [`Registry::update`] holds an exclusive lock on
//! `registry.json.lock` around read-modify-write, so several writers never
//! lose each other's changes. Writes are not fsynced: the file describes
//! running processes and is rewritten by the supervisor after a crash.

pub(crate) mod live;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::errors::{Error, RegistryProblem};

/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The registry's name inside `<target>/devmesh/`.
pub const FILE_NAME: &str = "registry.json";

/// The whole registry file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RegistryFile {
    /// [`FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// The supervisor that keeps this file, so a reader can tell a stale one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_pid: Option<u32>,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, Entry>,
}

impl Default for RegistryFile {
    fn default() -> Self {
        RegistryFile {
            version: FORMAT_VERSION,
            supervisor_pid: None,
            services: BTreeMap::new(),
        }
    }
}

/// One service in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entry {
    /// Base URL of the service's front address.
    pub url: String,
    /// Where the service is in its life.
    #[serde(default)]
    pub status: Status,
    /// The service process, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The URL remote services call it back on, when it is exposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl Entry {
    /// An entry for a front address, in status [`Status::Starting`].
    pub fn new(url: impl Into<String>) -> Entry {
        Entry {
            url: url.into(),
            status: Status::default(),
            pid: None,
            callback_url: None,
        }
    }
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Its binary is being built.
    Building,
    /// Its process runs and is not ready yet.
    #[default]
    Starting,
    /// It answers its readiness check.
    Ready,
    /// It runs but stopped answering (hung, deadlocked, or stopped with
    /// SIGSTOP); requests to it time out until it answers again.
    Unresponsive,
    /// It exited on its own and waits to be restarted.
    Crashed,
    /// It was stopped on purpose.
    Stopped,
    /// Its build failed; it waits for a change.
    Failed,
    /// It runs in the remote sandbox; its front port proxies there.
    Remote,
    /// A status from a newer devmesh.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = match self {
            Status::Building => "building",
            Status::Starting => "starting",
            Status::Ready => "ready",
            Status::Unresponsive => "unresponsive",
            Status::Crashed => "crashed",
            Status::Stopped => "stopped",
            Status::Failed => "build failed",
            Status::Remote => "remote",
            Status::Unknown => "unknown",
        };
        f.pad(word)
    }
}

/// A handle on a registry file, for reading and writing it.
#[derive(Debug, Clone)]
pub struct Registry {
    path: PathBuf,
}

impl Registry {
    /// The registry at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Registry {
        Registry { path: path.into() }
    }

    /// The registry of the workspace whose target directory is `target_dir`.
    pub fn in_target_dir(target_dir: &Path) -> Registry {
        Registry::new(target_dir.join("devmesh").join(FILE_NAME))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; a missing file is an empty registry.
    pub fn read(&self) -> Result<RegistryFile, Error> {
        match fs::read(&self.path) {
            Ok(bytes) => parse(&bytes).map_err(|problem| self.error(problem)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RegistryFile::default()),
            Err(source) => Err(self.io_error("read it", source)),
        }
    }

    /// Replaces the whole file atomically.
    pub fn replace(&self, file: &RegistryFile) -> Result<(), Error> {
        let mut json = serde_json::to_vec_pretty(file).expect("a registry always serializes");
        json.push(b'\n');
        self.write_atomically(&json)
    }

    /// Reads, changes and writes the file under an exclusive lock, so that
    /// concurrent writers never lose each other's changes. A corrupt file is
    /// copied to `registry.json.corrupt` (nothing is lost) and the change
    /// starts from an empty registry.
    pub fn update<R>(&self, change: impl FnOnce(&mut RegistryFile) -> R) -> Result<R, Error> {
        self.create_dir()?;
        let lock =
            fs::File::create(self.lock_path()).map_err(|source| self.io_error("create its lock file", source))?;
        lock.lock().map_err(|source| self.io_error("lock it", source))?;
        let mut file = match self.read() {
            Ok(file) => file,
            Err(Error::Registry {
                problem: problem @ (RegistryProblem::Corrupt(_) | RegistryProblem::UnsupportedVersion { .. }),
                ..
            }) => {
                // Copied, not moved: readers never see the registry missing.
                let aside = self.path.with_extension("json.corrupt");
                fs::copy(&self.path, &aside).map_err(|source| self.io_error("copy the corrupt file aside", source))?;
                crate::warn(&format!(
                    "registry `{}`: {problem}; kept a copy in `{}` and started a new one",
                    self.path.display(),
                    aside.display()
                ));
                RegistryFile::default()
            }
            Err(e) => return Err(e),
        };
        let result = change(&mut file);
        file.version = FORMAT_VERSION;
        self.replace(&file)?;
        Ok(result)
    }

    fn write_atomically(&self, bytes: &[u8]) -> Result<(), Error> {
        write_atomically(&self.path, bytes).map_err(|source| self.io_error("write it", source))
    }

    fn create_dir(&self) -> Result<(), Error> {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => {
                create_private_dir(dir).map_err(|source| self.io_error("create its folder", source))
            }
            _ => Ok(()),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.path.with_extension("json.lock")
    }

    fn error(&self, problem: RegistryProblem) -> Error {
        Error::Registry {
            path: self.path.clone(),
            problem,
        }
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> Error {
        self.error(RegistryProblem::Io { action, source })
    }
}

/// Makes `dir` and the folders above it that are missing, each readable by
/// its owner only: the state folder holds the control token and captured
/// logs, and whoever makes it again after it was deleted (a service's
/// watch, the supervisor) must not leave it open to other users.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes `bytes` to `path` as every devmesh state file is written (the
/// registry, `ports.json`, `control.json`): to a temporary file beside it,
/// then renamed over it, so a reader sees the old file or the new one,
/// never half of one. Creates the folder if needed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::File::create(&temp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Parses registry bytes, checking the version before the shape so that a
/// newer format is reported as such rather than as corrupt.
pub fn parse(bytes: &[u8]) -> Result<RegistryFile, RegistryProblem> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(RegistryProblem::Corrupt)?;
    // serde would take a struct from an array too (`[2]` for version 2),
    // past the version check below: found by fuzzing.
    if !value.is_object() {
        let expected = <serde_json::Error as serde::de::Error>::custom("the registry is not a JSON object");
        return Err(RegistryProblem::Corrupt(expected));
    }
    let version = value.get("version").and_then(|v| v.as_u64());
    if let Some(found) = version.filter(|&v| v != u64::from(FORMAT_VERSION)) {
        return Err(RegistryProblem::UnsupportedVersion {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: FORMAT_VERSION,
        });
    }
    serde_json::from_value(value).map_err(RegistryProblem::Corrupt)
}

/// Where a process finds its workspace's registry, first hit wins:
/// `DEVMESH_REGISTRY`; `$CARGO_TARGET_DIR/devmesh/registry.json`; the target
/// directory the running binary was built into (`<target>/<profile>/<bin>`)
/// when it has a `devmesh` folder; `target/devmesh/registry.json` in the
/// current directory or a parent. `None` when there is no sign of one.
pub fn locate(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(path) = env("DEVMESH_REGISTRY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(target) = env("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        return Some(Registry::in_target_dir(Path::new(&target)).path);
    }
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    let from_cwd = std::env::current_dir()
        .ok()
        .into_iter()
        .flat_map(|cwd| cwd.ancestors().map(|dir| dir.join("target")).collect::<Vec<_>>());
    from_exe
        .into_iter()
        .chain(from_cwd)
        .find(|target| target.join("devmesh").is_dir())
        .map(|target| Registry::in_target_dir(&target).path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("devmesh").join(FILE_NAME));
        (dir, registry)
    }

    #[test]
    fn a_missing_file_is_an_empty_registry() {
        let (_dir, registry) = registry();
        assert_eq!(registry.read().unwrap(), RegistryFile::default());
    }

    #[test]
    fn update_round_trips_and_leaves_no_temp_files() {
        let (_dir, registry) = registry();
        registry
            .update(|f| {
                f.services.insert("orders".into(), Entry::new("http://127.0.0.1:41001"));
            })
            .unwrap();
        let file = registry.read().unwrap();
        assert_eq!(file.services["orders"].url, "http://127.0.0.1:41001");
        assert_eq!(file.services["orders"].status, Status::Starting);
        let names: Vec<_> = fs::read_dir(registry.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let (_dir, registry) = registry();
        std::thread::scope(|s| {
            for writer in 0..4 {
                let registry = registry.clone();
                s.spawn(move || {
                    for i in 0..50 {
                        registry
                            .update(|f| {
                                let url = format!("http://127.0.0.1:{}", 1000 + i);
                                f.services.insert(format!("w{writer}-{i}"), Entry::new(url));
                            })
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(registry.read().unwrap().services.len(), 200);
    }

    #[test]
    fn a_corrupt_file_is_kept_aside_by_update() {
        let (_dir, registry) = registry();
        registry.update(|_| ()).unwrap();
        fs::write(registry.path(), b"{\"version\": 1, \"services\": {").unwrap();
        let err = registry.read().unwrap_err().to_string();
        assert!(err.contains("not valid registry JSON"), "{err}");
        assert!(err.contains(&registry.path().display().to_string()), "{err}");

        registry.update(|_| ()).unwrap();
        let aside = registry.path().with_extension("json.corrupt");
        assert_eq!(fs::read(aside).unwrap(), b"{\"version\": 1, \"services\": {");
        assert_eq!(registry.read().unwrap(), RegistryFile::default());
    }

    #[test]
    fn a_newer_format_is_reported_as_such() {
        let problem = parse(br#"{"version": 7, "services": []}"#).unwrap_err();
        assert!(problem.to_string().contains("format version 7"), "{problem}");
    }

    #[test]
    fn unknown_fields_and_statuses_are_ignored() {
        let file =
            parse(br#"{"version":1,"future":true,"services":{"a":{"url":"http://h:1","status":"hibernating","x":1}}}"#)
                .unwrap();
        assert_eq!(file.services["a"].status, Status::Unknown);
    }

    #[test]
    fn locate_prefers_the_explicit_variable() {
        let env = |k: &str| match k {
            "DEVMESH_REGISTRY" => Some("/tmp/r.json".to_owned()),
            "CARGO_TARGET_DIR" => Some("/tmp/t".to_owned()),
            _ => None,
        };
        assert_eq!(locate(env), Some(PathBuf::from("/tmp/r.json")));
        let env = |k: &str| (k == "CARGO_TARGET_DIR").then(|| "/tmp/t".to_owned());
        assert_eq!(locate(env), Some(PathBuf::from("/tmp/t/devmesh/registry.json")));
    }
}
