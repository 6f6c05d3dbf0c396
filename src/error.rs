//! The one error type of the crate.
//!
//! Every failure a user can cause (a missing file, a malformed config, a tensor of the wrong
//! shape, a prompt longer than the context, a bad argument) is one of these variants, with a
//! message that names the file, tensor or value at fault. The library never panics on user input.

use std::path::PathBuf;

/// Result alias used throughout kiln.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read (missing, unreadable, not a regular file).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The model folder lacks a file kiln needs.
    #[error("{path} not found: {what}")]
    MissingFile {
        /// Where kiln looked.
        path: PathBuf,
        /// Why that file is needed.
        what: String,
    },

    /// A JSON file (config.json, generation_config.json, an index, ...) did not parse.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },

    /// config.json parsed but a value is missing, inconsistent or unsupported.
    #[error("invalid config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },

    /// A LoRA adapter folder is invalid, unsupported, or does not fit the model.
    #[error("invalid adapter {path}: {message}")]
    Adapter {
        /// The adapter file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The architecture named in config.json is not one kiln implements.
    #[error("unsupported architecture {name:?} in {path} (supported: {supported})")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// The `architectures[0]` / `model_type` value found.
        name: String,
        /// The supported names, comma-separated.
        supported: String,
    },

    /// A safetensors file is malformed or uses an unsupported dtype.
    #[error("invalid safetensors file {path}: {message}")]
    Safetensors {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A tensor the model needs is not in any weight file.
    #[error("missing tensor {name:?} (expected shape {expected:?}) in {path}")]
    MissingTensor {
        /// The checkpoint name of the tensor.
        name: String,
        /// The shape the model expected.
        expected: Vec<usize>,
        /// The weight file or folder searched.
        path: PathBuf,
    },

    /// A tensor in the weight files has a different shape than the config implies.
    #[error("tensor {name:?} in {path} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The checkpoint name of the tensor.
        name: String,
        /// The shape the model expected.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
        /// The file holding it.
        path: PathBuf,
    },

    /// The weight files hold tensors the model does not use (a wrong architecture or config).
    #[error("unexpected tensor(s) in {path}: {names}")]
    UnexpectedTensors {
        /// The folder or file.
        path: PathBuf,
        /// Up to a few of the names, comma-separated.
        names: String,
    },

    /// tokenizer.json failed to load, or encoding/decoding failed.
    #[error("tokenizer error ({context}): {message}")]
    Tokenizer {
        /// What kiln was doing (a file path or an operation).
        context: String,
        /// The tokenizers library's message.
        message: String,
    },

    /// A prompt (plus the tokens to generate) does not fit in the model's context window.
    #[error("context overflow: {needed} tokens needed but the model's context is {limit}")]
    ContextOverflow {
        /// Tokens the request needs.
        needed: usize,
        /// `max_position_embeddings` of the model.
        limit: usize,
    },

    /// A caller-supplied argument is out of range or inconsistent.
    #[error("invalid argument {name}: {message}")]
    InvalidArgument {
        /// The argument (e.g. `top_p`, `--device`).
        name: String,
        /// What is wrong with it.
        message: String,
    },

    /// A token id outside the model's vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },

    /// The requested backend is not compiled in or failed to start.
    #[error("device {name:?}: {message}")]
    Device {
        /// The device name.
        name: String,
        /// What went wrong.
        message: String,
    },

    /// A chat template failed to compile, or raised (its `raise_exception` message).
    #[error("chat template: {message}")]
    ChatTemplate {
        /// The template's own message, or the syntax error.
        message: String,
    },

    /// Downloading from the Hugging Face hub failed (feature `hub`).
    #[error("hub download of {repo}: {message}")]
    Hub {
        /// The repository id.
        repo: String,
        /// What went wrong.
        message: String,
    },

    /// The model's scores for the next token contain NaN (an overflow in the weights or in
    /// half-precision compute): sampling from them would be silent garbage.
    #[error("the scores for position {position} contain NaN (overflowing weights or half-precision compute; try f32 compute)")]
    NonFiniteScores {
        /// The position (tokens before it) whose next-token scores were NaN.
        position: usize,
    },

    /// The backend failed while computing (e.g. reading a result back from a GPU).
    #[error("backend error: {0}")]
    Backend(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn invalid_arg(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            message: message.into(),
        }
    }
}
