//! config.json bytes through what `warren create` runs on a bundle's config before it makes
//! anything: the parse (errors name the field), the validation, the namespace plan, and the
//! seccomp compile the init runs. None of it may panic, whatever the bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use warren::namespaces::NamespacePlan;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = warren::spec::parse(data, Path::new("config.json")) else { return };
    if warren::spec::validate(&spec).is_err() {
        return;
    }
    let _ = NamespacePlan::for_spec(&spec);
    if let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        let _ = warren::seccomp::compile(seccomp);
    }
});
