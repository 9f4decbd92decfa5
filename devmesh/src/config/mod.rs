//! `devmesh.toml`: the workspace's config, read with figment and overridden
//! by `DEVMESH_<SECTION>__<KEY>` env variables.
//!
//! ```toml
//! [run]
//! ports = "24000-24999"     # where new front ports are taken from (below the ephemeral range)
//! ready_timeout = "30s"     # how long a request waits for a service that is not ready
//! response_timeout = "60s"  # how long a request waits for a response's head (then 504)
//! grace_period = "5s"       # SIGTERM, then this long, then SIGKILL
//! drain_timeout = "10m"     # how long a replaced instance stays for its open WebSockets and streams
//!
//! [services.orders]         # a workspace binary (found by itself; listed to configure it)
//! port = 41001
//! depends_on = ["payments"]
//! ready = "/health"         # GET must return 2xx; or "tcp"; default "responds" (any answer to GET /.well-known/devmesh-ready)
//!
//! [services.cache]
//! command = "redis-server --port $PORT"
//! protocol = "tcp"          # its front port pipes bytes; default "http" (requests, inspected)
//!
//! [services.web]            # any command
//! command = "npm run dev"
//! cwd = "web"
//! env = { NODE_ENV = "development" }
//! env_file = "web/.env.local"  # KEY=value lines; the root's `.env` is read for every service
//! watch = ["web/src"]       # what `run --watch` restarts it on (default: its cwd)
//!
//! [remote]
//! ca = "certs/sandbox-ca.pem"  # a sandbox's private CA, for its https:// services
//!
//! [remote.static]           # services that run elsewhere
//! payments = "https://payments.sandbox.example.com"
//!
//! [remote.dns]              # services as DNS SRV records: _<svc>._tcp.<domain>
//! server = "10.0.0.2:8600"  # Consul's DNS interface, a cluster's DNS
//! domain = "service.consul"
//! services = ["billing"]    # asked at once, and given front ports
//!
//! [remote.etcd]             # the team's registry (cargo feature `etcd` for services)
//! endpoints = ["10.0.0.2:2379", "10.0.0.3:2379"]
//! namespace = "sandbox"     # keys /devmesh/<namespace>/services/<name>
//! lease = "10s"             # a shared service vanishes this long after its supervisor
//!
//! [tunnel]                  # URLs remote services call back on (services with expose = true)
//! relay = "relay.sandbox.example.com:7000"   # `cargo devmesh relay`, run once by the team
//! token_file = "~/.config/devmesh/token"     # or DEVMESH_TUNNEL_TOKEN; never on a command line
//! namespace = "alice"       # the same URL every run
//! tls = true                # when the relay has `[tls]`; `ca` = its CA's PEM file if it is the team's own
//!
//! [logs]
//! max_size = "10MiB"        # a service's log file is rotated at this size
//! keep = 3                  # rotated files kept (<svc>.log.1, .2, .3)
//! rate = 10000              # lines a second kept of a service's output; more are dropped and counted
//!
//! [inspector]
//! max_body = 262144         # bytes kept per body
//! memory = 67108864         # bytes kept in all: captured traffic, and a quarter for services' spans
//! mask_headers = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"]  # the default
//! ```
//!
//! Only env variables with a `__` are config (`DEVMESH_RUN__READY_TIMEOUT=5s`,
//! `DEVMESH_SERVICES__ORDERS__PORT=41009`); the single-word ones
//! (`DEVMESH_REGISTRY`, `DEVMESH_SERVICE`, …) are the runtime contract.

mod duration;
mod size;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::Error;

/// The config file's name, at the workspace root.
pub const FILE_NAME: &str = "devmesh.toml";

/// The whole `devmesh.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// How `cargo devmesh run` supervises.
    #[serde(default)]
    pub run: RunConfig,
    /// Services by name: workspace binaries to configure, or other commands.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Where services that don't run locally are found.
    #[serde(default)]
    pub remote: RemoteConfig,
    /// What the traffic inspector keeps.
    #[serde(default)]
    pub inspector: InspectorConfig,
    /// How services' log files are kept.
    #[serde(default)]
    pub logs: LogsConfig,
    /// `[tunnel]`: the relay that gives services marked `expose = true` a
    /// URL remote services can call back on.
    #[serde(default)]
    pub tunnel: Option<TunnelConfig>,
}

