#[devmesh_macros::test(services("gateway"))]
fn plain(mesh: Mesh) {}

fn main() {}
