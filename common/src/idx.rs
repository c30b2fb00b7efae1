//! Parsing of the IDX format that MNIST ships in.
//!
//! An IDX file is a 4-byte magic (two zero bytes, a type code, the rank), one
//! big-endian u32 per dimension, then the data. We read type 0x08 (u8):
//! images of rank 3 (magic 2051, `n × rows × cols`, one channel: MNIST,
//! Fashion-MNIST, EMNIST) or rank 4 (magic 2052, `n × channels × rows × cols`,
//! each image channel after channel: the layout the convolutions take), and
//! labels of rank 1 (magic 2049), any byte a class index. Files may be
//! gzip-compressed; that is decided by the content (the gzip magic), never by
//! the file name. Every check failure names the file and the numbers.

use std::io::Read;

use crate::error::{Error, Result};
use crate::spec::InputShape;

/// Images of one channel, `n × rows × cols`.
pub const IMAGES_MAGIC: u32 = 2051;
/// Images of several channels, `n × channels × rows × cols`.
pub const CHANNEL_IMAGES_MAGIC: u32 = 2052;
pub const LABELS_MAGIC: u32 = 2049;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Images of one IDX file: `count` images of `shape` u8 pixels (channel,
/// row, column, in that order of significance), in one contiguous buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub count: usize,
    pub shape: InputShape,
    pub pixels: Vec<u8>,
}

/// Appends `count` images of `shape` as an IDX file: rank 3 for one channel
/// (so a single-channel set keeps MNIST's layout byte for byte), else rank 4.
pub fn encode_images_into(out: &mut Vec<u8>, count: usize, shape: InputShape, pixels: &[u8]) {
    let InputShape { channels, height, width } = shape;
    let [n, c, h, w] = [count, channels, height, width].map(|d| d as u32);
    match channels {
        1 => encode_into(out, IMAGES_MAGIC, &[n, h, w], pixels),
        _ => encode_into(out, CHANNEL_IMAGES_MAGIC, &[n, c, h, w], pixels),
    }
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

/// What an images file's header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagesHeader {
    pub count: usize,
    pub shape: InputShape,
    /// Bytes of the header: 16 for rank 3, 20 for rank 4.
    pub header_len: usize,
    /// Bytes of the whole file, header and pixels.
    pub file_len: usize,
}

/// Reads the header of an images file at the start of `bytes`, rank 3 or 4
/// as its magic says. Bytes after the header are not looked at, so a blob
/// of images followed by labels can be split at `file_len`.
pub fn images_header(file: &str, bytes: &[u8]) -> Result<ImagesHeader> {
    let rank = match bytes.get(..4).map(|m| u32::from_be_bytes([m[0], m[1], m[2], m[3]])) {
        Some(CHANNEL_IMAGES_MAGIC) => 4,
        _ => 3,
    };
    let magic = if rank == 4 { CHANNEL_IMAGES_MAGIC } else { IMAGES_MAGIC };
    let dims = header(file, bytes, magic, rank)?;
    let (count, channels) = (dims[0], if rank == 4 { dims[1] } else { 1 });
    let shape = InputShape { channels, height: dims[rank - 2], width: dims[rank - 1] };
    if shape.is_empty() {
        return Err(Error::idx(file, format!("image dimensions {shape} are empty")));
    }
    let header_len = 4 + 4 * rank;
    let file_len = [channels, shape.height, shape.width]
        .iter()
        .try_fold(count, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_add(header_len))
        .ok_or_else(|| {
            Error::idx(file, format!("header declares {count} images of {shape}, more bytes than can be addressed"))
        })?;
    Ok(ImagesHeader { count, shape, header_len, file_len })
}

/// Parses an IDX images file (already decompressed), of rank 3 or 4.
pub fn parse_images(file: &str, mut bytes: Vec<u8>) -> Result<Images> {
    let ImagesHeader { count, shape, header_len, file_len } = images_header(file, &bytes)?;
    expect_len(file, &bytes, file_len, &format!("{count} images of {shape}"))?;
    bytes.drain(..header_len);
    bytes.shrink_to_fit();
    Ok(Images { count, shape, pixels: bytes })
}

