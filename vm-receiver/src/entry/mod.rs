//! How the receiver is started besides `serve --archive`: by a qrexec
//! service in a backup qube, or as an ssh relay in a networked qube.

pub mod qrexec;
pub mod relay;
