use std::path::PathBuf;

use super::*;
use crate::inspector::{Body, Headers, Summary};

/// An answered HTTP exchange of a trace, `caller` → `service`.
fn exchange(id: u64, (caller, service): (&str, &str), (method, path): (&str, &str), status: u16) -> Exchange {
    let mut e = Exchange::begun(service.into(), caller.into(), Kind::Http);
    e.id = id;
    e.method = method.to_owned();
    e.path = path.to_owned();
    e.status = Some(status);
    e.version = "HTTP/1.1";
    e.complete = true;
    e
}

fn json_bodies(mut e: Exchange, request: &str, response: &str) -> Exchange {
    e.request_headers = Headers::from_text("content-type: application/json\n".to_owned());
    e.request_body = Body::new(request.as_bytes().to_vec(), request.len() as u64, false);
    e.response_headers =
        Headers::from_text("content-type: application/json\ncontent-length: 9\ndate: Tue, 08 Dec 2026\n".to_owned());
    e.response_body = Body::new(response.as_bytes().to_vec(), response.len() as u64, false);
    e
}

/// A checkout of the shop: the customer, the gateway, orders, payments.
fn checkout() -> Vec<Exchange> {
    let mut root = exchange(10, ("external", "gateway"), ("GET", "/checkout/tea?quantity=2"), 200);
    root.request_headers =
        Headers::from_text("host: 127.0.0.1:4000\naccept: */*\nauthorization: 3f9a1c**************\n".to_owned());
    let text = r#"{"order":{"id":3,"item":"tea","quantity":2}}"#;
    root.response_body = Body::new(text.as_bytes().to_vec(), text.len() as u64, false);
    vec![
        root,
        json_bodies(
            exchange(11, ("gateway", "orders"), ("POST", "/orders"), 200),
            r#"{"item":"tea","quantity":2}"#,
            r#"{"id":3,"item":"tea","quantity":2,"payment":{"charge_id":7,"status":"approved"}}"#,
        ),
        json_bodies(
            exchange(12, ("orders", "payments"), ("POST", "/charge"), 200),
            r#"{"amount_cents":700}"#,
            r#"{"amount_cents":700,"charge_id":7,"status":"approved"}"#,
        ),
    ]
}

fn members(names: &[&str]) -> Members {
    names
        .iter()
        .map(|n| {
            let package = Package {
                name: n.to_string(),
                dir: PathBuf::from(format!("/shop/{n}")),
            };
            (n.to_string(), Some(package))
        })
        .collect()
}

fn capture<'a>(trace: &'a [Exchange], origin: &'a str) -> Capture<'a> {
    Capture {
        trace,
        history: &[],
        pids: &[],
        origin,
    }
}

fn masker() -> Masker {
    Masker::new(&["authorization".to_owned()])
}

