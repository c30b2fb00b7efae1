//! Parameter buffers on the wire: cut into chunks of at most
//! [`MAX_CHUNK_BYTES`] bytes, checked and reassembled in order.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use lazyavg_common::memory::WeightsMemory;

use crate::{MAX_CHUNK_BYTES, ProtoError, pb};

/// A piece of a parameter buffer as the code on either end sees it:
/// `offset` and `total` count f32 values, `data` holds little-endian f32
/// bytes (shared, not copied, from the message it came in).
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub epoch: u64,
    pub round: u64,
    pub offset: u64,
    pub total: u64,
    pub data: Bytes,
}

impl Chunk {
    /// Whether this chunk ends its buffer.
    pub fn is_last(&self) -> bool {
        self.offset + (self.data.len() / 4) as u64 >= self.total
    }
}

impl From<pb::WeightsChunk> for Chunk {
    fn from(c: pb::WeightsChunk) -> Self {
        Chunk { epoch: c.epoch, round: c.round, offset: c.offset, total: c.total, data: c.data }
    }
}

impl From<Chunk> for pb::WeightsChunk {
    fn from(c: Chunk) -> Self {
        pb::WeightsChunk {
            epoch: c.epoch,
            round: c.round,
            offset: c.offset,
            total: c.total,
            data: c.data,
            lane_bytes: 0,
            board_offset: None,
            area_offset: None,
        }
    }
}

/// f32 values per full chunk.
pub const VALUES_PER_CHUNK: usize = MAX_CHUNK_BYTES / 4;

/// The chunks that carry `params` for `epoch` and `round`: the buffer
/// encoded once, each chunk a slice of it.
pub fn weight_chunks(epoch: u64, round: u64, params: &[f32]) -> impl Iterator<Item = Chunk> {
    encoded_chunks(epoch, round, encode_values(params))
}

/// The chunks that carry weights already encoded as little-endian f32
/// bytes: slices of `encoded`, not copies.
pub fn encoded_chunks(epoch: u64, round: u64, encoded: Bytes) -> impl Iterator<Item = Chunk> {
    let total = (encoded.len() / 4) as u64;
    (0..encoded.len()).step_by(MAX_CHUNK_BYTES).map(move |start| Chunk {
        epoch,
        round,
        offset: (start / 4) as u64,
        total,
        data: encoded.slice(start..(start + MAX_CHUNK_BYTES).min(encoded.len())),
    })
}

/// The little-endian f32 bytes of `params`, sharing their memory where the
/// machine is little-endian (its f32 values are those bytes): a model's
/// encoding costs no copy, and at 20M parameters no second 80 MB buffer for
/// as long as any send holds it. The bytes keep `params` alive, so whoever
/// changes them in place (`Arc::get_mut`) while a send still holds them
/// makes a copy instead. A big-endian machine encodes a copy.
pub fn shared_values<W: WeightsMemory + ?Sized + 'static>(params: Arc<W>) -> Bytes {
    #[cfg(target_endian = "little")]
    {
        Bytes::from_owner(LittleEndianF32(params))
    }
    #[cfg(not(target_endian = "little"))]
    {
        encode_values(params.values())
    }
}

/// f32 values viewed as their bytes, which on a little-endian machine are
/// their wire encoding.
#[cfg(target_endian = "little")]
struct LittleEndianF32<W: ?Sized>(Arc<W>);

#[cfg(target_endian = "little")]
impl<W: WeightsMemory + ?Sized> AsRef<[u8]> for LittleEndianF32<W> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(self.0.values())
    }
}

/// Little-endian f32 bytes, collected straight into one buffer (no zeroing
/// first). Fixed-size byte arrays (not 4-byte slices) let the compiler make
/// this a plain copy on little-endian machines, and the decoders below
/// vector loops.
pub fn encode_values(values: &[f32]) -> bytes::Bytes {
    let words: Vec<[u8; 4]> = values.iter().map(|v| v.to_le_bytes()).collect();
    words.into_flattened().into()
}

