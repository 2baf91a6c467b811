//! Failpoints for the fault-injection tests (`tests/tests/faults.rs`): with the cargo feature
//! `failpoints`, [`failpoint`] kills its own process with SIGKILL when the environment
//! variable `WARREN_FAILPOINT` (a comma list) names the point, so a test can stop the runtime
//! or the shim dead between two steps of a verb and check what is left. Without the feature
//! it compiles to nothing. Point names are `VERB.STEP`, the step being what has just been done.

/// The environment variable naming the points to die at.
pub const ENV: &str = "WARREN_FAILPOINT";

/// Dies by SIGKILL here when `WARREN_FAILPOINT` names `name`.
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    let Some(list) = std::env::var_os(ENV) else { return };
    if list.to_string_lossy().split(',').any(|p| p.trim() == name) {
        // SIGKILL cannot be caught: nothing of ours runs after this line.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn failpoint(_name: &str) {}