#[test]
fn a_trace_of_members_runs_them_all_and_asserts_every_call() {
    let written = write(
        capture(&checkout(), "exchange #10"),
        &members(&["gateway", "orders", "payments"]),
        &[],
        &masker(),
    )
    .unwrap();
    assert_eq!(written.name, "get_checkout_tea_as_captured");
    assert_eq!(written.service, "gateway");
    assert_eq!(written.package.unwrap().dir, PathBuf::from("/shop/gateway"));
    assert!(written.stand_ins.is_empty());
    let code = &written.code;
    assert!(code.starts_with("// Captured by devmesh: exchange #10.\n"), "{code}");
    assert!(code.contains("use devmesh_testing::{Bytes, Mesh, Request};"), "{code}");
    assert!(
        code.contains(r#"#[devmesh_testing::test(services("gateway", "orders", "payments"))]"#),
        "{code}"
    );
    // The request again, without how it travelled; its secret marked.
    assert!(code.contains(r#".uri("/checkout/tea?quantity=2")"#), "{code}");
    assert!(code.contains(r#".header("accept", "*/*")"#), "{code}");
    assert!(!code.contains(r#".header("host""#), "{code}");
    assert!(
        code.contains(r#"// .header("authorization", "3f9a1c**************") (masked"#),
        "{code}"
    );
    assert!(code.contains("assert_eq!(answer.status, 200"), "{code}");
    for asserted in [
        ".from(\"external\")\n        .to(\"gateway\")\n        .request(\"GET\", \"/checkout/tea?quantity=2\")\n        .status(200)\n        .with_response_json(\"/order/item\", \"tea\")\n        .with_response_json(\"/order/quantity\", 2)\n        .assert_once();",
        ".from(\"gateway\")\n        .to(\"orders\")\n        .request(\"POST\", \"/orders\")\n        .status(200)\n        .with_json(\"item\", \"tea\")\n        .with_json(\"quantity\", 2)\n        .with_response_json(\"item\", \"tea\")",
        ".with_response_json(\"/payment/status\", \"approved\")",
        ".from(\"orders\")\n        .to(\"payments\")\n        .request(\"POST\", \"/charge\")\n        .status(200)\n        .with_json(\"amount_cents\", 700)\n        .with_response_json(\"amount_cents\", 700)",
    ] {
        assert!(code.contains(asserted), "{asserted}\nnot in:\n{code}");
    }
    assert_eq!(
        written.varying,
        [
            "external → gateway: answer /order/id = 3",
            "gateway → orders: answer id = 3",
            "gateway → orders: answer /payment/charge_id = 7",
            "orders → payments: answer charge_id = 7",
        ]
    );
    assert!(code.contains("    //   gateway → orders: answer id = 3\n"), "{code}");
}

#[test]
fn a_service_not_run_stands_in_with_what_it_answered() {
    let written = write(
        capture(&checkout(), "trace 4bf9"),
        &members(&["gateway", "orders", "payments"]),
        &["payments".to_owned()],
        &masker(),
    )
    .unwrap();
    assert_eq!(written.stand_ins, ["payments"]);
    let code = &written.code;
    assert!(
        code.contains("use devmesh_testing::{Bytes, Captured, Mesh, MeshBuilder, Request};"),
        "{code}"
    );
    assert!(
        code.contains(r#"#[devmesh_testing::test(services("gateway", "orders"), setup(stand_ins))]"#),
        "{code}"
    );
    let answer = r##"Captured::answer("POST", "/charge", 200)
                    .header("content-type", "application/json")
                    .body(r#"{"amount_cents":700,"charge_id":7,"status":"approved"}"#),"##;
    assert!(code.contains(answer), "{code}");
    // What a stand-in answers is its own: only what it was sent is asserted.
    assert!(
        code.contains(".with_json(\"amount_cents\", 700)\n        .assert_once();"),
        "{code}"
    );
    assert!(
        !written
            .varying
            .iter()
            .any(|v| v.starts_with("orders → payments: answer"))
    );
}

#[test]
fn a_service_outside_the_workspace_stands_in_and_what_it_called_is_left_out() {
    let mut trace = checkout();
    // payments is the sandbox's, and called a fraud check there.
    trace.push(exchange(13, ("payments", "fraud"), ("GET", "/score"), 200));
    let written = write(capture(&trace, "x"), &members(&["gateway", "orders"]), &[], &masker()).unwrap();
    assert_eq!(written.stand_ins, ["payments"]);
    assert!(!written.code.contains("fraud"), "{}", written.code);
}

#[test]
fn repeated_calls_are_counted() {
    let mut trace = checkout();
    let again = trace[2].clone();
    trace.push(Exchange {
        summary: Summary {
            id: 13,
            ..again.summary.clone()
        },
        ..again
    });
    let written = write(
        capture(&trace, "x"),
        &members(&["gateway", "orders", "payments"]),
        &[],
        &masker(),
    )
    .unwrap();
    assert!(written.code.contains(".assert_count(2);"), "{}", written.code);
}

#[test]
fn a_grpc_call_is_sent_over_http2_with_its_bytes_and_trailers_kept() {
    let mut call = exchange(5, ("external", "greeter"), ("POST", "/greet.Greeter/SayHello"), 200);
    call.version = "HTTP/2.0";
    call.grpc_status = Some(0);
    call.request_headers = Headers::from_text("content-type: application/grpc\nte: trailers\n".to_owned());
    let message = b"\x00\x00\x00\x00\x07\n\x05world";
    call.request_body = Body::new(message.to_vec(), 12, false);
    let mut greeted = exchange(6, ("greeter", "names"), ("POST", "/names.Names/Look"), 200);
    greeted.version = "HTTP/2.0";
    greeted.grpc_status = Some(5);
    greeted.response_headers = Headers::from_text("content-type: application/grpc\n".to_owned());
    greeted.response_body = Body::new(vec![0, 0, 0, 0, 0, 0xff], 6, false);
    greeted.response_trailers = Headers::from_text("grpc-status: 5\ngrpc-message: no%20one\n".to_owned());
    let written = write(capture(&[call, greeted], "x"), &members(&["greeter"]), &[], &masker()).unwrap();
    let code = &written.code;
    assert!(code.contains(".version(Version::HTTP_2)"), "{code}");
    assert!(
        code.contains(r#".header("content-type", "application/grpc")"#),
        "{code}"
    );
    assert!(!code.contains(r#".header("te""#), "{code}");
    assert!(
        code.contains(r#".body(Bytes::from_static(b"\x00\x00\x00\x00\x07\n\x05world"))"#),
        "{code}"
    );
    assert!(
        code.contains(
            r#".body(Bytes::from_static(b"\x00\x00\x00\x00\x00\xff"))
                    .trailer("grpc-status", "5")
                    .trailer("grpc-message", "no%20one"),"#
        ),
        "{code}"
    );
    assert!(code.contains(".grpc_status(0)"), "{code}");
    assert!(code.contains(".grpc_status(5)"), "{code}");
}

#[test]
fn what_cannot_be_a_test_says_why() {
    let trace = checkout();
    assert_eq!(
        write(capture(&trace, "x"), &members(&["orders"]), &[], &masker()),
        Err(AsTestError::RootNotRun {
            service: "gateway".to_owned(),
            why: "no service of the workspace (hint: start the trace at one)"
        })
    );
    let mut cut = trace.clone();
    cut[0].request_body = Body::new(vec![b'a'; 4], 1 << 20, true);
    assert!(matches!(
        write(
            capture(&cut, "x"),
            &members(&["gateway", "orders", "payments"]),
            &[],
            &masker()
        ),
        Err(AsTestError::Truncated { id: 10, .. })
    ));
    let socket = Exchange::begun("live".into(), "external".into(), Kind::WebSocket);
    assert_eq!(
        write(capture(&[socket], "x"), &members(&["live"]), &[], &masker()),
        Err(AsTestError::Empty)
    );
}

#[test]
fn a_field_that_differs_between_captures_of_a_call_varies() {
    // An earlier checkout, placed by another process of orders.
    let mut earlier = checkout();
    for e in &mut earlier {
        e.id -= 5;
    }
    let text = r#"{"id":2,"item":"tea","quantity":2,"payment":{"charge_id":6,"status":"approved"},"placed_by":4242}"#;
    earlier[1].response_body = Body::new(text.as_bytes().to_vec(), text.len() as u64, false);
    let mut now = checkout();
    let text = r#"{"id":3,"item":"tea","quantity":2,"payment":{"charge_id":7,"status":"approved"},"placed_by":5151}"#;
    now[1].response_body = Body::new(text.as_bytes().to_vec(), text.len() as u64, false);
    let capture = Capture {
        trace: &now,
        history: &earlier,
        pids: &[],
        origin: "x",
    };
    let written = write(capture, &members(&["gateway", "orders", "payments"]), &[], &masker()).unwrap();
    assert!(
        !written.code.contains(".with_response_json(\"placed_by\""),
        "{}",
        written.code
    );
    assert!(
        written
            .varying
            .contains(&"gateway → orders: answer placed_by = 5151".to_owned())
    );
    // A process id of a service's, even in one capture.
    let capture = Capture {
        trace: &now,
        history: &[],
        pids: &[5151],
        origin: "x",
    };
    let written = write(capture, &members(&["gateway", "orders", "payments"]), &[], &masker()).unwrap();
    assert!(
        written
            .varying
            .contains(&"gateway → orders: answer placed_by = 5151".to_owned())
    );
    // The same call the same in both: asserted.
    assert!(
        written.code.contains(".with_response_json(\"item\", \"tea\")"),
        "{}",
        written.code
    );
}
