//! Why a command of the application failed: one typed error for the run,
//! `evaluate`, `predict`, `export`, `verify`, `plot-runs` and `health`. Each
//! variant adds its own context once (a path, an address, a flag) and keeps
//! the cause as its source, so `coordinator: error: …` reads as one chain
//! without repeats. The binaries print it; the library never uses `anyhow`.

use std::path::PathBuf;

/// An application command's failure.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The flags do not make a run.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Flags that each parse but do not go together, or a value that does
    /// not fit what the run needs (named in the message).
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be created or written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A socket could not be bound.
    #[error("binding {what}")]
    Bind {
        /// The address, and what it was for.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// MNIST could not be fetched.
    #[error(transparent)]
    Fetch(#[from] common::dataset::fetch::FetchError),
    /// The MNIST files are not valid.
    #[error(transparent)]
    Data(#[from] common::dataset::DataError),
    /// A model file could not be read or written.
    #[error(transparent)]
    Model(#[from] common::model_file::ModelFileError),
    /// A checkpoint could not be read or does not fit the run.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A run record could not be written, read or replayed.
    #[error(transparent)]
    Record(#[from] crate::app::record::RecordError),
    /// The dashboard's flags are wrong.
    #[error(transparent)]
    Dashboard(#[from] crate::app::dashboard::DashboardError),
    /// Local workers could not be started.
    #[error(transparent)]
    Launch(#[from] crate::app::launch::LaunchError),
    /// The served run stopped before it finished.
    #[error(transparent)]
    Serve(#[from] crate::CoordinatorError),
    /// An image given to `predict` cannot be read as a digit.
    #[error("{}: {why}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// Why (the decoder's message, or what the picture lacks).
        why: String,
    },
    /// A plot could not be drawn.
    #[error("drawing the plot: {0}")]
    Plot(String),
    /// A `--metrics` CSV has no such column or a malformed row.
    #[error("{}: {why}", path.display())]
    Metrics {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A health check could not be asked.
    #[error("{addr}: {why}")]
    Health {
        /// The server's address.
        addr: String,
        /// Why, with the gRPC status when the server answered.
        why: String,
    },
    /// Work on a blocking thread panicked.
    #[error("{what} panicked")]
    Panicked {
        /// The work.
        what: &'static str,
    },
}

impl AppError {
    /// [`AppError::Read`] of `path`, for `map_err`.
    pub fn read(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AppError {
        let path = path.into();
        move |source| AppError::Read { path, source }
    }

    /// [`AppError::Write`] of `path`, for `map_err`.
    pub fn write(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AppError {
        let path = path.into();
        move |source| AppError::Write { path, source }
    }
}

/// The result of an application command.
pub type AppResult<T> = Result<T, AppError>;
