//! gRPC as tonic speaks it: a tonic server under `cargo devmesh run` with
//! no config, and a tonic client calling it through its front port.

use crate::harness::{Mesh, exchanges, fixture, text};

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
    // An OK answer carries them in trailers, after the message.
    assert!(
        calls[0]["response_trailers"].to_string().contains("grpc-status"),
        "{}",
        calls[0]
    );

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
}
