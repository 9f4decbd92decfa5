//! What a test process asks cargo before its first mesh, kept beside the
//! test binaries for the next process: the workspace's shape (`cargo
//! metadata`) and the services' binaries (a `cargo build` that finds them
//! built). Under nextest every test is a process of its own, and asking
//! cargo cost each about 350 ms; reading this costs about one.
//!
//! The shape is kept while the manifests, `Cargo.lock` and the folders
//! that hold packages and their binaries are as they were. The binaries
//! are kept while no source file of a package given by path is newer
//! than the build that made them, and the build's flags, the toolchain
//! and the variables cargo reads for flags are the same; in any doubt
//! (a file gone, a folder too large to look through) cargo builds, and
//! its fingerprints decide.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cargo_devmesh::build::{BinTarget, Built};
use cargo_devmesh::workspace::Shape;
use serde::{Deserialize, Serialize};

/// Files looked at for a source newer than the build, at most: past
/// this, cargo is asked.
const MOST_FILES: usize = 20_000;

/// Variables that change what cargo builds without a file changing.
const BUILD_VARIABLES: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTUP_TOOLCHAIN",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
];

/// What one workspace and build flags gave, as kept.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Kept {
    stamps: Vec<Stamp>,
    pub(crate) shape: Shape,
    build: Option<Build>,
}

/// A file or folder as it was: gone, or its modified time and size.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    path: PathBuf,
    seen: Option<(u128, u64)>,
}

impl Stamp {
    fn of(path: PathBuf) -> Stamp {
        let seen = std::fs::metadata(&path)
            .ok()
            .map(|m| (modified_ns(&m).unwrap_or(0), if m.is_dir() { 0 } else { m.len() }));
        Stamp { path, seen }
    }
}

/// A build that made every binary.
#[derive(Debug, Serialize, Deserialize)]
struct Build {
    flags: Vec<String>,
    variables: Vec<(String, Option<String>)>,
    toolchain: Option<Stamp>,
    /// When it began, in nanoseconds since the epoch: a source changed
    /// after that may not be in it.
    began_ns: u128,
    binaries: Vec<(BinTarget, PathBuf)>,
}

fn modified_ns(metadata: &std::fs::Metadata) -> Option<u128> {
    Some(metadata.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos())
}

fn variables() -> Vec<(String, Option<String>)> {
    BUILD_VARIABLES
        .iter()
        .map(|name| (name.to_string(), std::env::var(name).ok()))
        .collect()
}

/// The cargo that builds: its binary changes with the toolchain.
fn toolchain() -> Option<Stamp> {
    std::env::var_os("CARGO").map(|cargo| Stamp::of(PathBuf::from(cargo)))
}

/// Where what `key` gave is kept: beside the test binary (in
/// `target/debug/devmesh-testing/`), or nowhere when that is unknown.
pub(crate) fn file(key: &impl std::hash::Hash) -> Option<PathBuf> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let exe = std::env::current_exe().ok()?;
    // target/debug/deps/<test> → target/debug
    let profile = exe.parent()?.parent()?;
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    Some(profile.join("devmesh-testing").join(format!("{hash:016x}.json")))
}

impl Kept {
    /// What `file` holds, if its shape is still the workspace's.
    pub(crate) fn read(file: &Path) -> Option<Kept> {
        let kept: Kept = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
        let now = stamps(&kept.shape);
        (now == kept.stamps).then_some(kept)
    }

    /// A shape just read from cargo.
    pub(crate) fn new(shape: Shape) -> Kept {
        Kept {
            stamps: stamps(&shape),
            shape,
            build: None,
        }
    }

    /// The binaries of `targets` as kept, if nothing they are built from
    /// changed since (and they are all there).
    pub(crate) fn built(&self, flags: &[String], targets: &[BinTarget]) -> Option<Built> {
        let build = self.build.as_ref()?;
        let same = build.flags == flags && build.variables == variables() && build.toolchain == toolchain();
        let every = targets.iter().all(|t| build.binaries.iter().any(|(b, _)| b == t));
        if !same || !every || newest_source(&self.shape)? >= build.began_ns {
            return None;
        }
        let binaries = build
            .binaries
            .iter()
            .filter(|(target, path)| targets.contains(target) && path.is_file())
            .cloned()
            .collect::<std::collections::HashMap<_, _>>();
        (binaries.len() == targets.len()).then(|| Built {
            binaries,
            success: true,
            output: String::new(),
        })
    }

    /// `built` is what a build begun at `began` made.
    pub(crate) fn keep_build(&mut self, flags: &[String], began: SystemTime, built: &Built) {
        self.build = Some(Build {
            flags: flags.to_vec(),
            variables: variables(),
            toolchain: toolchain(),
            began_ns: began.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            binaries: built.binaries.iter().map(|(t, p)| (t.clone(), p.clone())).collect(),
        });
    }

