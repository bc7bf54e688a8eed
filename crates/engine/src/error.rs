//! Engine errors, each with its stable API [`ErrorCode`].

use api::ErrorCode;
use model::{InvalidTransition, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("VM {0:?} does not exist (hv list --all shows the defined VMs)")]
    NoSuchVm(String),
    #[error("a VM named {0:?} already exists; pick another name, or change it with hv edit")]
    VmExists(String),
    /// Anything else that is missing: the text says what, and how to see what exists.
    #[error("{0}")]
    NotFound(String),
    /// Anything else that is taken: the text says what, and what to do.
    #[error("{0}")]
    AlreadyExists(String),
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Invalid(String),
    #[error("VM {vm:?}: {source}")]
    InvalidState {
        vm: String,
        source: InvalidTransition,
    },
    /// Not possible in the object's current state or configuration (not a lifecycle
    /// transition): the text says why and what to do.
    #[error("{0}")]
    WrongState(String),
    /// The object is used by something that must not lose it.
    #[error("{0}")]
    InUse(String),
    #[error("VM {vm:?} is busy with {op}; try again when it has finished")]
    Busy { vm: String, op: &'static str },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Host(String),
    #[error("{0}")]
    Qemu(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Cancelled(String),
    /// Another hvd (a migration's target) refused, with its code and message.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
    /// The database cannot be used as it is (too new, a row that does not read).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl EngineError {
    /// The stable API code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::NotFound(_) | EngineError::NoSuchVm(_) => ErrorCode::NotFound,
            EngineError::AlreadyExists(_) | EngineError::VmExists(_) => ErrorCode::AlreadyExists,
            EngineError::Spec(_) | EngineError::Invalid(_) => ErrorCode::InvalidArgument,
            EngineError::InvalidState { .. } | EngineError::WrongState(_) => {
                ErrorCode::InvalidState
            }
            EngineError::InUse(_) => ErrorCode::InUse,
            EngineError::Busy { .. } => ErrorCode::Busy,
            EngineError::Timeout(_) => ErrorCode::Timeout,
            EngineError::Host(_) => ErrorCode::HostError,
            EngineError::Qemu(_) => ErrorCode::QemuError,
            EngineError::Internal(_) | EngineError::Store(_) => ErrorCode::Internal,
            EngineError::Cancelled(_) => ErrorCode::Cancelled,
            EngineError::Remote { code, .. } => *code,
        }
    }
}

impl From<rusqlite::Error> for EngineError {
    fn from(e: rusqlite::Error) -> Self {
        EngineError::Internal(format!("database: {e}"))
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
