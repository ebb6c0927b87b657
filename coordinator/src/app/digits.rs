//! A user's picture of a digit, made to look like an MNIST digit: grey
//! levels, light ink on a dark ground, the digit's bounding box scaled to fit
//! 20×20 (aspect kept) and placed in 28×28 so that its centre of mass sits
//! at the centre, as LeCun et al. prepared MNIST.

use std::path::Path;

use image::imageops::FilterType;
use image::{GrayImage, Luma};

use super::{AppError, AppResult};

/// Side of an MNIST image.
pub const SIDE: u32 = 28;
/// Side of the box the digit is scaled into.
const BOX: u32 = 20;
/// Ink below this (after removing the background) is not part of the digit:
/// low enough to keep a digit's faint anti-aliased edge in its bounding box,
/// as MNIST's boxes do, high enough to ignore JPEG noise on the paper.
const INK: f32 = 0.05;

/// Loads a PNG or JPEG (any size, colour or grey, with or without alpha)
/// and returns its 784 pixels in MNIST's layout, row-major, 0..=255.
///
/// # Errors
/// If the file cannot be read or decoded, or shows no digit.
pub fn load(path: &Path) -> AppResult<Vec<u8>> {
    let image_error = |why: String| AppError::Image {
        path: path.to_path_buf(),
        why,
    };
    let img = image::open(path).map_err(|e| image_error(e.to_string()))?;
    // Transparent pixels count as white paper.
    let rgba = img.to_rgba8();
    let grey = GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let luma = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
        let alpha = f32::from(a) / 255.0;
        Luma([(alpha * luma + (1.0 - alpha) * 255.0).round() as u8])
    });
    to_mnist(&grey).map_err(|why| image_error(why.to_string()))
}

