//! Parsing of the IDX format that MNIST ships in.
//!
//! An IDX file is a 4-byte magic (two zero bytes, a type code, the rank), one
//! big-endian u32 per dimension, then the data. MNIST uses type 0x08 (u8):
//! images are rank 3 (magic 2051), labels rank 1 (magic 2049). Files may be
//! gzip-compressed; that is decided by the content (the gzip magic), never by
//! the file name. Every check failure names the file and the numbers.

use std::io::Read;

use crate::error::{Error, Result};

pub const IMAGES_MAGIC: u32 = 2051;
pub const LABELS_MAGIC: u32 = 2049;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Labels are class indices of a 10-class problem.
pub const NUM_CLASSES: usize = 10;

/// Images of one IDX file: `count` images of `rows × cols` u8 pixels, row-major,
/// in one contiguous buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Appends an IDX file (magic, dimensions, data) to `out`: the inverse of
/// the parsers, used to ship datasets (and by tests to make files).
pub fn encode_into(out: &mut Vec<u8>, magic: u32, dims: &[u32], data: &[u8]) {
    out.extend_from_slice(&magic.to_be_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
}

/// Returns the file's content, gunzipped if it starts with the gzip magic.
pub fn decompress(file: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| Error::idx(file, format!("corrupt gzip data: {e}")))?;
    Ok(out)
}

/// Parses an IDX images file (already decompressed).
pub fn parse_images(file: &str, mut bytes: Vec<u8>) -> Result<Images> {
    let dims = header(file, &bytes, IMAGES_MAGIC, 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(Error::idx(file, format!("image dimensions {rows}x{cols} are empty")));
    }
    let header_len = 4 + 4 * 3;
    let what = format!("{count} images of {rows}x{cols}");
    let data_len = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .ok_or_else(|| Error::idx(file, format!("header declares {what}, more bytes than can be addressed")))?;
    expect_len(file, &bytes, header_len, data_len, &what)?;
    bytes.drain(..header_len);
    bytes.shrink_to_fit();
    Ok(Images { count, rows, cols, pixels: bytes })
}

/// Parses an IDX labels file (already decompressed); every label is in `0..=9`.
pub fn parse_labels(file: &str, mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let dims = header(file, &bytes, LABELS_MAGIC, 1)?;
    let count = dims[0];
    let header_len = 4 + 4;
    expect_len(file, &bytes, header_len, count, &format!("{count} labels"))?;
    bytes.drain(..header_len);
    if let Some((i, &label)) = bytes.iter().enumerate().find(|(_, l)| usize::from(**l) >= NUM_CLASSES) {
        return Err(Error::idx(file, format!("label {label} at index {i} is outside 0..={}", NUM_CLASSES - 1)));
    }
    Ok(bytes)
}

/// Checks magic and rank and returns the dimensions.
fn header(file: &str, bytes: &[u8], magic: u32, rank: usize) -> Result<Vec<usize>> {
    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(Error::idx(
            file,
            format!("{} bytes is shorter than the {header_len}-byte IDX header", bytes.len()),
        ));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    let found = word(0);
    if found != magic {
        let kind = if magic == IMAGES_MAGIC { "images" } else { "labels" };
        return Err(Error::idx(file, format!("magic number {found} is not {magic} (IDX u8 {kind}, rank {rank})")));
    }
    Ok((1..=rank).map(|i| word(i) as usize).collect())
}

fn expect_len(file: &str, bytes: &[u8], header_len: usize, data_len: usize, what: &str) -> Result<()> {
    let expected = header_len
        .checked_add(data_len)
        .ok_or_else(|| Error::idx(file, format!("header declares {what}, more bytes than can be addressed")))?;
    if bytes.len() != expected {
        let how = if bytes.len() < expected { "truncated" } else { "has trailing data" };
        return Err(Error::idx(
            file,
            format!("{how}: {} bytes, but the header declares {what} = {expected} bytes", bytes.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IDX file as the format defines it, for tests.
    pub(crate) fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, magic, dims, data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn parses_good_images_raw_and_gzipped() {
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let raw = idx_bytes(IMAGES_MAGIC, &[2, 3, 4], &pixels);
        for bytes in [raw.clone(), gzip(&raw)] {
            let images = parse_images("f", decompress("f", bytes).unwrap()).unwrap();
            assert_eq!((images.count, images.rows, images.cols), (2, 3, 4));
            assert_eq!(images.pixels, pixels);
        }
    }

    #[test]
    fn parses_good_labels() {
        let labels = parse_labels("l", idx_bytes(LABELS_MAGIC, &[3], &[0, 9, 4])).unwrap();
        assert_eq!(labels, vec![0, 9, 4]);
    }

    #[test]
    fn truncated_file_is_refused_with_sizes() {
        let raw = idx_bytes(IMAGES_MAGIC, &[2, 2, 2], &[0; 7]);
        let err = parse_images("train-images-idx3-ubyte", raw).unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
        assert!(err.contains("truncated: 23 bytes"), "{err}");
        assert!(err.contains("24 bytes"), "{err}");
    }

    #[test]
    fn short_header_is_refused() {
        let err = parse_labels("l", vec![0, 0, 8]).unwrap_err().to_string();
        assert!(err.contains("shorter than the 8-byte IDX header"), "{err}");
    }

    #[test]
    fn trailing_data_is_refused() {
        let raw = idx_bytes(LABELS_MAGIC, &[2], &[1, 2, 3]);
        let err = parse_labels("l", raw).unwrap_err().to_string();
        assert!(err.contains("trailing data"), "{err}");
    }

    #[test]
    fn wrong_magic_is_refused() {
        let raw = idx_bytes(LABELS_MAGIC, &[1, 1, 1], &[0]);
        let err = parse_images("img", raw).unwrap_err().to_string();
        assert!(err.contains("magic number 2049 is not 2051"), "{err}");
    }

    #[test]
    fn wrong_dimensions_are_refused() {
        // Rank-3 magic with data sized for a different shape.
        let raw = idx_bytes(IMAGES_MAGIC, &[1, 28, 28], &[0; 28 * 27]);
        let err = parse_images("img", raw).unwrap_err().to_string();
        assert!(err.contains("1 images of 28x28"), "{err}");
        let empty = idx_bytes(IMAGES_MAGIC, &[1, 0, 28], &[]);
        assert!(parse_images("img", empty).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn out_of_range_label_is_refused() {
        let err = parse_labels("l", idx_bytes(LABELS_MAGIC, &[2], &[3, 10])).unwrap_err().to_string();
        assert!(err.contains("label 10 at index 1"), "{err}");
    }

    #[test]
    fn corrupt_gzip_is_refused() {
        let mut gz = gzip(&idx_bytes(LABELS_MAGIC, &[3], &[0, 1, 2]));
        let n = gz.len();
        gz.truncate(n - 6);
        let err = decompress("l.gz", gz).unwrap_err().to_string();
        assert!(err.contains("corrupt gzip"), "{err}");
    }
}
