//! The DDPM forward (noising) process and its noise schedule.

use candle_core::{Device, Tensor};

use crate::config::Prediction;
use crate::Result;

/// The training schedule, also written to the scheduler config: DDPM's `linear`
/// betas from `BETA_START` to `BETA_END` over `TRAIN_TIMESTEPS` steps.
///
/// Not Stable Diffusion's `scaled_linear` (0.00085 to 0.012): its last timestep
/// keeps 6.8% of the signal, and on 8x8 latents the mean of the noisy latent then
/// still shows the picture's background and layout (its noise is averaged over only
/// 64 pixels). The network learns to read them from its input instead of from the
/// caption, and sampling, which starts from pure noise, draws them at random. This
/// schedule ends at 0.6% signal, so layout and colours must come from the text.
pub const BETA_SCHEDULE: &str = "linear";
/// Steps of the training schedule.
pub const TRAIN_TIMESTEPS: usize = 1000;
/// First beta of the schedule.
pub const BETA_START: f64 = 0.0001;
/// Last beta of the schedule.
pub const BETA_END: f64 = 0.02;

/// Cumulative products of `1 - beta` for each training timestep.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f64>,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        Self::linear(BETA_START, BETA_END, TRAIN_TIMESTEPS)
    }
}

impl NoiseSchedule {
    /// Betas evenly spaced between `start` and `end`.
    pub fn linear(start: f64, end: f64, steps: usize) -> Self {
        let span = steps.saturating_sub(1).max(1) as f64;
        Self::from_betas((0..steps).map(|i| start + (end - start) * i as f64 / span))
    }

    /// Betas evenly spaced in square root between `start` and `end`, then squared.
    pub fn scaled_linear(start: f64, end: f64, steps: usize) -> Self {
        let (lo, hi) = (start.sqrt(), end.sqrt());
        let span = steps.saturating_sub(1).max(1) as f64;
        Self::from_betas((0..steps).map(|i| (lo + (hi - lo) * i as f64 / span).powi(2)))
    }

    fn from_betas(betas: impl Iterator<Item = f64>) -> Self {
        let mut product = 1.0;
        let alphas_cumprod = betas
            .map(|beta| {
                product *= 1.0 - beta;
                product
            })
            .collect();
        Self { alphas_cumprod }
    }

    /// Number of timesteps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Whether the schedule has no steps.
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// `alpha_bar_t`, the share of signal variance left at timestep `t`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t.min(self.len() - 1)]
    }

    /// Signal-to-noise ratio `alpha_bar / (1 - alpha_bar)` at `t`.
    pub fn snr(&self, t: usize) -> f64 {
        let a = self.alpha_bar(t);
        a / (1.0 - a)
    }

    /// Weight of a row's mean squared error on the `prediction` target at `t`.
    ///
    /// With `min_snr_gamma` set, the weight on the implied x0 error is
    /// `max(min(snr, gamma), floor)` (min-SNR, Hang et al. 2023, with a floor); the
    /// epsilon error is `snr` times the x0 error and the v error `snr + 1` times,
    /// so the weight on the target's error is that divided by `snr` or `snr + 1`.
    /// Without the floor the noisiest timesteps, where only the caption can say
    /// where objects go, weigh almost nothing (`snr` is 0.085 at `t = 499`).
    /// Without `min_snr_gamma` every row weighs 1.
    pub fn loss_weight(
        &self,
        t: usize,
        prediction: Prediction,
        min_snr_gamma: Option<f64>,
        floor: f64,
    ) -> f64 {
        let Some(gamma) = min_snr_gamma else {
            return 1.0;
        };
        let snr = self.snr(t);
        let on_target = match prediction {
            Prediction::Epsilon => snr,
            Prediction::VPrediction => snr + 1.0,
        };
        snr.min(gamma).max(floor) / on_target
    }

    /// `x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise`, one timestep per
    /// row of `x0` `[B, ...]`.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        self.mix(x0, noise, timesteps)
    }

    /// The velocity `v_t = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x_0`, one
    /// timestep per row (diffusers' `get_velocity`).
    pub fn velocity(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        self.mix(noise, &x0.neg()?, timesteps)
    }

    /// `sqrt(alpha_bar_t) a + sqrt(1 - alpha_bar_t) b`, one timestep per row of `a`.
    fn mix(&self, a: &Tensor, b: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        let (signal, sigma): (Vec<f32>, Vec<f32>) = timesteps
            .iter()
            .map(|&t| {
                let a = self.alpha_bar(t);
                (a.sqrt() as f32, (1.0 - a).sqrt() as f32)
            })
            .unzip();
        let shape = per_row_shape(a)?;
        let signal = Tensor::from_vec(signal, shape.as_slice(), a.device())?;
        let sigma = Tensor::from_vec(sigma, shape.as_slice(), a.device())?;
        Ok((a.broadcast_mul(&signal)? + b.broadcast_mul(&sigma)?)?)
    }
}

