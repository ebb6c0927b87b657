//! `--expand-data`: `expand_mnist.py`'s expanded training set, generated
//! at start (never stored): every image, then its four one-pixel shifts,
//! down, up, right and left, each with the row or column that wrapped
//! around zeroed. 50,000 images become 250,000.

use crate::dataset::{Samples, IMAGE_SIZE};

/// Side of an MNIST image.
const SIDE: usize = 28;

/// The image shifted by one pixel: `dy` rows down and `dx` columns right
/// (each −1, 0 or 1), with what would wrap around set to zero.
fn shifted(image: &[u8], dy: isize, dx: isize) -> Vec<u8> {
    let mut out = vec![0u8; IMAGE_SIZE];
    for y in 0..SIDE as isize {
        for x in 0..SIDE as isize {
            let (sy, sx) = (y - dy, x - dx);
            if (0..SIDE as isize).contains(&sy) && (0..SIDE as isize).contains(&sx) {
                out[(y * SIDE as isize + x) as usize] = image[(sy * SIDE as isize + sx) as usize];
            }
        }
    }
    out
}

/// `samples` expanded as `expand_mnist.py` does: image `j` is followed by
/// its shifts down, up, right and left, all with `j`'s label.
pub fn expand(samples: &Samples) -> Samples {
    let mut pixels = Vec::with_capacity(samples.pixels.len() * 5);
    let mut labels = Vec::with_capacity(samples.len() * 5);
    for (image, &label) in samples.pixels.chunks_exact(IMAGE_SIZE).zip(&samples.labels) {
        pixels.extend_from_slice(image);
        for (dy, dx) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
            pixels.extend(shifted(image, dy, dx));
        }
        labels.extend([label; 5]);
    }
    Samples { pixels, labels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_move_one_pixel_and_zero_the_wrapped_line() {
        let image: Vec<u8> = (0..IMAGE_SIZE).map(|i| (i % 251) as u8 + 1).collect();
        let s = Samples {
            pixels: image.clone(),
            labels: vec![7],
        };
        let e = expand(&s);
        assert_eq!(e.len(), 5);
        assert_eq!(e.labels, vec![7; 5]);
        let at = |k: usize, y: usize, x: usize| e.pixels[k * IMAGE_SIZE + y * SIDE + x];
        assert_eq!(&e.pixels[..IMAGE_SIZE], &image[..]);
        for i in 0..SIDE {
            // down: row 0 zeroed, row y is the old row y − 1 (np.roll(img, 1, axis=0))
            assert_eq!(at(1, 0, i), 0);
            assert_eq!(at(1, 5, i), image[4 * SIDE + i]);
            // up: the last row zeroed
            assert_eq!(at(2, SIDE - 1, i), 0);
            assert_eq!(at(2, 4, i), image[5 * SIDE + i]);
            // right: column 0 zeroed; left: the last column zeroed
            assert_eq!(at(3, i, 0), 0);
            assert_eq!(at(3, i, 5), image[i * SIDE + 4]);
            assert_eq!(at(4, i, SIDE - 1), 0);
            assert_eq!(at(4, i, 4), image[i * SIDE + 5]);
        }
    }
}
