//! Model files in safetensors: tensors `w0, w1, …` of shape `[out, in]` and
//! `b0, b1, …` of shape `[out]`, dtype F32, and `__metadata__` with
//! `"sizes": "784,30,10"`. Python loads them with `safetensors.numpy.load_file`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::layers::{NetSpec, Shape};
use crate::network::{checked_parameter_count, Network};
use crate::wire::MAX_PARAMETERS;

/// Largest file read as a model or checkpoint: room for a checkpoint's
/// tensors (the weights and up to three more sets of the same size) at the
/// parameter limit, plus its header.
pub const MAX_FILE_BYTES: u64 = 4 * 4 * MAX_PARAMETERS as u64 + (1 << 20);

/// What is wrong with a model file, and which.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: safetensors::SafeTensorError,
    },
    /// The `net` metadata does not describe a net this build trains.
    #[error("{path}: metadata \"net\": {why}")]
    Net {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The `sizes` metadata is missing, malformed, or claims more parameters
    /// than the limit or the file holds.
    #[error("{path}: metadata \"sizes\" is {found:?}; expected comma-separated layer sizes like \"784,30,10\", at most {MAX_PARAMETERS} parameters, all present in the file")]
    Sizes {
        /// The file.
        path: PathBuf,
        /// What was found.
        found: Option<String>,
    },
    /// A tensor is missing, or has the wrong dtype or shape.
    #[error("{path}: tensor {tensor}: {problem}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
}

/// Writes `network` to `path` atomically: a temp file beside it, fsync, rename.
///
/// # Errors
/// [`ModelFileError::Io`] naming the path.
pub fn save(path: &Path, network: &Network) -> Result<(), ModelFileError> {
    save_with(path, network, &[])
}

/// Like [`save`], with `extra` metadata entries beside `"sizes"` (used by checkpoints).
///
/// # Errors
/// [`ModelFileError::Io`] naming the path.
pub fn save_with(
    path: &Path,
    network: &Network,
    extra: &[(&str, String)],
) -> Result<(), ModelFileError> {
    save_with_parts(path, network, &[], extra)
}

/// The safetensors bytes of `network`.
pub fn to_bytes(network: &Network) -> Vec<u8> {
    to_bytes_with(network, &[])
}

/// The safetensors bytes of `network` with `extra` metadata entries.
pub fn to_bytes_with(network: &Network, extra: &[(&str, String)]) -> Vec<u8> {
    to_bytes_with_parts(network, &[], extra)
}

/// The safetensors bytes of `network`, plus further network-shaped values
/// stored under a name prefix (`parts`: e.g. `("velocity.", v)` gives
/// tensors `velocity.w0, velocity.b0, …`), with `extra` metadata entries.
/// Checkpoints keep a run's optimiser state and best model this way; the
/// file still loads as `network` with [`load`].
pub fn to_bytes_with_parts(
    network: &Network,
    parts: &[(&str, &Network)],
    extra: &[(&str, String)],
) -> Vec<u8> {
    let le = |values: &mut dyn Iterator<Item = f32>| {
        values.flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()
    };
    let mut buffers = Vec::new();
    for (prefix, net) in std::iter::once(&("", network)).chain(parts) {
        for (l, (w, b)) in net.weights.iter().zip(&net.biases).enumerate() {
            buffers.push((
                format!("{prefix}w{l}"),
                vec![w.nrows(), w.ncols()],
                le(&mut w.iter().copied()),
            ));
            buffers.push((
                format!("{prefix}b{l}"),
                vec![b.len()],
                le(&mut b.iter().copied()),
            ));
        }
    }
    let views = buffers.iter().map(|(name, shape, data)| {
        (
            name.clone(),
            TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data"),
        )
    });
    let sizes: Vec<String> = network.sizes.iter().map(|s| s.to_string()).collect();
    let mut metadata = HashMap::from([("sizes".to_string(), sizes.join(","))]);
    if let Some(net) = &network.net {
        let i = net.input;
        metadata.insert("net".to_string(), net.to_string());
        metadata.insert(
            "input".to_string(),
            format!("{},{},{}", i.channels, i.height, i.width),
        );
    }
    metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let bytes = safetensors::serialize(views, Some(metadata)).expect("valid tensors serialise");
    canonical_header(bytes)
}

