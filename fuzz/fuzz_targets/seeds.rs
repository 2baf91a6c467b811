//! Not a fuzz target: writes the seed corpora (`WARREN_FUZZ_SEEDS=DIR`, the busybox layout
//! at `WARREN_FUZZ_BUSYBOX`) and exits. It is built like the targets because the library
//! code it calls is instrumented and needs libFuzzer's hooks linked in.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        if let Some(out) = std::env::var_os("WARREN_FUZZ_SEEDS") {
            let busybox = std::env::var_os("WARREN_FUZZ_BUSYBOX").expect("WARREN_FUZZ_BUSYBOX: the layout");
            warren_fuzz::seeds::write_all(&PathBuf::from(out), &PathBuf::from(busybox)).expect("seeds written");
            std::process::exit(0);
        }
    },
    |_data: &[u8]| {}
);
