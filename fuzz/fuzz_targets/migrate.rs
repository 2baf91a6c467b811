//! The target end of a migration stream fed from the input: magic and hello, the answer
//! (accepting, with every layer of an offered image missing, so layer parts are wanted),
//! parts (frames, zstd chunks, end frames with size and digest) and the manifest check, then
//! the commit or abort, and the word that it runs. Whatever the source sends, the target end may fail but not panic,
//! and a part it accepts must be exactly what its end frame says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::migrate::wire::{Answer, Incoming, Outcome, Resumed, RootfsOffer, TargetEnd};
use warren_fuzz::Pipe;
use warren_images::digest::Digest;

/// Parts read per input: the stream has no limit, the fuzzer's time has.
const MAX_PARTS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut end = TargetEnd::new(Pipe::new(data, std::io::sink()), "fuzz".into()).expect("zstd context");
    let Ok(hello) = end.read_hello() else { return };
    let missing = match &hello.rootfs {
        RootfsOffer::Image(image) => image.chain_ids(),
        RootfsOffer::Plain => Vec::new(),
    };
    end.answer(&Answer::Accept { missing_layers: missing, raw_chunks: true, page_stream: true }).expect("a pipe takes writes");
    for _ in 0..MAX_PARTS {
        match end.next_incoming() {
            Ok(Incoming::Part(part)) => {
                let mut content = Vec::new();
                let Ok(got) = end.receive_part(&part, &mut content) else { return };
                assert_eq!(got.bytes, content.len() as u64, "part {part:?}: size");
                assert_eq!(got.sha256, Digest::of(&content), "part {part:?}: digest");
            }
            Ok(Incoming::Manifest(manifest)) => {
                if end.check_manifest(&manifest).is_ok() {
                    end.report(&Outcome::Restored { pid: 1, restore_ms: 0 }).expect("a pipe takes writes");
                    if let Ok(true) = end.wait_for_commit() {
                        end.confirm(&Resumed::Running).expect("a pipe takes writes");
                    }
                }
                return;
            }
            Err(_) => return,
        }
    }
});