/// A chunk's f32 values read in place from its little-endian bytes, so that
/// a receiver checks, measures and sums them without decoding a copy first
/// (each pass over a chunk is memory traffic; docs/performance.md).
/// A ragged tail is not part of it (lengths are checked by [`ChunkCursor`]).
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    bytes: &'a [u8],
}

impl<'a> Values<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Values { bytes: bytes.as_chunks::<4>().0.as_flattened() }
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    /// The values' little-endian bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = f32> + 'a {
        decode_values(self.bytes)
    }

    /// The values at positions `range`.
    pub fn get(&self, range: Range<usize>) -> Values<'a> {
        Values { bytes: &self.bytes[range.start * 4..range.end * 4] }
    }

    /// Writes the values into `dst` (as long as they are).
    pub fn decode_into(&self, dst: &mut [f32]) {
        decode_into(dst, self.bytes);
    }

    /// The index of the first value that is not finite, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        first_non_finite(self.bytes)
    }
}

/// Decodes little-endian f32 bytes (length checked by [`ChunkCursor`]; a
/// ragged tail is ignored).
pub fn decode_values(data: &[u8]) -> impl Iterator<Item = f32> + '_ {
    data.as_chunks::<4>().0.iter().map(|&b| f32::from_le_bytes(b))
}

/// The index of the first value in `data` that is not finite, if any: one
/// branch-free (vectorised) pass over every value, and a search only when
/// there is one.
pub fn first_non_finite(data: &[u8]) -> Option<usize> {
    if decode_values(data).fold(true, |finite, v| finite & v.is_finite()) {
        return None;
    }
    decode_values(data).position(|v| !v.is_finite())
}

/// Decodes a chunk's values into `dst` (the range [`ChunkCursor::advance`] returned).
pub fn decode_into(dst: &mut [f32], data: &[u8]) {
    for (d, v) in dst.iter_mut().zip(decode_values(data)) {
        *d = v;
    }
}

/// Checks that the chunks of one buffer of `total` values arrive complete, in
/// order and for the expected epoch and round. Holds no data, so a receiver can
/// consume chunks as they come (the coordinator adds them straight into its
/// running sum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCursor {
    epoch: u64,
    round: u64,
    total: usize,
    next: usize,
}

impl ChunkCursor {
    pub fn new(epoch: u64, round: u64, total: usize) -> Self {
        ChunkCursor { epoch, round, total, next: 0 }
    }

    /// The range of values `chunk` covers, if it is the next one expected.
    pub fn advance(&mut self, chunk: &Chunk) -> Result<Range<usize>, ProtoError> {
        let fail = |problem: String| ProtoError::Chunk {
            epoch: chunk.epoch,
            round: chunk.round,
            offset: chunk.offset,
            problem,
        };
        if (chunk.epoch, chunk.round) != (self.epoch, self.round) {
            return Err(fail(format!("expected epoch {} round {}", self.epoch, self.round)));
        }
        if chunk.total != self.total as u64 {
            return Err(fail(format!("declares {} values but the model has {}", chunk.total, self.total)));
        }
        if chunk.offset != self.next as u64 {
            return Err(fail(format!("out of order: expected offset {}", self.next)));
        }
        if !chunk.data.len().is_multiple_of(4) || chunk.data.is_empty() || chunk.data.len() > MAX_CHUNK_BYTES {
            return Err(fail(format!(
                "{} data bytes is not 4 to {MAX_CHUNK_BYTES} whole f32 values",
                chunk.data.len()
            )));
        }
        let end = self.next + chunk.data.len() / 4;
        if end > self.total {
            return Err(fail(format!("runs to value {end}, past the model's {}", self.total)));
        }
        let range = self.next..end;
        self.next = end;
        Ok(range)
    }

    pub fn is_complete(&self) -> bool {
        self.next == self.total
    }