/// The same file with its JSON header's keys sorted (the metadata included),
/// so equal models with equal metadata are equal bytes: safetensors writes
/// its metadata map in hash order.
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors writes JSON");
    let header: std::collections::BTreeMap<String, serde_json::Value> = header
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::Object(map) => {
                let sorted: std::collections::BTreeMap<_, _> = map.into_iter().collect();
                (k, serde_json::json!(sorted))
            }
            v => (k, v),
        })
        .collect();
    let mut json = serde_json::to_vec(&header).expect("JSON serialises");
    // The data starts 8-byte aligned, as safetensors pads it.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Writes [`to_bytes_with_parts`] atomically, as [`save_with`] does.
///
/// # Errors
/// [`ModelFileError::Io`] naming the path.
pub fn save_with_parts(
    path: &Path,
    network: &Network,
    parts: &[(&str, &Network)],
    extra: &[(&str, String)],
) -> Result<(), ModelFileError> {
    let bytes = to_bytes_with_parts(network, parts, extra);
    let io = |source| ModelFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads the part stored under `prefix` (see [`to_bytes_with_parts`]) as a
/// network shaped like `like`; `None` when the file has no such part.
///
/// # Errors
/// As [`load`], for a part that is present but malformed.
pub fn load_part(
    path: &Path,
    prefix: &str,
    like: &Network,
) -> Result<Option<Network>, ModelFileError> {
    let bytes = read_bounded(path)?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|source| ModelFileError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    if tensors.tensor(&format!("{prefix}w0")).is_err() {
        return Ok(None);
    }
    let mut network = like.zeros_like();
    read_params(path, &tensors, prefix, &mut network)?;
    Ok(Some(network))
}

/// Reads tensors `{prefix}w{l}` and `{prefix}b{l}` into `network`, whose
/// arrays give the shapes expected.
fn read_params(
    path: &Path,
    tensors: &SafeTensors,
    prefix: &str,
    network: &mut Network,
) -> Result<(), ModelFileError> {
    for l in 0..network.weights.len() {
        let shape = network.weights[l].dim();
        let w = read_tensor(path, tensors, &format!("{prefix}w{l}"), &[shape.0, shape.1])?;
        network.weights[l] = Array2::from_shape_vec(shape, w).expect("shape checked");
        let b = read_tensor(path, tensors, &format!("{prefix}b{l}"), &[shape.0])?;
        network.biases[l] = Array1::from(b);
    }
    Ok(())
}

/// The chapter-6 net a file's metadata names (`"net"`, with `"input"` as
/// `channels,height,width`, 1,28,28 when absent), if any.
fn metadata_net(
    path: &Path,
    metadata: Option<&HashMap<String, String>>,
) -> Result<Option<NetSpec>, ModelFileError> {
    let Some(text) = metadata.and_then(|m| m.get("net")) else {
        return Ok(None);
    };
    let input = metadata
        .and_then(|m| m.get("input"))
        .map_or("1,28,28", String::as_str);
    let dims: Vec<usize> = input
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let bad = |why: String| ModelFileError::Net {
        path: path.to_path_buf(),
        why,
    };
    let &[channels, height, width] = &dims[..] else {
        return Err(bad(format!(
            "metadata \"input\" is {input:?}, expected channels,height,width"
        )));
    };
    if [channels, height, width]
        .iter()
        .any(|&d| d == 0 || d > 4096)
    {
        return Err(bad(format!(
            "metadata \"input\" {input:?} is not an image shape"
        )));
    }
    let shape = Shape {
        channels,
        height,
        width,
    };
    NetSpec::parse(text, shape)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Reads a network from `path`.
///
/// # Errors
/// [`ModelFileError`] naming the path and what is wrong: unreadable, not
/// safetensors (e.g. truncated), bad `sizes`, missing tensor, wrong dtype or shape, or non-finite values.
pub fn load(path: &Path) -> Result<Network, ModelFileError> {
    Ok(load_with_metadata(path)?.0)
}

/// Reads a network and its whole metadata map from `path`.
///
/// # Errors
/// As [`load`].
pub fn load_with_metadata(
    path: &Path,
) -> Result<(Network, HashMap<String, String>), ModelFileError> {
    let bytes = read_bounded(path)?;
    let network = from_bytes(path, &bytes)?;
    // from_bytes has parsed the header already, so this cannot fail.
    let (_, metadata) =
        SafeTensors::read_metadata(&bytes).map_err(|source| ModelFileError::Format {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((network, metadata.metadata().clone().unwrap_or_default()))
}

/// Reads `path`, a regular file (never a FIFO or device) of at most
/// [`MAX_FILE_BYTES`], its size checked before it is read.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ModelFileError> {
    crate::regular_file::read(path, MAX_FILE_BYTES).map_err(|source| ModelFileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses safetensors bytes; `path` only names the source in errors.
///
/// # Errors
/// As [`load`].
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Network, ModelFileError> {
    let format = |source| ModelFileError::Format {
        path: path.to_path_buf(),
        source,
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(format)?;
    let tensors = SafeTensors::deserialize(bytes).map_err(format)?;
    if let Some(spec) = metadata_net(path, metadata.metadata().as_ref())? {
        if spec.parameter_count() * 4 > bytes.len() {
            return Err(ModelFileError::Net {
                path: path.to_path_buf(),
                why: format!("the net {spec} has more parameters than the file has bytes"),
            });
        }
        let mut network = Network::for_net(&spec);
        read_params(path, &tensors, "", &mut network)?;
        return Ok(network);
    }
    let found = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("sizes").cloned());
    let sizes: Option<Vec<usize>> = found
        .as_ref()
        .and_then(|s| s.split(',').map(|p| p.trim().parse().ok()).collect());
    // Nothing is allocated from the metadata until the sizes it claims are
    // known to fit both the parameter limit and the file's own length.
    let fits = |s: &[usize]| {
        checked_parameter_count(s, MAX_PARAMETERS).is_some_and(|n| n * 4 <= bytes.len())
    };
    let sizes = match sizes {
        Some(s) if fits(&s) => s,
        _ => {
            return Err(ModelFileError::Sizes {
                path: path.to_path_buf(),
                found,
            })
        }
    };
    let mut network = Network::zeros(&sizes);
    read_params(path, &tensors, "", &mut network)?;
    Ok(network)
}

fn read_tensor(
    path: &Path,
    tensors: &SafeTensors,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, ModelFileError> {
    let problem = |problem: String| ModelFileError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        problem,
    };
    let view = tensors
        .tensor(name)
        .map_err(|_| problem("missing".to_string()))?;
    if view.dtype() != Dtype::F32 {
        return Err(problem(format!("dtype {:?}, expected F32", view.dtype())));
    }
    if view.shape() != shape {
        return Err(problem(format!(
            "shape {:?}, expected {shape:?}",
            view.shape()
        )));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(problem(format!("value {i} is {}, not finite", values[i])));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::init_rng;

    #[test]
    fn round_trip_is_bitwise() {
        let net = Network::new(&[784, 30, 10], &mut init_rng(1));
        let dir = std::env::temp_dir().join(format!("model-file-{}", std::process::id()));
        let path = dir.join("m.safetensors");
        save(&path, &net).unwrap();
        assert_eq!(load(&path).unwrap(), net);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn equal_models_with_equal_metadata_are_equal_bytes() {
        let net = Network::new(&[6, 3, 2], &mut init_rng(2));
        let extra: Vec<(&str, String)> = (0..12).map(|i| ("k", i.to_string())).collect();
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
        let extra: Vec<(&str, String)> =
            keys.iter().zip(extra).map(|(k, (_, v))| (*k, v)).collect();
        let mut reversed = extra.clone();
        reversed.reverse();
        let bytes = to_bytes_with(&net, &extra);
        assert_eq!(bytes, to_bytes_with(&net, &reversed));
        let (back, meta) = {
            let loaded = from_bytes(Path::new("m"), &bytes).unwrap();
            let st = safetensors::SafeTensors::read_metadata(&bytes).unwrap().1;
            (loaded, st.metadata().clone().unwrap())
        };
        assert_eq!(back, net);
        assert_eq!(meta["l"], "11");
        assert_eq!((bytes.len() - 8 - back.parameter_count() * 4) % 8, 0);
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let bytes = to_bytes(&Network::new(&[784, 3, 10], &mut init_rng(1)));
        let err = from_bytes(Path::new("m.safetensors"), &bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(err, ModelFileError::Format { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("m.safetensors: not a valid safetensors file"),
            "{err}"
        );
        let err = from_bytes(Path::new("m"), b"garbage").unwrap_err();
        assert!(matches!(err, ModelFileError::Format { .. }), "{err:?}");
    }

    #[test]
    fn wrong_sizes_metadata_is_a_clear_error() {
        let net = Network::new(&[4, 3, 2], &mut init_rng(1));
        let mut bytes = to_bytes(&net);
        let at = bytes.windows(7).position(|w| w == b"\"4,3,2\"").unwrap();
        bytes[at + 3] = b'5'; // same length, so the header stays well-formed
        let err = from_bytes(Path::new("m"), &bytes).unwrap_err();
        assert!(
            err.to_string()
                .contains("tensor w0: shape [3, 4], expected [5, 4]"),
            "{err}"
        );
    }
}
