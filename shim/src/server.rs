//! The shim's server life, run in place of `containerd_shim::run`'s: the same steps (signals,
//! subreaper, logger, the task service on the socket `start` chose, serve until Shutdown), on
//! the shim's own ttrpc server ([`crate::rpc`]), whose threads do not grow with the number of
//! tasks containerd connects for.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use containerd_shim::protos::shim::shim_ttrpc::{create_task, Task};
use containerd_shim::{Error, Flags, Shim};

use crate::shim::{serving, socket_path, WarrenShim};

/// Serves the task service on `flags.socket` until containerd shuts the shim down.
pub fn serve(flags: Flags) -> Result<(), Error> {
    if flags.namespace.is_empty() || flags.socket.is_empty() {
        return Err(Error::InvalidArgument("the server needs -namespace and -socket".into()));
    }
    // Where events go: without it the shim could serve nobody.
    std::env::var("TTRPC_ADDRESS")?;
    let io = |context: &str| {
        let context = context.to_string();
        move |err| Error::IoError { context, err }
    };
    survive_termination_signals().map_err(io("signal handlers"))?;
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| io("set child subreaper")(e.into()))?;
    let mut config = crate::shim_config();
    containerd_shim::logger::init(flags.debug, &config.default_log_level, &flags.namespace, &flags.id)?;
    let mut shim = WarrenShim::new(crate::RUNTIME_ID, &flags, &mut config);
    let Some(listener) = listen(&flags.socket).map_err(io("listen on the shim socket"))? else {
        log::info!("another server of the group serves {}", flags.socket);
        return Ok(());
    };
    let service: Arc<dyn Task + Send + Sync> = Arc::new(shim.task_service());
    if let Err(e) = crate::rpc::start(listener, create_task(service)) {
        // Nobody will answer on it: a later `start` must not take it for a serving group.
        let _ = std::fs::remove_file(socket_path(&flags.socket));
        return Err(io("start the ttrpc server")(e));
    }
    // `start` reads our stdout until it closes: from now on the shim serves.
    nix::unistd::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO).map_err(|e| io("close stdout")(e.into()))?;
    shim.wait();
    Ok(())
}

/// The shim outlives containerd's SIGTERM and SIGINT (it stops at Shutdown, when it hosts
/// nothing) and writes to closed pipes without dying. Caught rather than ignored: a disposition
/// of "ignore" would be inherited by the containers' processes across exec.
fn survive_termination_signals() -> std::io::Result<()> {
    let seen = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGPIPE] {
        signal_hook::flag::register(sig, seen.clone())?;
    }
    Ok(())
}

/// Binds the socket; None when another server of the group already serves on it (two
/// `start`s raced). A socket file nobody answers on for a second (a killed shim's) is
/// replaced; the second covers a racing server between its bind and its listen.
fn listen(address: &str) -> std::io::Result<Option<UnixListener>> {
    let path = Path::new(socket_path(address));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            for _ in 0..20 {
                if serving(address) {
                    return Ok(None);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path).map(Some)
        }
        bound => bound.map(Some),
    }
}
