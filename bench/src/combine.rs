//! `lazyavg-bench combine`: the coordinator's own work in a round, without
//! messages, processes or other programs on the cores: contributions of a
//! model's size taken chunk by chunk into a `Round` and combined, in this
//! process. `bench/rounds.sh` times whole rounds, which on a shared 2-core
//! machine move by a tenth from one run to the next; this part of them moves
//! by a few per cent, so a change to it can be measured on its own.

use std::time::Instant;

use anyhow::{Context, Result};
use lazyavg_common::outer::{OuterOptimizer, OuterRule, OuterSettings};
use lazyavg_coordinator::model_state::ModelState;
use lazyavg_coordinator::round::{Combiner, Round, WorkerId};
use lazyavg_proto::chunks::{Chunk, weight_chunks};

use crate::cli::CombineArgs;

/// Bytes written between two rounds: more than a core's L2, so a round
/// starts with its buffers further out, as between real rounds, where the
/// workers and the messages run on the cores meanwhile.
const EVICT_BYTES: usize = 2 << 20;

pub fn run(args: &CombineArgs) -> Result<()> {
    let start: Vec<f32> = (0..args.parameters).map(|i| (i as f32 * 1e-3).sin()).collect();
    // Each worker's weights: the start moved a little, differently for each.
    let contributions: Vec<Vec<Chunk>> = (1..=args.workers)
        .map(|w| {
            let weights: Vec<f32> =
                start.iter().enumerate().map(|(i, &s)| s + ((i as u64 * w) % 7) as f32 * 1e-3).collect();
            weight_chunks(0, 1, &weights).collect()
        })
        .collect();
    let participants: Vec<(WorkerId, u64)> = (1..=args.workers).map(|w| (w, 1)).collect();
    let averaging = OuterSettings::new(OuterRule::Avg, 1.0, 0.0).context("the plain average's settings")?;
    let mut model = ModelState::new(start, OuterOptimizer::new(averaging));
    let mut combiner = Combiner::from(args.aggregate.aggregator(false));
    let mut evict = vec![0u8; EVICT_BYTES];
    let mut micros = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        evict.iter_mut().step_by(64).for_each(|b| *b = b.wrapping_add(1));
        let started = Instant::now();
        let mut round = Round::with(0, 1, &participants, &model.params, combiner);
        // Chunk by chunk, each worker's in turn, as workers paced by the
        // gate send them.
        for at in 0..contributions[0].len() {
            for (&(worker, _), chunks) in participants.iter().zip(&contributions) {
                round.accept(worker, &chunks[at], &mut model).context("a contribution was refused")?;
            }
        }
        let (result, back) = round.finish(&mut model);
        result.context("the round did not combine")?;
        combiner = back;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    let at = |share: usize| micros[(micros.len() * share / 100).min(micros.len() - 1)];
    println!("| workers | parameters | rule | median µs | p10 µs | p90 µs |");
    println!("|---:|---:|---|---:|---:|---:|");
    println!(
        "| {} | {} | {:?} | {:.1} | {:.1} | {:.1} |",
        args.workers,
        args.parameters,
        args.aggregate,
        at(50),
        at(10),
        at(90)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use lazyavg_coordinator::aggregate::Aggregate;

    use super::*;

    #[test]
    fn rounds_of_several_chunks_combine_by_every_kind_of_rule() {
        for aggregate in [Aggregate::Mean, Aggregate::Median, Aggregate::NormClip] {
            let args = CombineArgs { workers: 3, parameters: 140_000, rounds: 2, aggregate };
            run(&args).unwrap_or_else(|err| panic!("{aggregate:?}: {err:#}"));
        }
    }
}
