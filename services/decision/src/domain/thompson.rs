//! Beta-Bernoulli Thompson sampling: each offer's propensity (the chance of a success: a click or a
//! conversion, as configured) has a Beta(1 + successes, 1 + failures) posterior. A decision draws one
//! propensity per offer and ranks by the score those draws give.
//!
//! The probability with which each offer was chosen is what off-policy evaluation needs. It has no closed
//! form for a score that multiplies the draw by other parts, so it is estimated by Monte Carlo: the
//! ranking is repeated over `draws` fresh posterior draws and each offer's share of the rounds in which it
//! was returned (and in which it came first) is its estimated probability. Uniform exploration (the
//! placement's epsilon) is mixed in exactly: p = epsilon x limit/n + (1 - epsilon) x p_thompson.

use rand::{Rng, RngExt};
use statrs::distribution::Beta;

/// The posterior counts of one offer (in one segment).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Posterior {
    pub trials: i64,
    pub successes: i64,
}

impl Posterior {
    /// The Beta parameters: a uniform prior plus the counts.
    pub fn alpha_beta(&self) -> (f64, f64) {
        let successes = self.successes.clamp(0, self.trials.max(0));
        (1.0 + successes as f64, 1.0 + (self.trials.max(0) - successes) as f64)
    }

    /// The posterior mean, for greedy policies and reports.
    pub fn mean(&self) -> f64 {
        let (a, b) = self.alpha_beta();
        a / (a + b)
    }

    /// One draw from the posterior.
    pub fn draw(&self, rng: &mut impl Rng) -> f64 {
        let (a, b) = self.alpha_beta();
        match Beta::new(a, b) {
            Ok(beta) => rng.sample(beta),
            Err(_) => self.mean(),
        }
    }
}

/// What a candidate brings to the ranking besides its propensity: score = propensity^a x rest.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub posterior: Posterior,
    /// value^b x context weight x lever^c.
    pub rest: f64,
}

/// The ranking of one decision and each candidate's estimated choice probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Candidate indexes, best first (all of them).
    pub order: Vec<usize>,
    /// The propensity drawn for each candidate in the decision itself.
    pub propensity: Vec<f64>,
    /// Each candidate's score in the decision itself.
    pub score: Vec<f64>,
    /// Estimated probability that each candidate is among the first `limit`.
    pub chosen: Vec<f64>,
    /// Estimated probability that each candidate comes first.
    pub first: Vec<f64>,
    /// Whether this decision explored uniformly.
    pub explored: bool,
}

fn rank_by(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Stable for equal scores: the earlier candidate wins a tie.
    order.sort_by(|a, b| scores[*b].partial_cmp(&scores[*a]).unwrap_or(std::cmp::Ordering::Equal));
    order
}

/// Ranks `candidates` for a decision returning `limit`, with exponent `a` on the propensity and uniform
/// exploration with probability `epsilon`; `draws` Monte Carlo rounds estimate the choice probabilities.
pub fn rank(candidates: &[Candidate], a: f64, epsilon: f64, limit: usize, draws: usize, rng: &mut impl Rng) -> Ranking {
    let n = candidates.len();
    if n == 0 {
        return Ranking {
            order: vec![],
            propensity: vec![],
            score: vec![],
            chosen: vec![],
            first: vec![],
            explored: false,
        };
    }
    let limit = limit.clamp(1, n);
    let score_of = |c: &Candidate, p: f64| p.max(0.0).powf(a) * c.rest.max(0.0);
    let propensity: Vec<f64> = candidates.iter().map(|c| c.posterior.draw(rng)).collect();
    let score: Vec<f64> = candidates.iter().zip(&propensity).map(|(c, p)| score_of(c, *p)).collect();
    let epsilon = epsilon.clamp(0.0, 1.0);
    let explored = epsilon > 0.0 && rng.random::<f64>() < epsilon;
    let order = if explored {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        order
    } else {
        rank_by(&score)
    };
    let mut chosen = vec![0.0; n];
    let mut first = vec![0.0; n];
    if n == 1 {
        chosen[0] = 1.0;
        first[0] = 1.0;
    } else {
        let draws = draws.max(1);
        let mut round = vec![0.0; n];
        for _ in 0..draws {
            for (i, c) in candidates.iter().enumerate() {
                round[i] = score_of(c, c.posterior.draw(rng));
            }
            let order = rank_by(&round);
            first[order[0]] += 1.0;
            for i in &order[..limit] {
                chosen[*i] += 1.0;
            }
        }
        let uniform_first = 1.0 / n as f64;
        let uniform_chosen = limit as f64 / n as f64;
        for i in 0..n {
            first[i] = epsilon * uniform_first + (1.0 - epsilon) * first[i] / draws as f64;
            chosen[i] = epsilon * uniform_chosen + (1.0 - epsilon) * chosen[i] / draws as f64;
        }
    }
    Ranking { order, propensity, score, chosen, first, explored }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn the_posterior_learns_from_counts() {
        let p = Posterior { trials: 100, successes: 30 };
        assert_eq!(p.alpha_beta(), (31.0, 71.0));
        assert!((p.mean() - 31.0 / 102.0).abs() < 1e-12);
        let mut r = rng();
        let mean: f64 = (0..2000).map(|_| p.draw(&mut r)).sum::<f64>() / 2000.0;
        assert!((mean - p.mean()).abs() < 0.01, "{mean}");
    }

    #[test]
    fn a_clearly_better_offer_is_chosen_almost_always_and_the_probabilities_say_so() {
        let good = Candidate { posterior: Posterior { trials: 1000, successes: 300 }, rest: 1.0 };
        let bad = Candidate { posterior: Posterior { trials: 1000, successes: 100 }, rest: 1.0 };
        let ranking = rank(&[bad, good], 1.0, 0.0, 1, 500, &mut rng());
        assert_eq!(ranking.order[0], 1);
        assert!(ranking.first[1] > 0.99, "{:?}", ranking.first);
        assert!((ranking.first.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // Equal posteriors split the choice about evenly; value decides when the propensity cannot.
        let a = Candidate { posterior: Posterior::default(), rest: 1.0 };
        let even = rank(&[a, a], 1.0, 0.0, 1, 4000, &mut rng());
        assert!((even.first[0] - 0.5).abs() < 0.05, "{:?}", even.first);
        let valuable = Candidate { posterior: Posterior { trials: 1000, successes: 200 }, rest: 10.0 };
        let cheap = Candidate { posterior: Posterior { trials: 1000, successes: 300 }, rest: 1.0 };
        assert_eq!(rank(&[cheap, valuable], 1.0, 0.0, 1, 100, &mut rng()).order[0], 1);
    }

    #[test]
    fn exploration_is_mixed_into_the_probabilities() {
        let good = Candidate { posterior: Posterior { trials: 1000, successes: 300 }, rest: 1.0 };
        let bad = Candidate { posterior: Posterior { trials: 1000, successes: 100 }, rest: 1.0 };
        let r = rank(&[bad, good], 1.0, 0.2, 1, 500, &mut rng());
        assert!((r.first[0] - 0.1).abs() < 0.01, "{:?}", r.first);
        // With a limit of two out of two, both are always chosen.
        let both = rank(&[bad, good], 1.0, 0.2, 2, 50, &mut rng());
        assert!(both.chosen.iter().all(|p| (p - 1.0).abs() < 1e-9));
    }
}