/// The MNIST-style 28×28 version of a grey image.
///
/// # Errors
/// If the image shows no digit (it is blank or uniform): what it lacks.
pub fn to_mnist(grey: &GrayImage) -> Result<Vec<u8>, &'static str> {
    let (w, h) = grey.dimensions();
    if w == 0 || h == 0 {
        return Err("the image is empty");
    }
    // The border tells paper from ink: a light border means dark ink.
    let border: Vec<u8> = (0..w)
        .flat_map(|x| [(x, 0), (x, h - 1)])
        .chain((0..h).flat_map(|y| [(0, y), (w - 1, y)]))
        .map(|(x, y)| grey.get_pixel(x, y).0[0])
        .collect();
    let light_paper =
        border.iter().map(|&v| f32::from(v)).sum::<f32>() / border.len() as f32 > 127.5;
    let ink_of = |v: u8| {
        let v = f32::from(v) / 255.0;
        if light_paper {
            1.0 - v
        } else {
            v
        }
    };
    let mut paper: Vec<f32> = border.iter().map(|&v| ink_of(v)).collect();
    paper.sort_by(f32::total_cmp);
    let background = paper[paper.len() / 2];
    let ink: Vec<f32> = grey
        .pixels()
        .map(|p| ((ink_of(p.0[0]) - background) / (1.0 - background).max(1e-3)).clamp(0.0, 1.0))
        .collect();

    // The digit's bounding box.
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, &v) in ink.iter().enumerate() {
        if v > INK {
            let (x, y) = (i as u32 % w, i as u32 / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    if x0 > x1 {
        return Err("no digit found: the image is blank");
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let crop = GrayImage::from_fn(bw, bh, |x, y| {
        Luma([(ink[((y0 + y) * w + x0 + x) as usize] * 255.0).round() as u8])
    });

    // Longer side to 20 pixels, aspect kept.
    let scale = BOX as f32 / bw.max(bh) as f32;
    let (sw, sh) = (
        ((bw as f32 * scale).round() as u32).clamp(1, BOX),
        ((bh as f32 * scale).round() as u32).clamp(1, BOX),
    );
    // Shrinking averages each output pixel's area (as anti-aliasing would);
    // a digit smaller than the box is enlarged with linear interpolation.
    let fitted = if sw <= bw && sh <= bh {
        image::imageops::thumbnail(&crop, sw, sh)
    } else {
        image::imageops::resize(&crop, sw, sh, FilterType::Triangle)
    };

    // Centre of mass to the centre of the 28×28 field.
    let (mut mass, mut cx, mut cy) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y, p) in fitted.enumerate_pixels() {
        let m = f32::from(p.0[0]);
        mass += m;
        cx += m * (x as f32 + 0.5);
        cy += m * (y as f32 + 0.5);
    }
    let (cx, cy) = if mass > 0.0 {
        (cx / mass, cy / mass)
    } else {
        (sw as f32 / 2.0, sh as f32 / 2.0)
    };
    // MNIST's centres of mass sit at pixel index 14 (mean 14.50 ± 0.28 in
    // these pixel-centre coordinates, measured on the test set).
    let centre = SIDE as f32 / 2.0 + 0.5;
    let left = ((centre - cx).round() as i64).clamp(0, i64::from(SIDE - sw));
    let top = ((centre - cy).round() as i64).clamp(0, i64::from(SIDE - sh));
    let mut out = vec![0u8; (SIDE * SIDE) as usize];
    for (x, y, p) in fitted.enumerate_pixels() {
        let (ox, oy) = (left as u32 + x, top as u32 + y);
        out[(oy * SIDE + ox) as usize] = p.0[0];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "7": a bar and a slanted stroke, light on dark, in a 28×28 field.
    fn seven() -> Vec<u8> {
        let mut px = vec![0u8; 784];
        for x in 6..22 {
            px[6 * 28 + x] = 255;
            px[7 * 28 + x] = 200;
        }
        for y in 8..24 {
            let x = 21 - (y - 8) / 2;
            px[y * 28 + x] = 255;
            px[y * 28 + x - 1] = 180;
        }
        px
    }

    fn correlation(a: &[u8], b: &[u8]) -> f64 {
        let mean = |v: &[u8]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let (ma, mb) = (mean(a), mean(b));
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
            sab += dx * dy;
            saa += dx * dx;
            sbb += dy * dy;
        }
        sab / (saa * sbb).sqrt()
    }

    /// The digit drawn dark on white, 5× larger, off-centre on a wide canvas.
    fn photo_of(px: &[u8]) -> GrayImage {
        GrayImage::from_fn(220, 160, |x, y| {
            let (sx, sy) = (x.wrapping_sub(70) / 5, y.wrapping_sub(10) / 5);
            if sx < 28 && sy < 28 {
                Luma([255 - px[(sy * 28 + sx) as usize]])
            } else {
                Luma([255])
            }
        })
    }

    #[test]
    fn a_large_dark_on_light_digit_comes_back_like_mnist() {
        let original = {
            // Re-centre the synthetic digit the MNIST way first.
            let grey = GrayImage::from_raw(28, 28, seven()).unwrap();
            to_mnist(&grey).unwrap()
        };
        let back = to_mnist(&photo_of(&original)).unwrap();
        let r = correlation(&original, &back);
        assert!(r > 0.9, "correlation {r}");
        // Light ink on a dark ground, as MNIST: the corners are empty.
        assert_eq!((back[0], back[27], back[783]), (0, 0, 0));
    }

    #[test]
    fn the_digit_is_centred_by_mass_and_fits_twenty_pixels() {
        let back = to_mnist(&photo_of(&seven())).unwrap();
        let (mut mass, mut cx, mut cy) = (0.0, 0.0, 0.0);
        let (mut rows, mut cols) = (Vec::new(), Vec::new());
        for (i, &v) in back.iter().enumerate() {
            let (x, y) = ((i % 28) as f64 + 0.5, (i / 28) as f64 + 0.5);
            mass += f64::from(v);
            cx += f64::from(v) * x;
            cy += f64::from(v) * y;
            if v > 0 {
                rows.push(i / 28);
                cols.push(i % 28);
            }
        }
        let (cx, cy) = (cx / mass, cy / mass);
        assert!(
            (cx - 14.5).abs() < 0.75 && (cy - 14.5).abs() < 0.75,
            "{cx} {cy}"
        );
        let span = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap() + 1;
        assert!(span(&rows).max(span(&cols)) <= 20);
    }

    #[test]
    fn a_blank_image_is_refused() {
        let blank = GrayImage::from_pixel(50, 40, Luma([255]));
        let err = to_mnist(&blank).unwrap_err().to_string();
        assert!(err.contains("no digit found"), "{err}");
    }
}
