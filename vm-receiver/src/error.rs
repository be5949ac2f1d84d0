//! Receiver errors: a code the agent can act on, and a message that names
//! the object (archive, volume, session, path) for the human.

use protocol::message::{ErrorCode, RemoteError};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// An I/O failure on `path`; a full disk gets its own code.
    pub fn io(what: &str, path: &Path, e: std::io::Error) -> Self {
        let code = match e.raw_os_error() {
            Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT) => ErrorCode::NoSpace,
            _ => ErrorCode::Io,
        };
        Failure::new(code, format!("unable to {what} '{}': {e}", path.display()))
    }

    pub fn to_remote(&self) -> RemoteError {
        RemoteError {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl From<protocol::ProtocolError> for Failure {
    fn from(e: protocol::ProtocolError) -> Self {
        Failure::new(ErrorCode::BadRequest, e.to_string())
    }
}
