//! Property-based fuzzing of weight-chunk reassembly: any sequence of
//! `WeightsChunk` values gives `Ok` or `Err` from the cursor, never a panic;
//! a valid sequence reassembles the exact buffer.

use lazyavg_proto::MAX_CHUNK_BYTES;
use lazyavg_proto::chunks::{Chunk, ChunkCursor, VALUES_PER_CHUNK, decode_into, decode_values, weight_chunks};
use proptest::prelude::*;

/// Parameter counts of 1 to 3 chunks, clustered around the chunk boundaries.
fn param_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..64,
        (VALUES_PER_CHUNK - 2)..=(VALUES_PER_CHUNK + 2),
        (2 * VALUES_PER_CHUNK - 1)..=(2 * VALUES_PER_CHUNK + 1),
        (2 * VALUES_PER_CHUNK + 2)..=(3 * VALUES_PER_CHUNK),
    ]
}

/// `len` values of every kind of bit pattern (NaN, ±0, subnormals included),
/// derived from `seed` (generating them one by one through proptest is slow).
fn params(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f32::from_bits(x as u32)
        })
        .collect()
}

/// Data of a random length: small, or around the chunk-size limit.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..48),
        1 => prop_oneof![
            Just(MAX_CHUNK_BYTES - 4),
            Just(MAX_CHUNK_BYTES - 1),
            Just(MAX_CHUNK_BYTES),
            Just(MAX_CHUNK_BYTES + 1),
            Just(MAX_CHUNK_BYTES + 4),
        ]
        .prop_map(|n| vec![0x3f; n]),
    ]
}

/// A chunk with fields near those a cursor for (`epoch`, `round`, `total`) expects, or anything.
fn chunk(epoch: u64, round: u64, total: u64) -> impl Strategy<Value = Chunk> {
    let near = |v: u64| prop_oneof![3 => Just(v), 1 => Just(v.wrapping_add(1)), 1 => Just(v.wrapping_sub(1)), 1 => any::<u64>()];
    (near(epoch), near(round), prop_oneof![0..=total + 2, any::<u64>()], near(total), data())
        .prop_map(|(epoch, round, offset, total, data)| Chunk { epoch, round, offset, total, data: data.into() })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// How a valid chunk sequence is damaged.
#[derive(Debug, Clone)]
enum Edit {
    Swap(prop::sample::Index, prop::sample::Index),
    Duplicate(prop::sample::Index),
    Drop(prop::sample::Index),
    Truncate(prop::sample::Index, prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        any::<Index>().prop_map(Edit::Duplicate),
        any::<Index>().prop_map(Edit::Drop),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Truncate(a, b)),
    ]
}

fn apply(chunks: &mut Vec<Chunk>, edit: &Edit) {
    if chunks.is_empty() {
        return;
    }
    let n = chunks.len();
    match edit {
        Edit::Swap(a, b) => chunks.swap(a.index(n), b.index(n)),
        Edit::Duplicate(a) => {
            let c = chunks[a.index(n)].clone();
            chunks.insert(a.index(n), c);
        }
        Edit::Drop(a) => {
            chunks.remove(a.index(n));
        }
        Edit::Truncate(a, cut) => {
            let c = &mut chunks[a.index(n)];
            c.data = c.data.slice(..cut.index(c.data.len() + 1));
        }
    }
}

/// Feeds `chunks` to a cursor as a receiver would; checks every accepted range.
/// Returns the reassembled buffer if the cursor completed.
fn receive(epoch: u64, round: u64, total: usize, chunks: &[Chunk]) -> Option<Vec<f32>> {
    let mut cursor = ChunkCursor::new(epoch, round, total);
    let mut out = vec![0.0f32; total];
    let mut next = 0;
    for chunk in chunks {
        let before = cursor.clone();
        match cursor.advance(chunk) {
            Ok(range) => {
                assert_eq!(range.start, next, "ranges are contiguous");
                assert!(range.end <= total && range.end > range.start);
                assert_eq!(range.len() * 4, chunk.data.len());
                assert_eq!(chunk.offset, range.start as u64);
                next = range.end;
                decode_into(&mut out[range], &chunk.data);
            }
            // A refused chunk leaves the cursor where it was.
            Err(_) => assert_eq!(cursor, before),
        }
        assert_eq!(cursor.is_complete(), next == total);
    }
    cursor.is_complete().then_some(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_chunks_never_panic(
        (epoch, round, total, chunks) in (0u64..3, 0u64..3, 0usize..24).prop_flat_map(|(e, r, t)| {
            (Just(e), Just(r), Just(t), prop::collection::vec(chunk(e, r, t as u64), 0..12))
        }),
    ) {
        receive(epoch, round, total, &chunks);
    }

    #[test]
    fn decode_into_takes_any_lengths(dst_len in 0usize..16, data in prop::collection::vec(any::<u8>(), 0..70)) {
        let mut dst = vec![f32::NAN; dst_len];
        decode_into(&mut dst, &data);
        let n = dst_len.min(data.len() / 4);
        prop_assert_eq!(bits(&dst[..n]), bits(&decode_values(&data).take(n).collect::<Vec<_>>()));
        prop_assert!(dst[n..].iter().all(|v| v.is_nan()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn valid_chunks_reassemble_exactly(len in param_len(), seed in any::<u64>(), epoch in any::<u64>(), round in any::<u64>()) {
        let params = params(len, seed);
        let chunks: Vec<_> = weight_chunks(epoch, round, &params).collect();
        prop_assert_eq!(chunks.len(), len.div_ceil(VALUES_PER_CHUNK));
        prop_assert!(chunks.iter().all(|c| c.data.len() <= MAX_CHUNK_BYTES && c.total == len as u64));
        let out = receive(epoch, round, len, &chunks).expect("complete");
        prop_assert_eq!(bits(&out), bits(&params));
    }

    #[test]
    fn edited_valid_chunks_never_panic_and_complete_only_correctly(
        len in param_len(),
        seed in any::<u64>(),
        edits in prop::collection::vec(edit(), 1..4),
        strays in prop::collection::vec((any::<prop::sample::Index>(), chunk(1, 2, 0)), 0..3),
    ) {
        let params = params(len, seed);
        let mut chunks: Vec<_> = weight_chunks(1, 2, &params).collect();
        for e in &edits {
            apply(&mut chunks, e);
        }
        // Shuffled, duplicated, dropped or truncated pieces of the real buffer
        // carry only true values: if the cursor completes, the buffer is exact.
        if let Some(out) = receive(1, 2, len, &chunks) {
            prop_assert_eq!(bits(&out), bits(&params));
        }
        // Stray chunks of the right length mixed in: no panic, whatever is accepted.
        for (at, mut stray) in strays {
            stray.total = len as u64;
            chunks.insert(at.index(chunks.len() + 1), stray);
        }
        receive(1, 2, len, &chunks);
    }
}
