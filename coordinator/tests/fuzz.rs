//! Property-based fuzzing of what the coordinator reads from outside: the
//! checkpoint files of `--resume` and the weight chunks workers send into an
//! averaging round. Any input gives `Ok` or `Err`, never a panic; valid input
//! round-trips (checkpoints) or averages correctly (rounds).

use std::collections::HashMap;
use std::path::Path;

use lazyavg_common::model_file;
use lazyavg_common::outer::{OuterOptimizer, OuterRule, OuterSettings};
use lazyavg_common::spec::ModelSpec;
use lazyavg_coordinator::checkpoint::{self, Checkpoint};
use lazyavg_coordinator::model_state::ModelState;
use lazyavg_coordinator::round::{Aggregate, Round, RoundError, WorkerId};
use lazyavg_proto::MAX_CHUNK_BYTES;
use lazyavg_proto::chunks::{Chunk, VALUES_PER_CHUNK, weight_chunks};
use lazyavg_proto::message::Report;
use proptest::prelude::*;
use proptest::sample::Index;

// ---- checkpoints -------------------------------------------------------------

const CURRENT: &str = "checkpoint.safetensors";
const PREVIOUS: &str = "checkpoint.prev.safetensors";

fn arch() -> ModelSpec {
    ModelSpec::from_widths(&[4, 3, 2]).unwrap()
}

fn checkpoint_strategy() -> impl Strategy<Value = Checkpoint> {
    let len = arch().layout().unwrap().len;
    (
        prop_oneof![0u64..100, 0..u64::MAX],
        prop::collection::vec(any::<u32>(), 0..40),
        prop::collection::vec(-1e3f32..1e3, len),
        any::<bool>(),
    )
        .prop_map(|(epoch, remaining, params, with_velocity)| {
            // A mid-epoch checkpoint is of an epoch that has started (the first is 1).
            let epoch = if remaining.is_empty() { epoch } else { epoch.max(1) };
            let outer_velocity = if with_velocity { params.iter().map(|v| v / 3.0).collect() } else { Vec::new() };
            let round = if remaining.is_empty() { 0 } else { epoch % 7 };
            Checkpoint { epoch, remaining, round, params, outer_velocity }
        })
}

/// Loads `dir`, and checks that a loaded checkpoint is usable.
fn load(dir: &Path) -> Option<Checkpoint> {
    let cp = checkpoint::load(dir, &arch()).ok()?;
    assert_eq!(cp.params.len(), arch().layout().unwrap().len);
    assert!(cp.params.iter().all(|v| v.is_finite()));
    let (next, remaining) = cp.next_epoch();
    // The driver starts from `next - 1`.
    assert!(next >= 1, "next epoch {next} of {cp:?}");
    assert_eq!(remaining.is_some(), !cp.remaining.is_empty());
    Some(cp)
}

/// How a valid file is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Remove(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(n)),
        Mutation::Flip(i, x) => bytes[i.index(n)] ^= x,
        Mutation::Insert(i, b) => {
            let i = i.index(n + 1);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Remove(a, b) => {
            let (a, b) = (a.index(n), b.index(n));
            bytes.drain(a.min(b)..a.max(b));
        }
    }
}

