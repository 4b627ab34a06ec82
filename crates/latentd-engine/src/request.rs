//! The typed gate between what a client sends and what the engine runs.

use latentd_models::pipeline::{GenerationParams, ModelInfo};
use latentd_models::schedulers::SchedulerKind;

use crate::config::EngineConfig;
use crate::error::ValidationError;
use crate::seed::random_seed;

/// A generation request as a client states it; unset fields take defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateRequest {
    /// Model id; `None` means the served model.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: Option<String>,
    /// Width in pixels (default: the model's native width).
    pub width: Option<usize>,
    /// Height in pixels (default: the model's native height).
    pub height: Option<usize>,
    /// Denoising steps.
    pub steps: Option<usize>,
    /// Classifier-free guidance scale.
    pub guidance_scale: Option<f64>,
    /// Scheduler name (default: the model folder's own).
    pub scheduler: Option<String>,
    /// Seed (default: picked by the server and reported back).
    pub seed: Option<u64>,
    /// Number of images.
    pub n: Option<usize>,
    /// DDIM eta.
    pub eta: Option<f64>,
}

/// A request that passed validation: exactly what the worker will run.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    /// Model id.
    pub model: String,
    /// The generation parameters, defaults filled in and seed chosen.
    pub params: GenerationParams,
}

/// Prompts longer than this many bytes are refused before tokenizing them.
const MAX_PROMPT_BYTES: usize = 16 * 1024;

