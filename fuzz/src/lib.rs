//! What the fuzz targets share: a scratch directory per target and process, and the
//! input formats that need more than "the bytes are the file".

pub mod canary;
pub mod image;
pub mod seeds;

use std::path::PathBuf;

/// An empty directory for this target in this process: `$TMPDIR/warren-fuzz-NAME.PID`
/// (scripts/fuzz.sh points TMPDIR at a directory on /dev/shm that it removes afterwards).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-fuzz-{name}.{}", std::process::id()));
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{}: {e}", dir.display()),
        _ => {}
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A byte stream for one end of a connection: reads come from the fuzz input, writes go to
/// `output` (a sink for the target end, a buffer when the seeds write a stream).
pub struct Pipe<'a, W> {
    input: &'a [u8],
    output: W,
}

impl<'a, W: std::io::Write> Pipe<'a, W> {
    pub fn new(input: &'a [u8], output: W) -> Pipe<'a, W> {
        Pipe { input, output }
    }
}

impl<W> std::io::Read for Pipe<'_, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl<W: std::io::Write> std::io::Write for Pipe<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.output.flush()
    }
}
