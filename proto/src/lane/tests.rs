use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use futures::FutureExt;
use memmap2::MmapOptions;
use rustix::fs::MemfdFlags;

use super::board::BOARD_SLOTS;
use super::memfd::{MAGIC, NONCE_BYTES};
use super::*;

fn chunk(offset: u64, fill: u8, len: usize) -> pb::WorkerMessage {
    let data = Bytes::from(vec![fill; len]);
    let chunk = pb::WeightsChunk { epoch: 1, round: 2, offset, total: 1 << 20, data, ..Default::default() };
    pb::WorkerMessage { kind: Some(pb::worker_message::Kind::Weights(chunk)), ..Default::default() }
}

/// A coordinator's and a worker's end of one lane, the worker's accepted.
fn pair() -> (Arc<Link>, Arc<Link>) {
    let (file, offer) = LaneFile::create("test", 0).expect("a lane's memory");
    let coordinator = Arc::new(Link::offered(file, None));
    let worker = Arc::new(Link::new(Side::Worker));
    let answer = worker.accept(&offer);
    assert!(answer.accepted, "{}", answer.reason);
    coordinator.answered(&answer).unwrap();
    (coordinator, worker)
}

fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item>
where
    S::Item: Carrier + Unpin,
{
    stream.next().now_or_never().flatten()
}

#[test]
fn chunks_cross_the_lane_intact_and_wait_for_free_slots() {
    let (coordinator, worker) = pair();
    let messages: Vec<_> = (0..SLOTS as u8 + 2).map(|i| chunk(i as u64, i + 1, 1000 + i as usize)).collect();
    let mut outbound = Outbound::new(futures::stream::iter(messages), Arc::clone(&worker));
    let mut sent = Vec::new();
    while let Some(message) = next(&mut outbound) {
        sent.push(message);
    }
    assert_eq!(sent.len(), SLOTS as usize, "the ring holds {SLOTS} chunks until the coordinator takes some");
    for message in &mut sent {
        let mut message = message.clone();
        let chunk = message.weights().unwrap();
        assert!(chunk.data.is_empty() && chunk.lane_bytes > 0);
        coordinator.take(chunk).unwrap();
        assert_eq!(chunk.data.len(), 1000 + chunk.offset as usize);
        assert!(chunk.data.iter().all(|&b| b == chunk.offset as u8 + 1));
    }
    worker.freed(SLOTS as u64).unwrap();
    let rest: Vec<_> = std::iter::from_fn(|| next(&mut outbound)).collect();
    assert_eq!(rest.len(), 2);
    // The coordinator's credits go out ahead of its own chunks.
    let mut replies =
        Outbound::new(futures::stream::pending::<Result<pb::CoordinatorMessage, tonic::Status>>(), coordinator);
    let free = next(&mut replies).unwrap().unwrap();
    assert_eq!(
        free.kind,
        Some(pb::coordinator_message::Kind::LaneFree(pb::LaneFree { taken: SLOTS as u64, board_taken: 0 }))
    );
}

#[test]
fn without_an_open_lane_chunks_go_inline() {
    let link = Arc::new(Link::new(Side::Worker));
    let mut outbound = Outbound::new(futures::stream::iter([chunk(0, 7, 64)]), link);
    let mut message = next(&mut outbound).unwrap();
    assert_eq!(message.weights().unwrap().data.len(), 64);
}

