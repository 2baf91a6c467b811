//! `containerd-shim-warren-v2`: everything is in the `warren_shim` library.

fn main() {
    containerd_shim::run::<warren_shim::WarrenShim>(warren_shim::RUNTIME_ID, Some(warren_shim::shim_config()));
}
