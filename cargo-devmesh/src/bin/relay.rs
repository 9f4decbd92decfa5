//! `devmesh-relay --config relay.toml`: the tunnel relay, alone, for a
//! sandbox's container; the same as `cargo devmesh relay`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match args.as_slice() {
        [flag, path] if flag == "--config" => path.clone(),
        _ => {
            eprintln!("usage: devmesh-relay --config relay.toml");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(cargo_devmesh::tunnel::relay::run(std::path::Path::new(&config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let config = e.downcast_ref::<cargo_devmesh::tunnel::relay::ConfigError>().is_some();
            ExitCode::from(if config { 2 } else { 1 })
        }
    }
}