/// `[tunnel]`: the team's relay (`cargo devmesh relay`). Its keys are
/// checked with the rest of the file, every problem at once: a missing
/// key and an unknown one are problems, not the first error serde meets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct TunnelConfig {
    /// The relay's control address, `host:port` (required).
    #[serde(default)]
    pub relay: String,
    /// A file holding this developer's token (or `DEVMESH_TUNNEL_TOKEN`):
    /// never on a command line.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Whose tunnels: a developer's name, so that URLs stay theirs (required).
    #[serde(default)]
    pub namespace: String,
    /// Services in the sandbox reached through the relay, which dials
    /// them inside the sandbox's network (names only it resolves,
    /// addresses only it reaches), if its `[dial]` lets this token.
    #[serde(default)]
    pub reach: Vec<String>,
    /// Speak TLS to the relay (one with `[tls]` in its config).
    #[serde(default)]
    pub tls: bool,
    /// The relay's CA, a PEM file, when its certificate is not signed by
    /// a public one (implies `tls`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Keys this version does not know: each is a problem of its own.
    #[serde(flatten)]
    unknown: BTreeMap<String, figment::value::Value>,
}

impl TunnelConfig {
    /// The keys `[tunnel]` takes, for the hint of an unknown one.
    const KEYS: [&str; 6] = ["relay", "token_file", "namespace", "reach", "tls", "ca"];

    /// What serde cannot check, each problem on its own.
    fn problems(&self, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        for key in self.unknown.keys() {
            problems.push(format!(
                "key `tunnel.{key}`: unknown key; expected one of {}",
                TunnelConfig::KEYS.join(", ")
            ));
        }
        let port = self
            .relay
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|port| *port != 0);
        if self.relay.is_empty() {
            problems.push(
                "key `tunnel.relay`: missing (hint: the relay's `HOST:PORT`, e.g. `sandbox.internal:7000`)".to_owned(),
            );
        } else if port.is_none() {
            problems.push(format!(
                "key `tunnel.relay`: `{}` is not `HOST:PORT` (hint: the relay's control port, 7000 by default: `{}:7000`)",
                self.relay,
                self.relay.trim_end_matches(':')
            ));
        }
        if self.namespace.is_empty() || !self.namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            problems.push(format!(
                "key `tunnel.namespace`: `{}` must be letters, digits and `-` (hint: your name)",
                self.namespace
            ));
        }
        // etcd's names are known only as it answers: with it, any name may be one.
        let remote = |name: &String| {
            config.remote.static_map.contains_key(name)
                || config
                    .remote
                    .dns
                    .as_ref()
                    .is_some_and(|dns| dns.services.contains(name))
                || config.remote.etcd.is_some()
        };
        for name in &self.reach {
            if let Err(e) = crate::name::validate(name) {
                problems.push(format!("key `tunnel.reach`: {e}"));
            } else if !remote(name) {
                problems.push(format!(
                    "key `tunnel.reach`: `{name}` is no remote service (hint: give it an address in the sandbox, \
                     e.g. `[remote.static] {name} = \"http://{name}:8080\"`)"
                ));
            }
        }
        problems
    }
}

/// `[logs]`: each service's log file is rotated at `max_size`, and `keep`
/// rotated files are kept (`<svc>.log.1` the newest): a service printing
/// 30 MB/s never fills the disk. Past `rate` lines a second (with a burst
/// of as many), a service's lines are dropped and counted in a note: a
/// service at `yes` speed neither falls behind nor slows anything.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LogsConfig {
    #[serde(with = "size")]
    pub max_size: u64,
    pub keep: usize,
    /// Lines a second kept of each service's output.
    pub rate: u32,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_size: 10 << 20,
            keep: 3,
            rate: 10_000,
        }
    }
}

