//! gRPC as tonic speaks it: a tonic server under `cargo devmesh run` with
//! no config, and a tonic client calling it through its front port.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use crate::harness::{DEADLINE, Mesh, exchanges, fixture, text, wait_exit};

#[test]
fn a_tonic_service_runs_is_inspected_replayed_and_says_when_it_is_not_there() {
    // Only the server is a service: `greet` is a program of the user's.
    let mesh = Mesh::start_with_env(
        fixture("grpc"),
        &["greeter"],
        &[("DEVMESH_RUN__READY_TIMEOUT", "1s")],
        &["greeter"],
    );
    assert_eq!(mesh.run_program("greet", &["world"]).trim(), "ok: hello, world");
    assert_eq!(
        mesh.run_program("greet", &["nobody"]).trim(),
        "error: NotFound: no such person"
    );

    let calls = exchanges(&mesh, 2, |e| e["path"] == "/greet.Greeter/SayHello");
    let outcomes: Vec<_> = calls
        .iter()
        .map(|e| (e["status"].clone(), e["grpc_status"].clone()))
        .collect();
    assert_eq!(outcomes, [(200.into(), 0.into()), (200.into(), 5.into())]);
    // tonic answers an error trailers-only: its status and message in the headers.
    let said = format!("{}{}", calls[1]["response_headers"], calls[1]["response_trailers"]);
    assert!(
        said.contains("grpc-message") && said.contains("no%20such%20person"),
        "{said}"
    );
    // The terminal shows the gRPC outcome where the status goes.
    let listed = text(&mesh.cli(&["traffic", "greeter"]));
    let said = |id: &serde_json::Value| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("#{id} ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        said(&calls[0]["id"]).contains("/greet.Greeter/SayHello  OK  "),
        "{listed}"
    );
    assert!(
        said(&calls[1]["id"]).contains("/greet.Greeter/SayHello  NOT_FOUND (5)  "),
        "{listed}"
    );
    let replayed = text(&mesh.cli(&["replay", &calls[1]["id"].to_string()]));
    assert!(replayed.contains("NOT_FOUND (5): no such person"), "{replayed}");
    // An OK answer carries them in trailers, after the message.
    assert!(
        calls[0]["response_trailers"].to_string().contains("grpc-status"),
        "{}",
        calls[0]
    );

    // A server stream: each message passes, the trailers end it, and the
    // capture holds the messages and the outcome.
    let streamed = mesh.run_program("greet", &["--stream", "3"]);
    assert_eq!(
        streamed.trim(),
        "ok: hello 1\nok: hello 2\nok: hello 3\nend",
        "{streamed}"
    );
    let stream = exchanges(&mesh, 1, |e| e["path"] == "/greet.Greeter/SayHellos");
    assert_eq!(stream[0]["grpc_status"], 0);
    let body = &stream[0]["response_body"];
    let bytes: Vec<u8> = match body["text"].as_str() {
        Some(text) => text.as_bytes().to_vec(),
        None => data_encoding::BASE64
            .decode(body["base64"].as_str().unwrap().as_bytes())
            .unwrap(),
    };
    assert_eq!(grpc_messages(&bytes), 3, "{body}");

    // A replay goes over HTTP/2 and gets the same answer.
    let id = calls[0]["id"].to_string();
    let replayed = text(&mesh.cli(&["replay", &id]));
    assert!(replayed.contains(&format!("(replay of #{id})")), "{replayed}");
    let replays = exchanges(&mesh, 1, |e| e["replay_of"].as_u64() == calls[0]["id"].as_u64());
    assert_eq!(
        (replays[0]["version"].as_str(), replays[0]["grpc_status"].as_u64()),
        (Some("HTTP/2.0"), Some(0))
    );

    // Stopped: tonic reports UNAVAILABLE with devmesh's words.
    let output = mesh.cli(&["stop", "greeter"]);
    assert!(output.status.success(), "{}", text(&output));
    let refused = mesh.run_program("greet", &["world"]);
    assert!(
        refused.starts_with("error: Unavailable: devmesh: service `greeter` is not ready (stopped)"),
        "{refused}"
    );
    assert!(refused.contains("cargo devmesh start greeter"), "{refused}");
    let listed = text(&mesh.cli(&["traffic", "greeter"]));
    let last = listed.lines().last().unwrap_or_default();
    assert!(last.contains("UNAVAILABLE (14)"), "{listed}");
}

/// A bidirectional stream open across a restart of its service stays on
/// the old instance until the client ends it; the old instance then goes,
/// and the capture holds both sides' messages with their timing and the
/// stream's OK.
#[test]
fn a_grpc_stream_outlives_a_restart_and_ends_when_its_client_ends_it() {
    let mesh = Mesh::start(fixture("grpc"), &["greeter"], &["greeter"]);
    let old = mesh.pid("greeter");
    let mut chat = mesh
        .program("greet", &["--chat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("greet starts");
    let mut input = chat.stdin.take().unwrap();
    let mut replies = BufReader::new(chat.stdout.take().unwrap()).lines();
    let mut say = |line: &str| {
        writeln!(input, "{line}").unwrap();
        replies.next().expect("a reply").unwrap()
    };
    assert_eq!(say("one"), format!("ok: one from {old}"));

    let output = mesh.cli(&["restart", "greeter"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(mesh.pid("greeter"), old);
    assert_eq!(
        say("two"),
        format!("ok: two from {old}"),
        "the old instance still serves the stream"
    );
    let ps = text(&mesh.cli(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with("greeter") && l.contains("draining (1 open)")),
        "{ps}"
    );

    drop(input);
    let rest: Vec<String> = replies.map(Result::unwrap).collect();
    assert_eq!(rest, ["end"], "the stream ends with OK when the client ends its side");
    chat.wait().unwrap();
    assert!(wait_exit(old, DEADLINE), "the old instance goes once its stream ends");

    let stream = exchanges(&mesh, 1, |e| {
        e["path"] == "/greet.Greeter/Chat" && e["complete"] == true
    });
    assert_eq!(
        (stream[0]["grpc_status"].as_u64(), &stream[0]["error"]),
        (Some(0), &serde_json::Value::Null)
    );
    // Each side's two messages arrived apart, the restart between them.
    for side in ["request_body", "response_body"] {
        let arrivals = stream[0][side]["arrivals"].as_array().cloned().unwrap_or_default();
        let times: Vec<f64> = arrivals.iter().map(|a| a["ms"].as_f64().unwrap()).collect();
        assert!(
            times.len() >= 2 && times.windows(2).all(|w| w[0] <= w[1]),
            "{side}: {}",
            stream[0][side]
        );
        assert!(times[times.len() - 1] > times[0], "{side}: {}", stream[0][side]);
    }
}

/// How many length-prefixed gRPC messages `bytes` hold.
fn grpc_messages(mut bytes: &[u8]) -> usize {
    let mut count = 0;
    while bytes.len() >= 5 {
        let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        bytes = &bytes[(5 + length).min(bytes.len())..];
        count += 1;
    }
    count
}
