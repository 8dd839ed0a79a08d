//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading data, running models or comparing outputs.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// A `.npy` / `.npz` file is malformed, truncated or uses an unsupported dtype.
    #[error("{}: {msg}", path.display())]
    Npy { path: PathBuf, msg: String },
    /// The feed does not match the declared inputs (missing input, wrong dtype or rank, ...).
    #[error("feed: {msg}")]
    Feed { msg: String },
    /// A bad `--input-shape` argument.
    #[error("input shape `{text}`: {msg}")]
    InputShape { text: String, msg: String },
    /// tract failed to load, type, optimise or run the model (its error chain on one line).
    #[error("tract: {msg}")]
    Tract { msg: String },
    /// A requested tensor name is not produced by any node of the model.
    #[error("tensor `{name}` not found in the model")]
    UnknownTensor { name: String },
    /// A file-system error.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ValidateError {
    pub(crate) fn feed(msg: impl Into<String>) -> Self {
        ValidateError::Feed { msg: msg.into() }
    }

    pub(crate) fn npy(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ValidateError::Npy { path: path.into(), msg: msg.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ValidateError::Io { path: path.into(), source }
    }
}
