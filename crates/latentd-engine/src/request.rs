//! The typed gate between what a client sends and what the engine runs.

use std::sync::Arc;

use latentd_models::pipeline::{ConditioningKind, GenerationParams, Mask, ModelInfo, RgbImage};
use latentd_models::schedulers::SchedulerKind;

use crate::config::EngineConfig;
use crate::error::ValidationError;
use crate::input_image::{resize_image, resize_mask};
use crate::seed::random_seed;

/// A generation request as a client states it; unset fields take defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateRequest {
    /// Model id; `None` means the first served model.
    pub model: Option<String>,
    /// The prompt (required by text-conditioned models, refused by the others).
    pub prompt: Option<String>,
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
    /// The input image, decoded: the conditioning image of image-conditioned models, or
    /// the image img2img and inpainting start from.
    pub image: Option<Arc<RgbImage>>,
    /// The inpainting mask, decoded (same size as `image`; bright = repaint).
    pub mask: Option<Arc<Mask>>,
    /// How much of the input image to repaint, in (0, 1].
    pub strength: Option<f64>,
}

/// A request that passed validation: exactly what the worker will run.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    /// Model id.
    pub model: String,
    /// Index of the model among the engine's models.
    pub model_index: usize,
    /// The generation parameters, defaults filled in and seed chosen.
    pub params: GenerationParams,
    /// Rows the job adds to each denoiser call.
    pub rows: usize,
    /// Latent height and width.
    pub latent_size: (usize, usize),
}

/// Prompts longer than this many bytes are refused before tokenizing them.
const MAX_PROMPT_BYTES: usize = 16 * 1024;

/// Checks a request against the model (number `model_index` of the engine's) and the
/// configured limits and fills in defaults.
///
/// `count_tokens` tells how many content tokens a prompt has.
pub fn validate(
    req: &GenerateRequest,
    model_index: usize,
    model: &ModelInfo,
    config: &EngineConfig,
    count_tokens: impl Fn(&str) -> Option<usize>,
) -> Result<ValidRequest, ValidationError> {
    check_conditioning(req, model)?;
    if let Some(max_tokens) = model.max_prompt_tokens {
        // An empty prompt is a prompt (diffusers takes `""`: the unconditional embedding,
        // guided by nothing); only a missing one is refused.
        let prompt = req
            .prompt
            .as_deref()
            .ok_or(ValidationError::PromptRequired)?;
        for text in std::iter::once(prompt).chain(req.negative_prompt.as_deref()) {
            if text.len() > MAX_PROMPT_BYTES {
                return Err(ValidationError::PromptTooManyBytes {
                    bytes: text.len(),
                    max: MAX_PROMPT_BYTES,
                });
            }
            let tokens = count_tokens(text)
                .ok_or_else(|| ValidationError::Other("the prompt cannot be tokenized".into()))?;
            if tokens > max_tokens {
                return Err(ValidationError::PromptTooLong {
                    tokens,
                    max: max_tokens,
                });
            }
        }
    }

    let (width, height) = output_size(req, model, config)?;
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
    let guidance_scale = if model.takes_guidance() {
        req.guidance_scale.unwrap_or(config.default_guidance)
    } else {
        // Reported in the PNG parameters; no unconditional row runs.
        1.0
    };
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
    let (image, mask) = edit_inputs(req, model, width, height)?;
    let params = GenerationParams {
        prompt: req.prompt.clone().unwrap_or_default(),
        negative_prompt: req.negative_prompt.clone(),
        width,
        height,
        steps,
        guidance_scale,
        scheduler,
        seed: req.seed.unwrap_or_else(random_seed),
        n,
        eta,
        image,
        mask,
        strength: req.strength,
        step_noise_seed: None,
    };
    // The default strength filled in, so that it is recorded with the images.
    let params = GenerationParams {
        strength: edit_strength(&params, model)?,
        ..params
    };
    if eta != 0.0 && scheduler != SchedulerKind::Ddim {
        return Err(ValidationError::EtaNotUsed {
            scheduler: scheduler.to_string(),
        });
    }
    Ok(ValidRequest {
        model: model.name.clone(),
        model_index,
        rows: model.rows(&params),
        latent_size: model.latent_size(width, height),
        params,
    })
}

