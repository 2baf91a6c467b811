//! `containerd-shim-warren-v2`: everything is in the `warren_shim` library. `start` and
//! `delete` run through containerd's shim library; the server's life is the shim's own
//! ([`warren_shim::server`]).

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    match containerd_shim::parse(&args[1..]) {
        Ok(flags) if flags.action.is_empty() && !flags.version && !flags.info => {
            if let Err(e) = warren_shim::server::serve(flags) {
                eprintln!("{}: {e}", warren_shim::RUNTIME_ID);
                std::process::exit(1);
            }
        }
        _ => containerd_shim::run::<warren_shim::WarrenShim>(warren_shim::RUNTIME_ID, Some(warren_shim::shim_config())),
    }
}
