//! Memory streamed while CRIU dumps. The source's CRIU sends the pages to a page server over a
//! socket Warren gives it (`--page-server --ps-socket`); Warren relays that protocol as one
//! part of the migration stream ([`super::Part::Pages`]), and the target feeds the part to a
//! `criu page-server` that writes the page images into its spool as they come. The dump's
//! other images follow when CRIU is done, as before.
//!
//! CRIU waits for two kinds of answer, which the relay gives on the source: whether the
//! target holds a parent image for a page map (never: a move sends everything) and that the
//! stream was closed. Whether the target wrote all it got is known when its page server
//! exits, before the restore; a failure there is a failed restore, and the container resumes
//! on the source.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::MigrateError;

/// CRIU's `struct page_server_iov`: u32 command (its flags in the high 16 bits), 4 bytes of
/// padding, u64 page count, u64 address, u64 destination id; native byte order.
const HEADER: usize = 32;

const PS_IOV_ADD: u32 = 1;
const PS_IOV_HOLE: u32 = 2;
const PS_IOV_OPEN: u32 = 3;
const PS_IOV_OPEN2: u32 = 4;
const PS_IOV_ADD_F: u32 = 6;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
/// Pagemap flag: the pages' data follows the header.
const PE_PRESENT: u32 = 1 << 2;

/// What follows a header, and what CRIU waits for after it.
#[derive(Debug, PartialEq)]
enum Then {
    /// This many bytes of page data.
    Data(u64),
    /// A page map opened: CRIU waits for whether the target holds a parent image of it.
    Open,
    /// The stream's end: CRIU waits for its status.
    Close,
}

/// What follows a header; an error for what a dump to a page server never sends.
fn then(header: &[u8; HEADER], page_size: u64) -> Result<Then, MigrateError> {
    let cmd = u32::from_ne_bytes(header[0..4].try_into().expect("4 bytes"));
    let nr_pages = u64::from_ne_bytes(header[8..16].try_into().expect("8 bytes"));
    let (op, flags) = (cmd & 0xffff, cmd >> 16);
    let data = |present: bool| {
        let len = if present { nr_pages.checked_mul(page_size) } else { Some(0) };
        len.map(Then::Data).ok_or(MigrateError::PageStream { what: "a page count out of range" })
    };
    match op {
        PS_IOV_OPEN2 => Ok(Then::Open),
        PS_IOV_OPEN | PS_IOV_HOLE => Ok(Then::Data(0)),
        PS_IOV_ADD => data(true),
        PS_IOV_ADD_F => data(flags & PE_PRESENT != 0),
        PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => Ok(Then::Close),
        _ => Err(MigrateError::PageCommand { cmd }),
    }
}

/// Relays what CRIU sends to `criu` into `out` until CRIU closes the stream, answering it as
/// a page server would. Returns the page bytes relayed. On error the socket is shut down, so
/// that CRIU's next write fails instead of waiting for a reader.
pub(super) fn relay(criu: &UnixStream, out: &mut impl Write) -> Result<u64, MigrateError> {
    let relayed = relay_until_close(criu, out);
    if relayed.is_err() {
        let _ = criu.shutdown(std::net::Shutdown::Both);
    }
    relayed
}

fn relay_until_close(mut criu: &UnixStream, out: &mut impl Write) -> Result<u64, MigrateError> {
    let socket_err = |source| MigrateError::Io { path: "criu's page socket".into(), source };
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let mut buf = vec![0u8; 1 << 18];
    let mut pages = 0u64;
    loop {
        let mut header = [0u8; HEADER];
        match criu.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(MigrateError::PageStream { what: "criu ended the page stream without closing it" })
            }
            Err(e) => return Err(socket_err(e)),
        }
        out.write_all(&header).map_err(part_err)?;
        let mut left = match then(&header, page_size)? {
            Then::Data(len) => len,
            Then::Open => {
                // No parent image: a move sends every page.
                criu.write_all(&[0]).map_err(socket_err)?;
                0
            }
            Then::Close => {
                // The target's page server answers the same once it has written everything;
                // whether it did is checked there before the restore.
                criu.write_all(&0i32.to_ne_bytes()).map_err(socket_err)?;
                return Ok(pages);
            }
        };
        pages += left;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = criu.read(&mut buf[..want]).map_err(socket_err)?;
            if n == 0 {
                return Err(MigrateError::PageStream { what: "criu ended the page stream inside a page" });
            }
            out.write_all(&buf[..n]).map_err(part_err)?;
            left -= n as u64;
        }
    }
}

/// A write into the part failed: the stream did (the part writer keeps the cause).
fn part_err(source: std::io::Error) -> MigrateError {
    MigrateError::Io { path: "migration stream".into(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cmd: u32, nr_pages: u64) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&cmd.to_ne_bytes());
        h[8..16].copy_from_slice(&nr_pages.to_ne_bytes());
        h[16..24].copy_from_slice(&0x7f00_0000_0000u64.to_ne_bytes());
        h
    }

    /// Plays CRIU's side of a dump to a page server: open, two runs of pages (one present,
    /// one lazy), close; checks the answers it gets.
    fn criu_side(mut sk: UnixStream) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            sk.write_all(&header(PS_IOV_OPEN2, 0)).unwrap();
            let mut parent = [9u8; 1];
            sk.read_exact(&mut parent).unwrap();
            assert_eq!(parent, [0], "no parent on a move");
            sk.write_all(&header(PS_IOV_ADD_F | (PE_PRESENT << 16), 2)).unwrap();
            sk.write_all(&vec![0xab; 2 * 4096]).unwrap();
            sk.write_all(&header(PS_IOV_ADD_F | (2 << 16), 5)).unwrap();
            sk.write_all(&header(PS_IOV_FORCE_CLOSE, 0)).unwrap();
            let mut status = [9u8; 4];
            sk.read_exact(&mut status).unwrap();
            assert_eq!(i32::from_ne_bytes(status), 0);
        })
    }

    #[test]
    fn relays_a_dump_and_answers_as_a_page_server() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let criu = criu_side(theirs);
        let mut out = Vec::new();
        assert_eq!(relay(&ours, &mut out).unwrap(), 2 * 4096);
        criu.join().unwrap();
        assert_eq!(out.len(), 4 * HEADER + 2 * 4096, "every byte CRIU sent, in order");
        assert_eq!(&out[HEADER..2 * HEADER], &header(PS_IOV_ADD_F | (PE_PRESENT << 16), 2));
        assert!(out[2 * HEADER..2 * HEADER + 8192].iter().all(|b| *b == 0xab));
    }

    #[test]
    fn a_stream_cut_short_or_an_unknown_command_is_an_error() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&header(PS_IOV_ADD, 3)).unwrap();
        theirs.write_all(&[1; 100]).unwrap();
        drop(theirs);
        let err = relay(&ours, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("inside a page"), "{err}");

        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&header(7, 1)).unwrap();
        let err = relay(&ours, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("command 7"), "{err}");
        // Shut down: CRIU's next write fails rather than waiting.
        assert!(theirs.write_all(&[0; HEADER]).is_err() || theirs.read(&mut [0]).unwrap() == 0);

        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let err = relay(&ours, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("without closing"), "{err}");
    }
}
