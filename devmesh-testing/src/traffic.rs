//! What went between the services during a test, and assertions on it
//! that read as the test means them:
//!
//! ```ignore
//! mesh.traffic().await
//!     .to("payments")
//!     .request("POST", "/charge")
//!     .with_json("amount_cents", 700)
//!     .assert_once();
//! ```
//!
//! A failed assertion says what was expected and shows every call of the
//! test as a table: what was actually sent.

use std::fmt::Write;
use std::sync::Arc;

use cargo_devmesh::inspector::Exchange;

/// One request through a front port, and its answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Call {
    /// The order the inspector saw them in.
    pub id: u64,
    /// Who called: a service, `external` (the test itself, or a program
    /// outside the mesh).
    pub caller: String,
    pub service: String,
    pub method: String,
    /// With its query.
    pub path: String,
    /// None when no answer came (a dropped connection, a reset).
    pub status: Option<u16>,
    /// A gRPC call's `grpc-status` (0 is OK).
    pub grpc_status: Option<u8>,
    pub request_headers: Vec<(String, String)>,
    /// As text, when it was UTF-8 (up to the inspector's `max_body`).
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    /// What went wrong on the way, in words.
    pub error: Option<String>,
    /// What was unusual but no failure: the client closed once it had the
    /// answer's head, before reading all of its body.
    pub note: Option<String>,
    /// From the request's arrival to its answer's end.
    pub total_ms: Option<f64>,
}

impl From<&Exchange> for Call {
    fn from(e: &Exchange) -> Call {
        Call {
            id: e.id,
            caller: e.caller.to_string(),
            service: e.service.to_string(),
            method: e.method.clone(),
            path: e.path.clone(),
            status: e.status,
            grpc_status: e.grpc_status,
            request_headers: e.request_headers.pairs(),
            request_body: e.request_body.text.clone().filter(|t| !t.is_empty()),
            response_body: e.response_body.text.clone().filter(|t| !t.is_empty()),
            error: e.error.clone(),
            note: e.note.clone(),
            total_ms: e.total_ms,
        }
    }
}

impl Call {
    /// The request body as JSON, when it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.request_body.as_deref()?).ok()
    }

    /// The response body as JSON, when it is.
    pub fn response_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.response_body.as_deref()?).ok()
    }

    /// A request header's value (secret ones masked, as the inspector
    /// shows them).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without its query.
    fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// Calls chosen from a test's traffic; each narrowing says what it kept,
/// so a failed assertion can say what it looked for.
#[derive(Debug, Clone)]
pub struct Traffic {
    all: Arc<Vec<Call>>,
    /// The mesh's services: a name not among them is a typo, said at once
    /// rather than matching nothing.
    services: Arc<Vec<String>>,
    chosen: Vec<usize>,
    /// Each narrowing, in the order they were made.
    wanted: Vec<Step>,
}

/// One narrowing: what it kept in words, the calls it was given, how many
/// it kept, and the JSON field it looked at, if it did (so that a failure
/// can say what that field was instead).
#[derive(Debug, Clone)]
struct Step {
    said: String,
    given: Vec<usize>,
    kept: usize,
    field: Option<(Side, String)>,
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Request,
    Answer,
}

impl Traffic {
    pub(crate) fn new(calls: Vec<Call>, services: Vec<String>) -> Traffic {
        Traffic {
            chosen: (0..calls.len()).collect(),
            all: Arc::new(calls),
            services: Arc::new(services),
            wanted: Vec::new(),
        }
    }

    #[track_caller]
    fn known(&self, name: &str, callers_too: bool) {
        let caller = callers_too && (name == cargo_devmesh::inspector::EXTERNAL || name == "tunnel");
        if !caller && !self.services.iter().any(|s| s == name) {
            panic!(
                "devmesh: `{name}` is no service of the mesh (hint: it has {}{})",
                self.services.join(", "),
                if callers_too {
                    "; callers from outside are `external`"
                } else {
                    ""
                }
            );
        }
    }

