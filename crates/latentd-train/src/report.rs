//! What a training run reports.

use serde::{Deserialize, Serialize};

/// Loss and timing of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Trainable parameters.
    pub parameters: usize,
    /// Steps run.
    pub steps: usize,
    /// Loss of the first step.
    pub first_loss: f32,
    /// Smoothed loss over the first `WINDOW` steps.
    pub early_loss: f32,
    /// Smoothed loss at the end.
    pub final_loss: f32,
    /// Wall-clock seconds since training started when the stage ended.
    pub seconds: f64,
}

/// Steps averaged for [`StageReport::early_loss`].
const WINDOW: usize = 10;

impl StageReport {
    /// An empty report for a stage with `parameters` parameters.
    pub(crate) fn new(parameters: usize) -> Self {
        Self {
            parameters,
            steps: 0,
            first_loss: f32::NAN,
            early_loss: 0.0,
            final_loss: f32::NAN,
            seconds: 0.0,
        }
    }

    /// Records step `step`'s loss and the smoothed loss after it.
    pub(crate) fn observe(&mut self, step: usize, loss: f32, smoothed: f32) {
        if step == 0 {
            self.first_loss = loss;
        }
        if step < WINDOW {
            self.early_loss += loss / WINDOW as f32;
        }
        self.steps = step + 1;
        self.final_loss = smoothed;
    }
}

/// Summary of a whole training run (also written to `train_report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Tokens in the learned vocabulary.
    pub vocab_size: usize,
    /// Stage 1.
    pub vae: StageReport,
    /// Stage 1b (decoder fine-tuning), one report per round.
    pub decoder: Vec<StageReport>,
    /// The autoencoder's latent scaling factor.
    pub scaling_factor: f64,
    /// Stage 2 (UNet and text encoder together).
    pub diffusion: StageReport,
    /// Stage-2 continuation rounds, one report per round.
    pub diffusion_rounds: Vec<StageReport>,
    /// Parameters of the UNet.
    pub unet_parameters: usize,
    /// Parameters of the text encoder.
    pub text_encoder_parameters: usize,
    /// Total wall-clock seconds.
    pub seconds: f64,
}
