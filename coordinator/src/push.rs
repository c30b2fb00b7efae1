//! The weights the coordinator pushes to its workers, in small messages.
//!
//! Each session's HTTP/2 stream copies every message it sends into an
//! encoding buffer of its own, and keeps that buffer (and a message its
//! reader has no window for) as long as the session lasts. With the wire's
//! 1 MiB chunks that is a whole default model per session: a session that
//! never reads held a second copy of the model, next to the one its queue
//! shares with every other session. Cut into 64 KiB slices of the same
//! shared buffer, the queues still share one copy per version, and what a
//! stream holds of its own stays a few slices.

use lazyavg_proto::chunks::weight_chunks;
use lazyavg_proto::pb;

/// The most weight bytes in one message the coordinator sends (dataset
/// bytes too). A multiple of 4 (whole f32 values); small enough that a stalled stream's own copies
/// are a small part of a model, large enough that the per-message cost is
/// nothing beside the copy itself.
pub const PUSH_CHUNK_BYTES: usize = 64 << 10;

/// The messages that carry `params` for `epoch` and `round` to a worker:
/// one encoding, sliced (the slices share it).
pub fn push_chunks(epoch: u64, round: u64, params: &[f32]) -> Vec<pb::WeightsChunk> {
    let mut pushed = Vec::with_capacity(messages(params.len()));
    for chunk in weight_chunks(epoch, round, params) {
        for start in (0..chunk.data.len()).step_by(PUSH_CHUNK_BYTES) {
            let end = (start + PUSH_CHUNK_BYTES).min(chunk.data.len());
            pushed.push(pb::WeightsChunk {
                offset: chunk.offset + (start / 4) as u64,
                data: chunk.data.slice(start..end),
                ..chunk.clone()
            });
        }
    }
    pushed
}

/// How many messages [`push_chunks`] makes of `parameters` values.
pub fn messages(parameters: usize) -> usize {
    (4 * parameters).div_ceil(PUSH_CHUNK_BYTES)
}

#[cfg(test)]
mod tests {
    use lazyavg_proto::chunks::{ChunkCursor, decode_into};

    use super::*;

    #[test]
    fn the_slices_put_back_together_are_the_parameters() {
        // Past one wire chunk (1 MiB), with a ragged last slice.
        let params: Vec<f32> = (0..300_001).map(|i| i as f32 * 0.5 - 7.0).collect();
        let pushed = push_chunks(2, 5, &params);
        assert_eq!(pushed.len(), messages(params.len()));
        let mut cursor = ChunkCursor::new(2, 5, params.len());
        let mut back = vec![0.0; params.len()];
        for chunk in &pushed {
            assert!(chunk.data.len() <= PUSH_CHUNK_BYTES);
            let range = cursor.advance(chunk).expect("slices in order");
            decode_into(&mut back[range], &chunk.data);
        }
        assert!(cursor.is_complete());
        assert_eq!(back, params);
    }

    #[test]
    fn the_slices_share_one_encoding() {
        let params = vec![1.0f32; 3 * PUSH_CHUNK_BYTES / 4];
        let pushed = push_chunks(0, 0, &params);
        assert_eq!(pushed.len(), 3);
        let first = pushed[0].data.as_ptr();
        let second = pushed[1].data.as_ptr();
        assert_eq!(second as usize - first as usize, PUSH_CHUNK_BYTES, "one buffer, sliced");
    }
}
