//! `[remote.static]` in `devmesh.toml`: fixed URLs for services that run in
//! the sandbox.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::Backend;
use crate::{Endpoint, Error, Source};

/// A fixed map of service name to base URL.
#[derive(Debug)]
pub struct StaticMap {
    description: String,
    endpoints: HashMap<String, Endpoint>,
}

impl StaticMap {
    /// The map from `[remote.static]` of the config at `config_path`.
    pub fn new(config_path: &Path, urls: &BTreeMap<String, String>) -> Result<StaticMap, Error> {
        let description = format!("static map in `{}`", config_path.display());
        let mut endpoints = HashMap::with_capacity(urls.len());
        let mut problems = Vec::new();
        for (name, url) in urls {
            let source = Source::Remote {
                backend: description.clone(),
            };
            match Endpoint::from_url(name, url, source) {
                Ok(endpoint) => {
                    endpoints.insert(name.clone(), endpoint);
                }
                Err(e) => problems.push(format!("key `remote.static.{name}`: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Config {
                path: config_path.to_path_buf(),
                problems,
            });
        }
        Ok(StaticMap { description, endpoints })
    }
}

impl Backend for StaticMap {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn lookup(&self, name: &str) -> Option<Endpoint> {
        self.endpoints.get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.endpoints.keys().cloned().collect();
        names.sort();
        names
    }
}