#[test]
fn a_worker_declines_what_is_not_the_coordinators_lane() {
    let (file, offer) = LaneFile::create("decline", 0).unwrap();
    let worker = Link::new(Side::Worker);
    let wrong_nonce = pb::LaneOffer { nonce: Bytes::from_static(&[0; NONCE_BYTES]), ..offer.clone() };
    assert!(worker.accept(&wrong_nonce).reason.contains("is not the lane the coordinator made"));
    let elsewhere = pb::LaneOffer { path: "/etc/passwd".to_owned(), ..offer.clone() };
    assert!(worker.accept(&elsewhere).reason.contains("is not a /proc/<pid>/fd/<fd> path"));
    let sneaky = pb::LaneOffer { path: "/proc/1/fd/../../self/mem".to_owned(), ..offer.clone() };
    assert!(!worker.accept(&sneaky).accepted);
    // Another kind of file there: not opened at all.
    let plain = tempfile::tempfile().unwrap();
    let at = |file: &File| format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
    let not_a_lane = pb::LaneOffer { path: at(&plain), ..offer.clone() };
    assert!(worker.accept(&not_a_lane).reason.contains("is not a lane but"));
    // A lane's memfd of the right size with the right header, but unsealed:
    // the other end could truncate it under a mapping.
    let unsealed = File::from(rustix::fs::memfd_create("lazyavg-lane-unsealed", MemfdFlags::CLOEXEC).unwrap());
    unsealed.set_len(lane_len(SLOT_BYTES, SLOTS, SLOTS, 0) as u64).unwrap();
    let mut header = vec![0u8; MAGIC.len() + NONCE_BYTES + PROOF_BYTES];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    header[MAGIC.len()..MAGIC.len() + NONCE_BYTES].copy_from_slice(&offer.nonce);
    unsealed.write_all_at(&header, 0).unwrap();
    let unsealed = pb::LaneOffer { path: at(&unsealed), ..offer.clone() };
    assert!(worker.accept(&unsealed).reason.contains("is not the lane the coordinator made"));
    let huge = pb::LaneOffer { up_slots: 1000, ..offer.clone() };
    assert!(!worker.accept(&huge).accepted);
    drop(file);
    // Gone with its maker (the descriptor's number may be another file's by now).
    assert!(!worker.accept(&offer).accepted);
}

#[test]
fn nobody_can_resize_a_lane_under_the_other_ends_mapping() {
    let (file, offer) = LaneFile::create("sealed", 0).unwrap();
    let opened = OpenOptions::new().read(true).write(true).open(&offer.path).unwrap();
    for len in [0, 4096, 64 << 20] {
        assert!(opened.set_len(len).is_err(), "resized to {len} bytes");
        assert!(file._file.set_len(len).is_err(), "its maker resized it to {len} bytes");
    }
}

#[test]
fn a_peer_that_breaks_the_lanes_rules_is_refused() {
    let (coordinator, worker) = pair();
    let mut message = chunk(0, 1, 8);
    let chunk = message.weights().unwrap();
    chunk.lane_bytes = (SLOT_BYTES + 4) as u32;
    assert!(coordinator.take(chunk).is_err(), "more bytes than a slot holds");
    assert!(worker.freed(1).is_err(), "a credit for a chunk never sent");
    let unoffered = Arc::new(Link::new(Side::Coordinator));
    let mut lane_chunk = pb::WeightsChunk { lane_bytes: 4, ..Default::default() };
    assert!(unoffered.take(&mut lane_chunk).is_err());
}

#[test]
fn a_closed_link_ends_the_stream_even_with_a_chunk_waiting_for_a_slot() {
    let (_coordinator, worker) = pair();
    let messages: Vec<_> = (0..=SLOTS as u64).map(|i| chunk(i, 1, 16)).collect();
    let mut outbound =
        Outbound::new(futures::stream::iter(messages).chain(futures::stream::pending()), Arc::clone(&worker));
    for _ in 0..SLOTS {
        assert!(next(&mut outbound).is_some());
    }
    assert!(outbound.next().now_or_never().is_none(), "the last chunk waits for a slot");
    worker.close();
    assert_eq!(outbound.next().now_or_never(), Some(None), "closed: the stream ends");
}

#[test]
fn an_acceptance_without_the_files_proof_opens_no_lane() {
    let (file, _offer) = LaneFile::create("proof", 0).unwrap();
    let coordinator = Link::offered(file, None);
    let bluff = pb::LaneAnswer { accepted: true, proof: Bytes::from_static(&[0; PROOF_BYTES]), ..Default::default() };
    assert!(coordinator.answered(&bluff).unwrap_err().to_string().contains("without the proof"));
    assert!(!coordinator.is_established());
}

