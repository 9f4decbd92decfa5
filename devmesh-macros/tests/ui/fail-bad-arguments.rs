#[devmesh_macros::test(service("gateway"))]
async fn misspelt(mesh: Mesh) {}

#[devmesh_macros::test(services(gateway))]
async fn not_a_string(mesh: Mesh) {}

#[devmesh_macros::test(services("Gateway_1"))]
async fn not_a_name(mesh: Mesh) {}

#[devmesh_macros::test(services())]
async fn none(mesh: Mesh) {}

#[devmesh_macros::test(remote("payments"))]
async fn remote_without_url(mesh: Mesh) {}

#[devmesh_macros::test(setup("with_handlers"))]
async fn setup_a_string(mesh: Mesh) {}

#[devmesh_macros::test(services("gateway"), timeout(5))]
async fn unknown_with_a_number(mesh: Mesh) {}

fn main() {}