/// `[inspector]`: what the front ports capture.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct InspectorConfig {
    /// Capture traffic at all.
    pub capture: bool,
    /// Bytes kept of each request or response body; the rest is counted
    /// and marked truncated.
    pub max_body: usize,
    /// Bytes of captured traffic kept in all; the oldest go first.
    pub memory: usize,
    /// Headers whose values are masked wherever exchanges are shown
    /// (case-insensitive); by default `authorization`,
    /// `proxy-authorization`, `cookie`, `set-cookie` and `x-api-key`. The
    /// list replaces the default: `[]` shows every value.
    pub mask_headers: Vec<String>,
}

impl Default for InspectorConfig {
    fn default() -> Self {
        InspectorConfig {
            capture: true,
            max_body: 256 * 1024,
            memory: 64 * 1024 * 1024,
            mask_headers: [
                "authorization",
                "proxy-authorization",
                "cookie",
                "set-cookie",
                "x-api-key",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// `[run]`: how the supervisor behaves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RunConfig {
    /// Where front ports are assigned from, `"41000-41999"`.
    #[serde(with = "port_range")]
    pub ports: (u16, u16),
    /// How long a connection waits for a service that is not ready.
    #[serde(with = "duration")]
    pub ready_timeout: Duration,
    /// How long a request waits for the head of its response before a 504;
    /// a response that has begun (a download, SSE, a WebSocket) is not cut.
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    /// How long a service has to exit after SIGTERM before SIGKILL.
    #[serde(with = "duration")]
    pub grace_period: Duration,
    /// How long an instance replaced by a restart stays for its open
    /// WebSockets, streams and long downloads to end, before it is stopped
    /// and they are cut (`restart --now`: the grace period).
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            ports: (24000, 24999),
            ready_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            grace_period: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(600),
        }
    }
}

/// `[services.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The workspace package whose binary this is (default: the service name).
    pub package: Option<String>,
    /// The binary's name, when the package has several.
    pub bin: Option<String>,
    /// A shell command to run instead of a workspace binary.
    pub command: Option<String>,
    /// Arguments passed to the binary.
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory, relative to the workspace root.
    pub cwd: Option<PathBuf>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A file of `KEY=value` lines to add to its environment (relative to
    /// the workspace root), over the root's `.env` and under `env`.
    pub env_file: Option<PathBuf>,
    /// For a command, what `run --watch` watches to restart it (relative
    /// to the workspace root); default: its `cwd`, and without one the
    /// workspace less its Rust packages and other commands' folders.
    pub watch: Option<Vec<PathBuf>>,
    /// A fixed front port (default: assigned once and kept).
    pub port: Option<u16>,
    /// Services that must be ready before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// How readiness is checked: `"responds"` (default), `"tcp"`, or an
    /// HTTP path such as `"/health"` that must return 2xx.
    #[serde(default)]
    pub ready: Readiness,
    /// Whether it runs here, in the sandbox, or here when it runs.
    #[serde(default)]
    pub mode: Mode,
    /// What its front port carries: HTTP requests (the default), or bytes
    /// of any other protocol, piped as they come.
    #[serde(default)]
    pub protocol: Protocol,
    /// Set `DEVMESH_<NAME>_ADDR` for every service, for programs that don't
    /// link devmesh.
    #[serde(default)]
    pub inject_env: bool,
    /// Register it in `[remote.etcd]` under the namespace while it runs, so
    /// that others find it.
    #[serde(default)]
    pub share: bool,
    /// Give it a URL on the `[tunnel]` relay that remote services can call
    /// back on (`devmesh::callback_url()`).
    #[serde(default)]
    pub expose: bool,
    /// Let anyone call its tunnel URL (webhooks from outside); by default
    /// a caller needs a team token.
    #[serde(default)]
    pub public: bool,
    /// Serve, from here, only the sandbox's requests that carry this
    /// developer's route (`baggage: devmesh-route=NAME`): `true` for the
    /// route named by `[tunnel] namespace`, or a name of its own. The
    /// sandbox's copy serves every other request, and this route's while
    /// this supervisor is not connected; `"strict"` (the route of `true`)
    /// has those fail instead.
    #[serde(default)]
    pub route: Option<RouteSetting>,
}

/// The `route` that asks for no fallback to the sandbox's copy.
const STRICT: &str = "strict";

/// A service's `route`: `true`, `false`, `"strict"`, or a route's name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RouteSetting {
    Flag(bool),
    Named(String),
}