    /// Writes it to `file` whole (tests of other processes may read it at
    /// the same time); a failure costs the next process a cargo call, no
    /// more.
    pub(crate) fn write(&self, file: &Path) {
        let Some(dir) = file.parent() else { return };
        let temp = file.with_extension(format!("{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&temp, serde_json::to_vec(self).unwrap_or_default()))
            .and_then(|()| std::fs::rename(&temp, file));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
    }
}

/// What the shape was read from: the manifests and `Cargo.lock`, cargo's
/// config, and the folders whose entries name packages and binaries (a
/// package or a `src/bin/*.rs` added changes its folder's time).
fn stamps(shape: &Shape) -> Vec<Stamp> {
    let mut paths = BTreeSet::new();
    let root = &shape.root;
    paths.extend([root.join("Cargo.lock"), root.join("Cargo.toml"), root.clone()]);
    for dir in root.ancestors() {
        paths.extend([dir.join(".cargo/config.toml"), dir.join(".cargo/config")]);
    }
    for dir in &shape.path_packages {
        paths.extend([
            dir.join("Cargo.toml"),
            dir.clone(),
            dir.join("src"),
            dir.join("src/bin"),
        ]);
        paths.extend(dir.parent().map(Path::to_path_buf));
    }
    paths.into_iter().map(Stamp::of).collect()
}

/// The newest modified time of a file in the packages given by path
/// (their `target` and hidden folders aside), or none when there are too
/// many to look through.
fn newest_source(shape: &Shape) -> Option<u128> {
    let mut newest = 0;
    let mut seen = 0;
    let mut folders: Vec<PathBuf> = shape.path_packages.clone();
    folders.push(shape.root.join("Cargo.lock"));
    while let Some(path) = folders.pop() {
        seen += 1;
        if seen > MOST_FILES {
            return None;
        }
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        newest = newest.max(modified_ns(&metadata).unwrap_or(u128::MAX));
        if !metadata.is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(&path).ok()?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            folders.push(entry.path());
        }
    }
    Some(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(root: &Path) -> Shape {
        Shape {
            root: root.to_path_buf(),
            target_directory: root.join("target"),
            members: Vec::new(),
            path_packages: vec![root.join("app")],
        }
    }

    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app/src")).unwrap();
        std::fs::write(dir.path().join("Cargo.toml"), "[workspace]").unwrap();
        std::fs::write(dir.path().join("app/Cargo.toml"), "[package]").unwrap();
        std::fs::write(dir.path().join("app/src/main.rs"), "fn main() {}").unwrap();
        dir
    }

    /// Moves `path`'s modified time a second on, as an edit would.
    fn touch(path: &Path) {
        let later = std::fs::metadata(path).unwrap().modified().unwrap() + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .append(true)
            .open(path)
            .unwrap()
            .set_modified(later)
            .unwrap();
    }

    fn built_app(dir: &Path) -> (Vec<BinTarget>, Built) {
        let target = BinTarget {
            package: "app".to_owned(),
            bin: "app".to_owned(),
        };
        let binary = dir.join("target/debug/app");
        std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
        std::fs::write(&binary, "").unwrap();
        let built = Built {
            binaries: [(target.clone(), binary)].into(),
            success: true,
            output: String::new(),
        };
        (vec![target], built)
    }

    #[test]
    fn the_shape_is_kept_until_a_manifest_changes() {
        let (dir, elsewhere) = (workspace(), tempfile::tempdir().unwrap());
        let file = elsewhere.path().join("kept.json");
        Kept::new(shape(dir.path())).write(&file);
        assert_eq!(Kept::read(&file).unwrap().shape, shape(dir.path()));
        touch(&dir.path().join("app/Cargo.toml"));
        assert!(Kept::read(&file).is_none(), "a changed manifest is read again");
        std::fs::write(&file, "{ not json").unwrap();
        assert!(Kept::read(&file).is_none(), "a damaged file is no shape");
    }

    #[test]
    fn a_binary_added_changes_the_shape() {
        let (dir, elsewhere) = (workspace(), tempfile::tempdir().unwrap());
        let file = elsewhere.path().join("kept.json");
        Kept::new(shape(dir.path())).write(&file);
        std::fs::create_dir_all(dir.path().join("app/src/bin")).unwrap();
        assert!(Kept::read(&file).is_none());
    }

    #[test]
    fn binaries_are_kept_until_a_source_is_newer_than_their_build() {
        let dir = workspace();
        let (targets, built) = built_app(dir.path());
        let mut kept = Kept::new(shape(dir.path()));
        let flags = vec!["--release".to_owned()];
        assert!(kept.built(&flags, &targets).is_none(), "never built");
        kept.keep_build(&flags, SystemTime::now() + std::time::Duration::from_millis(10), &built);
        assert_eq!(kept.built(&flags, &targets).unwrap().binaries, built.binaries);
        assert!(kept.built(&[], &targets).is_none(), "other flags");
        let source = dir.path().join("app/src/main.rs");
        touch(&source);
        touch(&source);
        assert!(kept.built(&flags, &targets).is_none(), "a source edited since");
    }

    #[test]
    fn a_binary_gone_is_built_again() {
        let dir = workspace();
        let (targets, built) = built_app(dir.path());
        let mut kept = Kept::new(shape(dir.path()));
        kept.keep_build(&[], SystemTime::now() + std::time::Duration::from_secs(5), &built);
        std::fs::remove_file(dir.path().join("target/debug/app")).unwrap();
        assert!(kept.built(&[], &targets).is_none());
    }
}
