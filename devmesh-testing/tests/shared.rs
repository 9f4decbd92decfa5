//! `#[devmesh_testing::test(shared)]`: the tests of this file share one
//! mesh of the shop, each in its turn, seeing only its own traffic; the
//! faults one sets and the services it stops are put back for the next.

use std::sync::OnceLock;

use devmesh_testing::{Bytes, Fault, Mesh, Request};

/// Every test of the file meets the same processes.
fn same_mesh(mesh: &Mesh) {
    static GATEWAY: OnceLock<u32> = OnceLock::new();
    let pid = mesh.pid("gateway").expect("gateway runs");
    assert_eq!(*GATEWAY.get_or_init(|| pid), pid, "one mesh for the file's tests");
}

async fn checkout(mesh: &Mesh) -> u16 {
    let request = Request::get("/checkout/tea?quantity=1").body(Bytes::new()).unwrap();
    mesh.send("gateway", request).await.expect("the gateway answers").status
}

#[devmesh_testing::test(workspace("../examples/shop/Cargo.toml"), services("gateway"), shared)]
async fn a_fault_is_the_tests_that_set_it(mesh: Mesh) {
    same_mesh(&mesh);
    mesh.fault("payments", Fault::Unreachable);
    assert_eq!(checkout(&mesh).await, 502);
    mesh.traffic().await.from("external").assert_once();
}

#[devmesh_testing::test(workspace("../examples/shop/Cargo.toml"), services("gateway"), shared)]
async fn a_stopped_service_is_started_again_for_the_next_test(mesh: Mesh) {
    same_mesh(&mesh);
    mesh.stop("orders").await.unwrap();
    let status = checkout(&mesh).await;
    assert!(status >= 500, "no order without orders: {status}");
}

#[devmesh_testing::test(workspace("../examples/shop/Cargo.toml"), services("gateway"), shared)]
async fn each_test_sees_its_own_traffic(mesh: Mesh) {
    same_mesh(&mesh);
    for _ in 0..2 {
        assert_eq!(checkout(&mesh).await, 200, "no fault, every service running");
    }
    let traffic = mesh.traffic().await;
    traffic.from("external").assert_count(2);
    traffic.to("payments").status(200).assert_count(2);
}