/// Parses an IDX labels file (already decompressed); every byte is a class index.
pub fn parse_labels(file: &str, mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let dims = header(file, &bytes, LABELS_MAGIC, 1)?;
    let count = dims[0];
    let header_len = 4 + 4;
    let file_len = count
        .checked_add(header_len)
        .ok_or_else(|| Error::idx(file, format!("header declares {count} labels, more bytes than can be addressed")))?;
    expect_len(file, &bytes, file_len, &format!("{count} labels"))?;
    bytes.drain(..header_len);
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
        let kind = if magic == LABELS_MAGIC {
            format!("{LABELS_MAGIC} (IDX u8 labels, rank 1)")
        } else {
            format!("{IMAGES_MAGIC} or {CHANNEL_IMAGES_MAGIC} (IDX u8 images, rank 3 or 4)")
        };
        return Err(Error::idx(file, format!("magic number {found} is not {kind}")));
    }
    Ok((1..=rank).map(|i| word(i) as usize).collect())
}

/// Checks that the file is exactly the `expected` bytes its header declares.
fn expect_len(file: &str, bytes: &[u8], expected: usize, what: &str) -> Result<()> {
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
            assert_eq!((images.count, images.shape), (2, InputShape { channels: 1, height: 3, width: 4 }));
            assert_eq!(images.pixels, pixels);
        }
    }

    #[test]
    fn parses_rank_4_images_as_channels_rows_cols_and_writes_them_back() {
        let shape = InputShape { channels: 3, height: 2, width: 4 };
        let pixels: Vec<u8> = (0..5 * shape.len()).map(|i| i as u8).collect();
        let raw = idx_bytes(CHANNEL_IMAGES_MAGIC, &[5, 3, 2, 4], &pixels);
        let header = images_header("f", &raw).unwrap();
        assert_eq!(header, ImagesHeader { count: 5, shape, header_len: 20, file_len: 20 + 120 });
        let images = parse_images("f", raw.clone()).unwrap();
        assert_eq!((images.count, images.shape, &images.pixels), (5, shape, &pixels));
        let mut out = Vec::new();
        encode_images_into(&mut out, 5, shape, &pixels);
        assert_eq!(out, raw);
        let mut one_channel = Vec::new();
        encode_images_into(&mut one_channel, 5, InputShape { channels: 1, height: 6, width: 4 }, &pixels);
        assert_eq!(one_channel, idx_bytes(IMAGES_MAGIC, &[5, 6, 4], &pixels));
    }

    #[test]
    fn rank_4_files_are_checked_like_rank_3() {
        let err = |raw| parse_images("img", raw).unwrap_err().to_string();
        assert_eq!(
            err(idx_bytes(CHANNEL_IMAGES_MAGIC, &[2, 3, 2, 2], &[0; 23])),
            "img: truncated: 43 bytes, but the header declares 2 images of 3x2x2 = 44 bytes"
        );
        assert_eq!(err(idx_bytes(CHANNEL_IMAGES_MAGIC, &[2, 0, 2, 2], &[])), "img: image dimensions 0x2x2 are empty");
        assert!(err(idx_bytes(CHANNEL_IMAGES_MAGIC, &[2, 3, 2], &[])).contains("shorter than the 20-byte IDX header"));
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
        assert!(err.contains("magic number 2049 is not 2051 or 2052"), "{err}");
    }

    #[test]
    fn wrong_dimensions_are_refused() {
        // Rank-3 magic with data sized for a different shape.
        let raw = idx_bytes(IMAGES_MAGIC, &[1, 28, 28], &[0; 28 * 27]);
        let err = parse_images("img", raw).unwrap_err().to_string();
        assert!(err.contains("1 images of 1x28x28"), "{err}");
        let empty = idx_bytes(IMAGES_MAGIC, &[1, 0, 28], &[]);
        assert!(parse_images("img", empty).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn any_byte_is_a_label() {
        assert_eq!(parse_labels("l", idx_bytes(LABELS_MAGIC, &[3], &[3, 46, 255])).unwrap(), vec![3, 46, 255]);
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
