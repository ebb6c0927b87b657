//! The IDX file format of MNIST: a big-endian magic number (2051 for images,
//! 2049 for labels), big-endian `u32` dimensions, then `u8` data. Files may be
//! gzip-compressed (detected by the gzip magic bytes, not by the name).
//!
//! Only parsing and validation live here; where files come from is `fetch`'s business.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// Magic number of an IDX file of `u8` images with three dimensions.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of `u8` labels with one dimension.
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// What is wrong with an IDX file, and which file.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is shorter than its header.
    #[error("{path}: truncated header: {len} bytes, need at least {need}")]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Its length after decompression.
        len: usize,
        /// Header length required.
        need: usize,
    },
    /// The magic number is not the one expected.
    #[error("{path}: bad magic number {found} (0x{found:08x}), expected {expected} (0x{expected:08x}); is this an IDX {kind} file?")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// "images" or "labels".
        kind: &'static str,
        /// Magic expected.
        expected: u32,
        /// Magic found.
        found: u32,
    },
    /// The data after the header is not as long as the dimensions say.
    #[error("{path}: header says {count} items of {item_len} bytes ({expected} bytes of data), file has {found}")]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Item count from the header.
        count: usize,
        /// Bytes per item.
        item_len: usize,
        /// Data bytes the header implies.
        expected: usize,
        /// Data bytes present.
        found: usize,
    },
    /// More bytes than the header promises.
    #[error("{path}: data beyond the {expected} bytes its header promises")]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises, header included.
        expected: u64,
    },
    /// Image dimensions other than the network's input.
    #[error("{path}: images are {rows}x{cols}, expected {expected_rows}x{expected_cols}")]
    WrongImageSize {
        /// The file.
        path: PathBuf,
        /// Rows found.
        rows: usize,
        /// Columns found.
        cols: usize,
        /// Rows expected.
        expected_rows: usize,
        /// Columns expected.
        expected_cols: usize,
    },
    /// A label is outside `0..classes`.
    #[error("{path}: label {label} at index {index} is out of range 0..={max}")]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Index of the bad label.
        index: usize,
        /// The label.
        label: u8,
        /// Largest valid label.
        max: u8,
    },
    /// Images and labels disagree on the number of samples.
    #[error("{images} has {image_count} images but {labels} has {label_count} labels")]
    CountMismatch {
        /// The images file.
        images: PathBuf,
        /// Its count.
        image_count: usize,
        /// The labels file.
        labels: PathBuf,
        /// Its count.
        label_count: usize,
    },
}

/// Images of an IDX file: `count` images of `rows * cols` pixels, row-major,
/// image after image, kept as the original bytes (scaled only when a batch is built).
#[derive(Debug, Clone, PartialEq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count * rows * cols` pixels, 0..=255.
    pub pixels: Vec<u8>,
}

/// Largest IDX file read, uncompressed (1 GiB; MNIST's largest is 47 MB).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads an IDX file, un-gzipping it if it starts with the gzip magic
/// bytes, **no further than its header promises**: the magic number gives
/// the number of dimensions, the dimensions the data's length, and then
/// exactly that much is read, plus one byte to detect trailing data. So a
/// small gzip file that inflates without end costs no more memory than its
/// header claims, and a claim over [`MAX_IDX_BYTES`] is refused unread.
/// Only regular files are read ([`crate::regular_file`]). A header this
/// reader does not know (a wrong magic) is returned as read, for the parser
/// to name.
///
/// # Errors
/// [`IdxError::Io`] if the file cannot be read, is not a regular file or is
/// too large; [`IdxError::TrailingData`] if it holds more than its header says.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, IdxError> {
    let io = |source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (file, _) = crate::regular_file::open(path).map_err(io)?;
    let mut file = std::io::BufReader::new(file);
    let gz = std::io::BufRead::fill_buf(&mut file)
        .map_err(io)?
        .starts_with(&[0x1f, 0x8b]);
    if gz {
        read_promised(path, &mut GzDecoder::new(file))
    } else {
        read_promised(path, &mut file)
    }
}