impl ServiceConfig {
    /// Whether its route's requests fail while it is not connected, rather
    /// than go to the sandbox's copy (`route = "strict"`).
    pub fn strict_route(&self) -> bool {
        matches!(&self.route, Some(RouteSetting::Named(name)) if name == STRICT)
    }

    /// The route this copy serves, if it is routed: its own name, else
    /// `[tunnel] namespace`.
    pub fn route_name<'a>(&'a self, tunnel: Option<&'a TunnelConfig>) -> Option<&'a str> {
        match &self.route {
            Some(RouteSetting::Named(name)) if name != STRICT => Some(name),
            Some(RouteSetting::Named(_) | RouteSetting::Flag(true)) => tunnel.map(|t| t.namespace.as_str()),
            Some(RouteSetting::Flag(false)) | None => None,
        }
    }
}

/// The path the default readiness check asks for. A path no application
/// routes (RFC 8615's well-known prefix), so the check runs none of its
/// handlers: checking `GET /` made a front page that calls other services
/// call them at every start, and every answer (a 404 too) proves the
/// service serves.
pub const RESPONDS_PATH: &str = "/.well-known/devmesh-ready";

/// How the supervisor decides a service is ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// It answers `GET` [`RESPONDS_PATH`] with any HTTP response
    /// (`"responds"`, the default). A connect alone proves nothing for a
    /// service handed a listening socket: the kernel accepts before the
    /// service does.
    #[default]
    Responds,
    /// Its socket accepts a connection (`"tcp"`), for services that don't
    /// speak HTTP.
    Tcp,
    /// `GET <path>` returns 2xx.
    Http(String),
}

impl<'de> Deserialize<'de> for Readiness {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "responds" => Ok(Readiness::Responds),
            "tcp" => Ok(Readiness::Tcp),
            path if path.starts_with('/') => Ok(Readiness::Http(text)),
            _ => Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(&text),
                &"`responds`, `tcp`, or an HTTP path starting with `/`",
            )),
        }
    }
}

/// What a service's front port carries. It is declared, never guessed
/// from timing: a pooled HTTP connection may stay quiet for minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1, h2c and upgrades (WebSocket): request by request, each
    /// captured; a connection whose first bytes are not HTTP is piped.
    #[default]
    Http,
    /// Any TCP protocol, piped both ways (databases, caches, protocols
    /// where the server speaks first).
    Tcp,
}

/// Where a service runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Always here.
    Local,
    /// Always in the sandbox.
    Remote,
    /// Here when it runs here, in the sandbox otherwise.
    #[default]
    Auto,
}

impl Mode {
    /// Its name, as `devmesh.toml` and `cargo devmesh mode` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Remote => "remote",
            Mode::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Mode, String> {
        [Mode::Local, Mode::Remote, Mode::Auto]
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| format!("`{text}` is no mode (hint: `local`, `remote` or `auto`)"))
    }
}

/// `[remote]`: backends that know services running elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RemoteConfig {
    /// `[remote.static]`: service name → base URL.
    #[serde(rename = "static", default)]
    pub static_map: BTreeMap<String, String>,
    /// `[remote.dns]`: services found by DNS SRV.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// `[remote.etcd]`: the team's shared registry in etcd.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    /// A PEM file of the certificate authority a sandbox's HTTPS services
    /// are signed by, besides the public ones (relative to the workspace).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// `[remote.etcd]`: services under `/devmesh/<namespace>/services/<name>`
/// in an etcd cluster (read with the cargo feature `etcd`), watched for
/// changes; the supervisor registers the services marked `share = true`
/// there, with a lease it keeps alive.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Members' client addresses, `host:port` (asked in turn).
    pub endpoints: Vec<String>,
    /// Whose services: the team's sandbox, or a developer's own.
    pub namespace: String,
    /// How long a shared service stays registered after the supervisor
    /// stops renewing it (killed, or the laptop asleep).
    #[serde(default = "default_lease", with = "duration")]
    pub lease: Duration,
}