/// Metadata values: numbers, lists, near misses and extremes.
fn meta_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..10).prop_map(|e| e.to_string()),
        any::<u64>().prop_map(|e| e.to_string()),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just(String::new()),
        prop::collection::vec(any::<u32>(), 0..5).prop_map(|v| v
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")),
        "[0-9, -]{0,16}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn checkpoint_round_trips(first in checkpoint_strategy(), second in checkpoint_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save(dir.path(), &arch(), &first).unwrap();
        prop_assert_eq!(load(dir.path()), Some(first.clone()));
        checkpoint::save(dir.path(), &arch(), &second).unwrap();
        prop_assert_eq!(load(dir.path()), Some(second));
        // The newest is damaged: the one before is used.
        std::fs::write(dir.path().join(CURRENT), b"").unwrap();
        prop_assert_eq!(load(dir.path()), Some(first.clone()));
    }

    #[test]
    fn checkpoint_of_arbitrary_bytes_is_refused(data in prop::collection::vec(any::<u8>(), 0..512), header_len in 0u64..600) {
        let dir = tempfile::tempdir().unwrap();
        let mut plausible = header_len.to_le_bytes().to_vec();
        plausible.extend_from_slice(&data);
        for bytes in [&data, &plausible] {
            std::fs::write(dir.path().join(CURRENT), bytes).unwrap();
            prop_assert!(load(dir.path()).is_none());
            std::fs::write(dir.path().join(PREVIOUS), bytes).unwrap();
            prop_assert!(load(dir.path()).is_none());
        }
    }

    #[test]
    fn damaged_checkpoint_never_panics_and_falls_back(
        cp in checkpoint_strategy(),
        prev in checkpoint_strategy(),
        mutations in prop::collection::vec(mutation(), 1..4),
        keep_previous in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        if keep_previous {
            checkpoint::save(dir.path(), &arch(), &prev).unwrap();
        }
        let current = checkpoint::save(dir.path(), &arch(), &cp).unwrap();
        let mut bytes = std::fs::read(&current).unwrap();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        std::fs::write(&current, &bytes).unwrap();
        let loaded = load(dir.path());
        if keep_previous {
            // An intact previous checkpoint always makes the run resumable.
            prop_assert!(loaded.is_some());
        }
    }

    #[test]
    fn checkpoint_with_any_metadata_never_panics(
        epoch in prop::option::of(meta_value()),
        remaining in prop::option::of(meta_value()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = HashMap::new();
        if let Some(e) = epoch {
            meta.insert("lazyavg.epoch".to_owned(), e);
        }
        if let Some(r) = remaining {
            meta.insert("lazyavg.remaining".to_owned(), r);
        }
        let params = vec![0.5f32; arch().layout().unwrap().len];
        let extras = model_file::Extras { metadata: meta, ..Default::default() };
        let bytes = model_file::to_bytes_with(&arch(), &params, &extras).unwrap();
        std::fs::write(dir.path().join(CURRENT), bytes).unwrap();
        load(dir.path());
    }
}

// ---- averaging rounds ---------------------------------------------------------

/// A model of `len` zeros that rounds step by plain averaging: after a
/// round, it is the round's average.
fn averaging(len: usize) -> ModelState {
    let settings = OuterSettings::new(OuterRule::Avg, 1.0, 0.0).expect("valid settings");
    ModelState::new(vec![0.0; len], OuterOptimizer::new(settings))
}

/// Finite values in [-100, 100] derived from `seed` (fast for large buffers).
fn params(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 200.0
        })
        .collect()
}

/// Model sizes of 1 to 3 chunks, clustered around the chunk boundaries.
fn param_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..64,
        (VALUES_PER_CHUNK - 2)..=(VALUES_PER_CHUNK + 2),
        (2 * VALUES_PER_CHUNK - 1)..=(2 * VALUES_PER_CHUNK + 1),
        (2 * VALUES_PER_CHUNK + 2)..=(3 * VALUES_PER_CHUNK),
    ]
}

/// A chunk with fields near those of (`epoch`, `round`, `total`), or anything;
/// data of any bit patterns (NaN and infinities included).
fn chunk(epoch: u64, round: u64, total: u64) -> impl Strategy<Value = Chunk> {
    let near = |v: u64| prop_oneof![3 => Just(v), 1 => Just(v.wrapping_add(1)), 1 => Just(v.wrapping_sub(1)), 1 => any::<u64>()];
    let data = prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop_oneof![Just(MAX_CHUNK_BYTES), Just(MAX_CHUNK_BYTES + 4), Just(MAX_CHUNK_BYTES - 3)]
            .prop_map(|n| vec![0x40; n]),
    ];
    (near(epoch), near(round), prop_oneof![0..=total + 1, any::<u64>()], near(total), data)
        .prop_map(|(epoch, round, offset, total, data)| Chunk { epoch, round, offset, total, data: data.into() })
}

/// What happens to an open round.
#[derive(Debug, Clone)]
enum Op {
    /// An arbitrary chunk from a worker (participant or not).
    Chunk(WorkerId, Chunk),
    /// The `Index`-th real chunk of a worker's weights (its own or another's).
    Real(WorkerId, WorkerId, Index),
    Report(WorkerId, u64, u64, f64, f64),
    Exclude(WorkerId),
}

const EPOCH: u64 = 3;
const ROUND: u64 = 5;

