//! Using a saved model: `evaluate`, `predict` (with MNIST-style
//! preprocessing of a user's image, in [`super::digits`]) and `export`.

use std::path::{Path, PathBuf};

use common::dataset::IMAGE_SIZE;
use common::{model_file, Network};
use ndarray::Array2;

use super::data::load_test_set;
use super::{digits, AppError, AppResult};

/// Loads a model file that fits MNIST (784 inputs, 10 outputs).
///
/// # Errors
/// If the file cannot be read or its shape does not fit MNIST.
pub fn load_model(path: &Path) -> AppResult<Network> {
    Ok(crate::config::load_mnist_model(path)?)
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
) -> AppResult<String> {
    let (network, metadata) = model_file::load_with_metadata(model)?;
    if let Some(net) = &network.net {
        return Err(AppError::Usage(format!(
            "{}: the net {net} is chapter 6's; network2.py loads only chapter 1-3 networks (--sizes). \
             Load it in Python with safetensors instead (docs/using-the-model.md)",
            model.display()
        )));
    }
    let recorded = metadata
        .get("cost")
        .and_then(|c| common::cost::Cost::from_name(c));
    let cost = cost.or(recorded).unwrap_or_default();
    match format {
        ExportFormat::Network2Json => {
            let json = common::network2_json::to_json(&network, cost);
            std::fs::write(out, json).map_err(AppError::write(out))?;
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
pub fn evaluate(model: &Path, data_dir: Option<&Path>) -> AppResult<String> {
    let network = load_model(model)?;
    let test = load_test_set(data_dir)?;
    let m = common::evaluation::confusion_matrix(&network, &test);
    let correct: usize = (0..10).map(|d| m[d][d]).sum();
    let total = test.len();
    let shape = match &network.net {
        Some(net) => format!("net {net}"),
        None => format!("layer sizes {:?}", network.sizes),
    };
    let mut out = format!(
        "{}: {correct} / {total} test images right ({:.2}%), {shape}\n\n",
        model.display(),
        100.0 * correct as f64 / total.max(1) as f64,
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
pub fn predict(model: &Path, images: &[PathBuf]) -> AppResult<(String, usize)> {
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
                // The line starts with the path; the error need not repeat it.
                let why = match e {
                    AppError::Image { why, .. } => why,
                    other => common::logging::error_chain(&other),
                };
                out.push_str(&format!("{}: error: {why}\n", path.display()));
            }
        }
    }
    Ok((out, failed))
}
