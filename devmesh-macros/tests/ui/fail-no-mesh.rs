#[devmesh_macros::test(services("gateway"))]
async fn no_argument() {}

#[devmesh_macros::test(services("gateway"))]
async fn two(mesh: Mesh, other: u32) {}

fn main() {}
