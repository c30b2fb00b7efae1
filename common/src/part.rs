//! `--part K/N`: one of N disjoint, seeded parts of a training set, so that
//! separate machines can each train on their own share of the data.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::rng::{self, Purpose};

/// Part `index` (1-based) of `count` equal parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    /// The sample indices of this part of `n` samples, ascending. The samples
    /// are shuffled by `seed`, then cut into `count` runs whose lengths differ
    /// by at most one; the parts of one seed are disjoint and cover all `n`.
    pub fn indices(&self, seed: u64, n: usize) -> Vec<u32> {
        let order = rng::permutation(n, &mut rng::stream(seed, Purpose::Split));
        // In u128: `index × n` must not overflow for any K/N a flag can hold.
        let cut = |k: usize| (k as u128 * n as u128 / self.count as u128) as usize;
        let (start, end) = (cut(self.index - 1), cut(self.index));
        let mut part = order[start..end].to_vec();
        part.sort_unstable();
        part
    }
}

impl FromStr for Part {
    type Err = Error;

    /// `K/N` with `1 ≤ K ≤ N`.
    fn from_str(text: &str) -> Result<Self> {
        let refuse = || Error::config("part", format!("{text:?} is not K/N with 1 ≤ K ≤ N, e.g. 1/2"));
        let (k, n) = text.split_once('/').ok_or_else(refuse)?;
        let (index, count) = (k.trim().parse().map_err(|_| refuse())?, n.trim().parse().map_err(|_| refuse())?);
        if index == 0 || index > count {
            return Err(refuse());
        }
        Ok(Part { index, count })
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_one_seed_are_disjoint_and_cover_everything() {
        let n = 1001;
        let mut seen = vec![0; n];
        for index in 1..=3 {
            let part = Part { index, count: 3 }.indices(7, n);
            assert!((333..=334).contains(&part.len()), "{}", part.len());
            for i in part {
                seen[i as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        let half = Part { index: 1, count: 2 };
        assert_eq!(half.indices(7, n), half.indices(7, n));
        assert_ne!(half.indices(7, n), half.indices(8, n));
        let last = Part { index: usize::MAX, count: usize::MAX };
        assert_eq!(last.indices(7, n).len(), 1, "no overflow for the largest K/N");
        assert!(Part { index: 1, count: n + 1 }.indices(7, n).is_empty(), "more parts than samples: some are empty");
    }

    #[test]
    fn only_k_of_n_parses() {
        assert_eq!("2/4".parse::<Part>().unwrap(), Part { index: 2, count: 4 });
        for bad in ["0/2", "3/2", "1", "a/2", "1/0"] {
            let err = bad.parse::<Part>().unwrap_err().to_string();
            assert!(err.starts_with("invalid part:") && err.contains(bad), "{err}");
        }
    }
}
