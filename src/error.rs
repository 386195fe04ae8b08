//! The library's error: a kind (one per `dp_status` failure code) and a message naming the
//! field and value, or carrying the underlying library's own text.

/// Declares [`ErrorKind`] from one table: variant, C status code, C status name, label.
macro_rules! error_kinds {
    ($($(#[$doc:meta])* $kind:ident = $code:literal, $name:literal, $label:literal;)*) => {
        /// What went wrong; each kind is one `dp_status` failure code (same number).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum ErrorKind {
            $($(#[$doc])* $kind = $code,)*
        }

        impl ErrorKind {
            /// Every kind, in code order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind),*];

            /// The C status code of this kind (`dp_status`).
            pub const fn code(self) -> u32 {
                self as u32
            }

            /// The C name of this kind's status, e.g. `DP_ERR_TIMEOUT` (static, NUL-terminated).
            pub const fn status_name(self) -> &'static std::ffi::CStr {
                match self {
                    $(ErrorKind::$kind => $name,)*
                }
            }

            /// The kind whose C status code is `code`, if any.
            pub const fn from_code(code: u32) -> Option<ErrorKind> {
                match code {
                    $($code => Some(ErrorKind::$kind),)*
                    _ => None,
                }
            }

            /// The prefix of messages of this kind, e.g. `"timeout"`.
            pub const fn label(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $label,)*
                }
            }
        }
    };
}

error_kinds! {
    /// An argument or record is NULL, misaligned, outside its documented range, or a
    /// `struct_size` is too small.
    InvalidArgument = 1, c"DP_ERR_INVALID_ARGUMENT", "invalid argument";
    /// The ranks supplied records that cannot be combined (explicit pad flags or step ids differ).
    InconsistentRanks = 2, c"DP_ERR_INCONSISTENT_RANKS", "inconsistent ranks";
    /// A CUDA driver call failed.
    Cuda = 3, c"DP_ERR_CUDA", "CUDA error";
    /// An NCCL call failed or the communicator reported an asynchronous error.
    Nccl = 4, c"DP_ERR_NCCL", "NCCL error";
    /// The exchange did not complete within `timeout_ms`.
    Timeout = 5, c"DP_ERR_TIMEOUT", "timeout";
    /// The CUDA driver or NCCL could not be found or lacks a needed symbol.
    LibraryUnavailable = 6, c"DP_ERR_LIBRARY_UNAVAILABLE", "library unavailable";
    /// Another call is in progress on the same coordinator or communicator.
    Busy = 7, c"DP_ERR_BUSY", "busy";
    /// A bug in dpcoord (a caught panic, a broken invariant).
    Internal = 8, c"DP_ERR_INTERNAL", "internal error";
    /// The wait was ended by a cancel call.
    Cancelled = 9, c"DP_ERR_CANCELLED", "cancelled";
    /// A host-group peer process exited or closed the group.
    PeerExited = 10, c"DP_ERR_PEER_EXITED", "peer exited";
    /// A rank's slot failed its checksum: the exchange delivered damaged bytes.
    Corrupt = 11, c"DP_ERR_CORRUPT", "corrupt slot";
}

/// Every failure the library reports: its kind and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.label())]
pub struct Error {
    /// What went wrong (the `dp_status` it maps to).
    pub kind: ErrorKind,
    /// Names the offending field and value, or carries CUDA's or NCCL's own text.
    pub message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// An [`ErrorKind::Internal`] error (a bug in dpcoord).
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// The same kind of error, its message prefixed with `context`.
    pub fn context(&self, context: &str) -> Error {
        Error::new(self.kind, format!("{context}: {}", self.message))
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for an [`ErrorKind::InvalidArgument`] error built from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => {
        $crate::error::Error::new($crate::error::ErrorKind::InvalidArgument, format!($($arg)*))
    };
}
pub(crate) use invalid;
