//! The relay's config file.
//!
//! ```toml
//! listen = "0.0.0.0:7000"        # where supervisors connect
//! public_host = "relay.sandbox.example.com"   # the host in public URLs
//! ports = "31000-31999"          # public ports, one a tunnel (unless [domain])
//! tokens = "/etc/devmesh/tokens" # lines `name: token` (0600); never on a command line
//! data = "/var/lib/devmesh-relay"  # reservations
//!
//! [domain]                       # host-based routing instead of a port a tunnel:
//! name = "tunnels.example.com"   # `<svc>--<namespace>.tunnels.example.com`; *.tunnels… points here
//! listen = "0.0.0.0:443"
//!
//! [tls]                          # TLS on every side: supervisors', and callers'
//! cert = "/etc/devmesh/relay.pem"
//! key = "/etc/devmesh/relay.key"
//!
//! [limits]                       # per token
//! tunnels = 64
//! connections = 1024             # public and dialed connections open at once
//! handshake = "10s"              # for a supervisor to say who it is
//!
//! [dial]                         # what each token's supervisor may reach inside the sandbox
//! alice = ["payments.svc.cluster.local:8080", "10.1.0.0/16", "127.0.0.1:9000"]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Every key of the relay's config file, one line each, for `--help`.
pub const KEYS_HELP: &str = "\
The config file (TOML); every key, its type and default:
  listen = \"0.0.0.0:7000\"         address (required): where supervisors connect
  public_host = \"relay.example\"   host name (required): what tunnel URLs are made of
  ports = \"31000-31999\"           port range: a public port a tunnel (not needed with [domain])
  tokens = \"/etc/devmesh/tokens\"  file (required): `name: token` lines, tokens of 16+ characters, 0600
  data = \"/var/lib/devmesh-relay\" folder (required): reservations kept across restarts
  [domain]                          optional: every tunnel at <svc>--<namespace>.<name>
    name = \"tunnels.example.com\"  domain (required in the section)
    listen = \"0.0.0.0:443\"        address (required in the section)
  [tls]                             optional: TLS for supervisors and callers
    cert = \"relay.pem\"            PEM file (required in the section)
    key = \"relay.key\"             PEM file (required in the section)
  [limits]                          per token
    tunnels = 64                    tunnels open at once
    connections = 1024              connections open at once; more get a 503
    handshake = \"10s\"             time for a supervisor to say who it is
  [dial]                            what each token's supervisor may reach in the sandbox
    alice = [\"host:port\", \"host\", \"10.1.0.0/16\"]   by token name; default: nothing
";

/// What is wrong with the relay's config file, a line a problem.
#[derive(Debug, thiserror::Error)]
#[error("the relay's config `{path}`:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub path: std::path::PathBuf,
    pub problems: Vec<String>,
}

/// The relay's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub public_host: String,
    /// Public ports, one a tunnel; not needed with `[domain]`.
    #[serde(default, deserialize_with = "ports")]
    pub ports: Option<(u16, u16)>,
    pub tokens: PathBuf,
    pub data: PathBuf,
    #[serde(default)]
    pub domain: Option<DomainConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// What each token's supervisor may dial, by token name.
    #[serde(default)]
    pub dial: BTreeMap<String, Vec<String>>,
}

/// `[domain]`: every tunnel on one listener, told apart by the Host a
/// caller asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    pub listen: SocketAddr,
}

/// `[tls]`: PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[limits]`, per token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub tunnels: usize,
    pub connections: usize,
    #[serde(deserialize_with = "seconds")]
    pub handshake: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tunnels: 64,
            connections: 1024,
            handshake: Duration::from_secs(10),
        }
    }
}

fn ports<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<(u16, u16)>, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = text
        .split_once('-')
        .and_then(|(low, high)| Some((low.trim().parse().ok()?, high.trim().parse().ok()?)));
    match parsed {
        Some((low, high)) if low > 0 && low <= high => Ok(Some((low, high))),
        _ => Err(serde::de::Error::custom(format!(
            "`{text}` is no port range (hint: `31000-31999`)"
        ))),
    }
}

