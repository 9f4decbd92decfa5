//! A captured request turned into a test that reproduces it: the
//! services of its trace that are the workspace's run in the test, the
//! others stand in with what they answered, the request that came in is
//! sent again, and the calls between the services are asserted as the
//! capture holds them (`cargo devmesh traffic --as-test`, and the page's
//! trace view).
//!
//! What differs from run to run (ids, times, masked headers) is not
//! asserted: it is listed in the test, for the user to keep or drop.

mod code;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use crate::inspector::{EXTERNAL, Exchange, Kind, Masker, TUNNEL};

/// The services a test can run: the workspace's, each with its package
/// (none for a command's).
pub type Members = BTreeMap<String, Option<Package>>;

/// A package of the workspace: where a test of its service is written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub dir: PathBuf,
}

/// The workspace's services, with their packages' folders.
pub fn members(workspace: &crate::workspace::Workspace) -> Members {
    workspace
        .services
        .iter()
        .map(|(name, spec)| {
            let dir = match &spec.launch {
                crate::workspace::Launch::Binary {
                    package, package_id, ..
                } => workspace
                    .packages
                    .iter()
                    .find(|p| p.id == *package_id)
                    .map(|p| Package {
                        name: package.clone(),
                        dir: p.dir.clone(),
                    }),
                crate::workspace::Launch::Command(_) => None,
            };
            (name.clone(), dir)
        })
        .collect()
}

/// JSON fields asserted of a body at most; the rest are listed.
const MOST_FIELDS: usize = 24;

/// Headers that say how a message travelled, not what it said: never
/// sent again or kept in a stand-in's answer.
const TRANSPORT_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "date",
    "traceparent",
    "tracestate",
    "x-devmesh-caller",
];

/// Why a capture could not become a test.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AsTestError {
    #[error("no HTTP or gRPC exchange to write a test of (hint: a WebSocket or TCP connection cannot be one)")]
    Empty,
    #[error("the trace begins at `{service}`, which a test cannot run: it is {why}")]
    RootNotRun { service: String, why: &'static str },
    #[error(
        "exchange #{id} ({what}) was kept only in part: {size} bytes, cut at `inspector.max_body` (hint: raise it in devmesh.toml and capture again)"
    )]
    Truncated { id: u64, what: &'static str, size: u64 },
}

/// A test written from a capture, as the API sends it and the CLI reads
/// it back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// The test function's name, and the file's (`tests/{name}.rs`).
    pub name: String,
    /// The service whose package the test belongs to: the one the request
    /// came in to.
    pub service: String,
    /// Its package; none when it is a command's.
    pub package: Option<Package>,
    pub code: String,
    /// Services standing in with what they answered.
    pub stand_ins: Vec<String>,
    /// What is not asserted because it differs from run to run, a line
    /// each, as the test lists it.
    pub varying: Vec<String>,
}

/// What a test is written from: exchanges as the inspector shows them
/// (masked).
#[derive(Debug, Clone, Copy)]
pub struct Capture<'a> {
    /// The exchanges of one trace.
    pub trace: &'a [Exchange],
    /// Others kept (the newest): a field that differs between captures of
    /// the same call varies.
    pub history: &'a [Exchange],
    /// The services' processes: a number that is one of them is a
    /// process id a service reports (`placed_by`), and varies.
    pub pids: &'a [u32],
    /// Where it came from, for the test's first line: `exchange #12 …`.
    pub origin: &'a str,
}