    /// The calls chosen, oldest first.
    pub fn calls(&self) -> Vec<&Call> {
        self.chosen.iter().map(|&i| &self.all[i]).collect()
    }

    pub fn len(&self) -> usize {
        self.chosen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }

    /// Calls to service `name`.
    ///
    /// # Panics
    /// When the mesh has no service `name`: a typo would match nothing.
    #[track_caller]
    pub fn to(&self, name: &str) -> Traffic {
        self.known(name, false);
        self.keep(format!("to `{name}`"), |c| c.service == name)
    }

    /// Calls made by service `name` (`external` for the test's own).
    ///
    /// # Panics
    /// When `name` is neither a service of the mesh nor `external`.
    #[track_caller]
    pub fn from(&self, name: &str) -> Traffic {
        self.known(name, true);
        self.keep(format!("from `{name}`"), |c| c.caller == name)
    }

    /// Calls of `method` to `path`: with its query when it has one
    /// (`/checkout/tea?quantity=2`), else any query (`/checkout/tea`); a
    /// path that ends in `*` matches what starts with the rest.
    pub fn request(&self, method: &str, path: &str) -> Traffic {
        let prefix = path.strip_suffix('*');
        let with_query = path.contains('?');
        self.keep(format!("`{method} {path}`"), |c| {
            let called = if with_query { c.path.as_str() } else { c.route() };
            c.method.eq_ignore_ascii_case(method)
                && match prefix {
                    Some(prefix) => called.starts_with(prefix),
                    None => called == path,
                }
        })
    }

    /// Calls answered with `status`.
    pub fn status(&self, status: u16) -> Traffic {
        self.keep(format!("answered {status}"), |c| c.status == Some(status))
    }

    /// Calls whose JSON request body has `value` at `field` (a name, or a
    /// JSON pointer such as `/order/item`).
    pub fn with_json(&self, field: &str, value: impl Into<serde_json::Value>) -> Traffic {
        let (pointer, value) = (pointer(field), value.into());
        let mut narrowed = self.keep(format!("with {field} = {value}"), |c| {
            c.json().is_some_and(|json| json.pointer(&pointer) == Some(&value))
        });
        narrowed.looked_at(Side::Request, pointer);
        narrowed
    }

    /// Calls answered with a JSON body that has `value` at `field` (a
    /// name, or a JSON pointer such as `/order/payment/status`).
    pub fn with_response_json(&self, field: &str, value: impl Into<serde_json::Value>) -> Traffic {
        let (pointer, value) = (pointer(field), value.into());
        let mut narrowed = self.keep(format!("answered {field} = {value}"), |c| {
            c.response_json()
                .is_some_and(|json| json.pointer(&pointer) == Some(&value))
        });
        narrowed.looked_at(Side::Answer, pointer);
        narrowed
    }

    /// The last narrowing looked at this JSON field.
    fn looked_at(&mut self, side: Side, pointer: String) {
        if let Some(step) = self.wanted.last_mut() {
            step.field = Some((side, pointer));
        }
    }

    /// gRPC calls answered with `grpc-status` `code` (0 is OK).
    pub fn grpc_status(&self, code: u8) -> Traffic {
        self.keep(format!("with grpc-status {code}"), |c| c.grpc_status == Some(code))
    }

    /// Calls for which `test` holds, described as `what`.
    pub fn filter(&self, what: &str, test: impl Fn(&Call) -> bool) -> Traffic {
        self.keep(what.to_owned(), test)
    }

    /// Asserts that exactly `count` calls were chosen.
    #[track_caller]
    pub fn assert_count(&self, count: usize) -> &Traffic {
        if self.len() != count {
            panic!("{}", self.failure(&format!("{count} call(s)")));
        }
        self
    }