    /// How many values have arrived: positions `0..received()`.
    pub fn received(&self) -> usize {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_value_is_found_wherever_it_is() {
        let bytes = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let mut values: Vec<f32> = (0..1000).map(|i| i as f32 - 500.0).collect();
        assert_eq!(first_non_finite(&bytes(&values)), None);
        values[999] = f32::INFINITY;
        assert_eq!(first_non_finite(&bytes(&values)), Some(999));
        values[3] = f32::NAN;
        assert_eq!(first_non_finite(&bytes(&values)), Some(3));
        values[0] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&bytes(&values)), Some(0));
    }

    #[test]
    fn shared_values_are_the_encoding_and_keep_the_parameters_alive() {
        let params: Vec<f32> = (0..1001).map(|i| i as f32 * -0.25 + 3.0).collect();
        let mut shared = Arc::new(params.clone());
        let bytes = shared_values(Arc::clone(&shared));
        assert_eq!(bytes, encode_values(&params));
        if cfg!(target_endian = "little") {
            assert_eq!(bytes.as_ptr(), shared.as_ptr().cast::<u8>(), "no copy");
        }
        // Changing the parameters while the bytes are held changes a copy.
        Arc::make_mut(&mut shared)[0] = 9.0;
        assert_eq!(bytes, encode_values(&params));
    }

    #[test]
    fn values_encoded_read_back_and_slice_into_chunks() {
        for len in [VALUES_PER_CHUNK + 5, 3] {
            let original: Vec<f32> = (0..len).map(|i| i as f32 * -0.5).collect();
            let encoded = encode_values(&original);
            let values = Values::new(&encoded);
            assert_eq!(values.get(1..3).iter().collect::<Vec<_>>(), original[1..3]);
            let chunks: Vec<Chunk> = encoded_chunks(4, 2, encoded.clone()).collect();
            assert_eq!(chunks.len(), len.div_ceil(VALUES_PER_CHUNK));
            assert!(chunks.last().is_some_and(Chunk::is_last));
            let read: Vec<f32> = chunks.iter().flat_map(|c| Values::new(&c.data).iter().collect::<Vec<_>>()).collect();
            assert_eq!(read, original);
        }
    }

    #[test]
    fn twenty_million_values_round_trip_in_small_chunks() {
        let params: Vec<f32> = (0..20_000_000).map(|i| i as f32 * 0.5).collect();
        let mut received = vec![0.0f32; params.len()];
        let mut cursor = ChunkCursor::new(2, 7, params.len());
        let mut count = 0;
        for chunk in weight_chunks(2, 7, &params) {
            assert!(chunk.data.len() <= MAX_CHUNK_BYTES);
            assert!(!cursor.is_complete());
            let range = cursor.advance(&chunk).unwrap();
            decode_into(&mut received[range], &chunk.data);
            count += 1;
        }
        assert!(cursor.is_complete());
        assert_eq!(count, 20_000_000usize.div_ceil(VALUES_PER_CHUNK));
        assert!(received == params);
    }

    #[test]
    fn wrong_round_order_length_and_size_are_refused() {
        let params = vec![1.0f32; VALUES_PER_CHUNK + 3];
        let chunks: Vec<_> = weight_chunks(1, 1, &params).collect();
        let mut cursor = ChunkCursor::new(1, 2, params.len());
        assert!(cursor.advance(&chunks[0]).unwrap_err().to_string().contains("expected epoch 1 round 2"));
        let mut cursor = ChunkCursor::new(1, 1, params.len());
        assert!(cursor.advance(&chunks[1]).unwrap_err().to_string().contains("out of order"));
        let mut cursor = ChunkCursor::new(1, 1, params.len() + 1);
        assert!(cursor.advance(&chunks[0]).unwrap_err().to_string().contains("declares"));
        let mut ragged = chunks[1].clone();
        ragged.offset = 0;
        ragged.data = [&ragged.data[..], &[0]].concat().into();
        let mut cursor = ChunkCursor::new(1, 1, params.len());
        assert!(cursor.advance(&ragged).is_err());
        let mut long = chunks[1].clone();
        long.offset = VALUES_PER_CHUNK as u64;
        long.data = [&long.data[..], &[0; 4]].concat().into();
        let mut cursor = ChunkCursor::new(1, 1, params.len());
        cursor.advance(&chunks[0]).unwrap();
        assert!(cursor.advance(&long).unwrap_err().to_string().contains("past the model"));
    }
}
