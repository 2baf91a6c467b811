//! Plan TOML bytes through the config crate's parser and checks; a plan that loads must turn
//! into resources with no overflow (memory + swap stays within OCI's i64) and no negative
//! limits. The same text also goes through the host file's parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_config::{BlockDevice, HostConfig, Plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = HostConfig::parse(text, "host.toml");
    let Ok(plan) = Plan::parse("fuzz", text, "fuzz.toml") else { return };
    let r = plan.resources(&[BlockDevice::new(8, 0)]);
    let memory = r.memory().as_ref().expect("a plan sets memory");
    let (limit, swap) = (memory.limit().expect("limit"), memory.swap().expect("swap"));
    assert!(limit > 0 && swap >= limit, "memory {limit}, memory+swap {swap} from {text:?}");
    let cpu = r.cpu().as_ref().expect("a plan sets cpu");
    assert!(cpu.quota().expect("quota") > 0, "cpu quota from {text:?}");
    assert!(r.pids().as_ref().expect("pids").limit() > 0, "pids from {text:?}");
});