    /// Asserts that exactly one call was chosen; that call.
    #[track_caller]
    pub fn assert_once(&self) -> &Call {
        self.assert_count(1);
        &self.all[self.chosen[0]]
    }

    /// Asserts that no call was chosen.
    #[track_caller]
    pub fn assert_none(&self) {
        self.assert_count(0);
    }

    /// Asserts that at least one call was chosen; the calls.
    #[track_caller]
    pub fn assert_some(&self) -> Vec<&Call> {
        if self.is_empty() {
            panic!("{}", self.failure("at least one call"));
        }
        self.calls()
    }

    fn keep(&self, wanted: String, test: impl Fn(&Call) -> bool) -> Traffic {
        let mut narrowed = self.clone();
        narrowed.chosen.retain(|&i| test(&self.all[i]));
        narrowed.wanted.push(Step {
            said: wanted,
            given: self.chosen.clone(),
            kept: narrowed.chosen.len(),
            field: None,
        });
        narrowed
    }

    fn failure(&self, expected: &str) -> String {
        TABLE_SHOWN.set(true);
        let wanted = if self.wanted.is_empty() {
            "in the traffic".to_owned()
        } else {
            let said: Vec<&str> = self.wanted.iter().map(|step| step.said.as_str()).collect();
            said.join(", ")
        };
        // Where the calls ran out: the narrowing that left none of those
        // it was given, and what they had at its field.
        let ran_out = self
            .wanted
            .iter()
            .find(|step| step.kept == 0 && !step.given.is_empty())
            .map(|step| {
                let had: Vec<String> = match &step.field {
                    Some((side, pointer)) => step
                        .given
                        .iter()
                        .map(|&i| {
                            let json = match side {
                                Side::Request => self.all[i].json(),
                                Side::Answer => self.all[i].response_json(),
                            };
                            json.and_then(|j| j.pointer(pointer).map(ToString::to_string))
                                .unwrap_or_else(|| "not there".to_owned())
                        })
                        .collect(),
                    None => Vec::new(),
                };
                let had = match had.as_slice() {
                    [] => String::new(),
                    [one] => format!(": it was {one}"),
                    many => format!(": they were {}", many.join(", ")),
                };
                format!(
                    " None of the {} call(s) before `{}` was so{had}.",
                    step.given.len(),
                    step.said
                )
            })
            .unwrap_or_default();
        format!(
            "devmesh: expected {expected} {wanted}; found {}.{ran_out}\nEvery call of the test:\n{}",
            self.len(),
            table(&self.all)
        )
    }
}

/// A field's JSON pointer: `/order/item` as it is, `item` as `/item`.
fn pointer(field: &str) -> String {
    if field.starts_with('/') {
        field.to_owned()
    } else {
        format!("/{field}")
    }
}

