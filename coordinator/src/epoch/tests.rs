//! Each membership case asserts the exact commands the workers are sent,
//! and that the epoch still trains every image exactly once.

use super::*;
use lazyavg_proto::message::Pull;

const IMAGES: usize = 12;
const SEED: u64 = 7;
const PER_ROUND: usize = 2;

fn shard(epoch: u64, images: &[u32], extend: bool) -> Cmd {
    Cmd::Shard { epoch, images: images.to_vec(), extend }
}

fn name(worker: WorkerId) -> String {
    format!("w{worker}")
}

/// Deals any orphans to `live`, plans one round and records every planned range.
fn train_round(state: &mut EpochState, live: &[WorkerId]) -> (Vec<Planned>, Outgoing) {
    let (_, out) = state.adopt_orphans(live);
    let plan = state.plan_round(PER_ROUND);
    for p in &plan {
        assert!(state.record(p.worker, &name(p.worker), p.from, p.until), "{p:?}");
    }
    (plan, out)
}

/// Trains rounds over `live` until the epoch is over; no commands may be
/// needed on the way.
fn train_to_the_end(state: &mut EpochState, live: &[WorkerId]) {
    // Every round averages at least one image in.
    for _ in 0..=IMAGES {
        let (plan, out) = train_round(state, live);
        assert_eq!(out, Outgoing::new());
        if plan.is_empty() {
            assert!(!state.has_orphans());
            return;
        }
    }
    panic!("the epoch never ended");
}

fn pull(epoch: u64, round: u64, from: usize, until: usize, after_round: u64) -> Cmd {
    Cmd::Pull(Pull { epoch, round, from, until, after_round })
}

fn assert_every_image_once(state: &EpochState, images: usize) {
    assert_eq!(state.ledger().distinct(), images as u64);
    assert_eq!(state.ledger().repeated(), 0);
    assert_eq!(state.ledger().by_worker().values().sum::<u64>(), images as u64);
    assert!(state.remaining().is_empty());
}

fn rest(state: &EpochState, worker: WorkerId) -> Vec<u32> {
    let s = state.shard(worker).expect("a shard");
    s.indices[s.done..].to_vec()
}

#[test]
fn an_epoch_is_dealt_in_even_shards_of_its_permutation() {
    let (state, out) = EpochState::dealt(3, SEED, IMAGES, &[1, 2, 3]);
    let order = epoch_permutation(SEED, 3, IMAGES);
    let expected: Outgoing = (0..3).map(|i| (i as u64 + 1, shard(3, &order[4 * i..4 * i + 4], false))).collect();
    assert_eq!(out, expected);
    assert_eq!(state.remaining(), order);
}

#[test]
fn a_worker_leaving_mid_round_hands_its_unfinished_range_to_the_others() {
    let (mut state, _) = EpochState::dealt(1, SEED, IMAGES, &[1, 2, 3]);
    train_round(&mut state, &[1, 2, 3]);
    // Round 2 is planned; worker 2 leaves before its weights are in.
    let plan = state.plan_round(PER_ROUND);
    assert_eq!(plan.len(), 3);
    let unfinished = rest(&state, 2);
    assert_eq!(unfinished.len(), 2, "its round-2 range is still owed");
    let (handover, out) = state.hand_over(2);
    assert_eq!(handover, Handover::Heirs { images: 2, heirs: 2 });
    assert_eq!(out, vec![(1, shard(1, &unfinished[..1], true)), (3, shard(1, &unfinished[1..], true))]);
    // The others' round-2 contributions still count; its does not.
    for p in plan.iter().filter(|p| p.worker != 2) {
        assert!(state.record(p.worker, &name(p.worker), p.from, p.until));
    }
    assert!(!state.record(2, &name(2), 2, 4), "a departed worker's weights are not averaged in");
    train_to_the_end(&mut state, &[1, 3]);
    assert_every_image_once(&state, IMAGES);
    assert_eq!(state.ledger().by_worker()["w2"], 2, "only its first round counts");
}

#[test]
fn two_workers_leaving_at_once_leave_everything_to_the_last() {
    let (mut state, _) = EpochState::dealt(2, SEED, IMAGES, &[1, 2, 3]);
    train_round(&mut state, &[1, 2, 3]);
    let (rest2, rest3) = (rest(&state, 2), rest(&state, 3));
    let (first, out) = state.hand_over(2);
    assert_eq!(first, Handover::Heirs { images: 2, heirs: 2 });
    assert_eq!(out, vec![(1, shard(2, &rest2[..1], true)), (3, shard(2, &rest2[1..], true))]);
    // Worker 3 leaves with its own rest and what it inherited a moment ago.
    let (second, out) = state.hand_over(3);
    assert_eq!(second, Handover::Heirs { images: 3, heirs: 1 });
    let inherited: Vec<u32> = rest3.iter().chain(&rest2[1..]).copied().collect();
    assert_eq!(out, vec![(1, shard(2, &inherited, true))]);
    train_to_the_end(&mut state, &[1]);
    assert_every_image_once(&state, IMAGES);
}