/// `[B, 1, 1, ...]` for a tensor of shape `[B, ...]`.
pub(crate) fn per_row_shape(xs: &Tensor) -> Result<Vec<usize>> {
    let mut shape = vec![1; xs.rank()];
    shape[0] = xs.dim(0)?;
    Ok(shape)
}

/// A `[len]` tensor of timesteps as `f32`, as the UNet takes them.
pub(crate) fn timestep_tensor(timesteps: &[usize], device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
    Ok(Tensor::from_vec(values, timesteps.len(), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_ddpm_linear() {
        // diffusers DDPMScheduler(beta_schedule="linear", beta_start=0.0001,
        // beta_end=0.02).alphas_cumprod[[0, 499, 999]]
        let s = NoiseSchedule::default();
        assert_eq!(s.len(), 1000);
        assert!((s.alpha_bar(0) - 0.9999).abs() < 1e-9);
        assert!((s.alpha_bar(499) - 0.078_587_24).abs() < 1e-7);
        assert!((s.alpha_bar(999) - 4.035_83e-5).abs() < 1e-9);
    }

    #[test]
    fn matches_stable_diffusion_values() {
        // diffusers DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
        // beta_end=0.012).alphas_cumprod[[0, 499, 999]]
        let s = NoiseSchedule::scaled_linear(0.00085, 0.012, 1000);
        assert_eq!(s.len(), 1000);
        assert!((s.alpha_bar(0) - 0.99915).abs() < 1e-9);
        assert!(
            (s.alpha_bar(499) - 0.277_669_4).abs() < 1e-6,
            "{}",
            s.alpha_bar(499)
        );
        assert!(
            (s.alpha_bar(999) - 0.004_660_1).abs() < 1e-6,
            "{}",
            s.alpha_bar(999)
        );
    }

    #[test]
    fn loss_weights_follow_min_snr_with_a_floor() {
        let s = NoiseSchedule::default();
        let v = Prediction::VPrediction;
        assert_eq!(s.loss_weight(999, v, None, 1.0), 1.0);
        for t in [0, 100, 499, 800, 999] {
            let snr = s.snr(t);
            let plain = s.loss_weight(t, v, Some(5.0), 0.0);
            assert!((plain - snr.min(5.0) / (snr + 1.0)).abs() < 1e-12, "{t}");
            let floored = s.loss_weight(t, v, Some(5.0), 1.0);
            assert!(
                (floored - snr.clamp(1.0, 5.0) / (snr + 1.0)).abs() < 1e-12,
                "{t}"
            );
            let eps = s.loss_weight(t, Prediction::Epsilon, Some(5.0), 0.0);
            assert!((eps - snr.min(5.0) / snr).abs() < 1e-9, "{t}");
        }
        // The floor lifts the noisiest step from almost nothing to about 1.
        assert!(s.loss_weight(999, v, Some(5.0), 0.0) < 1e-4);
        assert!(s.loss_weight(999, v, Some(5.0), 1.0) > 0.99);
    }

    #[test]
    fn velocity_per_row() {
        let dev = Device::Cpu;
        let s = NoiseSchedule::default();
        let x0 = Tensor::ones((2, 3), candle_core::DType::F32, &dev).unwrap();
        let noise = (x0.clone() * 2.0).unwrap();
        let v = s
            .velocity(&x0, &noise, &[10, 900])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, t) in [(0, 10), (1, 900)] {
            let a = s.alpha_bar(t);
            let want = 2.0 * a.sqrt() - (1.0 - a).sqrt();
            assert!((f64::from(v[row][1]) - want).abs() < 1e-6, "{t}");
        }
    }

    #[test]
    fn noising_mixes_per_row() {
        let dev = Device::Cpu;
        let s = NoiseSchedule::default();
        let x0 = Tensor::ones((2, 3), candle_core::DType::F32, &dev).unwrap();
        let noise = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let xt = s
            .add_noise(&x0, &noise, &[0, 999])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!((f64::from(xt[0][0]) - s.alpha_bar(0).sqrt()).abs() < 1e-6);
        assert!((f64::from(xt[1][2]) - s.alpha_bar(999).sqrt()).abs() < 1e-6);
    }
}
