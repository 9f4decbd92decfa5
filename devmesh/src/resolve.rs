//! The resolution order: env override, live registry, remote backends.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::config::Config;
use crate::errors::{Place, Searched};
use crate::registry::live::LiveRegistry;
use crate::remote::{Backend, DnsSrv, StaticMap};
use crate::{Endpoint, Error, Source, name};

/// An override variable and why its value is not a URL.
type BadOverride = (String, crate::endpoint::UrlError);

/// Answers "where is service X?". [`crate::discover`] uses one built from
/// the process's environment; build your own with [`Resolver::builder`] to
/// resolve against another registry or backends (tests, tools).
#[derive(Debug)]
pub struct Resolver {
    /// `DEVMESH_<NAME>_URL` overrides, read once: the environment of a
    /// running process does not change under it, and reading it per call
    /// would cost a lock and a scan.
    overrides: HashMap<String, Result<Endpoint, BadOverride>>,
    registry: Option<LiveRegistry>,
    backends: Vec<Box<dyn Backend>>,
    /// Why part of the configuration could not be used, shown on a miss.
    problems: Vec<Place>,
}

/// Builds a [`Resolver`].
#[derive(Debug, Default)]
pub struct ResolverBuilder {
    env: Vec<(String, String)>,
    registry: Option<PathBuf>,
    backends: Vec<Box<dyn Backend>>,
    problems: Vec<Place>,
}

impl ResolverBuilder {
    /// Env variables to take `DEVMESH_<NAME>_URL` overrides from; others are ignored.
    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// The registry file to watch.
    pub fn registry(mut self, path: impl Into<PathBuf>) -> Self {
        self.registry = Some(path.into());
        self
    }

    /// A remote backend, asked after those added before it.
    pub fn backend(mut self, backend: impl Backend + 'static) -> Self {
        self.backends.push(Box::new(backend));
        self
    }

    /// Loads the registry and starts watching it.
    pub fn build(self) -> Resolver {
        let overrides = self
            .env
            .into_iter()
            .filter_map(|(var, url)| {
                let name = name::from_url_env_var(&var)?;
                let endpoint =
                    Endpoint::from_url(&name, &url, Source::Env { var: var.clone() }).map_err(|source| (var, source));
                Some((name, endpoint))
            })
            .collect();
        Resolver {
            overrides,
            registry: self.registry.map(LiveRegistry::open),
            backends: self.backends,
            problems: self.problems,
        }
    }
}

impl Resolver {
    /// A builder with no sources.
    pub fn builder() -> ResolverBuilder {
        ResolverBuilder::default()
    }