#[test]
fn a_joiner_mid_epoch_waits_until_images_are_orphaned_then_adopts_them() {
    let (mut state, _) = EpochState::dealt(4, SEED, IMAGES, &[1, 2]);
    train_round(&mut state, &[1, 2]);
    // Worker 3 joins: nothing is sent to it, and it is in no round.
    let (plan, out) = train_round(&mut state, &[1, 2, 3]);
    assert_eq!(out, Outgoing::new());
    assert!(plan.iter().all(|p| p.worker != 3), "{plan:?}");
    // Both shard holders leave: the second finds no heir, and its images wait.
    state.hand_over(1);
    let owed = state.remaining();
    let (handover, out) = state.hand_over(2);
    assert_eq!(handover, Handover::Orphaned { images: owed.len() });
    assert_eq!(out, Outgoing::new());
    assert!(state.has_orphans());
    let (adopted, out) = state.adopt_orphans(&[3]);
    assert_eq!((adopted, out), (owed.len(), vec![(3, shard(4, &owed, false))]), "the joiner's first shard");
    let plan = state.plan_round(PER_ROUND);
    assert_eq!(plan, vec![Planned { worker: 3, from: 0, until: PER_ROUND }]);
    assert!(state.record(3, &name(3), 0, PER_ROUND));
    train_to_the_end(&mut state, &[3]);
    assert_every_image_once(&state, IMAGES);
}

#[test]
fn orphans_wait_while_no_worker_is_live() {
    let (mut state, _) = EpochState::dealt(1, SEED, IMAGES, &[1]);
    state.hand_over(1);
    assert_eq!(state.adopt_orphans(&[]), (0, Outgoing::new()));
    assert!(state.plan_round(PER_ROUND).is_empty());
    assert!(state.has_orphans(), "not an epoch's end: the images are still owed");
    assert_eq!(state.remaining().len(), IMAGES);
}

#[test]
fn a_resume_deals_what_the_checkpoint_owed_and_nothing_else() {
    let owed: Vec<u32> = vec![9, 4, 0, 11, 6];
    let mut state = EpochState::resumed(5, IMAGES, owed.clone());
    assert_eq!(state.remaining(), owed, "a checkpoint now would owe the same");
    let (_, out) = state.adopt_orphans(&[1, 2]);
    assert_eq!(out, vec![(1, shard(5, &owed[..3], false)), (2, shard(5, &owed[3..], false))]);
    let plan = state.plan_round(PER_ROUND);
    assert_eq!(plan.len(), 2);
    for p in &plan {
        assert!(state.record(p.worker, &name(p.worker), p.from, p.until));
    }
    train_to_the_end(&mut state, &[1, 2]);
    assert_eq!(state.ledger().distinct(), owed.len() as u64);
    assert_eq!(state.ledger().repeated(), 0);
    assert!(state.remaining().is_empty());
}

#[test]
fn a_checkpoint_mid_epoch_owes_each_shards_rest() {
    let (mut state, _) = EpochState::dealt(1, SEED, IMAGES, &[1, 2]);
    train_round(&mut state, &[1, 2]);
    let expected: Vec<u32> = rest(&state, 1).into_iter().chain(rest(&state, 2)).collect();
    let mut remaining = state.remaining();
    assert_eq!(remaining.len(), IMAGES - 2 * PER_ROUND);
    remaining.sort_unstable();
    let mut sorted = expected;
    sorted.sort_unstable();
    assert_eq!(remaining, sorted);
}

#[test]
fn duplicate_and_retired_workers_contributions_count_nothing() {
    let (mut state, _) = EpochState::dealt(1, SEED, IMAGES, &[1, 2]);
    let p = state.plan_round(PER_ROUND)[0];
    assert!(state.record(p.worker, "w", p.from, p.until));
    assert!(!state.record(p.worker, "w", p.from, p.until), "the same range twice");
    assert_eq!(state.ledger().distinct(), PER_ROUND as u64);
    // Worker 2 is retired (a straggler) before its range is averaged.
    state.hand_over(2);
    assert!(!state.record(2, "w2", 0, PER_ROUND), "a stale range");
    assert!(!state.record(1, "w", PER_ROUND + 1, PER_ROUND + 2), "a range that skips images");
    assert_eq!(state.ledger().distinct(), PER_ROUND as u64);
    assert_eq!(state.ledger().repeated(), 0);
}

