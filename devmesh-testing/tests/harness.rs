//! The harness on the shop (`examples/shop`): meshes side by side, and no
//! process left behind by a test that panics or a test process that is
//! killed.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devmesh_testing::{Mesh, MeshBuilder};

fn shop() -> MeshBuilder {
    Mesh::builder().workspace("../examples/shop/Cargo.toml")
}

/// The pids of the mesh's services.
fn pids(mesh: &Mesh) -> Vec<u32> {
    ["gateway", "orders", "payments"]
        .iter()
        .map(|name| mesh.pid(name).unwrap_or_else(|| panic!("{name} runs")))
        .collect()
}

fn gone(pid: u32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    unsafe { libc::kill(pid as i32, 0) != 0 }
}

fn wait_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&pid| gone(pid)) {
        assert!(Instant::now() < deadline, "left running: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The harness holds descriptor 3 from before `main`, so that services
/// are spawned without a fork of the test process.
#[test]
fn descriptor_3_is_held_for_the_services_sockets() {
    assert_eq!(
        std::fs::read_link("/proc/self/fd/3").unwrap(),
        std::path::Path::new("/dev/null")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshes_side_by_side_have_ports_of_their_own() {
    let (one, two) = tokio::join!(shop().start(), shop().start());
    let (one, two) = (one.unwrap(), two.unwrap());
    for name in ["gateway", "orders", "payments"] {
        assert_ne!(one.addr(name), two.addr(name), "{name}");
    }
    let (a, b) = (pids(&one), pids(&two));
    assert!(a.iter().all(|pid| !b.contains(pid)));
    drop(one);
    wait_gone(&a);
    // The other mesh serves on.
    let answer = get_raw(two.addr("gateway"), "/health");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(two);
    wait_gone(&b);
}

#[test]
fn a_test_that_panics_leaves_no_process() {
    let (sender, started) = std::sync::mpsc::channel();
    let panicked = std::panic::catch_unwind(move || {
        devmesh_testing::__private::run(shop(), |mesh: Mesh| async move {
            sender.send(pids(&mesh)).unwrap();
            panic!("the test fails");
        })
    });
    assert!(panicked.is_err());
    wait_gone(&started.recv().unwrap());
}

/// The child of the next test: a mesh whose pids it prints, then waits
/// to be killed.
#[test]
#[ignore = "run by a_killed_test_process_leaves_no_process"]
fn child_holding_a_mesh() {
    devmesh_testing::__private::run(shop(), |mesh: Mesh| async move {
        let pids: Vec<String> = pids(&mesh).iter().map(u32::to_string).collect();
        println!("pids {}", pids.join(" "));
        std::future::pending::<()>().await;
    });
}

#[test]
fn a_killed_test_process_leaves_no_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holding_a_mesh", "--ignored", "--nocapture"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let pids: Vec<u32> = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("pids ")
                .map(|pids| pids.split(' ').filter_map(|p| p.parse().ok()).collect())
        })
        .expect("the child printed its mesh's pids");
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&pid| !gone(pid)));
    child.kill().unwrap(); // SIGKILL: no destructor runs.
    child.wait().unwrap();
    wait_gone(&pids);
}

/// Two turns on one shared mesh, in order: what the first changed (a
/// fault, a service stopped, its traffic) the second does not meet.
#[test]
fn a_shared_meshs_next_turn_starts_clean() {
    use devmesh_testing::Fault;
    let first = devmesh_testing::__private::run_shared("turns", shop, |mesh: Mesh| async move {
        mesh.fault("payments", Fault::Unreachable);
        mesh.stop("payments").await.unwrap();
        get_raw(mesh.addr("gateway"), "/checkout/tea");
        mesh.pid("gateway")
    });
    let second = devmesh_testing::__private::run_shared("turns", shop, |mesh: Mesh| async move {
        let answer = get_raw(mesh.addr("gateway"), "/checkout/tea");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        mesh.traffic().await.from("external").assert_once();
        mesh.pid("gateway")
    });
    assert_eq!(first, second, "the same gateway");
}

/// The child of the next test: a shared mesh, kept in a static that
/// nothing drops, whose pids it prints before its process ends.
#[test]
#[ignore = "run by a_shared_mesh_ends_with_its_test_process"]
fn child_sharing_a_mesh() {
    devmesh_testing::__private::run_shared("child", shop, |mesh: Mesh| async move {
        let pids: Vec<String> = pids(&mesh).iter().map(u32::to_string).collect();
        println!("pids {}", pids.join(" "));
    });
}

#[test]
fn a_shared_mesh_ends_with_its_test_process() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_sharing_a_mesh", "--ignored", "--nocapture"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let pids: Vec<u32> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            line.strip_prefix("pids ")
                .map(|pids| pids.split(' ').filter_map(|p| p.parse().ok()).collect())
        })
        .expect("the child printed its mesh's pids");
    assert_eq!(pids.len(), 3);
    wait_gone(&pids);
}

/// `GET path` without a client library: the answer's text.
fn get_raw(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    write!(socket, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    answer
}
