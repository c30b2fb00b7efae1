//! Each membership case asserts the exact commands the workers are sent,
//! and that the epoch still trains every image exactly once.

use super::*;

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
    loop {
        let (plan, out) = train_round(state, live);
        assert_eq!(out, Outgoing::new());
        if plan.is_empty() {
            assert!(!state.has_orphans());
            return;
        }
    }
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
fn a_checkpoint_mid_epoch_owes_the_orphans_and_each_shards_rest() {
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
fn stale_and_duplicate_contributions_count_nothing() {
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