thread_local! {
    /// Set when a failed assertion's message holds the table of every
    /// call, so that the failed test's report does not print it again. A
    /// test's body and its report run on the thread of its `block_on`.
    static TABLE_SHOWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a failed assertion on this thread showed the table of calls
/// (and forgets it, for the next test on the thread).
pub(crate) fn table_shown() -> bool {
    TABLE_SHOWN.replace(false)
}

/// `calls` as a table, a row each, with the JSON or text each sent.
pub(crate) fn table(calls: &[Call]) -> String {
    if calls.is_empty() {
        return "  (no call went through a front port)\n".to_owned();
    }
    let rows: Vec<[String; 6]> = calls
        .iter()
        .map(|c| {
            let outcome = match (&c.status, &c.error) {
                (Some(status), _) => status.to_string(),
                (None, Some(_)) => "failed".to_owned(),
                (None, None) => "…".to_owned(),
            };
            let sent = c.request_body.as_deref().map(shorten).unwrap_or_default();
            let answered = c
                .response_body
                .as_deref()
                .or(c.error.as_deref())
                .map(shorten)
                .unwrap_or_default();
            [
                c.caller.clone(),
                c.service.clone(),
                format!("{} {}", c.method, c.path),
                outcome,
                sent,
                answered,
            ]
        })
        .collect();
    let header = ["from", "to", "request", "status", "sent", "answered"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        out.push(' ');
        for (cell, width) in cells.iter().zip(widths) {
            let _ = write!(out, " {cell:<width$} |");
        }
        out.pop();
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(header);
    let rule = widths.map(|w| "-".repeat(w));
    line([&rule[0], &rule[1], &rule[2], &rule[3], &rule[4], &rule[5]]);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
    out
}

/// One line of at most 60 characters.
fn shorten(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= 60 {
        line
    } else {
        format!("{}…", line.chars().take(59).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64, caller: &str, service: &str, method: &str, path: &str, status: u16, body: &str) -> Call {
        Call {
            id,
            caller: caller.to_owned(),
            service: service.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            status: Some(status),
            grpc_status: None,
            request_headers: Vec::new(),
            request_body: (!body.is_empty()).then(|| body.to_owned()),
            // payments answers with a receipt.
            response_body: (service == "payments").then(|| r#"{"receipt":{"status":"approved"}}"#.to_owned()),
            error: None,
            note: None,
            total_ms: Some(1.0),
        }
    }

    fn traffic() -> Traffic {
        let services = ["gateway", "orders", "payments"].map(String::from).to_vec();
        let calls = vec![
            call(1, "external", "gateway", "GET", "/checkout/tea?quantity=2", 200, ""),
            call(
                2,
                "gateway",
                "orders",
                "POST",
                "/orders",
                200,
                r#"{"item":"tea","quantity":2}"#,
            ),
            call(
                3,
                "orders",
                "payments",
                "POST",
                "/charge",
                200,
                r#"{"amount_cents":700}"#,
            ),
        ];
        Traffic::new(calls, services)
    }

    #[test]
    #[should_panic(expected = "`paymnets` is no service of the mesh (hint: it has gateway, orders, payments)")]
    fn a_misspelt_service_is_said_not_matched_by_nothing() {
        traffic().to("paymnets").assert_none();
    }

    #[test]
    fn narrowing_reads_as_the_test_means_it() {
        let charged = traffic()
            .to("payments")
            .request("POST", "/charge")
            .with_json("amount_cents", 700)
            .assert_once()
            .clone();
        assert_eq!(charged.caller, "orders");
        traffic().request("GET", "/checkout/*").status(200).assert_once();
        traffic().from("orders").assert_count(1);
        traffic().with_json("/item", "tea").assert_once();
        traffic().to("payments").with_json("amount_cents", 1).assert_none();
        // A query, when one is said, must be the one called with.
        traffic().request("GET", "/checkout/tea?quantity=2").assert_once();
        traffic().request("GET", "/checkout/tea?quantity=3").assert_none();
        traffic().request("GET", "/checkout/tea").assert_once();
        traffic()
            .to("payments")
            .with_response_json("/receipt/status", "approved")
            .assert_once();
        traffic().with_response_json("status", "approved").assert_none();
    }

    #[test]
    fn a_failed_assertion_shows_every_call_as_a_table() {
        let failed = std::panic::catch_unwind(|| {
            traffic().to("payments").with_json("amount_cents", 1400).assert_once();
        })
        .unwrap_err();
        let message = failed.downcast_ref::<String>().unwrap();
        assert!(
            message.starts_with("devmesh: expected 1 call(s) to `payments`, with amount_cents = 1400; found 0."),
            "{message}"
        );
        assert!(
            message.contains("found 0. None of the 1 call(s) before `with amount_cents = 1400` was so: it was 700.\n"),
            "{message}"
        );
        assert!(message.contains("\n  orders   | payments | POST /charge"), "{message}");
        assert!(message.contains(r#"{"amount_cents":700}"#), "{message}");
    }
}