#[test]
fn a_chunk_taken_in_place_holds_its_slot_until_it_drops_and_slots_free_in_order() {
    let (coordinator, worker) = pair();
    let messages: Vec<_> = (0..SLOTS as u8).map(|i| chunk(i as u64, i + 1, 100)).collect();
    let mut outbound = Outbound::new(futures::stream::iter(messages), Arc::clone(&worker));
    let mut held = Vec::new();
    while let Some(mut message) = next(&mut outbound) {
        let chunk = message.weights().unwrap();
        coordinator.take(chunk).unwrap();
        held.push(chunk.data.clone());
    }
    assert_eq!(held.len(), SLOTS as usize);
    for (i, data) in held.iter().enumerate() {
        assert!(data.len() == 100 && data.iter().all(|&b| b == i as u8 + 1), "chunk {i}");
    }
    let taken = || coordinator.lane_receipts.taken();
    let mut beyond = pb::WeightsChunk { lane_bytes: 8, ..Default::default() };
    let refused = coordinator.take(&mut beyond).unwrap_err().to_string();
    assert!(refused.contains("all 4 slots still in use"), "{refused}");
    drop(held.remove(1));
    assert_eq!(taken(), 0, "the first chunk still holds its slot");
    drop(held.remove(0));
    assert_eq!(taken(), 2);
    held.clear();
    assert_eq!(taken(), SLOTS as u64);
}

#[test]
fn the_credit_for_the_end_of_a_transfer_rides_on_the_next_message_unless_all_slots_are_owed() {
    let (coordinator, worker) = pair();
    // A transfer of two chunks of 64 values, then one-chunk transfers.
    let part = |offset: u64, total: u64| {
        let mut message = chunk(offset, 1, 256);
        message.weights().unwrap().total = total;
        message
    };
    let messages = [part(0, 128), part(64, 128), part(0, 64), part(0, 64)];
    let mut outbound = Outbound::new(futures::stream::iter(messages), Arc::clone(&worker));
    let (replies_tx, replies_rx) = futures::channel::mpsc::unbounded();
    let mut replies = Outbound::new(replies_rx, Arc::clone(&coordinator));
    let mut take_next = || {
        let mut message = next(&mut outbound).expect("a slot is free");
        coordinator.take(message.weights().unwrap()).unwrap();
    };
    take_next();
    take_next();
    assert!(next(&mut replies).is_none(), "the transfer ended: no message of its own");
    let pull =
        pb::CoordinatorMessage { kind: Some(pb::coordinator_message::Kind::Pull(Default::default())), lane_taken: 0 };
    replies_tx.unbounded_send(Ok(pull)).unwrap();
    assert_eq!(next(&mut replies).unwrap().unwrap().lane_taken, 2, "the credit rides on the next message");
    worker.freed(2).unwrap();
    take_next();
    take_next();
    assert!(next(&mut replies).is_none(), "two of four slots owed after transfers that ended");
    let mut outbound = Outbound::new(futures::stream::iter([part(0, 64), part(0, 64)]), Arc::clone(&worker));
    for _ in 0..2 {
        let mut message = next(&mut outbound).expect("a slot is free");
        coordinator.take(message.weights().unwrap()).unwrap();
    }
    let free = next(&mut replies).unwrap().unwrap();
    assert_eq!(
        free.kind,
        Some(pb::coordinator_message::Kind::LaneFree(pb::LaneFree { taken: 6, board_taken: 0 })),
        "all four owed"
    );
}

