//! The supervisor's state files are copies of its memory: `registry.json`,
//! `ports.json`, `control.json` and the logs folder. It writes each whole
//! from what it holds, never by reading back a file it may not be able to
//! parse, and puts back within a moment a file (or the whole folder) that
//! was deleted, replaced or damaged: the services' discovery never rests on
//! a file anyone can break.
//!
//! A file's identity as last written (device, inode, size, modification
//! time) is looked at four times a second: a few `stat` calls, no
//! measurable CPU at idle.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devmesh::registry::{Entry, RegistryFile};
use tokio_util::sync::CancellationToken;

use crate::logs::Logs;

/// How often the files are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What a file is, as far as noticing a change goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(path: &Path) -> Option<Identity> {
        Some(Identity::from(&std::fs::symlink_metadata(path).ok()?))
    }

    fn from(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// One state file: how to make its content, and what it was when written.
struct Kept {
    path: PathBuf,
    contents: Box<dyn Fn() -> Vec<u8> + Send + Sync>,
    written: Mutex<Option<Identity>>,
    /// The last write failed (a full disk): what is on disk is older than
    /// memory, and is written again until it can be.
    stale: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Kept {
    /// Writes the file whole, owner-only, and notes what it now is.
    fn write(&self) -> std::io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let contents = (self.contents)();
        let result = match crate::secret::write_private(&self.path, &contents) {
            // The folder went: made again (owner-only), then written.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self
                .path
                .parent()
                .map_or(Ok(()), crate::secret::private_dir)
                .and_then(|()| crate::secret::write_private(&self.path, &contents)),
            result => result,
        };
        self.stale.store(result.is_err(), Ordering::Relaxed);
        *written = Some(Identity::from(&result?));
        Ok(())
    }

    /// Whether the file is not what was last written, or not what memory
    /// holds now.
    fn changed(&self) -> bool {
        let written = *self.written.lock().unwrap_or_else(|e| e.into_inner());
        self.is_stale() || written.is_some() && Identity::of(&self.path) != written
    }

    fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }
}

/// The state files of one run.
#[derive(Debug, Clone)]
pub struct StateFiles {
    kept: Arc<Mutex<Vec<Arc<Kept>>>>,
    registry: Arc<RegistryCopy>,
}

/// The registry as the supervisor holds it.
#[derive(Debug)]
pub struct RegistryCopy {
    path: PathBuf,
    file: Mutex<RegistryFile>,
    kept: Mutex<Option<Arc<Kept>>>,
    /// Each exposed service's callback URL (its tunnel), kept across the
    /// entries its task writes.
    callbacks: Mutex<BTreeMap<String, String>>,
}

impl RegistryCopy {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the registry in memory, then writes it whole.
    pub fn change(&self, change: impl FnOnce(&mut RegistryFile)) -> std::io::Result<()> {
        change(&mut self.file.lock().unwrap_or_else(|e| e.into_inner()));
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
        kept.map_or(Ok(()), |kept| kept.write())
    }

    /// Whether the last write failed: the file on disk is behind, and is
    /// written again within a moment of there being room (the failure has
    /// been said).
    pub fn is_behind(&self) -> bool {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
        kept.is_some_and(|kept| kept.is_stale())
    }

    /// Sets service `name`'s entry.
    pub fn set(&self, name: &str, mut entry: Entry) -> std::io::Result<()> {
        let callback = self
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        entry.callback_url = callback.or(entry.callback_url);
        // Nothing new (a service task's first word, which the first write
        // said already): no write.
        if self.file.lock().unwrap_or_else(|e| e.into_inner()).services.get(name) == Some(&entry) {
            return Ok(());
        }
        self.change(|file| {
            file.supervisor_pid = Some(std::process::id());
            file.services.insert(name.to_owned(), entry);
        })
    }

    /// Sets the URL service `name` is called back on.
    pub fn set_callback(&self, name: &str, url: &str) -> std::io::Result<()> {
        self.callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), url.to_owned());
        self.change(|file| {
            if let Some(entry) = file.services.get_mut(name) {
                entry.callback_url = Some(url.to_owned());
            }
        })
    }

    fn json(&self) -> Vec<u8> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
        file.version = devmesh::registry::FORMAT_VERSION;
        let mut json = serde_json::to_vec_pretty(&file).expect("a registry always serializes");
        json.push(b'\n');
        json
    }
}

