//! The in-memory snapshot of the registry that `discover` answers from.
//!
//! A file watcher on the registry's folder reloads the snapshot when the file
//! is replaced, so lookups cost a pointer load and a hash lookup, with no
//! syscall. A file that does not parse never replaces a good snapshot: the
//! last good one stays, and one warning says why.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;

use super::{Entry, RegistryFile};
use crate::endpoint::{Endpoint, Source};

/// What the registry said the last time it parsed.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Endpoints by service name, built once per reload.
    pub endpoints: HashMap<String, Endpoint>,
    /// The entries as written, for fields beyond the URL.
    pub entries: HashMap<String, Entry>,
    /// Whether the file existed at the last reload.
    pub exists: bool,
    /// The supervisor that wrote it: its entries are gone with it.
    pub writer: Writer,
}

/// The process that wrote a registry file. A supervisor killed without
/// its cleanup (SIGKILL, a crash) leaves its entries `ready`; a reader
/// that trusted them would dial ports nobody serves.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pid: Option<u32>,
    /// When it was last seen alive, in milliseconds after [`epoch`] (0:
    /// never); it is looked for at most once a second, so a lookup stays
    /// a clock read, not a syscall.
    seen_at: AtomicU64,
    gone: AtomicBool,
}

impl Writer {
    fn new(pid: Option<u32>) -> Writer {
        Writer {
            pid,
            ..Writer::default()
        }
    }

    /// Whether the writer has exited (a file with no writer named never is).
    pub fn gone(&self) -> bool {
        let Some(pid) = self.pid else { return false };
        if self.gone.load(Ordering::Relaxed) {
            return true;
        }
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let seen_at = self.seen_at.load(Ordering::Relaxed);
        if seen_at != 0 && now.saturating_sub(seen_at) < 1000 {
            return false;
        }
        if process_exists(pid) {
            self.seen_at.store(now, Ordering::Relaxed);
            return false;
        }
        self.gone.store(true, Ordering::Relaxed);
        true
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Whether process `pid` exists (another user's counts: it answers EPERM).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

impl Snapshot {
    /// The endpoint of `name`, unless its supervisor is gone.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.get(name).filter(|_| !self.writer.gone())
    }

    /// The entry of `name`, unless its supervisor is gone.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name).filter(|_| !self.writer.gone())
    }
}

/// A registry file kept in memory and reloaded when it changes.
#[derive(Debug)]
pub(crate) struct LiveRegistry {
    path: PathBuf,
    shared: Arc<Shared>,
    /// Kept so the watch lasts as long as the registry; `None` when the
    /// folder could not be watched (the snapshot is then read once).
    _watcher: Option<Arc<Mutex<notify::RecommendedWatcher>>>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    /// Bumped on every reload that changed the snapshot, for `watch`.
    generation: watch::Sender<u64>,
    /// The bytes last parsed and the last warning, so an unchanged file is
    /// not parsed again and a problem is reported once.
    reload: Mutex<ReloadState>,
    /// How many times the file was read: idle must mean idle.
    reads: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct ReloadState {
    bytes: Option<Vec<u8>>,
    warning: Option<String>,
}

impl LiveRegistry {
    /// Loads `path` and watches it. The registry's folder is created if
    /// needed, so a service can start before the supervisor writes the file.
    pub fn open(path: PathBuf) -> LiveRegistry {
        let shared = Arc::new(Shared {
            path: path.clone(),
            snapshot: ArcSwap::default(),
            generation: watch::Sender::new(0),
            reload: Mutex::default(),
            reads: Default::default(),
        });
        // Watch first, then load: a change in between is then never missed.
        let watcher = watch_folder(&path, Arc::clone(&shared))
            .map_err(|e| {
                crate::warn(&format!(
                    "registry `{}`: cannot watch it for changes ({e}); its current content is used",
                    path.display()
                ))
            })
            .ok();
        shared.reload();
        LiveRegistry {
            path,
            shared,
            _watcher: watcher,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current snapshot: a pointer load, no syscall.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.shared.snapshot.load()
    }

    /// Notified after each reload that changed the snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Reloads now, for callers that cannot wait for the watcher.
    #[cfg(test)]
    pub fn reload(&self) {
        self.shared.reload();
    }
}

/// Watches the registry's folder, and the folder above it: a folder that is
/// deleted and made again (`rm -rf target/devmesh`) takes the first watch
/// with it, and the second sees it come back, so the first is set again.
/// Setting a watch from the watcher's own callback would deadlock: a
/// thread of its own does it, asleep until then.
fn watch_folder(path: &Path, shared: Arc<Shared>) -> notify::Result<Arc<Mutex<notify::RecommendedWatcher>>> {
    let folder = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    super::create_private_dir(&folder)?;
    let file_name = path.file_name().map(|n| n.to_os_string());
    let (rewatch, rewatch_asked) = std::sync::mpsc::channel::<()>();
    let watched = folder.clone();
    let reloader = Arc::clone(&shared);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Temp files come and go beside the registry; only its own name
        // counts, and only events that can change what it says: a reload's
        // own open and read must not wake the watcher again, or every
        // service that watches the file spins (and feeds its neighbours).
        let Ok(event) = event else {
            return shared.reload();
        };
        let folder_back = matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
        ) && event.paths.contains(&watched);
        if folder_back {
            let _ = rewatch.send(());
        }
        let relevant = event.need_rescan()
            || folder_back
            || (changes_content(&event.kind) && event.paths.iter().any(|p| p.file_name() == file_name.as_deref()));
        if relevant {
            shared.reload();
        }
    })?;
    // Watch the folder, not the file: the file is replaced by rename, and a
    // watch on the old inode would go quiet after the first write.
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    if let Some(above) = folder.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = watcher.watch(above, RecursiveMode::NonRecursive);
    }
    let watcher = Arc::new(Mutex::new(watcher));
    let weak = Arc::downgrade(&watcher);
    std::thread::Builder::new()
        .name("devmesh-rewatch".into())
        .spawn(move || {
            // Ends when the watcher (and with it the sender) is dropped.
            while rewatch_asked.recv().is_ok() {
                let Some(watcher) = weak.upgrade() else { return };
                let mut watcher = watcher.lock().unwrap_or_else(|e| e.into_inner());
                let _ = watcher.unwatch(&folder);
                let _ = watcher.watch(&folder, RecursiveMode::NonRecursive);
                drop(watcher);
                // What was written before the watch was set is read now.
                reloader.reload();
            }
        })
        .map_err(notify::Error::io)?;
    Ok(watcher)
}

