//! What a single file lacks and latentd ships: the CLIP tokenizer (SD 1.x and 2.x use the
//! same BPE; SD 1 pads with `<|endoftext|>`, SD 2 with `!`) and the scheduler settings of
//! stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1.

use std::path::Path;

use super::detect::SdVersion;
use crate::schedulers::{PredictionType, SchedulerConfig, SchedulerKind};
use crate::text::ClipTokenizer;
use crate::{Error, Result};

/// CLIP's `vocab.json` (49408 tokens), as openai/clip-vit-large-patch14 ships it.
const CLIP_VOCAB: &str = include_str!("../../assets/clip/vocab.json");
/// CLIP's `merges.txt`.
const CLIP_MERGES: &str = include_str!("../../assets/clip/merges.txt");
/// The context length of both text encoders.
const MAX_LENGTH: usize = 77;

/// stable-diffusion-v1-5's `scheduler/scheduler_config.json`: PNDM, epsilon.
const SD15_SCHEDULER: &str = include_str!("../../assets/schedulers/sd15_scheduler_config.json");
/// stabilityai/stable-diffusion-2-1's: DDIM, v_prediction (the 768 model).
const SD21_SCHEDULER: &str = include_str!("../../assets/schedulers/sd21_scheduler_config.json");

/// The tokenizer diffusers pairs with a checkpoint of this generation.
pub(crate) fn tokenizer(version: SdVersion) -> Result<ClipTokenizer> {
    let pad = match version {
        SdVersion::V1 => "<|endoftext|>",
        SdVersion::V2 => "!",
    };
    ClipTokenizer::from_vocab_merges_text(
        (Path::new("<built-in CLIP vocab.json>"), CLIP_VOCAB),
        (Path::new("<built-in CLIP merges.txt>"), CLIP_MERGES),
        pad,
        MAX_LENGTH,
    )
}

/// The scheduler settings of the diffusers repository a checkpoint's type points to:
/// SD 1.5's for SD 1.x; SD 2.1's for SD 2.x (v-prediction), but for its inpainting model,
/// which predicts noise and is sampled with SD 1.5's settings.
pub(crate) fn scheduler(
    version: SdVersion,
    inpainting: bool,
) -> Result<(SchedulerConfig, SchedulerKind)> {
    let (name, text) = match (version, inpainting) {
        (SdVersion::V2, false) => ("stable-diffusion-2-1", SD21_SCHEDULER),
        _ => ("stable-diffusion-v1-5", SD15_SCHEDULER),
    };
    let bad =
        |message: String| Error::InvalidArgument(format!("built-in {name} scheduler: {message}"));
    let config: SchedulerConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let class = config.class_name().unwrap_or_default();
    let kind =
        SchedulerKind::from_class_name(class).ok_or_else(|| bad(format!("class {class}")))?;
    Ok((config, kind))
}

/// A `prediction_type` by its diffusers name: `epsilon`, `v_prediction` or `sample`.
pub fn parse_prediction_type(name: &str) -> Result<PredictionType> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        Error::InvalidArgument(format!(
            "unknown prediction type {name:?} (expected epsilon, v_prediction or sample)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_tokenizers_pad_as_each_generation() {
        let sd1 = tokenizer(SdVersion::V1).unwrap();
        assert_eq!(sd1.vocab_size(), 49408);
        let ids = sd1.encode("a photo of a cat").unwrap();
        assert_eq!(ids[..8], [49406, 320, 1125, 539, 320, 2368, 49407, 49407]);
        assert_eq!(ids.len(), 77);
        let sd2 = tokenizer(SdVersion::V2).unwrap();
        assert_eq!(
            sd2.encode("a cat").unwrap()[..5],
            [49406, 320, 2368, 49407, 0]
        );
    }

    #[test]
    fn shipped_schedulers_are_sd15_and_sd21() {
        let (sd1, kind) = scheduler(SdVersion::V1, false).unwrap();
        assert_eq!(
            (kind, sd1.prediction_type()),
            (SchedulerKind::Pndm, PredictionType::Epsilon)
        );
        assert_eq!(
            (sd1.steps_offset, sd1.skip_prk_steps),
            (Some(1), Some(true))
        );
        let (sd2, kind) = scheduler(SdVersion::V2, false).unwrap();
        assert_eq!(
            (kind, sd2.prediction_type()),
            (SchedulerKind::Ddim, PredictionType::VPrediction)
        );
        assert_eq!(sd2.beta_schedule.as_deref(), Some("scaled_linear"));
        let (inpaint, _) = scheduler(SdVersion::V2, true).unwrap();
        assert_eq!(inpaint.prediction_type(), PredictionType::Epsilon);
        assert_eq!(
            parse_prediction_type("v_prediction").unwrap(),
            PredictionType::VPrediction
        );
        assert!(parse_prediction_type("flow").is_err());
    }
}