/// The test of `capture`. Services not among `members`, and those in
/// `stubs`, stand in.
pub fn write(
    capture: Capture<'_>,
    members: &Members,
    stubs: &[String],
    masker: &Masker,
) -> Result<Written, AsTestError> {
    let Capture {
        trace,
        history,
        pids,
        origin,
    } = capture;
    let mut exchanges: Vec<&Exchange> = trace.iter().filter(|e| e.kind == Kind::Http).collect();
    exchanges.sort_by_key(|e| e.id);
    let called: Vec<&str> = exchanges.iter().map(|e| &*e.service).collect();
    // The request that came in: the first whose caller no exchange called.
    let root = *exchanges
        .iter()
        .find(|e| !called.contains(&&*e.caller))
        .or(exchanges.first())
        .ok_or(AsTestError::Empty)?;
    let stands_in = |service: &str| !members.contains_key(service) || stubs.iter().any(|s| s == service);
    if stands_in(&root.service) {
        let why = if members.contains_key(&*root.service) {
            "asked to stand in (`--stub`), but the request is sent to it: it must run"
        } else {
            "no service of the workspace (hint: start the trace at one)"
        };
        return Err(AsTestError::RootNotRun {
            service: root.service.to_string(),
            why,
        });
    }
    // Calls a stand-in made are not made in the test: it only answers.
    let calls: Vec<&Exchange> = exchanges
        .iter()
        .copied()
        .filter(|e| e.id == root.id || (called.contains(&&*e.caller) && !stands_in(&e.caller)))
        .collect();
    let mut run: Vec<String> = Vec::new();
    let mut stand_ins: BTreeMap<String, Vec<&Exchange>> = BTreeMap::new();
    for call in &calls {
        if stands_in(&call.service) {
            stand_ins.entry(call.service.to_string()).or_default().push(call);
        } else if !run.contains(&call.service.to_string()) {
            run.push(call.service.to_string());
        }
    }
    let name = format!(
        "{}_as_captured",
        code::identifier(&format!("{} {}", root.method, route(&root.path)))
    );
    let mut test = Test {
        masker,
        history,
        pids,
        varying: Vec::new(),
        out: String::new(),
    };
    if !stand_ins.is_empty() {
        test.stand_ins(&stand_ins)?;
    }
    test.body(&name, &run, root, &calls, &stand_ins)?;
    Ok(Written {
        name,
        service: root.service.to_string(),
        package: members.get(&*root.service).cloned().flatten(),
        code: test.preamble(origin) + &test.out,
        stand_ins: stand_ins.into_keys().collect(),
        varying: test.varying,
    })
}

/// The path without its query.
fn route(path: &str) -> &str {
    path.split('?').next().unwrap_or_default()
}

fn grpc(e: &Exchange) -> bool {
    e.grpc_status.is_some()
        || e.request_headers
            .pairs()
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("content-type") && v.starts_with("application/grpc"))
}

/// A test being written.
struct Test<'a> {
    masker: &'a Masker,
    /// Other exchanges kept: where a field differs between captures of
    /// the same call, it varies.
    history: &'a [Exchange],
    pids: &'a [u32],
    varying: Vec<String>,
    out: String,
}

