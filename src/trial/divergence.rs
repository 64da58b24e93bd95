//! When a trial's loss has diverged: one rule for the built-in engine and
//! for user scripts.
//!
//! A single step's loss is a sample: at batch 1-4 it routinely swings
//! several-fold (a squared error over two samples is exponentially
//! distributed), so "four times the first loss" fired on runs whose weights
//! had not moved at all. The rule compares means over windows of steps
//! instead, and keeps an outright blow-up immediate.

/// The window, in steps, both means are taken over. Ten steps cut the
/// false alarms at batch 2 over a 300-step run from about a third to a few
/// in a hundred (a simulation of exponential losses), at the price of
/// catching a slow explosion a step or two later.
const WINDOW: usize = 10;
/// A windowed mean this many times the opening mean counts as exploding...
const EXPLOSION_FACTOR: f64 = 4.0;
/// ...once it stays there this many steps in a row: wide networks under
/// Adam often spike on their first update and recover.
const EXPLOSION_STEPS: u32 = 3;
/// One loss this many times the opening mean ends the run at once: no
/// sampling noise reaches it, and waiting only burns time.
const BLOW_UP_FACTOR: f64 = 100.0;
/// The blow-up rule waits for an opening of this many steps: a single
/// squared error at batch 1 is below a hundredth of its mean about one
/// time in twelve, and a hundred times that is an ordinary next loss.
const BLOW_UP_MIN_STEPS: usize = 3;
/// Losses below this are treated as this when comparing (a loss near zero
/// would make any change look like an explosion).
const LOSS_FLOOR: f64 = 1e-3;

/// Watches the losses of one run, step by step.
#[derive(Debug, Default)]
pub(crate) struct DivergenceWatch {
    losses: Vec<f64>,
    exploding_for: u32,
}

