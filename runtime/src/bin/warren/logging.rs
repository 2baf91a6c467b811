//! Log lines to stderr or `--log FILE`, as text or as the JSON lines that
//! containerd and podman read back when the runtime fails.

use crate::cli::LogFormat;
use std::io::Write;
use std::sync::Mutex;

pub struct Logger {
    format: LogFormat,
    level: log::LevelFilter,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Logger {
    pub fn install(path: Option<&std::path::Path>, format: LogFormat, debug: bool) -> anyhow::Result<()> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
            None => Box::new(std::io::stderr()),
        };
        let level = if debug { log::LevelFilter::Debug } else { log::LevelFilter::Warn };
        let logger = Logger { format, level, out: Mutex::new(out) };
        log::set_boxed_logger(Box::new(logger))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level().as_str().to_lowercase();
        let level = if level == "warn" { "warning".to_string() } else { level };
        let time = warren::state::rfc3339_now();
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": level, "msg": record.args().to_string(), "time": time}).to_string()
            }
            LogFormat::Text => format!("time=\"{time}\" level={level} msg=\"{}\"", record.args()),
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
        }
    }

    fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}