#[test]
fn a_worker_with_nothing_left_or_no_shard_hands_nothing_over() {
    let (mut state, _) = EpochState::dealt(1, SEED, 4, &[1, 2]);
    assert!(state.record(1, "w1", 0, 2), "worker 1's whole shard");
    assert_eq!(state.hand_over(1), (Handover::Nothing, Outgoing::new()));
    assert_eq!(state.hand_over(9), (Handover::Nothing, Outgoing::new()), "no such shard");
    assert_eq!(state.untrained(2), 2);
}

#[test]
fn a_round_pulls_each_planned_range_and_its_redo_only_the_rest() {
    let (mut state, _) = EpochState::dealt(1, SEED, IMAGES, &[1, 2]);
    let plan = state.plan_round(PER_ROUND);
    assert_eq!(state.pulls(1, &plan), vec![(1, pull(1, 1, 0, 2, 0)), (2, pull(1, 1, 0, 2, 0))]);
    // Round 1 is abandoned: nothing is recorded and no average goes out.
    // Its redo asks for an empty range: the workers hold what they trained.
    let redo = state.plan_round(PER_ROUND);
    assert_eq!(redo, plan);
    assert_eq!(state.pulls(2, &redo), vec![(1, pull(1, 2, 2, 2, 0)), (2, pull(1, 2, 2, 2, 0))]);
    // Once an average is sent, what they trained since it is gone.
    state.weights_sent(1, (1, 2));
    assert_eq!(state.pulls(3, &redo), vec![(1, pull(1, 3, 0, 2, 0)), (2, pull(1, 3, 2, 2, 0))]);
}

#[test]
fn pulls_sent_ahead_go_once_and_an_abandoned_round_releases_them() {
    let (mut state, _) = EpochState::dealt(1, SEED, IMAGES, &[1]);
    let plan = state.plan_round(PER_ROUND);
    assert_eq!(state.pulls(1, &plan), vec![(1, pull(1, 1, 0, 2, 0))]);
    // Its weights for round 1 are in: two pulls go ahead, each after the round before.
    let ahead = state.pulls_ahead(1, 1, 2, PER_ROUND, 2);
    assert_eq!(ahead, vec![(1, pull(1, 2, 2, 4, 1)), (1, pull(1, 3, 4, 6, 2))]);
    assert!(state.has_pulls_ahead(1));
    assert!(state.record(1, "w1", 0, 2));
    state.weights_sent(1, (1, 1));
    let plan = state.plan_round(PER_ROUND);
    assert_eq!(plan, vec![Planned { worker: 1, from: 2, until: 4 }]);
    assert_eq!(state.pulls(2, &plan), Outgoing::new(), "round 2's pull went ahead, and the average it waits for");
    // Round 2 is abandoned: its redo (round 3) re-sends the pull that waited
    // for it, without the wait; the weights then count for both ranges.
    let plan = state.plan_round(PER_ROUND);
    assert_eq!(plan, vec![Planned { worker: 1, from: 2, until: 6 }]);
    assert_eq!(state.pulls(3, &plan), vec![(1, pull(1, 3, 4, 6, 0))]);
    assert!(!state.has_pulls_ahead(1));
}

#[test]
fn an_excluded_worker_takes_no_orphans_and_they_wait_for_a_newcomer() {
    let (mut state, _) = EpochState::dealt(1, SEED, IMAGES, &[1, 2]);
    train_round(&mut state, &[1, 2]);
    // Worker 2's update was an outlier: its rest goes to worker 1.
    let rest2 = rest(&state, 2);
    assert_eq!(
        state.exclude(2),
        (Handover::Heirs { images: rest2.len(), heirs: 1 }, vec![(1, shard(1, &rest2, true))])
    );
    // The honest worker leaves: its images are orphaned, and the excluded
    // worker, still connected, may not take them.
    let owed = rest(&state, 1);
    assert_eq!(state.hand_over(1).0, Handover::Orphaned { images: owed.len() });
    assert_eq!(state.adopt_orphans(&[2]), (0, Outgoing::new()));
    assert_eq!(state.images_without_heir(&[2]), owed.len());
    // A newcomer takes them all.
    assert_eq!(state.images_without_heir(&[2, 3]), 0);
    assert_eq!(state.adopt_orphans(&[2, 3]), (owed.len(), vec![(3, shard(1, &owed, false))]));
    train_to_the_end(&mut state, &[2, 3]);
    assert_every_image_once(&state, IMAGES);
    assert_eq!(state.ledger().by_worker()["w2"], PER_ROUND as u64, "only its first round");
}

#[test]
fn a_straggler_retired_for_the_epoch_may_still_take_orphans() {
    let (mut state, _) = EpochState::dealt(1, SEED, IMAGES, &[1, 2]);
    state.hand_over(2);
    state.hand_over(1);
    assert_eq!(state.images_without_heir(&[2]), 0, "a slow worker is not an untrusted one");
    assert_eq!(state.adopt_orphans(&[2]).0, IMAGES);
}