/// Refuses inputs the model does not take, and requires the ones it needs.
fn check_conditioning(req: &GenerateRequest, model: &ModelInfo) -> Result<(), ValidationError> {
    let refuse = |field: &'static str, reason: &str| ValidationError::NotAccepted {
        field,
        model: model.name.clone(),
        reason: reason.to_string(),
    };
    let family = model.family.capability();
    if !model.takes_prompt() {
        let reason = format!("it is a {family} model and reads no text");
        if req.prompt.is_some() {
            return Err(refuse("prompt", &reason));
        }
        if req.negative_prompt.is_some() {
            return Err(refuse("negative_prompt", &reason));
        }
    }
    if !model.takes_guidance() && req.guidance_scale.is_some() {
        return Err(refuse(
            "guidance_scale",
            &format!("it is a {family} model without classifier-free guidance"),
        ));
    }
    for (field, given) in [
        ("mask", req.mask.is_some()),
        ("strength", req.strength.is_some()),
    ] {
        if given && !model.image_edits {
            return Err(refuse(
                field,
                &format!("it is a {family} model without img2img or inpainting"),
            ));
        }
        if given && req.image.is_none() {
            return Err(ValidationError::Other(format!(
                "`{field}` needs an input image (`image`) to edit"
            )));
        }
    }
    match (&req.image, model.accepts_image(), model.takes_image()) {
        (Some(_), false, _) => Err(refuse(
            "image",
            &format!("it is a {family} model and takes no input image"),
        )),
        (None, _, true) => Err(ValidationError::ImageRequired {
            model: model.name.clone(),
        }),
        _ => Ok(()),
    }
}

/// The strength of an img2img or inpainting job (its own or the default of its kind),
/// checked to be in (0, 1].
fn edit_strength(
    params: &GenerationParams,
    model: &ModelInfo,
) -> Result<Option<f64>, ValidationError> {
    if !model.image_edits {
        return Ok(None);
    }
    let Some(strength) = params.effective_strength(model.mask_channels) else {
        return Ok(None);
    };
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ValidationError::Strength(strength));
    }
    Ok(Some(strength))
}

/// The input image and mask of an img2img or inpainting job, at the output size (the
/// request's, which may differ from the image's); other requests' image as given.
#[allow(clippy::type_complexity)]
fn edit_inputs(
    req: &GenerateRequest,
    model: &ModelInfo,
    width: usize,
    height: usize,
) -> Result<(Option<Arc<RgbImage>>, Option<Arc<Mask>>), ValidationError> {
    let Some(image) = &req.image else {
        return Ok((None, None));
    };
    if !model.image_edits {
        return Ok((Some(image.clone()), None));
    }
    let mask = match &req.mask {
        None => None,
        Some(mask) => {
            if (mask.width, mask.height) != (image.width, image.height) {
                return Err(ValidationError::MaskSize {
                    mask_width: mask.width,
                    mask_height: mask.height,
                    width: image.width,
                    height: image.height,
                });
            }
            Some(Arc::new(resize_mask(mask, width, height)?))
        }
    };
    let image = if (image.width, image.height) == (width, height) {
        image.clone()
    } else {
        Arc::new(resize_image(image, width, height)?)
    };
    Ok((Some(image), mask))
}