impl DivergenceWatch {
    /// Takes step `step`'s loss (at learning rate `lr`) and says why the
    /// run diverged, if it now has.
    pub(crate) fn observe(&mut self, step: usize, loss: f64, lr: f64) -> Option<String> {
        if !loss.is_finite() {
            return Some(format!("loss became {loss} at step {step} (lr {lr:.3e})"));
        }
        self.losses.push(loss);
        let seen = self.losses.len();
        if seen < 2 {
            return None;
        }
        // The opening mean and the latest mean over the same number of
        // steps, at most a window each (they overlap early in a run).
        let span = WINDOW.min(seen - 1);
        let latest = mean(&self.losses[seen - span..]);
        // At batch 1 a squared error is chi-squared with one degree of
        // freedom: ten of them can average a third of their true mean, and
        // four times that low opening is a mean the noise reaches within a
        // few hundred steps. Once more steps than a window lie before the
        // latest window, their mean is the steadier reference when higher;
        // steps of a real explosion sit in the latest window, not in it.
        let earlier = &self.losses[..seen - span];
        let settled = if earlier.len() > span {
            mean(earlier)
        } else {
            0.0
        };
        let opening = mean(&self.losses[..span]).max(settled).max(LOSS_FLOOR);
        if span >= BLOW_UP_MIN_STEPS && loss > BLOW_UP_FACTOR * opening {
            return Some(format!(
                "loss exploded at once from {opening:.4} (mean of the first {span} steps) to {loss:.4} at step {step} (lr {lr:.3e})"
            ));
        }
        if latest > EXPLOSION_FACTOR * opening {
            self.exploding_for += 1;
        } else {
            self.exploding_for = 0;
        }
        (self.exploding_for >= EXPLOSION_STEPS).then(|| {
            format!(
                "loss exploded from {opening:.4} to {latest:.4} (means over {span} steps) by step {step} (lr {lr:.3e})"
            )
        })
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The first step at which `losses` diverged, and why.
pub(crate) fn first_divergence(losses: &[f64], lrs: &[f64]) -> Option<(usize, String)> {
    let mut watch = DivergenceWatch::default();
    losses.iter().enumerate().find_map(|(step, &loss)| {
        let lr = lrs.get(step).copied().unwrap_or(f64::NAN);
        watch.observe(step, loss, lr).map(|why| (step, why))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrs(n: usize) -> Vec<f64> {
        vec![0.1; n]
    }

    #[test]
    fn a_non_finite_loss_diverges_at_once() {
        let (step, why) = first_divergence(&[1.0, f64::NAN], &lrs(2)).unwrap();
        assert_eq!(step, 1);
        assert!(why.contains("NaN"), "{why}");
        assert_eq!(first_divergence(&[f64::INFINITY], &lrs(1)).unwrap().0, 0);
    }

    #[test]
    fn an_exponential_explosion_is_caught_within_a_few_steps() {
        // Flat for ten steps, then doubling every step.
        let losses: Vec<f64> = (0..40)
            .map(|i| if i < 10 { 1.0 } else { 2f64.powi(i - 9) })
            .collect();
        let (step, why) = first_divergence(&losses, &lrs(40)).unwrap();
        assert!((12..=17).contains(&step), "caught at {step}: {why}");
    }

    #[test]
    fn a_blow_up_ends_the_run_on_the_step_it_happens() {
        let (step, why) = first_divergence(&[2.0, 2.1, 1.9, 500.0], &lrs(4)).unwrap();
        assert_eq!(step, 3);
        assert!(why.contains("at once"), "{why}");
    }

    #[test]
    fn one_spike_that_recovers_is_not_divergence() {
        let losses = [2.0, 9.0, 2.0, 1.8, 1.7, 1.6, 1.5, 1.4];
        assert_eq!(first_divergence(&losses, &lrs(8)), None);
    }

    #[test]
    fn small_batch_sampling_noise_is_not_divergence() {
        // The losses a two-sample squared error gives at a learning rate of
        // 1e-8 (the weights do not move): the case that the single-step rule
        // called an explosion "from 3.33 to 46.4".
        let observed = [3.33, 8.45, 6.93, 28.06, 16.22, 46.43, 11.0, 21.5, 4.2, 30.1];
        assert_eq!(first_divergence(&observed, &lrs(10)), None);
        // And a long run of such noise: exponential losses with mean 16
        // from a fixed-seed generator.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let losses: Vec<f64> = (0..300)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let uniform = (state >> 11) as f64 / (1u64 << 53) as f64;
                -16.0 * (1.0 - uniform).ln()
            })
            .collect();
        assert_eq!(first_divergence(&losses, &lrs(300)), None);
    }

    /// Squared errors of one sample against a noisy teacher (chi-squared
    /// with one degree of freedom, mean `scale`), from a seeded generator.
    fn batch_one_losses(seed: u64, steps: usize, scale: f64) -> Vec<f64> {
        let mut state = seed | 1;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..steps)
            .map(|_| {
                // Box-Muller: one standard normal, squared.
                let z =
                    (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos();
                scale * z * z
            })
            .collect()
    }

    #[test]
    fn batch_one_noise_rarely_looks_like_divergence() {
        // The weights do not move (LR ~1e-9), so every alarm is false. The
        // rule with a one-step opening for blow-ups and the opening window
        // alone as reference raised 55 in these 400 runs of 300 steps
        // (14%), most at step 1; it failed whole searches of the
        // command-runner test (every confirmation at batch 1 saw the same
        // data and "diverged" at the same step). Now 6 (1.5%).
        let runs = 400;
        let alarms = (0..runs)
            .filter(|&seed| {
                let losses = batch_one_losses(0x9e37_79b9 + seed * 7919, 300, 17.0);
                first_divergence(&losses, &lrs(300)).is_some()
            })
            .count();
        assert!(
            alarms as u64 * 50 <= runs,
            "{alarms} false alarms in {runs} runs"
        );
    }

    #[test]
    fn a_slow_explosion_after_a_noisy_start_is_still_caught() {
        // Batch-one noise for 50 steps, then the loss grows 30% a step.
        let mut losses = batch_one_losses(77, 50, 17.0);
        losses.extend((1..60).map(|k| 17.0 * 1.3f64.powi(k)));
        let (step, why) = first_divergence(&losses, &lrs(losses.len())).unwrap();
        assert!((50..=70).contains(&step), "caught at {step}: {why}");
    }

    #[test]
    fn losses_near_zero_do_not_make_every_change_an_explosion() {
        let losses = [1e-9, 1e-4, 2e-4, 3e-4, 1e-4];
        assert_eq!(first_divergence(&losses, &lrs(5)), None);
    }
}