/// A coordinator's and a worker's end of one lane offered with `board`, and
/// whether the worker took the board.
fn pair_on(board: &Arc<Board>) -> (Arc<Link>, Arc<Link>, bool) {
    let (file, mut offer) = LaneFile::create("board-test", 0).expect("a lane's memory");
    offer.board = Some(board.offer());
    let coordinator = Arc::new(Link::offered(file, Some(Arc::clone(board))));
    let worker = Arc::new(Link::new(Side::Worker));
    let answer = worker.accept(&offer);
    assert!(answer.accepted, "{}", answer.reason);
    coordinator.answered(&answer).unwrap();
    (coordinator, worker, answer.board_accepted)
}

fn average(data: Bytes) -> Result<pb::CoordinatorMessage, tonic::Status> {
    let chunk = pb::WeightsChunk { epoch: 1, round: 2, total: 1 << 20, data, ..Default::default() };
    Ok(pb::CoordinatorMessage { kind: Some(pb::coordinator_message::Kind::Average(chunk)), lane_taken: 0 })
}

/// What `link`'s sending stream makes of `message`.
fn sent_through(link: &Arc<Link>, message: Result<pb::CoordinatorMessage, tonic::Status>) -> pb::WeightsChunk {
    let mut outbound = Outbound::new(futures::stream::iter([message]), Arc::clone(link));
    let mut sent = next(&mut outbound).expect("sent at once");
    sent.weights().expect("a chunk").clone()
}

#[test]
fn a_chunk_on_the_board_reaches_every_worker_without_a_copy_and_its_slot_frees_once_all_are_done() {
    let board = Board::create().expect("a board");
    let one = |data: &[u8]| board.post(&[data]).map(|mut posted| posted.remove(0));
    assert!(one(&[1; 64]).is_none(), "nobody reads the board yet: no copy");
    let ends: Vec<_> = (0..2).map(|_| pair_on(&board)).collect();
    assert!(ends.iter().all(|(_, _, took)| *took));
    let posted = one(&[7; 1000]).expect("a free slot");
    let mut taken = Vec::new();
    for (coordinator, worker, _) in &ends {
        let mut chunk = sent_through(coordinator, average(posted.clone()));
        assert_eq!((chunk.data.len(), chunk.lane_bytes), (0, 1000));
        assert_eq!(chunk.board_offset, board.offset_of(&posted));
        worker.take(&mut chunk).unwrap();
        assert_eq!(chunk.data, posted, "the worker reads the posted bytes");
        assert_eq!(
            chunk.data.as_ptr(),
            worker.board_view.get().unwrap().ptr().wrapping_add(chunk.board_offset.unwrap() as usize)
        );
        taken.push(chunk.data);
    }
    let slot = posted.as_ptr();
    drop(posted);
    drop(taken);
    // The first worker says it is done; the second has not yet.
    ends[0].0.board_freed(ends[0].1.board_receipts.taken()).unwrap();
    let other = one(&[8; 10]).expect("another slot");
    assert_ne!(other.as_ptr(), slot, "a slot a worker holds is not written");
    drop(other);
    ends[1].0.board_freed(1).unwrap();
    assert_eq!(one(&[9; 10]).expect("a free slot").as_ptr(), slot, "freed, and used first again");
    // A worker whose session ends reads the board no more.
    drop(ends);
    assert!(one(&[1; 64]).is_none());
}

#[test]
fn a_version_that_does_not_fit_on_the_board_goes_into_the_lanes() {
    let board = Board::create().unwrap();
    let (coordinator, worker, _) = pair_on(&board);
    let chunks: Vec<Vec<u8>> = (0..BOARD_SLOTS - 1).map(|i| vec![i as u8; 64]).collect();
    let data: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let held = board.post(&data).expect("free slots");
    assert!(board.post(&[&[0; 64], &[0; 64]]).is_none(), "two chunks, one slot free: neither goes on the board");
    assert!(board.post(&[&[0; 64]]).is_some(), "one chunk does");
    let mut chunk = sent_through(&coordinator, average(Bytes::from(vec![3u8; 64])));
    assert_eq!((chunk.board_offset, chunk.lane_bytes), (None, 64), "into the lane instead");
    worker.take(&mut chunk).unwrap();
    assert_eq!(chunk.data, vec![3u8; 64]);
    drop(held);
}

