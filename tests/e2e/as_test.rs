//! `cargo devmesh traffic --as-test`: a captured request becomes a test of
//! the workspace's, which passes against the services as they were and
//! fails, with the calls that changed, once one of them changes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{Mesh, REPO, exchanges, fixture, get, shop_copy, text};

/// `cargo test -p PACKAGE --test TEST` in `mesh`'s workspace and target.
fn cargo_test(mesh: &Mesh, package: &str, test: &str) -> Output {
    Command::new(env!("CARGO"))
        .args(["test", "-p", package, "--test", test])
        .current_dir(&mesh.root)
        .env("CARGO_TARGET_DIR", mesh.target())
        .env("NO_COLOR", "1")
        .output()
        .expect("cargo runs")
}

/// A target folder of this file's own, kept between runs: the copies'
/// code changes, and their tests are built in it.
fn own_target() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("as-test-target")
}

#[test]
fn a_captured_checkout_becomes_a_test_that_fails_once_payments_charges_double() {
    let mut mesh = Mesh::idle(shop_copy()).in_target(own_target());
    mesh.run(&[]);
    for service in ["payments", "orders", "gateway"] {
        mesh.wait_ready(service, 1);
    }
    // One checkout, the test's: what differs from run to run (the order's
    // id, the process of orders that placed it) is listed, not asserted.
    let (status, body) = get(mesh.front("gateway"), "/checkout/tea?quantity=2");
    assert_eq!(status, 200, "{body}");
    let checkouts = exchanges(&mesh, 1, |e| {
        e["service"] == "gateway" && e["path"] == "/checkout/tea?quantity=2"
    });
    let id = checkouts[0]["id"].to_string();

    let said = text(&mesh.cli(&["traffic", "--as-test", &id]));
    let file = mesh.root.join("gateway/tests/get_checkout_tea_as_captured.rs");
    assert!(said.contains(&format!("wrote {}", file.display())), "{said}");
    let manifest = mesh.root.join("Cargo.toml");
    assert!(
        said.contains(&format!(
            "run it: cargo test --manifest-path {} -p gateway --test get_checkout_tea_as_captured",
            manifest.display()
        )),
        "{said}"
    );
    let code = std::fs::read_to_string(&file).expect("the test is written");
    assert!(
        code.starts_with(&format!("// Captured by devmesh: exchange #{id} of trace ")),
        "{code}"
    );
    assert!(code.contains("answer placed_by = "), "{code}");
    // Written again: a new file, the first is the user's now.
    let again = text(&mesh.cli(&["traffic", "--as-test", &id]));
    assert!(again.contains("get_checkout_tea_as_captured_2.rs"), "{again}");
    std::fs::remove_file(mesh.root.join("gateway/tests/get_checkout_tea_as_captured_2.rs")).unwrap();
    // Printed, it is the same test.
    let printed = text(&mesh.cli(&["traffic", "--as-test", &id, "--print"]));
    assert_eq!(printed.trim_end(), code.trim_end());
    // What cannot be a test says why, and what would be.
    let said = mesh.fails(&["traffic", "--as-test", "abc"], 1);
    assert!(said.contains("`abc` is neither an exchange's number"), "{said}");
    let said = mesh.fails(&["traffic", "--as-test", &"ab".repeat(16)], 1);
    assert!(
        said.contains(&format!("no exchange of trace {} is kept", "ab".repeat(16))),
        "{said}"
    );
    let said = mesh.fails(&["traffic", "--as-test", &id, "--stub", "nosuch"], 1);
    assert!(said.contains("(hint: it calls gateway, orders, payments)"), "{said}");
    mesh.signal_and_wait(libc::SIGTERM);

    let passed = cargo_test(&mesh, "gateway", "get_checkout_tea_as_captured");
    let said = text(&passed);
    assert!(
        passed.status.success(),
        "the captured test passes as captured:\n{said}\n{code}"
    );
    assert!(said.contains("test get_checkout_tea_as_captured ... ok"), "{said}");

    charge_double(&mesh.root);
    let failed = cargo_test(&mesh, "gateway", "get_checkout_tea_as_captured");
    let said = text(&failed);
    assert!(!failed.status.success(), "payments charging double fails it:\n{said}");
    assert!(
        said.contains("None of the 1 call(s) before `answered /order/payment/amount_cents = 700` was so: it was 1400."),
        "{said}"
    );
    // The table of calls shows what payments answered now.
    let row = said
        .lines()
        .find(|l| l.contains("| payments") && l.contains("POST /charge"))
        .unwrap_or_else(|| panic!("no row of the charge:\n{said}"));
    assert!(row.contains(r#""amount_cents":1400"#), "{row}");
}

/// payments' receipts say twice what it was asked to charge.
fn charge_double(root: &Path) {
    let main = root.join("payments/src/main.rs");
    let code = std::fs::read_to_string(&main).unwrap();
    let doubled = code.replace(
        "amount_cents: charge.amount_cents,",
        "amount_cents: charge.amount_cents * 2,",
    );
    assert_ne!(code, doubled, "payments' receipt is where the test expects it");
    std::fs::write(&main, doubled).unwrap();
}

#[test]
fn a_captured_grpc_call_becomes_a_passing_test() {
    let copy = fixture("grpc");
    // The fixture's package takes the harness, as a user's would.
    let manifest = copy.path().join("greeter/Cargo.toml");
    let harness = Path::new(REPO).join("devmesh-testing").canonicalize().unwrap();
    let mut text_of = std::fs::read_to_string(&manifest).unwrap();
    text_of.push_str(&format!(
        "\n[dev-dependencies]\ndevmesh-testing = {{ path = {:?} }}\n",
        harness.display().to_string()
    ));
    std::fs::write(&manifest, text_of).unwrap();
    let mut mesh = Mesh::idle(copy).in_target(own_target());
    mesh.run(&["greeter"]);
    mesh.wait_ready("greeter", 1);
    assert_eq!(mesh.run_program("greet", &["world"]).trim(), "ok: hello, world");
    let call = exchanges(&mesh, 1, |e| e["path"] == "/greet.Greeter/SayHello");
    let id = call[0]["id"].to_string();

    let said = text(&mesh.cli(&["traffic", "--as-test", &id]));
    let name = "post_greet_greeter_sayhello_as_captured";
    assert!(said.contains(&format!(" -p greeter --test {name}")), "{said}");
    let code = std::fs::read_to_string(mesh.root.join(format!("greeter/tests/{name}.rs"))).unwrap();
    // The message as it went, over HTTP/2, and its gRPC status asserted.
    assert!(code.contains(".version(Version::HTTP_2)"), "{code}");
    assert!(
        code.contains(r#".body(Bytes::from_static(b"\x00\x00\x00\x00\x07\n\x05world"))"#),
        "{code}"
    );
    assert!(code.contains(".grpc_status(0)"), "{code}");
    mesh.signal_and_wait(libc::SIGTERM);

    let passed = cargo_test(&mesh, "greeter", name);
    let said = text(&passed);
    assert!(
        passed.status.success(),
        "the captured gRPC test passes:\n{said}\n{code}"
    );
    assert!(said.contains(&format!("test {name} ... ok")), "{said}");
}
