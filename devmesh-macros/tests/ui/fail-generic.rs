#[devmesh_macros::test]
async fn generic<T>(mesh: T) {}

fn main() {}