#[test]
fn a_worker_says_it_is_done_with_board_chunks_on_its_next_message_or_once_it_holds_back_half_the_board() {
    let board = Board::create().unwrap();
    let (coordinator, worker, _) = pair_on(&board);
    let posted = board.post(&[&[1u8; 8][..]; BOARD_SLOTS as usize / 2]).expect("free slots");
    let (replies_tx, replies_rx) = futures::channel::mpsc::unbounded();
    let mut replies = Outbound::new(replies_rx, Arc::clone(&worker));
    let take = |data: &Bytes| {
        let mut chunk = sent_through(&coordinator, average(data.clone()));
        worker.take(&mut chunk).unwrap();
    };
    take(&posted[0]);
    assert!(next(&mut replies).is_none(), "one of {BOARD_SLOTS} owed: no message of its own");
    replies_tx.unbounded_send(chunk(0, 1, 8)).unwrap();
    let report = next(&mut replies).unwrap();
    assert_eq!((report.board_taken, report.lane_taken), (1, 0), "the news rides on the next message");
    coordinator.board_freed(report.board_taken).unwrap();
    for data in &posted {
        take(data);
    }
    let free = next(&mut replies).expect("half the board owed");
    let board_taken = u64::from(BOARD_SLOTS / 2 + 1);
    assert_eq!(free.kind, Some(pb::worker_message::Kind::LaneFree(pb::LaneFree { taken: 0, board_taken })));
}

#[test]
fn a_peer_that_breaks_the_boards_rules_is_refused_and_a_board_that_will_not_open_leaves_the_lane() {
    let board = Board::create().unwrap();
    let (coordinator, worker, _) = pair_on(&board);
    assert!(coordinator.board_freed(1).unwrap_err().to_string().contains("1 board chunks freed, 0 sent"));
    let outside = |board_offset: u64, lane_bytes: u32| pb::WeightsChunk {
        board_offset: Some(board_offset),
        lane_bytes,
        ..Default::default()
    };
    for (at, len) in [(0, 16), (4096 + SLOT_BYTES as u64 - 8, 16), (u64::MAX - 4, 16), (4096, 0)] {
        assert!(worker.take(&mut outside(at, len)).is_err(), "{len} bytes at {at}");
    }
    let (plain_coordinator, plain_worker) = pair();
    assert!(plain_worker.take(&mut outside(4096, 16)).unwrap_err().to_string().contains("no board mapped"));
    assert!(plain_coordinator.take(&mut outside(4096, 16)).is_err(), "the coordinator reads no board");
    let (file, mut offer) = LaneFile::create("bad-board", 0).unwrap();
    offer.board = Some(pb::LaneBoard { nonce: Bytes::from_static(&[0; NONCE_BYTES]), ..board.offer() });
    let answer = Link::new(Side::Worker).accept(&offer);
    assert!(answer.accepted && !answer.board_accepted, "the lane without the board");
    assert!(answer.reason.contains("no board: ") && answer.reason.contains("is not the board"), "{}", answer.reason);
    drop(file);
}

#[test]
fn a_worker_that_answers_twice_reads_the_board_once() {
    let board = Board::create().unwrap();
    let (file, mut offer) = LaneFile::create("twice", 0).unwrap();
    offer.board = Some(board.offer());
    let coordinator = Link::offered(file, Some(Arc::clone(&board)));
    let answer = Link::new(Side::Worker).accept(&offer);
    assert!(answer.board_accepted, "{}", answer.reason);
    coordinator.answered(&answer).unwrap();
    coordinator.answered(&answer).unwrap();
    assert!(board.post(&[&[1; 8]]).is_some());
    drop(coordinator);
    assert!(board.post(&[&[1; 8]]).is_none(), "its session ended: nobody reads the board");
}

