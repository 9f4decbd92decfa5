//! The mesh as a library, in this process: a `Mesh` built from a plan with
//! no `cargo devmesh` binary and no terminal — the seed of the test harness.

use cargo_devmesh::inspector::Filter;
use cargo_devmesh::supervisor::{Done, ServiceState};
use cargo_devmesh::workspace::{CargoOptions, Workspace};
use cargo_devmesh::{Mesh, Plan};
use devmesh::registry::Status;

use crate::harness::{DEADLINE, fixture, get, read_json, shared_target, wait_exit};

#[test]
fn a_mesh_in_process_serves_restarts_and_leaves_no_process_when_dropped() {
    let copy = fixture("mesh");
    let state = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pids = runtime.block_on(async {
        let cargo = CargoOptions {
            manifest_path: Some(copy.path().join("Cargo.toml")),
            target_dir: Some(shared_target()),
            ..CargoOptions::default()
        };
        let mut workspace = Workspace::load(&cargo).unwrap();
        workspace.state_dir = state.path().to_path_buf();
        // alpha, and beta, which it depends on.
        let plan = Plan {
            services: vec!["alpha".to_owned()],
            cargo,
            ..Plan::new(workspace)
        };
        let mesh = Mesh::start(plan).await.unwrap();
        let ready = |name| mesh.ready(name);
        let (alpha, beta): (ServiceState, ServiceState) = (ready("alpha").await.unwrap(), ready("beta").await.unwrap());
        assert_eq!((alpha.status, beta.status), (Status::Ready, Status::Ready));
        let old = alpha.pid.unwrap();
        let front = mesh.front("alpha").unwrap().port();
        let call = move |path: &'static str| tokio::task::spawn_blocking(move || get(front, path));
        assert_eq!(call("/whoami").await.unwrap(), (200, format!("alpha {old}")));

        let restarted = mesh.restart("alpha", false, false).await.unwrap();
        let Ok(Done::Restarted { pid: new }) = restarted else {
            panic!("{restarted:?}")
        };
        assert_ne!(new, old);
        assert_eq!(call("/whoami").await.unwrap(), (200, format!("alpha {new}")));
        let (status, peer) = call("/peer").await.unwrap();
        assert!(
            status == 200 && peer.starts_with(&format!("alpha got: beta {}", beta.pid.unwrap())),
            "{status} {peer}"
        );
        // Both calls through alpha's front port, and alpha's to beta, captured.
        let captured = mesh.inspector().store.list(&Filter::default());
        let calls: Vec<_> = captured
            .iter()
            .map(|e| (e.caller.to_string(), e.service.to_string()))
            .collect();
        assert!(calls.contains(&("alpha".to_owned(), "beta".to_owned())), "{calls:?}");
        assert_eq!(calls.iter().filter(|(_, to)| to == "alpha").count(), 3, "{calls:?}");

        let registry = read_json(&state.path().join("registry.json"));
        assert!(registry["services"]["alpha"].is_object(), "{registry}");
        drop(mesh);
        [old, new, beta.pid.unwrap()]
    });
    drop(runtime);
    for pid in pids {
        assert!(wait_exit(pid, DEADLINE), "process {pid} ended with the mesh");
    }
    let registry = read_json(&state.path().join("registry.json"));
    assert_eq!(registry["services"], serde_json::json!({}), "{registry}");
}
