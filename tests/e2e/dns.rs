//! The supervisor's DNS server, asked by `dig` as a program that does not
//! link devmesh would ask it.

use std::process::Command;

use crate::harness::{Mesh, fixture, read_json};

pub fn dig(port: u16, args: &[&str]) -> String {
    let output = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("`dig` runs (hint: apt-get install bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn dig_finds_services_by_srv_and_a_and_garbage_changes_nothing() {
    let mesh = Mesh::start(fixture("mesh"), &[], &["beta", "alpha", "files"]);
    let ports = read_json(&mesh.state().join("ports.json"));
    let port = ports["@dns"].as_u64().expect("the DNS server has a kept port") as u16;
    let alpha = mesh.front("alpha");

    let ps = crate::harness::text(&mesh.cli(&["ps"]));
    assert!(
        ps.contains(&format!("dns: 127.0.0.1:{port}")),
        "ps says where the DNS server is: {ps}"
    );
    let srv = dig(port, &["+short", "_alpha._tcp.devmesh.", "SRV"]);
    assert_eq!(srv.trim(), format!("0 0 {alpha} alpha.devmesh."));
    assert_eq!(dig(port, &["+short", "alpha.devmesh.", "A"]).trim(), "127.0.0.1");
    assert!(dig(port, &["nosuch.devmesh.", "A"]).contains("status: NXDOMAIN"));
    assert!(dig(port, &["example.com.", "A"]).contains("status: REFUSED"));

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(b"\x00\x01garbage", ("127.0.0.1", port)).unwrap();
    socket.send_to(&[0xff; 300], ("127.0.0.1", port)).unwrap();
    assert_eq!(
        dig(port, &["+short", "beta.devmesh.", "SRV"]).trim(),
        format!("0 0 {} beta.devmesh.", mesh.front("beta"))
    );

    // A command service (Python) is told where the server is.
    let environ = std::fs::read(format!("/proc/{}/environ", mesh.pid("files"))).unwrap();
    let told = format!("DEVMESH_DNS=127.0.0.1:{port}");
    assert!(
        environ.split(|&b| b == 0).any(|var| var == told.as_bytes()),
        "{told} in the service's environment"
    );
}
