//! Using what a run produces, with the real binaries: the metrics CSV and
//! the plot, `evaluate`, `predict` on PNG and JPEG files, `--init`, JSON
//! logs, and the model file in Python (numpy + safetensors).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::dataset::Samples;
use common::{model_file, Network};
use integration_tests::{binary, fixture_data, fixture_dir, python_predictions, skip};

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("model-use-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn coordinator(args: &[&str]) -> Output {
    Command::new(binary("coordinator"))
        .args(args)
        .output()
        .expect("run coordinator")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The MNIST slice's directory, as an argument.
fn fixture() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| fixture_dir().to_str().unwrap().to_string())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Trains `epochs` in one process on the MNIST slice; returns stdout.
fn train_local(dir: &Path, epochs: &str, extra: &[&str]) -> String {
    let out = dir.join("model.safetensors");
    let mut args = vec![
        "train",
        "--local",
        "--epochs",
        epochs,
        "--seed",
        "3",
        "--progress",
        "none",
        "--data-dir",
        fixture(),
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    let run = coordinator(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    text(&run.stdout)
}

/// (test correct, test total) of each `Epoch j: c / t ...` line.
fn epoch_results(stdout: &str) -> Vec<(usize, usize)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Epoch "))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[1].parse().unwrap(), fields[3].parse().unwrap())
        })
        .collect()
}

#[test]
fn local_run_writes_metrics_and_a_plot() {
    let dir = tempdir("metrics");
    let (csv, png) = (dir.join("metrics.csv"), dir.join("accuracy.png"));
    let stdout = train_local(&dir, "4", &["--metrics", s(&csv), "--plot", s(&png)]);
    let epochs = epoch_results(&stdout);
    assert_eq!(epochs.len(), 4, "{stdout}");

    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(coordinator::app::report::CSV_HEADER));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 4);
    for (i, (row, &(correct, total))) in rows.iter().zip(&epochs).enumerate() {
        assert_eq!(row.len(), 18, "row {i}");
        assert_eq!(row[0], i as f64, "epoch column");
        let accuracy = 100.0 * correct as f64 / total as f64;
        assert!(
            (row[1] - accuracy).abs() < 0.01,
            "row {i}: {row:?} vs {accuracy}"
        );
        assert!(row[3] > 0.0 && row[3] < 0.5, "training cost {}", row[3]);
        assert!(
            row[14] > 10.0 && row[14] <= 100.0,
            "training accuracy {}",
            row[14]
        );
        assert!(
            row[15] > 0.0 && row[15] < 0.5,
            "validation cost {}",
            row[15]
        );
        assert_eq!(row[16], 3.0, "eta");
        assert!(row[5] > 0.0, "samples/s");
        assert!(row[7] >= row[6], "p99 >= p50");
        assert_eq!(
            (row[12], row[13], row[17]),
            (0.0, 0.0, 0.0),
            "no workers, nothing recomputed, no backups"
        );
    }
    // The cost falls as the network learns.
    assert!(rows[3][3] < rows[0][3], "{rows:?}");

    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (900, 560));
    let coloured = img
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            r.abs_diff(g) > 60 || g.abs_diff(b) > 60 // the blue and orange curves
        })
        .count();
    assert!(coloured > 500, "curves drawn: {coloured} coloured pixels");
}

/// The model's own prediction for each sample.
fn predictions(network: &Network, samples: &Samples) -> Vec<usize> {
    network.predict(samples.inputs().view())
}

/// Sample `i` as a photo: dark ink on white paper, 3× larger, off-centre on a 110×95 canvas.
fn photo(samples: &Samples, i: usize) -> image::GrayImage {
    let px = &samples.pixels[i * 784..(i + 1) * 784];
    image::GrayImage::from_fn(110, 95, |x, y| {
        let (sx, sy) = (x.wrapping_sub(30) / 3, y.wrapping_sub(5) / 3);
        if sx < 28 && sy < 28 {
            image::Luma([255 - px[(sy * 28 + sx) as usize]])
        } else {
            image::Luma([255])
        }
    })
}

#[test]
fn evaluate_and_predict_use_the_saved_model() {
    let dir = tempdir("use");
    // 30 epochs on the slice: ~80%, confident enough that photos agree.
    let stdout = train_local(&dir, "30", &[]);
    let (last_correct, _) = *epoch_results(&stdout).last().unwrap();
    let model = dir.join("model.safetensors");

    // evaluate: the same accuracy as the run's last epoch, and a matrix that adds up.
    let run = coordinator(&["evaluate", "--model", s(&model), "--data-dir", fixture()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let out = text(&run.stdout);
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains(&format!("{last_correct} / 200 test images right")),
        "{out}"
    );
    let rows: Vec<Vec<usize>> = out
        .lines()
        .skip_while(|l| !l.starts_with("Confusion matrix"))
        .skip(2)
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(10)
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 10, "{out}");
    let total: usize = rows.iter().flatten().sum();
    let diagonal: usize = (0..10).map(|d| rows[d][d]).sum();
    assert_eq!((total, diagonal), (200, last_correct), "{out}");

    // predict: photos of test digits (PNG and JPEG) get the model's own answer
    // on the original 28×28 image, nearly always.
    let network = model_file::load(&model).unwrap();
    let test = &fixture_data().test;
    let expected = predictions(&network, test);
    let mut paths = Vec::new();
    for i in 0..12 {
        let ext = if i % 3 == 0 { "jpg" } else { "png" };
        let path = dir.join(format!("digit-{i}.{ext}"));
        photo(test, i).save(&path).unwrap();
        paths.push(path);
    }
    let mut args = vec!["predict", "--model", s(&model)];
    args.extend(paths.iter().map(|p| s(p)));
    let run = coordinator(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let out = text(&run.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 12, "{out}");
    let mut agree = 0;
    for (i, line) in lines.iter().enumerate() {
        let rest = line
            .strip_prefix(&format!("{}: ", paths[i].display()))
            .unwrap();
        let digit: usize = rest[..1].parse().unwrap();
        agree += usize::from(digit == expected[i]);
        // Ten scores that add up to 1.
        let scores: f64 = rest
            .split("  ")
            .skip(1)
            .map(|p| p.trim_matches(|c| c == '(' || c == ')'))
            .map(|p| p.split(": ").nth(1).unwrap().parse::<f64>().unwrap())
            .sum();
        assert!((scores - 1.0).abs() < 0.05, "{line}");
    }
    assert!(
        agree >= 10,
        "{agree}/12 agree:\n{out}\nexpected {expected:?}"
    );

    // A blank image is an error line; the others are still answered; exit 1.
    let blank = dir.join("blank.png");
    image::GrayImage::from_pixel(40, 40, image::Luma([255]))
        .save(&blank)
        .unwrap();
    let run = coordinator(&["predict", "--model", s(&model), s(&blank), s(&paths[0])]);
    assert_eq!(run.status.code(), Some(1));
    let out = text(&run.stdout);
    assert!(
        out.contains("blank.png: error: ") && out.contains("no digit found"),
        "{out}"
    );
    assert!(out.contains("digit-0.jpg: "), "{out}");

    // A model that is not a model.
    let run = coordinator(&["evaluate", "--model", s(&blank)]);
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run.stderr).contains("not a valid safetensors file"));
}

