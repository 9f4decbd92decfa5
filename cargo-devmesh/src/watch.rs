//! `cargo devmesh run --watch`: rebuilds and restarts exactly the services
//! whose code changed. A change in a package restarts the services built
//! from it and from every workspace package that depends on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::build::{BinTarget, Builder};
use crate::logs::Logs;
use crate::supervisor::Services;
use crate::workspace::{PackageInfo, Workspace};

/// Changes that come together (a save touching several files, a branch
/// switch) are gathered for this long and handled as one.
const SETTLE: Duration = Duration::from_millis(200);

/// What `--watch` needs from the workspace.
#[derive(Debug)]
pub struct Watched {
    root: PathBuf,
    /// Build output and supervisor state: never a source change.
    ignored: Vec<PathBuf>,
    packages: Vec<PackageInfo>,
    /// The selected services built from workspace binaries.
    services: BTreeMap<String, (BinTarget, cargo_metadata::PackageId)>,
    /// The selected commands, and what each is restarted on.
    commands: BTreeMap<String, Vec<PathBuf>>,
}

/// What a change means.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Affected {
    /// Services to rebuild and restart.
    pub rebuild: BTreeSet<String>,
    /// Commands to restart.
    pub restart: BTreeSet<String>,
}

impl Watched {
    pub fn of(workspace: &Workspace, selected: &[String]) -> Watched {
        let services = selected
            .iter()
            .filter_map(|name| {
                let target = workspace.services.get(name)?.bin_target()?;
                let id = match &workspace.services[name].launch {
                    crate::workspace::Launch::Binary { package_id, .. } => package_id.clone(),
                    crate::workspace::Launch::Command(_) => return None,
                };
                Some((name.clone(), (target, id)))
            })
            .collect();
        let commands = selected
            .iter()
            .map(|name| &workspace.services[name])
            .filter(|spec| matches!(spec.launch, crate::workspace::Launch::Command(_)) && !spec.watch.is_empty())
            .map(|spec| (spec.name.clone(), spec.watch.clone()))
            .collect();
        Watched {
            root: workspace.root.clone(),
            ignored: vec![
                workspace.target_dir.clone(),
                workspace.state_dir.clone(),
                workspace.root.join(".git"),
            ],
            packages: workspace.packages.clone(),
            services,
            commands,
        }
    }

    /// The services to rebuild and the commands to restart after `changed`
    /// files changed.
    pub fn affected(&self, changed: &[PathBuf]) -> Affected {
        let changed: Vec<&PathBuf> = changed.iter().filter(|path| !self.ignore(path)).collect();
        // The innermost package folder holding a file owns it.
        let owner = |path: &Path| {
            self.packages
                .iter()
                .filter(|p| path.starts_with(&p.dir))
                .max_by_key(|p| p.dir.components().count())
        };
        // A command that watches the whole workspace (its cwd, by default)
        // is not restarted for files that belong to a Rust package below the
        // root or to another command's folder.
        let elsewhere = |path: &Path| {
            owner(path).is_some_and(|p| p.dir != self.root)
                || self
                    .commands
                    .values()
                    .flatten()
                    .any(|w| *w != self.root && path.starts_with(w))
        };
        let restarts =
            |path: &Path, watched: &PathBuf| path.starts_with(watched) && (*watched != self.root || !elsewhere(path));
        let restart = self
            .commands
            .iter()
            .filter(|(_, watched)| changed.iter().any(|path| watched.iter().any(|w| restarts(path, w))))
            .map(|(name, _)| name.clone())
            .collect();
        let packages: BTreeSet<_> = changed.iter().filter_map(|path| owner(path)).map(|p| &p.id).collect();
        let rebuild = self
            .services
            .iter()
            .filter(|(_, (_, id))| {
                let info = self.packages.iter().find(|p| &p.id == id);
                packages.contains(id) || info.is_some_and(|i| i.depends_on.iter().any(|d| packages.contains(d)))
            })
            .map(|(name, _)| name.clone())
            .collect();
        Affected { rebuild, restart }
    }

    fn ignore(&self, path: &Path) -> bool {
        // Hidden, backup and bytecode files (Python writes `__pycache__`
        // as it runs: a restart for those would restart again).
        let generated = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') || n.ends_with('~') || n.ends_with(".pyc"));
        generated || self.ignored.iter().any(|dir| path.starts_with(dir))
    }
}