/// The output size: the request's (or the model's native one) for generated images;
/// the input image's size times the model's factor for super-resolution; for img2img
/// and inpainting the request's, by default the input image's rounded down to the
/// model's size multiple (as diffusers' image processor rounds it).
fn output_size(
    req: &GenerateRequest,
    model: &ModelInfo,
    config: &EngineConfig,
) -> Result<(usize, usize), ValidationError> {
    let multiple = model.size_multiple;
    let (width, height) = match &req.image {
        Some(image) if model.image_edits => (
            req.width.unwrap_or(image.width / multiple * multiple),
            req.height.unwrap_or(image.height / multiple * multiple),
        ),
        Some(image) if model.conditioning == ConditioningKind::Image => {
            let f = model.vae_scale_factor;
            let (width, height) = (image.width * f, image.height * f);
            for (field, given, value) in
                [("width", req.width, width), ("height", req.height, height)]
            {
                if given.is_some_and(|g| g != value) {
                    return Err(ValidationError::Other(format!(
                        "{field} is fixed by the input image: {} upscales {}x{} to {width}x{height}",
                        model.name, image.width, image.height
                    )));
                }
            }
            (width, height)
        }
        _ => (
            req.width.unwrap_or(model.native_width),
            req.height.unwrap_or(model.native_height),
        ),
    };
    let (max_width, max_height) = config.max_size(model);
    for (field, value, max) in [("width", width, max_width), ("height", height, max_height)] {
        if value == 0 || !value.is_multiple_of(multiple) {
            return Err(if req.image.is_some() && model.image_edits {
                ValidationError::Other(format!(
                    "{field} {value}: the output size must be a positive multiple of {multiple} \
                     (by default the input image's size rounded down to one)"
                ))
            } else if req.image.is_some() {
                let f = model.vae_scale_factor.max(1);
                ValidationError::Other(format!(
                    "the input image's {field} must be a positive multiple of {}, got {}",
                    (multiple / f).max(1),
                    value / f
                ))
            } else {
                ValidationError::SizeNotMultiple {
                    field,
                    value,
                    multiple,
                }
            });
        }
        if value > max {
            return Err(ValidationError::SizeTooLarge { field, value, max });
        }
    }
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    use latentd_models::pipeline::{
        AutoencoderKind, ConditioningKind, Family, GuidanceRule, InitialNoise, SamplingRules,
    };

    fn model() -> ModelInfo {
        ModelInfo {
            name: "tiny".into(),
            family: Family::StableDiffusion1,
            conditioning: ConditioningKind::Text,
            autoencoder: AutoencoderKind::Kl,
            native_width: 32,
            native_height: 32,
            vae_scale_factor: 4,
            size_multiple: 8,
            latent_channels: 4,
            max_prompt_tokens: Some(75),
            rules: SamplingRules {
                guidance: GuidanceRule::AboveOne,
                initial_noise: InitialNoise::Scaled,
                scale_model_input: true,
            },
            default_scheduler: SchedulerKind::Pndm,
            prediction_type: "epsilon".into(),
            image_edits: false,
            mask_channels: false,
        }
    }

    fn unconditional() -> ModelInfo {
        ModelInfo {
            name: "faces".into(),
            family: Family::LdmUnconditional,
            conditioning: ConditioningKind::None,
            autoencoder: AutoencoderKind::Vq,
            max_prompt_tokens: None,
            rules: SamplingRules {
                guidance: GuidanceRule::Never,
                ..model().rules
            },
            ..model()
        }
    }

    fn upscaler() -> ModelInfo {
        ModelInfo {
            name: "sr".into(),
            family: Family::LdmSuperResolution,
            conditioning: ConditioningKind::Image,
            size_multiple: 16,
            ..unconditional()
        }
    }

    fn image(width: usize, height: usize) -> Option<Arc<RgbImage>> {
        Some(Arc::new(RgbImage {
            width,
            height,
            data: vec![0; width * height * 3],
        }))
    }

    fn words(s: &str) -> Option<usize> {
        Some(s.split_whitespace().count())
    }

    fn req() -> GenerateRequest {
        GenerateRequest {
            prompt: Some("a red circle".into()),
            ..Default::default()
        }
    }

    #[test]
    fn fills_defaults_from_model_and_config() {
        let cfg = EngineConfig::default();
        let v = validate(&req(), 0, &model(), &cfg, words).unwrap();
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
            validate(&seeded, 0, &model(), &cfg, words)
                .unwrap()
                .params
                .seed,
            u64::MAX
        );
    }

    #[test]
    fn each_rule_has_its_own_error() {
        let cfg = EngineConfig {
            max_width: Some(64),
            ..EngineConfig::default()
        };
        type Check = fn(&ValidationError) -> bool;
        let cases: Vec<(GenerateRequest, Check)> = vec![
            (
                GenerateRequest {
                    prompt: None,
                    ..req()
                },
                |e| matches!(e, ValidationError::PromptRequired),
            ),
            (
                GenerateRequest {
                    prompt: Some("w ".repeat(80)),
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
                    prompt: Some("w".repeat(MAX_PROMPT_BYTES + 1)),
                    ..req()
                },
                |e| matches!(e, ValidationError::PromptTooManyBytes { .. }),
            ),
            (
                GenerateRequest {
                    eta: Some(0.5),
                    scheduler: Some("euler".into()),
                    ..req()
                },
                |e| matches!(e, ValidationError::EtaNotUsed { .. }),
            ),
            (
                GenerateRequest {
                    image: image(8, 8),
                    ..req()
                },
                |e| matches!(e, ValidationError::NotAccepted { field: "image", .. }),
            ),
        ];
        for (r, check) in cases {
            let err = validate(&r, 0, &model(), &cfg, words).unwrap_err();
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
                validate(&r, 0, &model(), &cfg, words)
                    .unwrap()
                    .params
                    .scheduler,
                kind
            );
        }
    }

    #[test]
    fn unconditional_models_refuse_text_and_guidance() {
        let cfg = EngineConfig::default();
        let none = GenerateRequest::default();
        let v = validate(&none, 2, &unconditional(), &cfg, words).unwrap();
        assert_eq!((v.model_index, v.rows, v.latent_size), (2, 1, (8, 8)));
        assert_eq!(v.params.prompt, "");
        for (r, field) in [
            (req(), "prompt"),
            (
                GenerateRequest {
                    negative_prompt: Some("x".into()),
                    ..none.clone()
                },
                "negative_prompt",
            ),
            (
                GenerateRequest {
                    guidance_scale: Some(3.0),
                    ..none.clone()
                },
                "guidance_scale",
            ),
        ] {
            let err = validate(&r, 0, &unconditional(), &cfg, words).unwrap_err();
            assert!(
                matches!(&err, ValidationError::NotAccepted { field: f, .. } if *f == field),
                "{err:?}"
            );
            assert!(err.to_string().contains("faces"), "{err}");
        }
    }

    #[test]
    fn super_resolution_takes_its_size_from_the_image() {
        let cfg = EngineConfig::default();
        let r = GenerateRequest {
            image: image(8, 12),
            n: Some(2),
            ..Default::default()
        };
        let v = validate(&r, 0, &upscaler(), &cfg, words).unwrap();
        assert_eq!((v.params.width, v.params.height), (32, 48));
        assert_eq!((v.latent_size, v.rows), ((12, 8), 2));
        let missing = validate(&GenerateRequest::default(), 0, &upscaler(), &cfg, words);
        assert!(matches!(
            missing,
            Err(ValidationError::ImageRequired { .. })
        ));
        let wrong_size = GenerateRequest {
            width: Some(64),
            ..r.clone()
        };
        assert!(validate(&wrong_size, 0, &upscaler(), &cfg, words).is_err());
        let odd = GenerateRequest {
            image: image(6, 8),
            ..r.clone()
        };
        let err = validate(&odd, 0, &upscaler(), &cfg, words).unwrap_err();
        assert!(err.to_string().contains("multiple of 4"), "{err}");
        let huge = GenerateRequest {
            image: image(512, 8),
            ..r
        };
        assert!(matches!(
            validate(&huge, 0, &upscaler(), &cfg, words),
            Err(ValidationError::SizeTooLarge { .. })
        ));
    }
}