#[test]
fn init_starts_from_a_saved_model() {
    let dir = tempdir("init");
    train_local(&dir, "4", &[]);
    let model = dir.join("model.safetensors");
    // With a learning rate far below f32's resolution, training leaves the
    // weights as they were: the output holds the --init model's weights, bit
    // for bit (the files differ only in the run record's chain head).
    let again = dir.join("again.safetensors");
    let run = coordinator(&[
        "--local",
        "--epochs",
        "1",
        "--eta",
        "1e-30",
        "--init",
        s(&model),
        "--data-dir",
        fixture(),
        "--out",
        s(&again),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        integration_tests::bits(&model_file::load(&model).unwrap())
            == integration_tests::bits(&model_file::load(&again).unwrap()),
        "the weights changed"
    );

    let run = coordinator(&[
        "--local",
        "--sizes",
        "784,20,10",
        "--init",
        s(&model),
        "--data-dir",
        fixture(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(
        err.contains("the model has layer sizes [784, 30, 10], but --sizes is [784, 20, 10]"),
        "{err}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let run = Command::new(binary("worker"))
        .args([
            "--connect",
            "http://127.0.0.1:1",
            "--retry-for",
            "0.3",
            "--log-format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = text(&run.stderr);
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!logs.is_empty(), "{stderr}");
    assert!(logs
        .iter()
        .all(|l| l["level"].is_string() && l["fields"].is_object()));
    assert!(stderr.contains("worker: error: coordinator at http://127.0.0.1:1 unreachable"));

    let dir = tempdir("json");
    let run = coordinator(&[
        "--local",
        "--epochs",
        "1",
        "--log-format",
        "json",
        "--data-dir",
        fixture(),
        "--out",
        s(&dir.join("m.safetensors")),
    ]);
    assert!(run.status.success());
    let loaded = text(&run.stderr)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["fields"]["message"] == "data loaded")
        .expect("a data loaded event");
    assert_eq!(loaded["fields"]["training"], 1000);
}

#[test]
fn saved_model_gives_the_same_predictions_in_python() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import numpy, safetensors"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return skip(
                "saved_model_gives_the_same_predictions_in_python",
                &format!(
                    "{python} lacks numpy or safetensors ({}); `pip install numpy safetensors` to run it",
                    text(&o.stderr).lines().last().unwrap_or("")
                ),
            );
        }
        Err(e) => {
            return skip(
                "saved_model_gives_the_same_predictions_in_python",
                &format!("no {python} ({e})"),
            );
        }
    }
    let dir = tempdir("python");
    train_local(&dir, "4", &[]);
    let model = dir.join("model.safetensors");
    let (from_python, _) = python_predictions(&python, "predict.py", &model, &dir);
    let network = model_file::load(&model).unwrap();
    assert_eq!(from_python, predictions(&network, &fixture_data().test));
}

/// A small model file whose metadata claims a huge network: `evaluate`,
/// `predict`, `--init` and `--resume` each refuse it with a clear error
/// naming the file, and never try to allocate what it claims.
#[test]
fn crafted_model_files_are_refused_before_any_allocation() {
    let dir = tempdir("crafted");
    let header = r#"{"__metadata__":{"sizes":"784,1099511627776,10"},"w0":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 4]);
    let model = dir.join("huge.safetensors");
    std::fs::write(&model, &bytes).unwrap();
    let image = dir.join("digit.png");
    image::GrayImage::new(28, 28).save(&image).unwrap();
    let data = ["--data-dir", fixture()];
    let runs: [Vec<&str>; 4] = [
        vec!["evaluate", "--model", s(&model), "--data-dir", fixture()],
        vec!["predict", "--model", s(&model), s(&image)],
        [
            &["--local", "--epochs", "1", "--init", s(&model)][..],
            &data,
        ]
        .concat(),
        // --resume reads the checkpoint before it listens or loads data.
        [
            &[
                "--listen",
                "127.0.0.1:0",
                "--epochs",
                "1",
                "--resume",
                s(&model),
            ][..],
            &data,
        ]
        .concat(),
    ];
    for args in runs {
        let out = coordinator(&args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("huge.safetensors: metadata \"sizes\""),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("memory allocation"), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