/// `"10s"`, `"500ms"`.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = match text.trim() {
        t if t.ends_with("ms") => t.trim_end_matches("ms").trim().parse().ok().map(Duration::from_millis),
        t => t.trim_end_matches('s').trim().parse().ok().map(Duration::from_secs),
    };
    parsed
        .filter(|d| !d.is_zero())
        .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is no duration (hint: `10s` or `500ms`)")))
}

impl RelayConfig {
    /// Reads the config file at `path`.
    pub fn load(path: &Path) -> Result<RelayConfig, ConfigError> {
        use figment::providers::Format;
        RelayConfig::extract(figment::Figment::from(figment::providers::Toml::file_exact(path)), path)
    }

    /// The config written in `text`, as if it were the file at `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<RelayConfig, ConfigError> {
        use figment::providers::Format;
        RelayConfig::extract(figment::Figment::from(figment::providers::Toml::string(text)), path)
    }

    fn extract(figment: figment::Figment, path: &Path) -> Result<RelayConfig, ConfigError> {
        let problem = |problems: Vec<String>| ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        let config: RelayConfig = figment.extract().map_err(|errors| {
            problem(
                errors
                    .into_iter()
                    .map(|e| devmesh::config::describe(&e, path))
                    .collect(),
            )
        })?;
        let mut problems = Vec::new();
        if config.ports.is_none() && config.domain.is_none() {
            problems.push("it gives tunnels no address (hint: `ports = \"31000-31999\"`, or a `[domain]`)".to_owned());
        }
        if let Some(domain) = &config.domain
            && domain
                .name
                .split('.')
                .any(|label| devmesh::name::validate(label).is_err())
        {
            problems.push(format!("key `domain.name`: `{}` is no domain name", domain.name));
        }
        match problems.is_empty() {
            true => Ok(config),
            false => Err(problem(problems)),
        }
    }

    /// `https` with `[tls]`, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The public URL of a tunnel on port `port`, or, with `[domain]`, of
    /// the one at host label `label`.
    pub fn url(&self, port: Option<u16>, label: &str) -> String {
        let scheme = self.scheme();
        match (&self.domain, port) {
            (Some(domain), _) => {
                let default = if self.tls.is_some() { 443 } else { 80 };
                match domain.listen.port() {
                    port if port == default => format!("{scheme}://{label}.{}", domain.name),
                    port => format!("{scheme}://{label}.{}:{port}", domain.name),
                }
            }
            (None, Some(port)) => format!("{scheme}://{}:{port}", self.public_host),
            (None, None) => format!("{scheme}://{}", self.public_host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<RelayConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, text).unwrap();
        RelayConfig::load(&path)
    }

    const BASE: &str = "listen = \"127.0.0.1:7000\"\npublic_host = \"relay\"\ntokens = \"t\"\ndata = \"d\"\n";

    #[test]
    fn a_tunnel_needs_ports_or_a_domain() {
        let error = load(BASE).unwrap_err().to_string();
        assert!(error.contains("gives tunnels no address"), "{error}");
        let ports = load(&format!("{BASE}ports = \"31000-31009\"\n")).unwrap();
        assert_eq!(ports.url(Some(31003), "beta--alice"), "http://relay:31003");
        let domain = load(&format!(
            "{BASE}[domain]\nname = \"t.example.com\"\nlisten = \"0.0.0.0:8080\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n"
        ))
        .unwrap();
        assert_eq!(
            domain.url(None, "beta--alice"),
            "https://beta--alice.t.example.com:8080"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let error = load(&format!("{BASE}ports = \"9-1\"\n")).unwrap_err().to_string();
        assert!(error.contains("`9-1` is no port range"), "{error}");
        let error = load(&format!("{BASE}port = \"1-2\"\n")).unwrap_err().to_string();
        assert!(
            error.contains("key `port`: unknown key; expected one of listen, public_host, ports"),
            "{error}"
        );
        let error = load(&format!("{BASE}ports = \"1-2\"\n[limits]\nhandshake = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("`soon` is no duration"), "{error}");
        let error = load(&format!(
            "{BASE}[domain]\nname = \"not a domain\"\nlisten = \"0.0.0.0:80\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("is no domain name"), "{error}");
        let limits = load(&format!("{BASE}ports = \"1-2\"\n[limits]\nhandshake = \"250ms\"\n"))
            .unwrap()
            .limits;
        assert_eq!(
            (limits.handshake, limits.connections),
            (Duration::from_millis(250), 1024)
        );
    }
}
