//! Warren's image side: import OCI image layouts, oci-archive and `docker save`
//! tars into a content-addressed layer store, and make container rootfs and
//! bundles from them.

pub mod atomic_file;
pub mod bundle;
pub mod digest;
pub mod pull;
pub mod rootfs;
pub mod source;
pub mod spec;
pub mod store;
mod sys;
pub mod transfer;
pub mod unpack;

#[cfg(test)]
mod testutil;