/// Whether an event can change the file's content: written and closed,
/// moved into place or away, created, removed. Opens, reads, closes
/// without a write and metadata changes cannot.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        // Data is changed in place by a writer that is not done yet: the
        // close that follows is the time to read.
        EventKind::Modify(ModifyKind::Data(_)) => false,
        // A rename in the folder also comes as its two halves, and the
        // half that names this file is enough.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => false,
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => true,
    }
}

impl Shared {
    fn reload(&self) {
        let mut state = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => Some(bytes),
            // Gone while services run (the folder deleted, say): the last
            // good snapshot stays until the supervisor writes it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && state.bytes.is_some() => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                self.warn(&mut state, format!("could not read it: {e}"));
                return;
            }
        };
        if state.bytes == bytes && state.bytes.is_some() {
            return;
        }
        let file = match &bytes {
            Some(bytes) => match super::parse(bytes) {
                Ok(file) => file,
                Err(problem) => {
                    self.warn(&mut state, format!("{problem}; keeping the last good version"));
                    return;
                }
            },
            None => RegistryFile::default(),
        };
        let snapshot = self.snapshot_of(file, bytes.is_some(), &mut state);
        state.bytes = bytes;
        state.warning = None;
        self.snapshot.store(Arc::new(snapshot));
        self.generation.send_modify(|g| *g += 1);
    }

    fn snapshot_of(&self, file: RegistryFile, exists: bool, state: &mut ReloadState) -> Snapshot {
        let writer = Writer::new(file.supervisor_pid);
        let mut endpoints = HashMap::with_capacity(file.services.len());
        let mut entries = HashMap::with_capacity(file.services.len());
        for (name, entry) in file.services {
            let source = Source::Registry {
                path: self.path.clone(),
            };
            let endpoint = crate::name::validate(&name)
                .map_err(|e| e.to_string())
                .and_then(|()| Endpoint::from_url(&name, &entry.url, source).map_err(|e| e.to_string()));
            match endpoint {
                Ok(endpoint) => {
                    endpoints.insert(name.clone(), endpoint);
                    entries.insert(name, entry);
                }
                Err(e) => self.warn(state, format!("service `{name}` is skipped: {e}")),
            }
        }
        Snapshot {
            endpoints,
            entries,
            exists,
            writer,
        }
    }

    fn warn(&self, state: &mut ReloadState, message: String) {
        let message = format!("registry `{}`: {message}", self.path.display());
        if state.warning.as_ref() != Some(&message) {
            crate::warn(&message);
            state.warning = Some(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::registry::Registry;

    fn entry(url: &str) -> Entry {
        Entry::new(url)
    }

    /// Writes `orders` at `port` into `registry`.
    fn put_orders(registry: &Registry, port: u16) {
        registry
            .update(|f| {
                f.services
                    .insert("orders".into(), entry(&format!("http://127.0.0.1:{port}")));
            })
            .unwrap();
    }

    /// Waits until `check` holds, polling the in-memory snapshot only.
    fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn sees_a_replaced_file_and_keeps_the_last_good_one_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("devmesh/registry.json"));
        let live = LiveRegistry::open(registry.path().to_path_buf());
        assert!(!live.snapshot().exists);

        registry
            .update(|f| {
                f.services.insert("orders".into(), entry("http://127.0.0.1:5000"));
            })
            .unwrap();
        eventually("orders to appear", || live.snapshot().endpoints.contains_key("orders"));

        fs::write(registry.path(), "{ half a file").unwrap();
        live.reload();
        assert_eq!(live.snapshot().endpoints["orders"].url(), "http://127.0.0.1:5000");

        registry
            .update(|f| {
                f.services.insert("orders".into(), entry("http://127.0.0.1:5001"));
            })
            .unwrap();
        eventually("orders to move", || {
            live.snapshot()
                .endpoints
                .get("orders")
                .is_some_and(|e| e.url() == "http://127.0.0.1:5001")
        });
    }

    #[test]
    fn the_entries_of_a_supervisor_that_is_gone_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("registry.json"));
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        exited.wait().unwrap();
        for (writer, found) in [(std::process::id(), true), (exited.id(), false)] {
            registry
                .update(|f| {
                    f.supervisor_pid = Some(writer);
                    f.services.insert("orders".into(), entry("http://127.0.0.1:5000"));
                })
                .unwrap();
            let live = LiveRegistry::open(registry.path().to_path_buf());
            let snapshot = live.snapshot();
            assert_eq!(snapshot.endpoint("orders").is_some(), found, "written by {writer}");
            assert_eq!(snapshot.entry("orders").is_some(), found, "written by {writer}");
        }
    }

    #[test]
    fn reading_the_file_does_not_wake_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("registry.json"));
        let put = |port| put_orders(&registry, port);
        put(5000);
        // Two watchers of one file, as two services are: neither's reads
        // may wake the other.
        let live = LiveRegistry::open(registry.path().to_path_buf());
        let neighbour = LiveRegistry::open(registry.path().to_path_buf());
        let reads = || live.shared.reads.load(std::sync::atomic::Ordering::Relaxed);
        let port = |live: &LiveRegistry| live.snapshot().endpoints.get("orders").map(|e| e.url().to_owned());
        for round in 1..=20u16 {
            let before = reads();
            // Others read the file too (a neighbour, `cat`): no change.
            for _ in 0..5 {
                fs::read(registry.path()).unwrap();
            }
            put(5000 + round);
            let want = Some(format!("http://127.0.0.1:{}", 5000 + round));
            eventually("the change", || port(&live) == want && port(&neighbour) == want);
            // Events come in order: once the change is seen, the reads
            // before it were seen too. A write and a rename are at most two.
            let after = reads();
            assert!(
                after - before <= 2,
                "round {round}: {} reads for one change",
                after - before
            );
        }
    }

    #[test]
    fn the_watch_survives_its_folder_deleted_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("devmesh/registry.json"));
        let put = |port| put_orders(&registry, port);
        put(5000);
        let live = LiveRegistry::open(registry.path().to_path_buf());
        let url = || live.snapshot().endpoints.get("orders").map(|e| e.url().to_owned());
        assert_eq!(url().as_deref(), Some("http://127.0.0.1:5000"));
        fs::remove_dir_all(dir.path().join("devmesh")).unwrap();
        // Gone, the last good answer stays.
        live.reload();
        assert_eq!(url().as_deref(), Some("http://127.0.0.1:5000"));
        put(5001);
        eventually("the new folder's file", || {
            url().as_deref() == Some("http://127.0.0.1:5001")
        });
        put(5002);
        eventually("a change in the new folder", || {
            url().as_deref() == Some("http://127.0.0.1:5002")
        });
    }

    #[test]
    fn skips_entries_that_are_not_usable() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("registry.json"));
        registry
            .update(|f| {
                f.services.insert("Bad_Name".into(), entry("http://127.0.0.1:1"));
                f.services.insert("no-url".into(), entry("nonsense"));
                f.services.insert("good".into(), entry("http://127.0.0.1:2"));
            })
            .unwrap();
        let live = LiveRegistry::open(registry.path().to_path_buf());
        let names: Vec<_> = live.snapshot().endpoints.keys().cloned().collect();
        assert_eq!(names, ["good"]);
    }
}