/// [`read_maybe_gz`]'s reading: the header, then what it promises plus one byte.
fn read_promised(path: &Path, reader: &mut dyn Read) -> Result<Vec<u8>, IdxError> {
    let io = |source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    read_up_to(reader, &mut out, 4).map_err(io)?;
    let dims = match out[..] {
        [0, 0, 0x08, n @ 1..=4] => usize::from(n),
        _ => return Ok(out), // not an IDX file of bytes: the parser says so
    };
    read_up_to(reader, &mut out, 4 + 4 * dims).map_err(io)?;
    if out.len() < 4 + 4 * dims {
        return Ok(out); // a truncated header: the parser says so
    }
    let data = (0..dims).try_fold(1u64, |n, d| {
        n.checked_mul(u64::from(be_u32(&out, 4 + 4 * d)))
    });
    let total = data
        .and_then(|n| n.checked_add(out.len() as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            io(std::io::Error::other(format!(
                "its header claims more than {MAX_IDX_BYTES} bytes of data, more than any IDX data set this trainer takes"
            )))
        })?;
    read_up_to(reader, &mut out, total as usize + 1).map_err(io)?;
    if out.len() as u64 > total {
        return Err(IdxError::TrailingData {
            path: path.to_path_buf(),
            expected: total,
        });
    }
    Ok(out)
}

/// Reads from `reader` until `out` holds `len` bytes or the input ends.
fn read_up_to(reader: &mut dyn Read, out: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    let want = len.saturating_sub(out.len());
    out.reserve_exact(want);
    reader.take(want as u64).read_to_end(out)?;
    Ok(())
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn check_header(
    path: &Path,
    bytes: &[u8],
    kind: &'static str,
    magic: u32,
    header_len: usize,
) -> Result<(), IdxError> {
    // The magic first: a wrong file is better named as such than as "truncated".
    if bytes.len() >= 4 && be_u32(bytes, 0) != magic {
        return Err(IdxError::BadMagic {
            path: path.to_path_buf(),
            kind,
            expected: magic,
            found: be_u32(bytes, 0),
        });
    }
    if bytes.len() < header_len {
        return Err(IdxError::TruncatedHeader {
            path: path.to_path_buf(),
            len: bytes.len(),
            need: header_len,
        });
    }
    Ok(())
}

fn check_length(path: &Path, data: &[u8], count: usize, item_len: usize) -> Result<(), IdxError> {
    let expected = count.saturating_mul(item_len);
    if data.len() != expected {
        return Err(IdxError::WrongLength {
            path: path.to_path_buf(),
            count,
            item_len,
            expected,
            found: data.len(),
        });
    }
    Ok(())
}

/// Parses an IDX images file whose images must be `rows x cols`.
///
/// # Errors
/// [`IdxError`] naming `path` for a short header, a bad magic number, other
/// image dimensions, or data of the wrong length.
pub fn parse_images(
    path: &Path,
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> Result<IdxImages, IdxError> {
    check_header(path, bytes, "images", IMAGES_MAGIC, 16)?;
    let count = be_u32(bytes, 4) as usize;
    let (r, c) = (be_u32(bytes, 8) as usize, be_u32(bytes, 12) as usize);
    if (r, c) != (rows, cols) {
        return Err(IdxError::WrongImageSize {
            path: path.to_path_buf(),
            rows: r,
            cols: c,
            expected_rows: rows,
            expected_cols: cols,
        });
    }
    let data = &bytes[16..];
    check_length(path, data, count, rows * cols)?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: data.to_vec(),
    })
}

/// Parses an IDX labels file whose labels must be below `classes`.
///
/// # Errors
/// [`IdxError`] naming `path` for a short header, a bad magic number, data of
/// the wrong length, or a label out of range.
pub fn parse_labels(path: &Path, bytes: &[u8], classes: usize) -> Result<Vec<u8>, IdxError> {
    check_header(path, bytes, "labels", LABELS_MAGIC, 8)?;
    let count = be_u32(bytes, 4) as usize;
    let data = &bytes[8..];
    check_length(path, data, count, 1)?;
    let max = u8::try_from(classes.saturating_sub(1)).unwrap_or(u8::MAX);
    if let Some((index, &label)) = data.iter().enumerate().find(|(_, &l)| l > max) {
        return Err(IdxError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label,
            max,
        });
    }
    Ok(data.to_vec())
}

/// Builds the bytes of an IDX images file (for tests and fixtures).
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    for v in [
        IMAGES_MAGIC,
        images.count as u32,
        images.rows as u32,
        images.cols as u32,
    ] {
        out.extend(v.to_be_bytes());
    }
    out.extend(&images.pixels);
    out
}

