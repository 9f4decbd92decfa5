//! `discover` for a registry hit, against `std::env::var` of a set variable,
//! measured in the same run. Target: `discover` no slower than `env::var`.
//!
//! Run: `cargo bench -p devmesh --bench discover`. Prints both times, their
//! ratio, and how long a registry change takes to reach `discover`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use devmesh::Resolver;
use devmesh::registry::{Entry, Registry};

const GROUP: &str = "discover";

fn main() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let registry = Registry::new(dir.path().join("registry.json"));
    registry
        .update(|file| {
            // A realistic mesh: the service looked up among twenty, written
            // by a supervisor that runs (its liveness is checked on lookups).
            file.supervisor_pid = Some(std::process::id());
            for i in 0..20 {
                let url = format!("http://127.0.0.1:{}", 41000 + i);
                file.services.insert(format!("service-{i}"), Entry::new(url));
            }
        })
        .expect("the registry is written");
    let resolver = Resolver::builder().registry(registry.path()).build();
    // SAFETY: set before any other thread starts; criterion runs benches on this thread.
    unsafe { std::env::set_var("DEVMESH_BENCH_PEER", "http://127.0.0.1:41007") };

    let out = dir.path().join("criterion");
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut group = c.benchmark_group(GROUP);
    group.bench_function("registry-hit", |b| {
        b.iter(|| resolver.discover(black_box("service-7")).expect("a hit"))
    });
    group.bench_function("env-var", |b| {
        b.iter(|| std::env::var(black_box("DEVMESH_BENCH_PEER")).expect("set"))
    });
    group.finish();
    c.final_summary();

    if let (Some(discover), Some(env)) = (mean_ns(&out, "registry-hit"), mean_ns(&out, "env-var")) {
        println!("discover (registry hit): {discover:.1} ns");
        println!("std::env::var (set):     {env:.1} ns");
        println!("ratio discover/env::var: {:.2}", discover / env);
    }
    println!(
        "registry change seen by discover after: {:?}",
        change_latency(&registry, &resolver)
    );
}

/// The mean time criterion measured for `id`, in nanoseconds.
fn mean_ns(out: &Path, id: &str) -> Option<f64> {
    let path = out.join(GROUP).join(id).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

/// The median, over 20 writes, of the time from a registry write returning
/// to `discover` answering with the new URL.
fn change_latency(registry: &Registry, resolver: &Resolver) -> Duration {
    let mut samples: Vec<Duration> = (0..20u16)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}", 42000 + i);
            registry
                .update(|f| {
                    f.services.insert("service-7".into(), Entry::new(url.clone()));
                })
                .expect("the registry is written");
            let written = Instant::now();
            while resolver.discover("service-7").expect("a hit").url() != url {
                std::hint::spin_loop();
            }
            written.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}
