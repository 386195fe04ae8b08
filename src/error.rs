//! The library's error type and its mapping onto the C status codes.

use thiserror::Error;

/// Every failure the library reports; each maps onto one `dp_status` code.
///
/// The message names the offending field and value (invalid arguments) or carries the
/// underlying library's own text (CUDA, NCCL).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// An argument or record is outside its documented range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The ranks supplied records that cannot be combined (explicit pad flags differ).
    #[error("inconsistent ranks: {0}")]
    InconsistentRanks(String),
    /// A CUDA driver call failed.
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// An NCCL call failed or the communicator reported an asynchronous error.
    #[error("NCCL error: {0}")]
    Nccl(String),
    /// The exchange did not complete within `timeout_ms`.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The CUDA driver or NCCL could not be found or lacks a needed symbol.
    #[error("library unavailable: {0}")]
    LibraryUnavailable(String),
    /// Another thread is using the same communicator right now.
    #[error("busy: {0}")]
    Busy(String),
    /// A bug in dpcoord (a caught panic, a broken invariant).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The same kind of error, its message prefixed with `context`.
    pub fn context(&self, context: &str) -> Error {
        let wrap = |m: &String| format!("{context}: {m}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(wrap(m)),
            Error::InconsistentRanks(m) => Error::InconsistentRanks(wrap(m)),
            Error::Cuda(m) => Error::Cuda(wrap(m)),
            Error::Nccl(m) => Error::Nccl(wrap(m)),
            Error::Timeout(m) => Error::Timeout(wrap(m)),
            Error::LibraryUnavailable(m) => Error::LibraryUnavailable(wrap(m)),
            Error::Busy(m) => Error::Busy(wrap(m)),
            Error::Internal(m) => Error::Internal(wrap(m)),
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for an [`Error::InvalidArgument`] built from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::Error::InvalidArgument(format!($($arg)*)) };
}
pub(crate) use invalid;
