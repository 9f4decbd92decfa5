//! `devmesh-relay --config relay.toml`: the tunnel relay, alone, for a
//! sandbox's container; the same as `cargo devmesh relay`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str = "usage: devmesh-relay --config relay.toml";
    let config = match args.as_slice() {
        [flag, path] if flag == "--config" => path.clone(),
        [help] if help == "--help" || help == "-h" => {
            println!(
                "The tunnel relay a team keeps in its sandbox (the same as `cargo devmesh relay`).\n\n{USAGE}\n\n{}",
                cargo_devmesh::tunnel::relay::KEYS_HELP
            );
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE} (`devmesh-relay --help` lists the config's keys)");
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