fn default_lease() -> Duration {
    Duration::from_secs(10)
}

/// `[remote.dns]`: services as the SRV records `_<svc>._tcp.<domain>` of
/// one DNS server (Consul's DNS interface, a cluster's DNS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DnsConfig {
    /// The server, `IP:port` (Consul: port 8600).
    pub server: String,
    /// The domain under which services are: `service.consul`,
    /// `svc.cluster.local`.
    pub domain: String,
    /// The scheme of the URLs made from the records.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Services the workspace uses from there: asked at once, and given a
    /// front port by the supervisor. Others are asked when first discovered.
    #[serde(default)]
    pub services: Vec<String>,
}

fn default_scheme() -> String {
    "http".to_owned()
}

impl Config {
    /// Reads `path` (a missing file is the default config) and the
    /// `DEVMESH_*__*` env overrides, and checks names and URLs.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let env = Env::prefixed("DEVMESH_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        Config::extract(Figment::from(Toml::file(path)).merge(env), path)
    }

    /// The config written in `text`, as if it were the file at `path`
    /// (which names it in errors), without env overrides.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, Error> {
        Config::extract(Figment::from(Toml::string(text)), path)
    }

    /// Extracts and checks the config from `figment`, whose file is `path`.
    fn extract(figment: Figment, path: &Path) -> Result<Config, Error> {
        let config: Config = figment.extract().map_err(|e| Error::Config {
            path: path.to_path_buf(),
            problems: e.into_iter().map(|e| describe(&e, path)).collect(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Config {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// The config of the workspace around `dir`: `DEVMESH_CONFIG` if set,
    /// else the nearest `devmesh.toml` in `dir` or a parent. `None` when
    /// there is none.
    pub fn locate(dir: &Path, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
        if let Some(path) = env("DEVMESH_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        dir.ancestors()
            .map(|d| d.join(FILE_NAME))
            .find(|candidate| candidate.is_file())
    }

    /// What serde cannot check: names are DNS labels, URLs are usable,
    /// a service is either a binary or a command.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let names = self.services.keys().chain(self.remote.static_map.keys());
        for name in names {
            if let Err(e) = crate::name::validate(name) {
                problems.push(e.to_string());
            }
        }
        for (name, url) in &self.remote.static_map {
            let source = crate::Source::Remote { backend: String::new() };
            if let Err(e) = crate::Endpoint::from_url(name, url, source) {
                problems.push(format!("key `remote.static.{name}`: {e}"));
            }
        }
        if let Some(dns) = &self.remote.dns {
            if dns.server.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "key `remote.dns.server`: `{}` is not an address (hint: `IP:port`, e.g. `10.0.0.2:8600`)",
                    dns.server
                ));
            }
            if dns.domain.trim_matches('.').is_empty() {
                problems.push("key `remote.dns.domain`: it is empty (hint: e.g. `service.consul`)".to_owned());
            }
            for name in &dns.services {
                if let Err(e) = crate::name::validate(name) {
                    problems.push(format!("key `remote.dns.services`: {e}"));
                }
            }
        }
        if let Some(tunnel) = &self.tunnel {
            problems.extend(tunnel.problems(self));
        }
        if let Some(etcd) = &self.remote.etcd {
            if etcd.endpoints.is_empty() {
                problems.push("key `remote.etcd.endpoints`: it is empty (hint: `[\"10.0.0.2:2379\"]`)".to_owned());
            }
            if etcd.namespace.is_empty() || etcd.namespace.contains('/') {
                problems.push(format!(
                    "key `remote.etcd.namespace`: `{}` must be a non-empty name without `/`",
                    etcd.namespace
                ));
            }
        }
        for (name, service) in &self.services {
            let routed = matches!(service.route, Some(RouteSetting::Flag(true) | RouteSetting::Named(_)));
            if let Some(RouteSetting::Named(route)) = &service.route
                && crate::name::validate(route).is_err()
            {
                problems.push(format!(
                    "key `services.{name}.route`: `{route}` is no route name (hint: letters, digits and `-`, \
                     e.g. your name; or `true` for `[tunnel] namespace`)"
                ));
            }
            if routed && (self.tunnel.is_none() || self.remote.etcd.is_none()) {
                problems.push(format!(
                    "key `services.{name}.route`: a routed copy is reached through `[tunnel]` and listed in \
                     `[remote.etcd]`, and this config lacks {} (hint: see \"Sharing a sandbox\" in the README)",
                    match (self.tunnel.is_none(), self.remote.etcd.is_none()) {
                        (true, true) => "both",
                        (true, false) => "`[tunnel]`",
                        _ => "`[remote.etcd]`",
                    }
                ));
            }
            if service.command.is_some() && (service.package.is_some() || service.bin.is_some()) {
                problems.push(format!(
                    "key `services.{name}`: has both `command` and `package`/`bin` \
                     (hint: a service is a workspace binary or a command, not both)"
                ));
            }
        }
        let (low, high) = self.run.ports;
        if low == 0 || low > high {
            problems.push(format!(
                "key `run.ports`: `{low}-{high}` is empty (hint: write `LOW-HIGH`, e.g. `41000-41999`)"
            ));
        }
        problems
    }
}

/// One figment error as a line naming the key, what was wrong, and where the
/// value came from when it was not the file (`path`). Also for the relay's
/// config, read the same way.
#[doc(hidden)]
pub fn describe(error: &figment::Error, path: &Path) -> String {
    let key = error.path.join(".");
    let kind = match &error.kind {
        figment::error::Kind::UnknownField(_, expected) => {
            format!("unknown key; expected one of {}", expected.join(", "))
        }
        kind => kind.to_string(),
    };
    let mut line = if key.is_empty() {
        kind
    } else {
        format!("key `{key}`: {kind}")
    };
    if let Some(md) = &error.metadata {
        let from_file = md.source.as_ref().and_then(|s| s.file_path()) == Some(path);
        if !from_file {
            line.push_str(&format!(" (from {})", md.name));
        }
    }
    line
}

mod port_range {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
        let text = String::deserialize(d)?;
        let parsed = text
            .split_once('-')
            .and_then(|(lo, hi)| Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)));
        parsed.ok_or_else(|| {
            serde::de::Error::invalid_value(serde::de::Unexpected::Str(&text), &"a port range like `41000-41999`")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, toml).unwrap();
        // Without env: only `env_overrides_the_file` sets any, in a jail.
        Config::extract(Figment::from(Toml::file(&path)), &path)
    }

    #[test]
    fn reads_every_section() {
        let config = load(
            r#"
            [run]
            ports = "5000-5099"
            ready_timeout = "500ms"
            [services.orders]
            port = 5001
            depends_on = ["payments"]
            ready = "/health"
            [services.web]
            command = "npm run dev"
            env = { A = "b" }
            mode = "local"
            [remote.static]
            payments = "https://payments.example.com"
            "#,
        )
        .unwrap();
        assert_eq!(config.run.ports, (5000, 5099));
        assert_eq!(config.run.ready_timeout, Duration::from_millis(500));
        assert_eq!(config.run.grace_period, Duration::from_secs(5));
        assert_eq!(config.services["orders"].ready, Readiness::Http("/health".into()));
        assert_eq!(config.services["web"].mode, Mode::Local);
        assert_eq!(config.remote.static_map["payments"], "https://payments.example.com");
    }

    #[test]
    fn a_missing_file_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(
            Config::extract(Figment::from(Toml::file(&path)), &path).unwrap(),
            Config::default()
        );
    }

    fn problems(toml: &str) -> String {
        load(toml).unwrap_err().to_string()
    }

    #[test]
    fn a_route_is_a_name_and_needs_the_tunnel_and_etcd() {
        let err = problems("[services.orders]\nroute = \"Not a name\"\n");
        assert!(
            err.contains("key `services.orders.route`: `Not a name` is no route name"),
            "{err}"
        );
        assert!(err.contains("this config lacks both"), "{err}");
        let config = load(
            "[services.orders]\nroute = true\n[tunnel]\nrelay = \"sandbox:7000\"\nnamespace = \"dev-a\"\n\
             [remote.etcd]\nendpoints = [\"sandbox:2379\"]\nnamespace = \"team\"\n",
        )
        .unwrap();
        let orders = &config.services["orders"];
        assert_eq!(orders.route_name(config.tunnel.as_ref()), Some("dev-a"));
        assert!(!orders.strict_route());
        let strict = load(
            "[services.orders]\nroute = \"strict\"\n[tunnel]\nrelay = \"sandbox:7000\"\nnamespace = \"dev-a\"\n\
             [remote.etcd]\nendpoints = [\"sandbox:2379\"]\nnamespace = \"team\"\n",
        )
        .unwrap();
        let orders = &strict.services["orders"];
        assert_eq!(orders.route_name(strict.tunnel.as_ref()), Some("dev-a"));
        assert!(orders.strict_route());
    }

    #[test]
    fn unknown_keys_name_file_key_and_choices() {
        let err = problems("[services.orders]\nprot = 5001\n");
        assert!(err.contains("devmesh.toml"), "{err}");
        assert!(err.contains("key `services.orders.prot`: unknown key"), "{err}");
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_expected_type() {
        let err = problems("[services.orders]\nport = \"high\"\n");
        assert!(err.contains("key `services.orders.port`"), "{err}");
        assert!(err.contains("expected u16"), "{err}");
        let err = problems("[run]\nready_timeout = \"soon\"\n");
        assert!(err.contains("key `run.ready_timeout`"), "{err}");
        assert!(err.contains("a duration like"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = problems("[services.orders\nport = 1\n");
        assert!(err.contains("devmesh.toml"), "{err}");
    }

    #[test]
    fn names_urls_and_ranges_are_checked() {
        let err = problems("[services.Orders]\n[remote.static]\npay = \"ftp://x\"\n[run]\nports = \"9-1\"\n");
        assert!(err.contains("`Orders` is not a valid service name"), "{err}");
        assert!(err.contains("key `remote.static.pay`"), "{err}");
        assert!(err.contains("key `run.ports`"), "{err}");
    }

    #[test]
    fn every_problem_of_the_tunnel_section_is_said_at_once() {
        let err =
            problems("[tunnel]\nrelay = \"10.0.0.2\"\nnamespace = \"alice\"\nreach = [\"nosuch\"]\nexpsoe = true\n");
        assert!(
            err.contains("key `tunnel.relay`: `10.0.0.2` is not `HOST:PORT`"),
            "{err}"
        );
        assert!(err.contains("`10.0.0.2:7000`"), "{err}");
        assert!(
            err.contains("key `tunnel.reach`: `nosuch` is no remote service"),
            "{err}"
        );
        assert!(
            err.contains("key `tunnel.expsoe`: unknown key; expected one of relay"),
            "{err}"
        );
        let err = problems("[tunnel]\ntls = true\n");
        assert!(err.contains("key `tunnel.relay`: missing"), "{err}");
        assert!(err.contains("key `tunnel.namespace`"), "{err}");
        let fine = "[tunnel]\nrelay = \"sandbox:7000\"\nnamespace = \"alice\"\nreach = [\"vault\"]\n\
                    [remote.static]\nvault = \"http://127.0.0.1:9000\"\n";
        assert_eq!(load(fine).unwrap().tunnel.unwrap().reach, ["vault"]);
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment's Jail decides the error type")]
    fn env_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(FILE_NAME, "[services.orders]\nport = 5001\n")?;
            jail.set_env("DEVMESH_SERVICES__ORDERS__PORT", "6001");
            jail.set_env("DEVMESH_REGISTRY", "/not/config");
            let config = Config::load(Path::new(FILE_NAME)).unwrap();
            assert_eq!(config.services["orders"].port, Some(6001));

            jail.set_env("DEVMESH_RUN__GRACE_PERIOD", "never");
            let err = Config::load(Path::new(FILE_NAME)).unwrap_err().to_string();
            assert!(err.contains("key `run.grace_period`"), "{err}");
            assert!(err.contains("environment variable"), "{err}");
            Ok(())
        });
    }
}