fn op(len: usize) -> impl Strategy<Value = Op> {
    let worker = 0u64..5; // 1..=3 take part; 0 and 4 are strangers.
    prop_oneof![
        3 => (worker.clone(), chunk(EPOCH, ROUND, len as u64)).prop_map(|(w, c)| Op::Chunk(w, c)),
        4 => (worker.clone(), 1u64..4, any::<Index>()).prop_map(|(w, of, i)| Op::Real(w, of, i)),
        1 => (worker.clone(), EPOCH - 1..=EPOCH + 1, ROUND - 1..=ROUND + 1, any::<f64>(), any::<f64>())
            .prop_map(|(w, e, r, l, s)| Op::Report(w, e, r, l, s)),
        1 => worker.prop_map(Op::Exclude),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_takes_any_messages_without_panicking(
        (len, ops) in prop_oneof![4 => 1usize..12, 1 => (VALUES_PER_CHUNK - 1)..=(VALUES_PER_CHUNK + 1)]
            .prop_flat_map(|len| (Just(len), prop::collection::vec(op(len), 0..24))),
        weights in prop::collection::vec(0u64..1000, 3),
        nan_at in prop::option::of(any::<Index>()),
        rule in prop_oneof![Just(Aggregate::Mean), Just(Aggregate::Median), Just(Aggregate::TrimmedMean), Just(Aggregate::CenteredClip), Just(Aggregate::NormClip)],
    ) {
        let participants: Vec<(WorkerId, u64)> = (1..=3).zip(weights).collect();
        let mut model = averaging(len);
        let mut round = Round::with(EPOCH, ROUND, &participants, &model.params, rule.aggregator(false).into());
        // Worker 2's real weights hold a non-finite value when `nan_at` is set.
        let real: Vec<Vec<Chunk>> = (1..=3u64)
            .map(|w| {
                let mut p = params(len, w);
                if let (2, Some(i)) = (w, &nan_at) {
                    p[i.index(len)] = f32::NAN;
                }
                weight_chunks(EPOCH, ROUND, &p).collect()
            })
            .collect();
        for op in &ops {
            match op {
                Op::Chunk(w, c) => {
                    let _ = round.accept(*w, c, &mut model);
                }
                Op::Real(w, of, i) => {
                    let chunks = &real[*of as usize - 1];
                    let _ = round.accept(*w, &chunks[i.index(chunks.len())], &mut model);
                }
                Op::Report(w, epoch, r, loss_sum, train_seconds) => {
                    let report = Report {
                        epoch: *epoch,
                        round: *r,
                        loss_sum: *loss_sum,
                        train_seconds: *train_seconds,
                        ..Default::default()
                    };
                    let _ = round.report(*w, &report);
                }
                Op::Exclude(w) => round.exclude(*w, &mut model),
            }
            let missing = round.missing();
            prop_assert!(missing.iter().all(|w| (1..=3).contains(w)));
            prop_assert_eq!(round.is_complete(), missing.is_empty());
        }
        // As the driver does at the deadline: the workers still missing are dropped.
        for w in round.missing() {
            round.exclude(w, &mut model);
        }
        prop_assert!(round.is_complete());
        let stepped = round.stepped();
        let result = round.finish(&mut model).0;
        let out = &model.params;
        match result {
            Ok(summary) => {
                // Only a round that stepped the model completes with nobody whole.
                prop_assert!(summary.samples > 0 || stepped);
                prop_assert!(summary.contributors.iter().all(|(w, _)| (1..=3).contains(w)));
                prop_assert!(out.iter().all(|v| v.is_finite()), "a finished round's average is finite");
            }
            Err(e) => {
                prop_assert!(!stepped, "a round that stepped the model failed: {}", e);
                prop_assert!(out.iter().all(|&v| v == 0.0), "a failed round changed the model: {}", e);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn valid_chunks_in_any_interleaving_give_the_weighted_mean(
        len in param_len(),
        workers in prop::collection::vec((any::<u64>(), 1u64..1000), 1..4),
        picks in prop::collection::vec(any::<Index>(), 12),
        rule in prop_oneof![
            2 => Just(Aggregate::Mean),
            1 => Just(Aggregate::Median),
            1 => Just(Aggregate::TrimmedMean),
            1 => Just(Aggregate::CenteredClip),
        ],
    ) {
        let participants: Vec<(WorkerId, u64)> =
            workers.iter().enumerate().map(|(i, &(_, weight))| (10 + i as WorkerId, weight)).collect();
        let vectors: Vec<Vec<f32>> = workers.iter().map(|&(seed, _)| params(len, seed)).collect();
        let mut queues: Vec<(WorkerId, std::collections::VecDeque<Chunk>)> = participants
            .iter()
            .zip(&vectors)
            .map(|(&(id, _), v)| (id, weight_chunks(EPOCH, ROUND, v).collect()))
            .collect();
        let mut model = averaging(len);
        let mut round = Round::with(EPOCH, ROUND, &participants, &model.params, rule.aggregator(false).into());
        // Each worker's chunks in order; the workers interleaved at random.
        let mut step = 0;
        loop {
            let open: Vec<usize> = (0..queues.len()).filter(|&q| !queues[q].1.is_empty()).collect();
            if open.is_empty() {
                break;
            }
            let q = open[picks[step % picks.len()].index(open.len())];
            step += 1;
            let chunk = queues[q].1.pop_front().unwrap();
            prop_assert!(!round.is_complete());
            round.accept(queues[q].0, &chunk, &mut model).unwrap();
            // The same chunk again is never summed twice.
            prop_assert!(round.accept(queues[q].0, &chunk, &mut model).is_err());
        }
        prop_assert!(round.is_complete());
        let summary = round.finish(&mut model).0.unwrap();
        let out = &model.params;
        let samples: u64 = participants.iter().map(|p| p.1).sum();
        prop_assert_eq!(summary.samples, samples);
        prop_assert_eq!(&summary.contributors, &participants);
        for (i, &o) in out.iter().enumerate() {
            if rule != Aggregate::Mean {
                // Robust rules ignore sample counts; each value stays within the contributions'.
                let (lo, hi) = vectors.iter().fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(v[i]), hi.max(v[i])));
                prop_assert!(lo <= o && o <= hi, "{:?} value {}: {} outside [{}, {}]", rule, i, o, lo, hi);
                continue;
            }
            let mean = participants.iter().zip(&vectors).map(|(p, v)| p.1 as f64 * f64::from(v[i])).sum::<f64>()
                / samples as f64;
            prop_assert!((f64::from(o) - mean).abs() <= 1e-6 * mean.abs() + 1e-9, "value {}: {} vs {}", i, o, mean);
        }
    }

    #[test]
    fn a_non_finite_chunk_excludes_its_worker_and_taints_only_if_summed(
        len in param_len(),
        at in any::<Index>(),
        bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
    ) {
        let participants = [(1, 3), (2, 5)];
        let good = params(len, 1);
        let mut poisoned = params(len, 2);
        let at = at.index(len);
        poisoned[at] = bad;
        let mut model = averaging(len);
        let mut round = Round::with(EPOCH, ROUND, &participants, &model.params, Aggregate::Mean.aggregator(false).into());
        let mut refused = None;
        for chunk in weight_chunks(EPOCH, ROUND, &poisoned) {
            if let Err(e) = round.accept(2, &chunk, &mut model) {
                refused = Some(e);
                break;
            }
        }
        prop_assert_eq!(refused, Some(RoundError::NonFinite { worker: 2, index: at }));
        for chunk in weight_chunks(EPOCH, ROUND, &good) {
            round.accept(1, &chunk, &mut model).unwrap();
        }
        prop_assert!(round.is_complete());
        let result = round.finish(&mut model).0;
        let out = &model.params;
        match result {
            Ok(summary) => {
                prop_assert!(at < VALUES_PER_CHUNK, "only a first-chunk failure leaves the round clean");
                prop_assert_eq!(summary.contributors, vec![(1, 3)]);
                prop_assert_eq!(out.as_slice(), good.as_slice());
            }
            Err(e) => {
                prop_assert!(at >= VALUES_PER_CHUNK, "{}", e);
                prop_assert!(matches!(e, RoundError::Tainted { .. }), "{}", e);
            }
        }
    }
}

// ---- regressions found by the properties above --------------------------------

#[test]
fn checkpoint_epochs_that_would_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let params = vec![0.5f32; arch().layout().unwrap().len];
    for (epoch, remaining) in [(u64::MAX, vec![]), (0, vec![4, 2])] {
        checkpoint::save(
            dir.path(),
            &arch(),
            &Checkpoint { epoch, remaining, round: 0, params: params.clone(), outer_velocity: Vec::new() },
        )
        .unwrap();
        std::fs::remove_file(dir.path().join(PREVIOUS)).ok();
        let err = checkpoint::load(dir.path(), &arch()).unwrap_err().to_string();
        assert!(err.contains("lazyavg.epoch = ") && err.contains("out of range"), "{err}");
    }
    // The extremes that are fine still load.
    for (epoch, remaining) in [(u64::MAX - 1, vec![]), (u64::MAX, vec![1]), (0, vec![])] {
        let cp = Checkpoint { epoch, remaining, round: 0, params: params.clone(), outer_velocity: Vec::new() };
        checkpoint::save(dir.path(), &arch(), &cp).unwrap();
        assert_eq!(checkpoint::load(dir.path(), &arch()).unwrap(), cp);
    }
}
