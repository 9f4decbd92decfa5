//! The state folder is the supervisor's copy of its memory: damaged,
//! replaced or deleted while services run, it comes back, and calls
//! between services go on.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Mesh, fixture, get, read_json, text};

/// Waits until `check` holds, for at most `within`, looking every few
/// milliseconds (a busy loop here took a core from the supervisor).
fn within(within: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn registry_names(state: &Path) -> Vec<String> {
    std::fs::read(state.join("registry.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v["services"].as_object().map(|s| s.keys().cloned().collect()))
        .unwrap_or_default()
}

#[test]
fn a_damaged_or_deleted_state_folder_comes_back_and_calls_go_on() {
    let mesh = Mesh::start(fixture("mesh"), &["alpha", "beta"], &["beta", "alpha"]);
    let (state, alpha) = (mesh.state(), mesh.front("alpha"));
    let both = || registry_names(&state) == ["alpha", "beta"];
    let call = || get(alpha, "/peer").0 == 200;
    assert!(call());

    // Garbage: services keep their last good copy, the file is put back.
    std::fs::write(state.join("registry.json"), "{ half a file").unwrap();
    assert!(call(), "a call while the registry is garbage");
    within(Duration::from_secs(2), "the registry put back", both);

    // Deleted: the same.
    std::fs::remove_file(state.join("registry.json")).unwrap();
    assert!(call(), "a call while the registry is missing");
    within(Duration::from_secs(2), "the registry written again", both);

    // Replaced by a valid file that knows nothing: back within a second.
    std::fs::write(state.join("registry.json"), r#"{"version":1,"services":{}}"#).unwrap();
    within(Duration::from_secs(2), "the registry's own content back", both);
    within(Duration::from_secs(2), "calls working again", call);

    // The whole folder gone: every file comes back, calls go on, the logs
    // go on in a new folder.
    let control = read_json(&state.join("control.json"));
    std::fs::remove_dir_all(&state).unwrap();
    assert!(call(), "a call while the state folder is gone");
    within(Duration::from_secs(2), "the folder's files back", || {
        both() && state.join("ports.json").is_file() && state.join("control.json").is_file()
    });
    assert_eq!(read_json(&state.join("control.json")), control);
    assert!(
        text(&mesh.cli(&["ps"])).contains("alpha"),
        "the CLI finds the supervisor again"
    );
    within(Duration::from_secs(2), "the log in a new folder", || {
        std::fs::read_to_string(state.join("logs/devmesh.log")).is_ok_and(|log| log.contains("written again"))
    });

    // Made again, the folder is the user's alone, as at a fresh start.
    use std::os::unix::fs::MetadataExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the state folder made again");
    assert_eq!(mode(&state.join("logs")), 0o700, "the logs folder made again");

    // A file where the folder was: nothing can be written (root included),
    // said once for each file however long it lasts, and again when it clears.
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "not a folder").unwrap();
    let cannot = |l: &str| l.contains("could not be written again");
    mesh.output.wait_for(1, "the state files failing", cannot);
    // Four looks a second: a few looks more, to see that they say nothing.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::remove_file(&state).unwrap();
    mesh.output.wait_for(1, "the state files written again", |l| {
        l.contains("could be written again")
    });
    let said = mesh.output.count(cannot);
    assert!(said <= 3, "said {said} times for three files");
    within(Duration::from_secs(2), "the folder's files back", || {
        both() && state.join("control.json").is_file()
    });
    assert_eq!(mode(&state), 0o700);

    // With `control.json` gone, a second run is still refused.
    std::fs::remove_file(state.join("control.json")).unwrap();
    let refused = mesh.fails(&["run"], 1);
    assert!(refused.contains("already running"), "{refused}");
}
