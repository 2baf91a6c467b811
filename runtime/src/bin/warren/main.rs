//! `warren`: parse the command line, set up logging, dispatch to the library.

mod checkpoint_cmd;
mod cli;
mod commands;
mod docs_cmd;
mod events_cmd;
mod image_cmd;
mod logging;
mod migrate_cmd;
mod plan_cmd;
mod tenant_cmd;

fn main() {
    // The container init is exec'd by the runtime itself: skip clap and logging.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "init") {
        let fd = std::env::var(warren::init::SYNC_FD_ENV).ok().and_then(|v| v.parse().ok());
        match fd {
            Some(fd) => warren::init::main(fd),
            None => {
                eprintln!("warren init: only the runtime itself runs this");
                std::process::exit(2)
            }
        }
    }
    let cli = cli::Cli::parse_runc_style();
    if let Err(e) = logging::Logger::install(cli.log.as_deref(), cli.log_format, cli.debug) {
        eprintln!("warren: --log: {e}");
        std::process::exit(1);
    }
    let log_to_file = cli.log.is_some();
    match commands::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = one_line(&e);
            // containerd and podman read the reason from the log file; the
            // caller's terminal gets it once, as one line.
            if log_to_file {
                log::error!("{msg}");
            }
            eprintln!("warren: {msg}");
            std::process::exit(1)
        }
    }
}

/// The error and its causes on one line. The library's errors name their cause in their own
/// message already: a cause whose text is there is not repeated.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg.replace('\n', " ")
}
