//! A front port's speed while developers' copies are registered for its
//! service (issue 23: ≥ 0.95× the rate, p99 ≤ 1.1×, against none): one
//! supervisor running payments with `[remote.etcd]`, and 10 routes for
//! payments put in etcd and taken away between rounds, which take turns
//! in rotation. Every request carries a route (`baggage:
//! devmesh-route=nobody`) that has no copy: the front port reads it and
//! looks it up, and the request goes to payments here.
//!
//! Run: `cargo run --release -p devmesh-bench --bin routes`
//! (needs `wrk` and `etcd`: `apt-get install wrk etcd-server`).

use std::process::Command;
use std::time::Duration;

use devmesh::remote::etcd::{Registration, RoutedCopy};
use devmesh_bench::{Api, Guard, build, front_port, median, run_payments, wait_until_answers, wrk_with};

const DURATION: &str = "4s";
const ROUNDS: usize = 9;
const CONNECTIONS: &str = "16";
const ROUTES: usize = 10;

#[tokio::main]
async fn main() {
    for tool in ["wrk", "etcd"] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "`{tool}` is needed (hint: apt-get install wrk etcd-server)"
        );
    }
    let built = build();
    let data = tempfile::tempdir().expect("a temp dir");
    let (etcd, client) = devmesh_bench::start_etcd(&data.path().join("etcd")).expect("etcd starts");
    let _etcd = Guard(etcd);
    let config_file = data.path().join("devmesh.toml");
    std::fs::write(
        &config_file,
        format!("[remote.etcd]\nendpoints = [\"127.0.0.1:{client}\"]\nnamespace = \"bench\"\nlease = \"60s\"\n"),
    )
    .expect("a config file");
    let etcd_config = devmesh::config::Config::load(&config_file)
        .expect("the config loads")
        .remote
        .etcd
        .expect("[remote.etcd]");
    let mut registration = Registration::new(&etcd_config);
    while registration.register(&[]).is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let state = tempfile::tempdir().expect("a temp dir");
    let env = [
        ("DEVMESH_REMOTE__ETCD__ENDPOINTS", format!("[\"127.0.0.1:{client}\"]")),
        ("DEVMESH_REMOTE__ETCD__NAMESPACE", "bench".to_owned()),
    ];
    let _supervisor = Guard(run_payments(&built, state.path(), "26700-26799", &env));
    let front = front_port(state.path(), "payments").await;
    wait_until_answers(front, "/health").await;
    let api = Api::read(state.path());

    let routes: Vec<RoutedCopy> = (0..ROUTES)
        .map(|i| RoutedCopy {
            service: "payments".to_owned(),
            route: format!("dev-{i}"),
            url: "http://127.0.0.1:9".to_owned(),
            strict: false,
        })
        .collect();
    // Sets the routes in etcd, and waits until the front port has them.
    let mut set = |on: bool| {
        let _ = registration.revoke();
        registration
            .register_with_routes(&[], if on { &routes } else { &[] })
            .expect("etcd takes the routes");
        let wanted = if on { ROUTES } else { 0 };
        loop {
            let answer = api.call("GET", "/api/routes");
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let view: serde_json::Value = serde_json::from_str(body).expect("JSON");
            if view["copies"].as_array().map_or(0, Vec::len) == wanted {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    println!(
        "wrk -t1 -c{CONNECTIONS} -d{DURATION} GET /health with `baggage: devmesh-route=nobody`, \
         {ROUNDS} rounds taking turns:"
    );
    let phases = ["no routes", "10 routes for payments"];
    let mut runs = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for turn in 0..phases.len() {
            let which = (round + turn) % phases.len();
            set(which == 1);
            let figures = wrk_with(
                front,
                "/health",
                DURATION,
                CONNECTIONS,
                &["baggage: devmesh-route=nobody"],
            );
            println!(
                "  round {}  {:<24} {:>9.0} req/s  p99 {:>9.2?}",
                round + 1,
                phases[which],
                figures.rps,
                figures.p99
            );
            runs[which].push(figures);
        }
    }
    let [none, routed] = runs.map(median);
    println!(
        "\nmedians of {ROUNDS}:\n{:<24} {:>10.0} req/s  p99 {:>9.2?}\n{:<24} {:>10.0} req/s  p99 {:>9.2?}\n\
         with routes: {:.2}× the rate, {:.2}× the p99 (target ≥ 0.95×, ≤ 1.1×)",
        phases[0],
        none.rps,
        none.p99,
        phases[1],
        routed.rps,
        routed.p99,
        routed.rps / none.rps,
        routed.p99.as_secs_f64() / none.p99.as_secs_f64()
    );
    let _ = registration.revoke();
}