impl StateFiles {
    /// The state of a run whose registry is `registry_path`, starting with
    /// the entries in `services`.
    pub fn new(registry_path: PathBuf, services: BTreeMap<String, Entry>) -> StateFiles {
        let registry = Arc::new(RegistryCopy {
            path: registry_path.clone(),
            file: Mutex::new({
                let mut file = RegistryFile::default();
                file.supervisor_pid = Some(std::process::id());
                file.services = services;
                file
            }),
            kept: Mutex::default(),
            callbacks: Mutex::default(),
        });
        let files = StateFiles {
            kept: Arc::default(),
            registry: Arc::clone(&registry),
        };
        let kept = files.add(registry_path, move || registry.json());
        *files.registry.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
        files
    }

    pub fn registry(&self) -> &Arc<RegistryCopy> {
        &self.registry
    }

    /// Keeps `path` as `contents` makes it.
    pub fn keep(&self, path: PathBuf, contents: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> std::io::Result<()> {
        self.add(path, contents).write()
    }

    /// Writes `path`, kept already, as its contents are now.
    pub fn rewrite(&self, path: &Path) -> std::io::Result<()> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let file = kept.iter().find(|k| k.path == path).cloned();
        drop(kept);
        file.map_or(Ok(()), |file| file.write())
    }

    fn add(&self, path: PathBuf, contents: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> Arc<Kept> {
        let kept = Arc::new(Kept {
            path,
            contents: Box::new(contents),
            written: Mutex::default(),
            stale: Default::default(),
        });
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&kept));
        kept
    }

    /// Puts back what changes under the supervisor until `shutdown`, saying
    /// so on the terminal; the logs folder too, where `logs` opens its
    /// files anew.
    pub async fn guard(self, logs: Logs, shutdown: CancellationToken) {
        let logs_dir = logs.dir().to_path_buf();
        let mut logs_dir_was = Identity::of(&logs_dir).map(|i| (i.dev, i.ino));
        let mut failing = std::collections::HashSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
            // The logs first, so that what is said next goes to the new ones.
            let logs_dir_is = Identity::of(&logs_dir).map(|i| (i.dev, i.ino));
            if logs_dir_is != logs_dir_was {
                logs.reopen();
                logs.note("the logs folder was deleted or replaced; the logs go on in a new one");
                logs_dir_was = Identity::of(&logs_dir).map(|i| (i.dev, i.ino));
            }
            let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for file in kept.iter().filter(|k| k.changed()) {
                let name = file.path.file_name().unwrap_or_default().to_string_lossy();
                // A write that failed where it was made was said there.
                if file.is_stale() {
                    failing.insert(file.path.clone());
                }
                // A failure is said once, and again when it clears: a folder
                // made read-only would otherwise be said four times a second.
                match (file.write(), failing.contains(&file.path)) {
                    (Ok(()), false) => logs.note(format!("`{name}` was deleted or changed; it is written again")),
                    (Ok(()), true) => {
                        failing.remove(&file.path);
                        logs.note(format!("`{name}` could be written again"));
                    }
                    (Err(e), false) => {
                        failing.insert(file.path.clone());
                        logs.note(format!(
                            "`{name}` was deleted or changed, and could not be written again: {e} \
                             (trying again; said again when it is written)"
                        ));
                    }
                    (Err(_), true) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_written_from_memory_and_put_back_when_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devmesh/registry.json");
        let mut services = BTreeMap::new();
        services.insert("orders".to_owned(), Entry::new("http://127.0.0.1:24001"));
        let files = StateFiles::new(path.clone(), services);
        files
            .registry()
            .set("payments", Entry::new("http://127.0.0.1:24002"))
            .unwrap();
        // Garbage, then a change: the change is written from memory, and
        // every entry survives.
        std::fs::write(&path, "{ not json").unwrap();
        let kept = files.kept.lock().unwrap()[0].clone();
        assert!(kept.changed());
        files
            .registry()
            .set("gateway", Entry::new("http://127.0.0.1:24000"))
            .unwrap();
        let file: RegistryFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let names: Vec<_> = file.services.keys().cloned().collect();
        assert_eq!(names, ["gateway", "orders", "payments"]);
        assert!(!kept.changed());
        // The whole folder gone: written again, folder and all.
        std::fs::remove_dir_all(dir.path().join("devmesh")).unwrap();
        assert!(kept.changed());
        kept.write().unwrap();
        assert!(path.is_file());
    }
}
