//! The coordinator's outer optimiser: each round's change of the averaged
//! model is treated as a pseudo-gradient (DiLoCo). With Δ = w_before −
//! average, plain averaging is `w = average`; outer SGD is `v = μv + Δ,
//! w = w_before − lr·v`; outer Nesterov is `w = w_before − lr·(Δ + μv)`.
//! Averaging N workers' updates moves the model about as far as one of them;
//! an outer learning rate and momentum can move it further.

use multiversion::multiversion;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which outer update the coordinator applies (`--outer-optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OuterRule {
    /// The average itself (outer SGD with lr 1 and no momentum, computed exactly).
    #[default]
    Avg,
    /// SGD with momentum on the pseudo-gradient.
    Sgd,
    /// Nesterov momentum on the pseudo-gradient.
    Nesterov,
}

/// The outer step as configured, validated: plain values that a
/// configuration holds and records. The optimiser, which adds the velocity,
/// is built from them where the rounds are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OuterSettings {
    rule: OuterRule,
    lr: f32,
    momentum: f32,
}

impl OuterSettings {
    /// `lr` positive and finite, `momentum` in [0, 1); both unused by `Avg`.
    pub fn new(rule: OuterRule, lr: f32, momentum: f32) -> Result<Self> {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::config("--outer-lr", format!("must be positive and finite, got {lr}")));
        }
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::config("--outer-momentum", format!("must be in [0, 1), got {momentum}")));
        }
        Ok(OuterSettings { rule, lr, momentum })
    }

    pub fn rule(&self) -> OuterRule {
        self.rule
    }

    pub fn lr(&self) -> f32 {
        self.lr
    }

    pub fn momentum(&self) -> f32 {
        self.momentum
    }
}

/// The outer optimiser with its state (the velocity, kept by the coordinator).
#[derive(Debug, Clone, PartialEq)]
pub struct OuterOptimizer {
    settings: OuterSettings,
    velocity: Vec<f32>,
}

impl OuterOptimizer {
    /// A new optimiser, without velocity until its first step.
    pub fn new(settings: OuterSettings) -> Self {
        OuterOptimizer { settings, velocity: Vec::new() }
    }

    /// The velocity, empty until the first step of a rule that keeps one.
    pub fn velocity(&self) -> &[f32] {
        &self.velocity
    }

    /// Continues from a velocity saved with [`velocity`](Self::velocity).
    pub fn restore(&mut self, velocity: Vec<f32>) {
        self.velocity = velocity;
    }

    /// Moves `params`, the weights before the round, given the round's
    /// `average` (as long). The plain average takes the average's buffer (a
    /// swap, not a copy of the model), leaving the old weights in `average`,
    /// scratch for the next round; the other rules leave `average` as it is.
    pub fn step(&mut self, params: &mut Vec<f32>, average: &mut Vec<f32>) {
        debug_assert_eq!(params.len(), average.len(), "the weights and their average");
        if self.settings.rule == OuterRule::Avg {
            std::mem::swap(params, average);
        } else {
            self.fold(params, 0, average);
        }
    }

    /// Moves positions `at..at + average.len()` of `params` (the whole
    /// model) given their average, in place: bit for bit what [`step`](Self::step) makes of
    /// them, so a round can step its positions as each one's average is
    /// known, piece by piece in any order, without a buffer for the whole
    /// average (each position once per round).
    pub fn fold(&mut self, params: &mut [f32], at: usize, average: &[f32]) {
        let OuterSettings { rule, lr, momentum: mu } = self.settings;
        let positions = at..at + average.len();
        if rule == OuterRule::Avg {
            params[positions].copy_from_slice(average);
            return;
        }
        if self.velocity.len() != params.len() {
            self.velocity = vec![0.0; params.len()];
        }
        let (params, velocity) = (&mut params[positions.clone()], &mut self.velocity[positions]);
        step_with_momentum(lr, mu, rule == OuterRule::Nesterov, params, average, velocity);
    }
}

/// The momentum step towards `average`, compiled again for AVX2 and chosen
/// at run time like the inner optimiser's (the same arithmetic in every
/// version, so the same weights on every CPU).
#[multiversion(targets("x86_64+avx2"))]
fn step_with_momentum(lr: f32, mu: f32, nesterov: bool, params: &mut [f32], average: &[f32], velocity: &mut [f32]) {
    for ((w, &avg), v) in params.iter_mut().zip(average).zip(velocity) {
        let delta = *w - avg;
        *v = mu * *v + delta;
        *w -= lr * if nesterov { delta + mu * *v } else { *v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avg_is_exactly_the_average() {
        let mut outer = OuterOptimizer::new(OuterSettings::new(OuterRule::Avg, 0.7, 0.9).unwrap());
        let mut w = vec![1.0, 2.0];
        outer.step(&mut w, &mut vec![0.1, 0.3]);
        assert_eq!(w, vec![0.1, 0.3]);
    }

    #[test]
    fn sgd_with_lr_one_and_no_momentum_is_the_average() {
        let mut outer = OuterOptimizer::new(OuterSettings::new(OuterRule::Sgd, 1.0, 0.0).unwrap());
        let mut w = vec![1.0, 2.0];
        outer.step(&mut w, &mut vec![0.5, 1.5]);
        assert_eq!(w, vec![0.5, 1.5]);
    }

    #[test]
    fn nesterov_accumulates_momentum_across_rounds() {
        let mut outer = OuterOptimizer::new(OuterSettings::new(OuterRule::Nesterov, 0.5, 0.5).unwrap());
        let mut w = vec![1.0];
        outer.step(&mut w, &mut vec![0.0]); // Δ = 1, v = 1, w = 1 − 0.5·(1 + 0.5) = 0.25
        assert!((w[0] - 0.25).abs() < 1e-7, "{w:?}");
        outer.step(&mut w, &mut vec![0.25]); // Δ = 0, v = 0.5, w = 0.25 − 0.5·0.25 = 0.125
        assert!((w[0] - 0.125).abs() < 1e-7, "{w:?}");
    }

    #[test]
    fn folding_piece_by_piece_is_stepping_bit_for_bit() {
        let start: Vec<f32> = (0..10).map(|i| (i as f32 * 0.7).sin()).collect();
        for rule in [OuterRule::Avg, OuterRule::Sgd, OuterRule::Nesterov] {
            let settings = OuterSettings::new(rule, 0.7, 0.9).unwrap();
            let (mut stepped, mut folded) = (OuterOptimizer::new(settings), OuterOptimizer::new(settings));
            let (mut w, mut f) = (start.clone(), start.clone());
            for round in 0..3 {
                let average: Vec<f32> = start.iter().map(|x| x * 0.5 + round as f32 * 0.1).collect();
                stepped.step(&mut w, &mut average.clone());
                // Out of order, in uneven pieces.
                for range in [6..10, 0..1, 1..6] {
                    folded.fold(&mut f, range.start, &average[range]);
                }
                assert_eq!(w, f, "{rule:?} round {round}");
                assert_eq!(stepped.velocity(), folded.velocity(), "{rule:?} round {round}");
            }
        }
    }

    #[test]
    fn nonsense_is_refused_by_flag() {
        assert!(OuterSettings::new(OuterRule::Sgd, 0.0, 0.0).unwrap_err().to_string().contains("--outer-lr"));
        assert!(OuterSettings::new(OuterRule::Sgd, 1.0, 1.0).unwrap_err().to_string().contains("--outer-momentum"));
    }
}