/// Watches the workspace until `shutdown`, rebuilding and restarting the
/// services each change affects.
pub async fn run(
    watched: Watched,
    services: Arc<Services>,
    builder: Arc<Builder>,
    logs: Logs,
    shutdown: CancellationToken,
) {
    let (changes_tx, mut changes) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            for path in event.paths {
                let _ = changes_tx.send(path);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => {
            return logs.note(format!("--watch is off: could not watch files: {e}"));
        }
    };
    if let Err(e) = watcher.watch(&watched.root, RecursiveMode::Recursive) {
        return logs.note(format!(
            "--watch is off: could not watch `{}`: {e}",
            watched.root.display()
        ));
    }
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            path = changes.recv() => match path { Some(path) => path, None => return },
        };
        let mut changed = vec![first];
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                () = &mut settle => break,
                Some(path) = changes.recv() => changed.push(path),
            }
        }
        let Affected { rebuild, restart } = watched.affected(&changed);
        let mut tickets = Vec::new();
        if !restart.is_empty() {
            let names: Vec<_> = restart.iter().map(String::as_str).collect();
            logs.note(format!("changed: restarting {}", names.join(", ")));
            tickets.extend(
                restart
                    .iter()
                    .map(|name| services.get(name).map(|s| s.restart(false, false))),
            );
        }
        if !rebuild.is_empty() {
            let names: Vec<_> = rebuild.iter().map(String::as_str).collect();
            logs.note(format!("changed: rebuilding {}", names.join(", ")));
            match builder.build().await {
                Ok(built) => {
                    for name in &rebuild {
                        match built.binaries.get(&watched.services[name].0) {
                            Some(binary) => tickets.push(services.get(name).map(|s| s.rebuilt(binary.clone()))),
                            None => logs.note(format!("{name}: the build failed; the running instance is kept")),
                        }
                    }
                }
                Err(e) => logs.note(format!("could not run `cargo build`: {e}")),
            }
        }
        // Every name comes from the selected services: each has a handle.
        for ticket in tickets.into_iter().flatten() {
            let _ = ticket.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, dir: &str) -> PackageInfo {
        PackageInfo {
            id: cargo_metadata::PackageId { repr: name.to_owned() },
            dir: PathBuf::from(dir),
            depends_on: BTreeSet::new(),
        }
    }

    /// A command with a `cwd` is restarted by its folder; one without is
    /// restarted by the workspace's files that neither a Rust package below
    /// the root nor another command holds (a script beside `Cargo.toml`),
    /// and a Rust service by its package's.
    #[test]
    fn a_command_is_restarted_by_its_folder_or_the_root_outside_packages() {
        let watched = Watched {
            root: PathBuf::from("/ws"),
            ignored: vec![PathBuf::from("/ws/target")],
            packages: vec![package("root", "/ws"), package("api", "/ws/api")],
            services: BTreeMap::from([(
                "api".to_owned(),
                (
                    BinTarget {
                        package: "api".into(),
                        bin: "api".into(),
                    },
                    cargo_metadata::PackageId { repr: "api".into() },
                ),
            )]),
            commands: BTreeMap::from([
                ("site".to_owned(), vec![PathBuf::from("/ws/site")]),
                ("script".to_owned(), vec![PathBuf::from("/ws")]),
            ]),
        };
        let affected = |path: &str| {
            let Affected { rebuild, restart } = watched.affected(&[PathBuf::from(path)]);
            (
                rebuild.into_iter().collect::<Vec<_>>(),
                restart.into_iter().collect::<Vec<_>>(),
            )
        };
        let none: Vec<String> = Vec::new();
        assert_eq!(affected("/ws/site/index.html"), (none.clone(), vec!["site".into()]));
        assert_eq!(affected("/ws/tools/app.py"), (none.clone(), vec!["script".into()]));
        assert_eq!(affected("/ws/api/src/main.rs"), (vec!["api".into()], none.clone()));
        assert_eq!(affected("/ws/target/debug/api"), (none.clone(), none.clone()));
        assert_eq!(affected("/ws/.app.py.swp"), (none.clone(), none.clone()));
        assert_eq!(
            affected("/ws/tools/__pycache__/app.cpython-311.pyc"),
            (none.clone(), none)
        );
    }
}
