// Every argument the attribute takes. (`#[test]` functions are left out of
// a plain build, so this checks the attribute's parsing and checks.)
use devmesh_macros::test;

struct Mesh;

fn with_handlers<T>(builder: T) -> T {
    builder
}

#[test(services("gateway", "orders"), remote("payments", "http://127.0.0.1:9000"))]
async fn named(mesh: Mesh) {
    let _ = mesh;
}

#[test(workspace("../shop/Cargo.toml"), setup(with_handlers))]
async fn elsewhere(_mesh: Mesh) -> Result<(), String> {
    Ok(())
}

#[test]
async fn every_service(_: Mesh) {}

#[test(services("gateway"), shared)]
async fn sharing(_: Mesh) {}

fn main() {}
