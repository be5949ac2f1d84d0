//! Browsing a session without restoring it (`sparsebak open`): the volume
//! as of a session, served read-only as one file under a FUSE mount whose
//! reads fetch, verify and cache chunks on demand.
//!
//! `image` is the volume (what a read returns, verified); `cache` the
//! bounded chunk cache under it; `fusefs` the thin FUSE front that turns
//! kernel requests into reads of the image and failures into EIO;
//! `mounts` finds and unmounts the mounts `open` made; `attach` gives the
//! opened file to a qube as a read-only block device (Qubes).

pub mod attach;
pub mod cache;
pub mod fusefs;
pub mod image;
pub mod mounts;