    /// The resolver for this process: overrides from its environment, the
    /// registry from `DEVMESH_REGISTRY` or the workspace's target folder,
    /// backends from the workspace's `devmesh.toml`. A config that cannot be
    /// read is reported once, and on every miss.
    pub fn from_env() -> Resolver {
        let env = |key: &str| std::env::var(key).ok();
        let mut builder = Resolver::builder()
            .env(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))));
        if let Some(path) = crate::registry::locate(env) {
            builder = builder.registry(path);
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        if let Some(path) = Config::locate(&cwd, env) {
            let backends = Config::load(&path).and_then(|c| {
                let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(StaticMap::new(&path, &c.remote.static_map)?)];
                if let Some(dns) = &c.remote.dns {
                    backends.push(Box::new(DnsSrv::new(dns)?));
                }
                #[cfg(feature = "etcd")]
                if let Some(etcd) = &c.remote.etcd {
                    backends.push(Box::new(crate::remote::Etcd::new(etcd)?));
                }
                Ok((backends, c.remote.etcd.is_some()))
            });
            if let Ok((_, true)) = &backends
                && cfg!(not(feature = "etcd"))
            {
                builder.problems.push(Place {
                    place: "`[remote.etcd]`".into(),
                    found: "not read: this service was built without devmesh's `etcd` feature \
                            (hint: `devmesh = { features = [\"etcd\"] }`)"
                        .into(),
                });
            }
            let backends = backends.map(|(backends, _)| backends);
            match backends {
                Ok(backends) => builder.backends.extend(backends),
                Err(e) => {
                    crate::warn(&e.to_string());
                    builder.problems.push(Place {
                        place: format!("config `{}`", path.display()),
                        found: format!("not used: {e}"),
                    });
                }
            }
        }
        builder.build()
    }

    /// Where `name` runs, first hit wins: env override, registry, backends.
    /// A hit makes no syscall and no allocation.
    pub fn discover(&self, name: &str) -> Result<Endpoint, Error> {
        if let Some(found) = self.overrides.get(name) {
            return found
                .clone()
                .map_err(|(var, source)| Error::BadOverride { var, source });
        }
        if let Some(registry) = &self.registry
            && let Some(endpoint) = registry.snapshot().endpoint(name)
        {
            return Ok(endpoint.clone());
        }
        if let Some(endpoint) = self.backends.iter().find_map(|b| b.lookup(name)) {
            return Ok(endpoint);
        }
        name::validate(name)?;
        Err(self.not_found(name))
    }

    /// The registry's entry for `name`, for fields beyond its URL.
    pub(crate) fn registry_entry(&self, name: &str) -> Option<crate::registry::Entry> {
        self.registry.as_ref()?.snapshot().entry(name).cloned()
    }

    /// A receiver notified whenever the registry changes; `None` without one.
    pub(crate) fn registry_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.registry.as_ref().map(LiveRegistry::subscribe)
    }

    fn not_found(&self, name: &str) -> Error {
        let mut searched = Vec::new();
        let mut known = BTreeSet::new();
        let overrides: Vec<_> = self.overrides.keys().map(String::as_str).collect();
        searched.push(Place {
            place: format!("env `{}`", name::url_env_var(name)),
            found: if overrides.is_empty() {
                "not set".into()
            } else {
                format!("not set (overrides are set for {})", sorted(&overrides))
            },
        });
        known.extend(overrides.iter().map(|s| s.to_string()));
        searched.push(match &self.registry {
            Some(registry) => {
                let snapshot = registry.snapshot();
                let names: Vec<_> = snapshot.endpoints.keys().map(String::as_str).collect();
                known.extend(names.iter().map(|s| s.to_string()));
                Place {
                    place: format!("registry `{}`", registry.path().display()),
                    found: if !snapshot.exists {
                        "does not exist yet (hint: is `cargo devmesh run` running?)".into()
                    } else if snapshot.writer.gone() {
                        format!(
                            "was written by supervisor {}, which is no longer running: its entries are gone \
                             (hint: start `cargo devmesh run` again)",
                            snapshot.writer.pid().unwrap_or_default()
                        )
                    } else {
                        has(&names)
                    },
                }
            }
            None => Place {
                place: "registry".into(),
                found: "none found (hint: run under `cargo devmesh run`, or set `DEVMESH_REGISTRY`)".into(),
            },
        });
        for backend in &self.backends {
            let names = backend.names();
            searched.push(Place {
                place: backend.describe(),
                found: has(&names.iter().map(String::as_str).collect::<Vec<_>>()),
            });
            known.extend(names);
        }
        if self.backends.is_empty() && self.problems.is_empty() {
            searched.push(Place {
                place: "remote backends".into(),
                found: "none configured (hint: add `[remote.static]` to `devmesh.toml`)".into(),
            });
        }
        searched.extend(self.problems.iter().cloned());
        Error::NotFound {
            name: name.to_owned(),
            suggestion: name::near_miss(name, known.iter().map(String::as_str)).map(str::to_owned),
            searched: Searched(searched),
        }
    }
}

fn sorted(names: &[&str]) -> String {
    let mut names = names.to_vec();
    names.sort_unstable();
    names.join(", ")
}

