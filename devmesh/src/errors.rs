//! Every error the library returns. Each names the thing it is about
//! (service, file, variable, address) and, where there is one, the fix.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::endpoint::UrlError;

/// An error from devmesh.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name that cannot be a service name.
    #[error(
        "`{name}` is not a valid service name: {reason} (hint: a service name is a DNS label: \
         1 to 63 of a-z, 0-9 and `-`, not starting or ending with `-`)"
    )]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// No place in the resolution order knows the service.
    #[error("service `{name}` was not found; looked in:{searched}{}", Hint(suggestion.as_deref()))]
    NotFound {
        /// The service asked for.
        name: String,
        /// Each place looked in, in order, and what it had.
        searched: Searched,
        /// A known name close to the one asked for.
        suggestion: Option<String>,
    },

    /// An env override that is not a URL.
    #[error("env `{var}`: {source} (hint: set it to a base URL such as `http://127.0.0.1:8080`)")]
    BadOverride {
        /// The variable, `DEVMESH_<NAME>_URL`.
        var: String,
        /// Why its value is unusable.
        source: UrlError,
    },

    /// `devmesh.toml` (or its `DEVMESH_*__*` env overrides) could not be used.
    #[error("config `{}` is not valid:{}", path.display(), Lines(problems))]
    Config {
        /// The config file.
        path: PathBuf,
        /// One line per problem, each naming the key and what was expected.
        problems: Vec<String>,
    },

    /// The registry file could not be read or written.
    #[error("registry `{}`: {problem}", path.display())]
    Registry {
        /// The registry file.
        path: PathBuf,
        /// What went wrong.
        problem: RegistryProblem,
    },

    /// No socket to listen on could be had.
    #[error("could not listen on {what}: {source}")]
    Listen {
        /// The address or inherited socket tried.
        what: String,
        /// The OS error.
        source: io::Error,
    },

    /// A service asked for its callback URL without one being known.
    #[error(
        "no callback URL is known for this process: `DEVMESH_CALLBACK_URL` and \
         `DEVMESH_SERVICE` are not set (hint: run it under `cargo devmesh run`, \
         or set `DEVMESH_CALLBACK_URL`)"
    )]
    NoCallbackUrl,
}

/// What went wrong with the registry file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryProblem {
    /// Reading, writing or renaming failed.
    #[error("could not {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a registry (corrupt or half-written by hand).
    #[error(
        "it is not valid registry JSON: {0} (hint: the supervisor rewrites it; \
         delete it if no `cargo devmesh run` is running)"
    )]
    Corrupt(serde_json::Error),
    /// The file was written by a newer devmesh.
    #[error(
        "it has format version {found}, this devmesh reads version {supported} \
         (hint: use the same devmesh version for the supervisor and services)"
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
}

/// The places `discover` looked in, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Searched(pub Vec<Place>);

/// One place `discover` looked in, and what it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The place: `env \`DEVMESH_X_URL\``, `registry \`…\``, a backend.
    pub place: String,
    /// What it had: `not set`, `has a, b`, `is empty`, an error.
    pub found: String,
}

impl fmt::Display for Searched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for Place { place, found } in &self.0 {
            write!(f, "\n  - {place}: {found}")?;
        }
        Ok(())
    }
}

struct Hint<'a>(Option<&'a str>);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "\n(hint: did you mean `{name}`?)"),
            None => Ok(()),
        }
    }
}

struct Lines<'a>(&'a [String]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|line| write!(f, "\n  - {line}"))
    }
}
