//! `--sync-every K|epoch`: how much each worker trains between two rounds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Samples a round asks of each worker under `--sync-every epoch`: more than
/// any shard, so each worker's round ends where its shard does; no larger
/// than what a number may ask, so it is as safe to multiply.
pub const EPOCH_SAMPLES: usize = u32::MAX as usize;

/// The sync interval: K minibatches, or one round per pass over each shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEvery {
    Minibatches(usize),
    /// One round per epoch: the premise of rare syncs, under which
    /// the workers' hidden units drift apart (see `--align`).
    Epoch,
}

impl FromStr for SyncEvery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "epoch" => Ok(SyncEvery::Epoch),
            n => n.parse().map(SyncEvery::Minibatches).map_err(|_| format!("expected a number or `epoch`, got `{n}`")),
        }
    }
}

impl fmt::Display for SyncEvery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncEvery::Minibatches(k) => write!(f, "{k}"),
            SyncEvery::Epoch => f.write_str("epoch"),
        }
    }
}

/// In config files a number (`sync_every = 16`) or the word (`sync_every = "epoch"`).
impl Serialize for SyncEvery {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SyncEvery::Minibatches(k) => s.serialize_u64(*k as u64),
            SyncEvery::Epoch => s.serialize_str("epoch"),
        }
    }
}

impl<'de> Deserialize<'de> for SyncEvery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(k) => usize::try_from(k).map(SyncEvery::Minibatches).map_err(serde::de::Error::custom),
            Raw::Word(w) => w.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_or_the_word_epoch_in_flags_and_files() {
        assert_eq!("16".parse(), Ok(SyncEvery::Minibatches(16)));
        assert_eq!("epoch".parse(), Ok(SyncEvery::Epoch));
        assert!("often".parse::<SyncEvery>().unwrap_err().contains("`often`"));
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct File {
            sync_every: SyncEvery,
        }
        for value in [SyncEvery::Epoch, SyncEvery::Minibatches(8)] {
            let text = toml::to_string(&File { sync_every: value }).unwrap();
            assert_eq!(toml::from_str::<File>(&text).unwrap(), File { sync_every: value }, "{text}");
        }
        assert_eq!(toml::from_str::<File>("sync_every = 4").unwrap().sync_every, SyncEvery::Minibatches(4));
    }
}