fn has(names: &[&str]) -> String {
    if names.is_empty() {
        "is empty".into()
    } else {
        format!("has {}", sorted(names))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::registry::{Entry, Registry};

    fn static_map(pairs: &[(&str, &str)]) -> StaticMap {
        let urls: BTreeMap<_, _> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        StaticMap::new(Path::new("devmesh.toml"), &urls).unwrap()
    }

    fn registry_with(dir: &Path, pairs: &[(&str, &str)]) -> PathBuf {
        let registry = Registry::new(dir.join("registry.json"));
        registry
            .update(|f| {
                for (name, url) in pairs {
                    f.services.insert(name.to_string(), Entry::new(*url));
                }
            })
            .unwrap();
        registry.path().to_path_buf()
    }

    fn var(name: &str, url: &str) -> (String, String) {
        (name.to_owned(), url.to_owned())
    }

    #[test]
    fn each_source_answers_alone() {
        let dir = tempfile::tempdir().unwrap();
        let env = Resolver::builder()
            .env([var("DEVMESH_SVC_B_URL", "http://10.0.0.1:80")])
            .build();
        let b = env.discover("svc-b").unwrap();
        assert_eq!(b.url(), "http://10.0.0.1:80");
        assert_eq!(
            b.source(),
            &Source::Env {
                var: "DEVMESH_SVC_B_URL".into()
            }
        );

        let path = registry_with(dir.path(), &[("svc-b", "http://127.0.0.1:41001")]);
        let registry = Resolver::builder().registry(&path).build();
        let b = registry.discover("svc-b").unwrap();
        assert_eq!(b.addr(), Some("127.0.0.1:41001".parse().unwrap()));
        assert_eq!(b.source(), &Source::Registry { path });

        let remote = Resolver::builder()
            .backend(static_map(&[("svc-b", "https://b.example.com")]))
            .build();
        let b = remote.discover("svc-b").unwrap();
        assert_eq!(b.url(), "https://b.example.com");
        assert!(matches!(b.source(), Source::Remote { backend } if backend.contains("static map")));
    }

    #[test]
    fn env_beats_registry_beats_backends() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry_with(dir.path(), &[("a", "http://127.0.0.1:2"), ("b", "http://127.0.0.1:2")]);
        let resolver = Resolver::builder()
            .env([var("DEVMESH_A_URL", "http://127.0.0.1:1")])
            .registry(path)
            .backend(static_map(&[
                ("a", "http://h:3"),
                ("b", "http://h:3"),
                ("c", "http://h:3"),
            ]))
            .backend(static_map(&[("c", "http://h:4"), ("d", "http://h:4")]))
            .build();
        let port = |name| resolver.discover(name).unwrap().port();
        assert_eq!([port("a"), port("b"), port("c"), port("d")], [1, 2, 3, 4]);
    }

    #[test]
    fn a_miss_lists_every_place_and_suggests_a_near_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry_with(
            dir.path(),
            &[("orders", "http://127.0.0.1:2"), ("gateway", "http://127.0.0.1:3")],
        );
        let resolver = Resolver::builder()
            .env([var("DEVMESH_AUTH_URL", "http://127.0.0.1:1")])
            .registry(&path)
            .backend(static_map(&[("payments", "http://h:3")]))
            .build();
        let err = resolver.discover("ordrs").unwrap_err().to_string();
        let expected = format!(
            "service `ordrs` was not found; looked in:\n  \
             - env `DEVMESH_ORDRS_URL`: not set (overrides are set for auth)\n  \
             - registry `{}`: has gateway, orders\n  \
             - static map in `devmesh.toml`: has payments\n\
             (hint: did you mean `orders`?)",
            path.display()
        );
        assert_eq!(err, expected);
    }

    #[test]
    fn a_miss_without_sources_says_how_to_get_them() {
        let err = Resolver::builder().build().discover("x").unwrap_err().to_string();
        assert!(err.contains("registry: none found (hint:"), "{err}");
        assert!(err.contains("remote backends: none configured"), "{err}");
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn invalid_names_and_bad_overrides_are_errors_of_their_own() {
        let resolver = Resolver::builder().env([var("DEVMESH_B_URL", "b:80")]).build();
        let err = resolver.discover("Bad_Name").unwrap_err().to_string();
        assert!(err.contains("`Bad_Name` is not a valid service name"), "{err}");
        let err = resolver.discover("b").unwrap_err().to_string();
        assert!(
            err.starts_with("env `DEVMESH_B_URL`: `b:80` is not a usable base URL"),
            "{err}"
        );
    }

    #[test]
    fn readers_never_miss_a_service_while_writers_replace_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry_with(dir.path(), &[("stable", "http://127.0.0.1:1")]);
        let resolver = Resolver::builder().registry(&path).build();
        let registry = Registry::new(&path);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for writer in 0..2u16 {
                let registry = registry.clone();
                let done = &done;
                s.spawn(move || {
                    for i in 0..1500u16 {
                        registry
                            .update(|f| {
                                f.services
                                    .insert("stable".into(), Entry::new(format!("http://127.0.0.1:{}", i + 1)));
                                f.services
                                    .insert(format!("churn-{writer}"), Entry::new("http://127.0.0.1:9"));
                                if i % 2 == 0 {
                                    f.services.remove(&format!("churn-{writer}"));
                                }
                            })
                            .unwrap();
                    }
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                });
            }
            s.spawn(|| {
                let mut lookups = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let endpoint = resolver.discover("stable").expect("stable is in every version");
                    assert!(endpoint.port() >= 1);
                    lookups += 1;
                }
                assert!(lookups > 0);
            });
            // Raw readers of the file itself: never a torn file.
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let file = registry.read().expect("every version on disk is whole");
                    assert!(file.services.contains_key("stable"));
                }
            });
        });
    }
}