/// Builds the bytes of an IDX labels file (for tests and fixtures).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend(LABELS_MAGIC.to_be_bytes());
    out.extend((labels.len() as u32).to_be_bytes());
    out.extend(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(count: usize) -> IdxImages {
        IdxImages {
            count,
            rows: 2,
            cols: 2,
            pixels: (0..count * 4).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn round_trip() {
        let p = Path::new("x");
        let img = images(3);
        assert_eq!(parse_images(p, &encode_images(&img), 2, 2).unwrap(), img);
        assert_eq!(
            parse_labels(p, &encode_labels(&[0, 9, 3]), 10).unwrap(),
            vec![0, 9, 3]
        );
    }

    #[test]
    fn bad_magic_names_file_and_numbers() {
        let mut bytes = encode_images(&images(1));
        bytes[3] = 0x01; // 2049: a labels file given as images
        let err = parse_images(Path::new("data/imgs"), &bytes, 2, 2).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::BadMagic {
                    found: 2049,
                    expected: 2051,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("data/imgs") && msg.contains("2049") && msg.contains("2051"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_header_and_truncated_data() {
        let bytes = encode_images(&images(3));
        let err = parse_images(Path::new("f"), &bytes[..10], 2, 2).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::TruncatedHeader {
                    len: 10,
                    need: 16,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = parse_images(Path::new("f"), &bytes[..bytes.len() - 1], 2, 2).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::WrongLength {
                    expected: 12,
                    found: 11,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_count_in_header() {
        let mut bytes = encode_labels(&[1, 2, 3]);
        bytes[7] = 5; // header claims 5 labels, file has 3
        let err = parse_labels(Path::new("l"), &bytes, 10).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::WrongLength {
                    count: 5,
                    found: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn label_above_nine() {
        let err = parse_labels(Path::new("l"), &encode_labels(&[1, 10, 3]), 10).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::LabelOutOfRange {
                    index: 1,
                    label: 10,
                    max: 9,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("label 10 at index 1"), "{err}");
    }

    #[test]
    fn wrong_image_size() {
        let err = parse_images(Path::new("f"), &encode_images(&images(1)), 28, 28).unwrap_err();
        assert!(
            matches!(
                err,
                IdxError::WrongImageSize {
                    rows: 2,
                    cols: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// A gzip file that inflates without end (a header promising 3
    /// labels, then zeros) is read to 3 labels and one byte more: the reader
    /// stops there, and says so.
    #[test]
    fn reads_no_further_than_the_header_says() {
        use flate2::{write::GzEncoder, Compression};
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("idx-bomb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels");
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&encode_labels(&[4, 2, 7])).unwrap();
        for _ in 0..64 {
            gz.write_all(&[0; 1 << 20]).unwrap(); // 64 MiB of trailing zeros
        }
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let err = read_maybe_gz(&path).unwrap_err();
        assert!(
            matches!(err, IdxError::TrailingData { expected: 11, .. }),
            "{err:?}"
        );
        // How far it read: through a reader that counts what it hands out.
        let mut counted = Counted(GzDecoder::new(std::fs::File::open(&path).unwrap()), 0);
        assert!(read_promised(&path, &mut counted).is_err());
        assert_eq!(
            counted.1,
            8 + 3 + 1,
            "the header, its 3 labels and one byte"
        );
        // A header claiming more than the cap is refused unread.
        let mut huge = encode_images(&images(0));
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        huge[8..16].copy_from_slice(&[0, 0, 1, 0, 0, 0, 1, 0]);
        std::fs::write(&path, &huge).unwrap();
        let err = read_maybe_gz(&path).unwrap_err();
        assert!(err.to_string().contains("claims more than"), "{err}");
        // An exact file reads whole; a short one is named by the parser.
        std::fs::write(&path, encode_labels(&[4, 2, 7])).unwrap();
        assert_eq!(read_maybe_gz(&path).unwrap(), encode_labels(&[4, 2, 7]));
        let short = &encode_labels(&[4, 2, 7])[..10];
        std::fs::write(&path, short).unwrap();
        let bytes = read_maybe_gz(&path).unwrap();
        assert!(matches!(
            parse_labels(&path, &bytes, 10),
            Err(IdxError::WrongLength { found: 2, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    struct Counted<R>(R, usize);

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn gzip_is_detected_by_content() {
        use flate2::{write::GzEncoder, Compression};
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("idx-gz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels");
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&encode_labels(&[4, 2])).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let bytes = read_maybe_gz(&path).unwrap();
        assert_eq!(parse_labels(&path, &bytes, 10).unwrap(), vec![4, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