#[test]
fn nobody_but_the_coordinator_can_write_the_board() {
    let board = Board::create().unwrap();
    let path = board.offer().path;
    let opened = OpenOptions::new().read(true).write(true).open(&path).expect("opened for writing");
    assert!(opened.write_at(&[1; 8], 4096).is_err(), "a write through the file");
    assert!(unsafe { MmapOptions::new().map_mut(&opened) }.is_err(), "a writable mapping");
    assert!(MmapOptions::new().map_raw_read_only(&opened).is_ok(), "read-only, as a worker maps it");
    let (_coordinator, _worker, took) = pair_on(&board);
    assert!(took);
    assert!(board.post(&[&[7; 8]]).is_some(), "the coordinator writes through its own mapping");
}

#[test]
fn weights_kept_in_the_area_go_as_where_they_are_and_stay_held_until_taken() {
    let (file, offer) = LaneFile::create("area", 4000).expect("a lane's memory");
    assert_eq!(offer.area_half_bytes, 4096, "whole pages");
    let misaligned = pb::LaneOffer { slot_bytes: 4097, ..offer.clone() };
    let declined = Link::new(Side::Worker).accept(&misaligned);
    assert!(!declined.accepted && declined.reason.contains("not at the start of a page"), "{}", declined.reason);
    let coordinator = Arc::new(Link::offered(file, None));
    let worker = Arc::new(Link::new(Side::Worker));
    let answer = worker.accept(&offer);
    coordinator.answered(&answer).unwrap();
    assert!(worker.weights_area(1025).is_none(), "a model larger than a half");
    assert!(coordinator.weights_area(1000).is_none(), "the coordinator keeps no weights there");
    let [mut half, _spare] = worker.weights_area(1000).expect("an area");
    assert!(worker.weights_area(1000).is_none(), "handed out once");
    let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    half.values_mut().copy_from_slice(&values);
    let mut kept: Arc<dyn WeightsMemory> = Arc::new(half);
    let bytes = crate::chunks::shared_values(Arc::clone(&kept));
    let messages = [0, 600].map(|at| {
        let data = bytes.slice(at..(at + 600).min(4000));
        let chunk =
            pb::WeightsChunk { epoch: 1, round: 2, offset: at as u64 / 4, total: 1000, data, ..Default::default() };
        pb::WorkerMessage { kind: Some(pb::worker_message::Kind::Weights(chunk)), ..Default::default() }
    });
    drop(bytes);
    let mut outbound = Outbound::new(futures::stream::iter(messages), Arc::clone(&worker));
    let mut sent: Vec<_> = std::iter::from_fn(|| next(&mut outbound)).collect();
    assert_eq!(sent.len(), 2);
    assert!(Arc::get_mut(&mut kept).is_none(), "held while the coordinator has not taken them");
    let mut taken = Vec::new();
    for message in &mut sent {
        let chunk = message.weights().unwrap();
        assert_eq!((chunk.data.len(), chunk.area_offset), (0, Some(4 * chunk.offset)), "no copy, where they are");
        coordinator.take(chunk).unwrap();
        taken.extend_from_slice(&chunk.data);
    }
    assert_eq!(taken, bytemuck::cast_slice::<f32, u8>(&values[..300]));
    drop(sent);
    worker.freed(2).unwrap();
    assert!(Arc::get_mut(&mut kept).is_some(), "let go of once taken");

    // Bytes outside the area, or a coordinator's chunk that claims to be in one.
    let outside = pb::WeightsChunk { lane_bytes: 8, area_offset: Some(8190), ..Default::default() };
    assert!(matches!(coordinator.take(&mut outside.clone()), Err(LaneError::Protocol(_))));
    let in_area = pb::WeightsChunk { lane_bytes: 8, area_offset: Some(0), ..Default::default() };
    assert!(matches!(worker.take(&mut in_area.clone()), Err(LaneError::Protocol(_))));
    let both = pb::WeightsChunk { board_offset: Some(0), ..in_area };
    assert!(matches!(coordinator.take(&mut both.clone()), Err(LaneError::Protocol(_))));
}
