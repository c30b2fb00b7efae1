//! Weights for a session that has not answered a pull yet, in small
//! messages.
//!
//! Each session's HTTP/2 stream copies every message it sends into an
//! encoding buffer of its own (tonic's), and keeps that buffer, and a
//! message its reader has no window for, as long as the stream lasts. With
//! the wire's 512 KiB chunks that is most of a default model per session: a
//! session that attached and then never read held a second copy of the
//! model, next to the one its queue shares with every other session. Cut
//! into 64 KiB slices of the same shared buffer, what such a stream holds
//! of its own is a few slices. A worker that has answered gets the wire's
//! chunks: a round's average in 2 messages instead of 13 (`bench/rounds.sh`,
//! a default 2-worker round with protocol 5's 1 MiB chunks: 2.0 ms with
//! them, 3.0 to 3.7 ms in slices, on a shared 2-core machine under load, so
//! only roughly).

use lazyavg_proto::chunks::Chunk;

/// The most weight bytes in one message to a session that has not answered
/// yet. A multiple of 4 (whole f32 values).
pub const SMALL_MESSAGE_BYTES: usize = 64 << 10;

// [`messages`] counts whole slices of whole chunks.
const _: () = assert!(lazyavg_proto::MAX_CHUNK_BYTES.is_multiple_of(SMALL_MESSAGE_BYTES));

/// `chunks` (weights as the wire cuts them) in messages of at most
/// [`SMALL_MESSAGE_BYTES`], slices of the same buffers.
pub fn small(chunks: &[Chunk]) -> Vec<Chunk> {
    let mut sliced = Vec::new();
    for chunk in chunks {
        for start in (0..chunk.data.len()).step_by(SMALL_MESSAGE_BYTES) {
            let end = (start + SMALL_MESSAGE_BYTES).min(chunk.data.len());
            sliced.push(Chunk {
                offset: chunk.offset + (start / 4) as u64,
                data: chunk.data.slice(start..end),
                ..chunk.clone()
            });
        }
    }
    sliced
}

/// How many messages [`small`] makes of a model of `parameters` values:
/// the most one copy of the weights takes.
pub fn messages(parameters: usize) -> usize {
    (4 * parameters).div_ceil(SMALL_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use lazyavg_proto::chunks::{ChunkCursor, decode_into, weight_chunks};

    use super::*;

    #[test]
    fn the_slices_put_back_together_are_the_parameters() {
        // Past one wire chunk (512 KiB), with a ragged last slice.
        let params: Vec<f32> = (0..300_001).map(|i| i as f32 * 0.5 - 7.0).collect();
        let chunks: Vec<Chunk> = weight_chunks(2, 5, &params).collect();
        let sliced = small(&chunks);
        assert_eq!(sliced.len(), messages(params.len()));
        let mut cursor = ChunkCursor::new(2, 5, params.len());
        let mut back = vec![0.0; params.len()];
        for chunk in &sliced {
            assert!(chunk.data.len() <= SMALL_MESSAGE_BYTES);
            let range = cursor.advance(chunk).expect("slices in order");
            decode_into(&mut back[range], &chunk.data);
        }
        assert!(cursor.is_complete());
        assert_eq!(back, params);
    }

    #[test]
    fn the_slices_share_the_chunks_buffers() {
        let params = vec![1.0f32; 3 * SMALL_MESSAGE_BYTES / 4];
        let chunks: Vec<Chunk> = weight_chunks(0, 0, &params).collect();
        let sliced = small(&chunks);
        assert_eq!(sliced.len(), 3);
        assert_eq!(sliced[0].data.as_ptr(), chunks[0].data.as_ptr());
        assert_eq!(sliced[1].data.as_ptr() as usize - sliced[0].data.as_ptr() as usize, SMALL_MESSAGE_BYTES);
    }
}