/// Checks a request against the model and the configured limits and fills in defaults.
///
/// `count_tokens` tells how many content tokens a prompt has.
pub fn validate(
    req: &GenerateRequest,
    model: &ModelInfo,
    config: &EngineConfig,
    count_tokens: impl Fn(&str) -> Option<usize>,
) -> Result<ValidRequest, ValidationError> {
    if let Some(name) = &req.model {
        if name != &model.name {
            return Err(ValidationError::UnknownModel {
                name: name.clone(),
                available: model.name.clone(),
            });
        }
    }
    if req.prompt.trim().is_empty() {
        return Err(ValidationError::EmptyPrompt);
    }
    let max_tokens = model.max_prompt_tokens;
    for text in std::iter::once(&req.prompt).chain(req.negative_prompt.as_ref()) {
        let tokens = if text.len() > MAX_PROMPT_BYTES {
            None
        } else {
            count_tokens(text)
        };
        match tokens {
            Some(t) if t <= max_tokens => {}
            Some(t) => {
                return Err(ValidationError::PromptTooLong {
                    tokens: t,
                    max: max_tokens,
                })
            }
            None => {
                return Err(ValidationError::PromptTooLong {
                    tokens: text.len(),
                    max: max_tokens,
                })
            }
        }
    }

    let multiple = model.vae_scale_factor.max(8);
    let width = req.width.unwrap_or(model.native_width);
    let height = req.height.unwrap_or(model.native_height);
    for (field, value, max) in [
        ("width", width, config.max_width),
        ("height", height, config.max_height),
    ] {
        if value == 0 || !value.is_multiple_of(multiple) {
            return Err(ValidationError::SizeNotMultiple {
                field,
                value,
                multiple,
            });
        }
        if value > max {
            return Err(ValidationError::SizeTooLarge { field, value, max });
        }
    }

    let steps = req.steps.unwrap_or(config.default_steps);
    if steps == 0 || steps > config.max_steps {
        return Err(ValidationError::Steps {
            value: steps,
            max: config.max_steps,
        });
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > config.max_n {
        return Err(ValidationError::Count {
            value: n,
            max: config.max_n,
        });
    }
    let guidance_scale = req.guidance_scale.unwrap_or(config.default_guidance);
    if !guidance_scale.is_finite() || !(0.0..=config.max_guidance).contains(&guidance_scale) {
        return Err(ValidationError::Guidance {
            value: guidance_scale,
            max: config.max_guidance,
        });
    }
    let eta = req.eta.unwrap_or(0.0);
    if !eta.is_finite() || !(0.0..=1.0).contains(&eta) {
        return Err(ValidationError::Eta(eta));
    }
    let scheduler = match &req.scheduler {
        None => model.default_scheduler,
        Some(name) => {
            name.parse::<SchedulerKind>()
                .map_err(|_| ValidationError::UnknownScheduler {
                    name: name.clone(),
                    available: SchedulerKind::ALL
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?
        }
    };
    Ok(ValidRequest {
        model: model.name.clone(),
        params: GenerationParams {
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            width,
            height,
            steps,
            guidance_scale,
            scheduler,
            seed: req.seed.unwrap_or_else(random_seed),
            n,
            eta,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            name: "tiny".into(),
            family: "stable-diffusion-1".into(),
            native_width: 32,
            native_height: 32,
            vae_scale_factor: 4,
            latent_channels: 4,
            max_prompt_tokens: 75,
            default_scheduler: SchedulerKind::Pndm,
            prediction_type: "epsilon".into(),
        }
    }

    fn words(s: &str) -> Option<usize> {
        Some(s.split_whitespace().count())
    }

    fn req() -> GenerateRequest {
        GenerateRequest {
            prompt: "a red circle".into(),
            ..Default::default()
        }
    }

    #[test]
    fn fills_defaults_from_model_and_config() {
        let cfg = EngineConfig::default();
        let v = validate(&req(), &model(), &cfg, words).unwrap();
        assert_eq!(v.model, "tiny");
        assert_eq!((v.params.width, v.params.height), (32, 32));
        assert_eq!(v.params.steps, cfg.default_steps);
        assert_eq!(v.params.scheduler, SchedulerKind::Pndm);
        assert_eq!(v.params.n, 1);
        let seeded = GenerateRequest {
            seed: Some(u64::MAX),
            ..req()
        };
        assert_eq!(
            validate(&seeded, &model(), &cfg, words)
                .unwrap()
                .params
                .seed,
            u64::MAX
        );
    }

    #[test]
    fn each_rule_has_its_own_error() {
        let cfg = EngineConfig {
            max_width: 64,
            ..EngineConfig::default()
        };
        type Check = fn(&ValidationError) -> bool;
        let cases: Vec<(GenerateRequest, Check)> = vec![
            (
                GenerateRequest {
                    prompt: "  ".into(),
                    ..req()
                },
                |e| matches!(e, ValidationError::EmptyPrompt),
            ),
            (
                GenerateRequest {
                    prompt: "w ".repeat(80),
                    ..req()
                },
                |e| matches!(e, ValidationError::PromptTooLong { tokens: 80, .. }),
            ),
            (
                GenerateRequest {
                    negative_prompt: Some("w ".repeat(76)),
                    ..req()
                },
                |e| matches!(e, ValidationError::PromptTooLong { .. }),
            ),
            (
                GenerateRequest {
                    width: Some(36),
                    ..req()
                },
                |e| matches!(e, ValidationError::SizeNotMultiple { field: "width", .. }),
            ),
            (
                GenerateRequest {
                    height: Some(0),
                    ..req()
                },
                |e| {
                    matches!(
                        e,
                        ValidationError::SizeNotMultiple {
                            field: "height",
                            ..
                        }
                    )
                },
            ),
            (
                GenerateRequest {
                    width: Some(72),
                    ..req()
                },
                |e| matches!(e, ValidationError::SizeTooLarge { .. }),
            ),
            (
                GenerateRequest {
                    steps: Some(0),
                    ..req()
                },
                |e| matches!(e, ValidationError::Steps { .. }),
            ),
            (
                GenerateRequest {
                    steps: Some(151),
                    ..req()
                },
                |e| matches!(e, ValidationError::Steps { .. }),
            ),
            (
                GenerateRequest {
                    n: Some(9),
                    ..req()
                },
                |e| matches!(e, ValidationError::Count { .. }),
            ),
            (
                GenerateRequest {
                    guidance_scale: Some(f64::INFINITY),
                    ..req()
                },
                |e| matches!(e, ValidationError::Guidance { .. }),
            ),
            (
                GenerateRequest {
                    guidance_scale: Some(51.0),
                    ..req()
                },
                |e| matches!(e, ValidationError::Guidance { .. }),
            ),
            (
                GenerateRequest {
                    eta: Some(-0.1),
                    ..req()
                },
                |e| matches!(e, ValidationError::Eta(_)),
            ),
            (
                GenerateRequest {
                    scheduler: Some("lms".into()),
                    ..req()
                },
                |e| matches!(e, ValidationError::UnknownScheduler { .. }),
            ),
            (
                GenerateRequest {
                    model: Some("sdxl".into()),
                    ..req()
                },
                |e| matches!(e, ValidationError::UnknownModel { .. }),
            ),
        ];
        for (r, check) in cases {
            let err = validate(&r, &model(), &cfg, words).unwrap_err();
            assert!(check(&err), "{r:?} gave {err:?}");
        }
    }

    #[test]
    fn scheduler_names_parse() {
        let cfg = EngineConfig::default();
        for kind in SchedulerKind::ALL {
            let r = GenerateRequest {
                scheduler: Some(kind.to_string()),
                ..req()
            };
            assert_eq!(
                validate(&r, &model(), &cfg, words)
                    .unwrap()
                    .params
                    .scheduler,
                kind
            );
        }
    }
}