impl Test<'_> {
    fn line(&mut self, text: impl AsRef<str>) {
        self.out.push_str(text.as_ref());
        self.out.push('\n');
    }

    /// The first line, and what the test uses of the harness.
    fn preamble(&self, origin: &str) -> String {
        // As the code names each; `Mesh` is the test's argument.
        let used: Vec<&str> = [
            ("Bytes", "Bytes::"),
            ("Captured", "Captured::"),
            ("Mesh", "Mesh"),
            ("MeshBuilder", "-> MeshBuilder"),
            ("Request", "Request::"),
            ("Version", "Version::"),
            ("json", "json!("),
        ]
        .into_iter()
        .filter(|(_, named)| self.out.contains(named))
        .map(|(name, _)| name)
        .collect();
        format!(
            "// Captured by devmesh: {origin}.\nuse devmesh_testing::{{{}}};\n\n",
            used.join(", ")
        )
    }

    /// `fn stand_ins(mesh: MeshBuilder) -> MeshBuilder`: each service that
    /// is not run answering as it did.
    fn stand_ins(&mut self, stand_ins: &BTreeMap<String, Vec<&Exchange>>) -> Result<(), AsTestError> {
        let names: Vec<String> = stand_ins.keys().map(|s| format!("`{s}`")).collect();
        self.line(format!(
            "/// {} as captured: each request answered as it was then.",
            names.join(", ")
        ));
        self.line("fn stand_ins(mesh: MeshBuilder) -> MeshBuilder {");
        self.line("    mesh");
        for (service, answered) in stand_ins {
            self.line("        .stand_in(");
            self.line(format!("            {},", code::string(service)));
            self.line("            [");
            for e in answered {
                let Some(status) = e.status else {
                    self.varying.push(format!(
                        "{} → {} {} {}: not answered ({}); the stand-in answers 404",
                        e.caller,
                        e.service,
                        e.method,
                        e.path,
                        e.error.as_deref().unwrap_or("no answer")
                    ));
                    continue;
                };
                if e.response_body.truncated {
                    return Err(AsTestError::Truncated {
                        id: e.id,
                        what: "its answer's body",
                        size: e.response_body.size,
                    });
                }
                let mut answer = format!(
                    "                Captured::answer({}, {}, {status})",
                    code::string(&e.method),
                    code::string(&e.path)
                );
                let headers = self.kept(e, &e.response_headers.pairs(), "answer header");
                let trailers = self.kept(e, &e.response_trailers.pairs(), "answer trailer");
                let set = |answer: &mut String, method: &str, pairs: Vec<(String, String)>| {
                    for (name, value) in pairs {
                        let (name, value) = (code::string(&name), code::string(&value));
                        let _ = write!(answer, "\n                    .{method}({name}, {value})");
                    }
                };
                set(&mut answer, "header", headers);
                if let Some(body) = body(&e.response_body) {
                    let _ = write!(answer, "\n                    .body({body})");
                }
                set(&mut answer, "trailer", trailers);
                self.line(format!("{answer},"));
            }
            self.line("            ],");
            self.line("        )");
        }
        self.line("}");
        self.line("");
        Ok(())
    }

    /// The headers of `pairs` worth keeping: not how the message
    /// travelled, and not masked (those are listed as varying).
    fn kept(&mut self, e: &Exchange, pairs: &[(String, String)], what: &str) -> Vec<(String, String)> {
        let mut kept = Vec::new();
        for (name, value) in pairs {
            let lower = name.to_ascii_lowercase();
            if TRANSPORT_HEADERS.contains(&lower.as_str()) {
                continue;
            }
            if self.masker.masks(&lower) {
                self.varying
                    .push(format!("{} → {}: {what} `{lower}` (masked)", e.caller, e.service));
                continue;
            }
            kept.push((lower, value.clone()));
        }
        kept
    }

    fn body(
        &mut self,
        name: &str,
        run: &[String],
        root: &Exchange,
        calls: &[&Exchange],
        stood_in: &BTreeMap<String, Vec<&Exchange>>,
    ) -> Result<(), AsTestError> {
        let services: Vec<String> = run.iter().map(|s| code::string(s)).collect();
        let setup = if stood_in.is_empty() { "" } else { ", setup(stand_ins)" };
        self.line(format!(
            "/// `{} {}` to `{}`, sent again: the calls between the services as they were.",
            root.method, root.path, root.service
        ));
        self.line(format!(
            "#[devmesh_testing::test(services({}){setup})]",
            services.join(", ")
        ));
        self.line(format!("async fn {name}(mesh: Mesh) {{"));
        self.request(root)?;
        self.line("");
        self.line("    let traffic = mesh.traffic().await;");
        let mut asserted: Vec<(String, usize)> = Vec::new();
        for call in calls {
            let answered_by_stand_in = stood_in.contains_key(&*call.service);
            let chain = self.assertion(call, call.id == root.id, answered_by_stand_in);
            match asserted.iter_mut().find(|(c, _)| *c == chain) {
                Some((_, count)) => *count += 1,
                None => asserted.push((chain, 1)),
            }
        }
        for (chain, count) in asserted {
            let end = if count == 1 {
                ".assert_once();".to_owned()
            } else {
                format!(".assert_count({count});")
            };
            self.line(format!("    traffic{chain}\n        {end}"));
        }
        if !self.varying.is_empty() {
            self.line("    // Not asserted, as they differ from run to run (assert those that should not):");
            for varying in self.varying.clone() {
                self.line(format!("    //   {varying}"));
            }
        }
        self.line("}");
        Ok(())
    }

    /// The request that came in, sent again from the test.
    fn request(&mut self, root: &Exchange) -> Result<(), AsTestError> {
        if root.request_body.truncated {
            return Err(AsTestError::Truncated {
                id: root.id,
                what: "its request's body",
                size: root.request_body.size,
            });
        }
        self.line("    let request = Request::builder()");
        self.line(format!("        .method({})", code::string(&root.method)));
        self.line(format!("        .uri({})", code::string(&root.path)));
        if root.version == "HTTP/2.0" || grpc(root) {
            self.line("        .version(Version::HTTP_2)");
        }
        for (name, value) in root.request_headers.pairs() {
            let lower = name.to_ascii_lowercase();
            if TRANSPORT_HEADERS.contains(&lower.as_str()) {
                continue;
            }
            let header = format!(".header({}, {})", code::string(&lower), code::string(&value));
            if self.masker.masks(&lower) {
                // Masked: where the real value would go.
                self.line(format!(
                    "        // {header} (masked: set its value if the service needs it)"
                ));
            } else {
                self.line(format!("        {header}"));
            }
        }
        let body = body(&root.request_body).unwrap_or_else(|| "Bytes::new()".to_owned());
        let body = if body.starts_with("Bytes::") {
            body
        } else {
            format!("Bytes::from({body})")
        };
        self.line(format!("        .body({body})"));
        self.line("        .unwrap();");
        self.line(format!(
            "    let answer = mesh.send({}, request).await.expect(\"{} answers\");",
            code::string(&root.service),
            root.service
        ));
        if let Some(status) = root.status {
            self.line(format!(
                "    assert_eq!(answer.status, {status}, \"{{}}\", answer.text());"
            ));
        }
        Ok(())
    }

    /// `.from(…).to(…).request(…).status(…)…` for one call.
    fn assertion(&mut self, call: &Exchange, root: bool, answered_by_stand_in: bool) -> String {
        let caller = if root || *call.caller == *TUNNEL {
            EXTERNAL
        } else {
            &call.caller
        };
        let mut chain = format!(
            "\n        .from({})\n        .to({})\n        .request({}, {})",
            code::string(caller),
            code::string(&call.service),
            code::string(&call.method),
            code::string(&call.path)
        );
        match call.status {
            Some(status) => {
                let _ = write!(chain, "\n        .status({status})");
            }
            None => chain.push_str("\n        .filter(\"not answered\", |call| call.status.is_none())"),
        }
        if let Some(code) = call.grpc_status {
            let _ = write!(chain, "\n        .grpc_status({code})");
        }
        chain.push_str(&self.fields(call, Side::Request));
        // A stand-in answers what it was given: nothing to assert.
        if !answered_by_stand_in {
            chain.push_str(&self.fields(call, Side::Answer));
        }
        chain
    }

    /// `.with_json(field, value)` for each leaf of a JSON body that does
    /// not vary (by its name or value, or as other captures of the same
    /// call differ at it); those that vary are listed.
    fn fields(&mut self, call: &Exchange, side: Side) -> String {
        let Some(json) = side.json(call) else {
            return String::new();
        };
        // The same call, captured at other times.
        let same = |e: &&Exchange| {
            e.id != call.id
                && e.caller == call.caller
                && e.service == call.service
                && e.method == call.method
                && route(&e.path) == route(&call.path)
        };
        let others: Vec<serde_json::Value> = self.history.iter().filter(same).filter_map(|e| side.json(e)).collect();
        let pids = self.pids;
        let pid = |value: &serde_json::Value| {
            value
                .as_u64()
                .is_some_and(|n| pids.iter().any(|&pid| u64::from(pid) == n))
        };
        let varies = |pointer: &str, value: &serde_json::Value| {
            code::varies(pointer, value)
                || pid(value)
                || others.iter().any(|o| o.pointer(pointer).is_some_and(|v| v != value))
        };
        let (who, what, method) = match side {
            Side::Request => (format!("{} → {}", call.caller, call.service), "request", "with_json"),
            Side::Answer => (
                format!("{} → {}", call.caller, call.service),
                "answer",
                "with_response_json",
            ),
        };
        let mut chain = String::new();
        let (mut shown, mut left) = (0, 0);
        for (pointer, value) in code::leaves(&json) {
            let field = code::field(&pointer);
            if varies(&pointer, value) {
                self.varying.push(format!("{who}: {what} {field} = {value}"));
            } else if shown < MOST_FIELDS {
                shown += 1;
                let _ = write!(
                    chain,
                    "\n        .{method}({}, {})",
                    code::string(&field),
                    code::json_value(value)
                );
            } else {
                left += 1;
            }
        }
        if left > 0 {
            self.varying.push(format!(
                "{who}: {left} more fields of the {what} (the first {MOST_FIELDS} are asserted)"
            ));
        }
        chain
    }
}

/// Which body of a call.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Answer,
}

impl Side {
    fn json(self, e: &Exchange) -> Option<serde_json::Value> {
        let body = match self {
            Side::Request => &e.request_body,
            Side::Answer => &e.response_body,
        };
        serde_json::from_str(body.text.as_deref()?).ok()
    }
}

/// A body as a Rust expression that is `Into<Bytes>`: a string literal
/// when it is text, `Bytes::from_static(b"…")` when it is bytes (gRPC's
/// messages: UTF-8 or not, their length prefix is not text); none when
/// empty.
fn body(body: &crate::inspector::Body) -> Option<String> {
    let text = body.text.as_deref().unwrap_or_default();
    let binary = body.base64.is_some() || text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    match (binary, text) {
        (true, _) => Some(format!("Bytes::from_static({})", code::bytes(&body.bytes()))),
        (false, "") => None,
        (false, text) => Some(code::string(text)),
    }
}

#[cfg(test)]
mod tests;
