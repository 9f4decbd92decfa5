//! Bad input ends a command with a clear error and exit code 2; these need
//! no build.

use crate::harness::{Mesh, fixture};

fn idle_mesh() -> Mesh {
    Mesh::idle(fixture("mesh"))
}

#[test]
fn an_unknown_service_is_named_with_the_known_ones() {
    let mesh = idle_mesh();
    let message = mesh.fails(&["run", "gama"], 2);
    assert!(message.contains("unknown service `gama`"), "{message}");
    assert!(message.contains("`alpha`, `beta`"), "{message}");
    let message = mesh.fails(&["run", "bta"], 2);
    assert!(
        message.contains("unknown service `bta` (hint: did you mean `beta`?)"),
        "{message}"
    );
}

#[test]
fn a_malformed_env_file_names_file_and_line() {
    let mesh = idle_mesh();
    std::fs::write(mesh.root.join(".env"), "GOOD=1\nnot a variable\n").unwrap();
    let message = mesh.fails(&["run"], 2);
    assert!(message.contains(".env` line 2: expected `KEY=value`"), "{message}");
}

#[test]
fn bare_cargo_devmesh_shows_help_and_succeeds() {
    let output = idle_mesh().command().output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: cargo devmesh"));
}

#[test]
fn a_malformed_config_names_file_and_key() {
    let mesh = idle_mesh();
    std::fs::write(mesh.root.join("devmesh.toml"), "[services.alpha]\nprot = 1\n").unwrap();
    let message = mesh.fails(&["run"], 2);
    assert!(message.contains("devmesh.toml"), "{message}");
    assert!(message.contains("key `services.alpha.prot`: unknown key"), "{message}");
}

#[test]
fn control_commands_without_a_supervisor_say_how_to_start_one() {
    let mesh = idle_mesh();
    let message = mesh.fails(&["ps"], 1);
    assert!(message.contains("no `cargo devmesh run` is running"), "{message}");
    let manifest = mesh.root.join("Cargo.toml");
    assert!(
        message.contains(&format!("cargo devmesh run --manifest-path {}", manifest.display())),
        "the hint repeats the manifest path: {message}"
    );
}
