//! End to end: the quick preset trains, its losses fall, and the saved folder
//! loads and generates with the serving pipeline.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use latentd_models::pipeline::{DiffusionModel, StableDiffusion};
use latentd_train::eval::{evaluate_pipeline, held_out_captions, reconstruction_psnr};
use latentd_train::generate::{generate, Job};
use latentd_train::{train, Silent, TrainConfig};

#[test]
fn quick_training_produces_a_loadable_pipeline() {
    let tmp = tempfile::Builder::new()
        .prefix("latentd-train-quick-")
        .tempdir()
        .unwrap();
    let out = tmp.path();
    let cfg = TrainConfig::quick();
    let report = train(&cfg, out, &Silent).unwrap();

    assert!(report.vae.final_loss < report.vae.first_loss, "{report:?}");
    assert!(
        report.diffusion.final_loss < report.diffusion.first_loss,
        "{report:?}"
    );
    assert!(report.scaling_factor.is_finite() && report.scaling_factor > 0.0);
    for file in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "train.log",
        "train_report.json",
    ] {
        assert!(out.join(file).is_file(), "missing {file}");
    }
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    assert!(
        log.contains("vae step 20")
            && log.contains("diffusion step 20")
            && log.contains("diffusion round 1 step 6"),
        "{log}"
    );
    assert_eq!(report.diffusion_rounds.len(), cfg.diffusion_rounds.len());

    let pipe = StableDiffusion::load(out, &Device::Cpu).unwrap();
    assert_eq!(pipe.info().native_width, cfg.image_size as usize);
    assert_eq!(pipe.tokenizer().max_length(), cfg.arch.max_length);
    let jobs = [
        Job {
            prompt: "a red circle".into(),
            seed: 1,
        },
        Job {
            prompt: "a blue square on a white background".into(),
            seed: 2,
        },
    ];
    let images = generate(&pipe, &jobs, 3.0, 2).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].data.len(), 32 * 32 * 3);
    // Batched generation equals generating each job alone.
    let alone = generate(&pipe, &jobs[1..], 3.0, 1).unwrap();
    let worst = alone[0]
        .data
        .iter()
        .zip(&images[1].data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 2,
        "batched and single generation differ by {worst} levels"
    );

    // The evaluation runs on the folder and accounts for every image.
    let captions = held_out_captions(3).unwrap();
    let eval = evaluate_pipeline(&pipe, &captions, &[0, 1], 2.0).unwrap();
    assert_eq!(eval.images, 6);
    let colour = eval.attributes.iter().find(|a| a.name == "colour").unwrap();
    assert_eq!(colour.checked, 6, "every caption states a colour");
    assert!(eval.attributes.iter().all(|a| a.correct <= a.checked));
    assert!((0.0..=1.0).contains(&eval.match_rate));
    // The split by caption kind accounts for every image and every check.
    let kind = |c: &String| match latentd_demo::parse(c).unwrap().arrangement {
        latentd_demo::Arrangement::One {
            position: Some(_), ..
        } => 0,
        latentd_demo::Arrangement::One { .. } => 1,
        latentd_demo::Arrangement::Two { .. } => 2,
    };
    for (k, score) in eval.by_kind.iter().enumerate() {
        let n = captions.iter().filter(|c| kind(c) == k).count();
        assert_eq!(score.images, 2 * n, "kind {k}");
    }
    let total =
        |f: &dyn Fn(&latentd_train::KindScore) -> usize| eval.by_kind.iter().map(f).sum::<usize>();
    assert_eq!(total(&|k| k.matched), eval.matched);
    for (i, attribute) in eval.attributes.iter().enumerate() {
        assert_eq!(total(&|k| k.attributes[i].checked), attribute.checked);
        assert_eq!(total(&|k| k.attributes[i].correct), attribute.correct);
    }
    let psnr = reconstruction_psnr(&pipe, 2).unwrap();
    assert!(psnr.is_finite() && psnr > 0.0, "{psnr}");

    // Stage 2 again on the trained folder, without continuation rounds: a text
    // encoder frozen for every step equals one with no learning rate; frozen
    // for half the steps, it moves.
    let text_encoder = |scale: f64, frozen: usize| {
        let cfg = TrainConfig {
            text_learning_rate_scale: scale,
            text_frozen_steps: frozen,
            diffusion_rounds: Vec::new(),
            ..TrainConfig::quick()
        };
        latentd_train::train_diffusion_in(&cfg, out, &Silent).unwrap();
        candle_core::safetensors::load(out.join("text_encoder/model.safetensors"), &Device::Cpu)
            .unwrap()
    };
    let steps = cfg.diffusion.steps;
    let (untrained, frozen_all, frozen_half) = (
        text_encoder(0.0, 0),
        text_encoder(1.0, steps),
        text_encoder(1.0, steps / 2),
    );
    let largest_difference = |a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .map(|(name, t)| {
                let difference = (t - &b[name]).and_then(|d| d.abs()?.max_all());
                difference.and_then(|m| m.to_scalar::<f32>()).unwrap()
            })
            .fold(0.0f32, f32::max)
    };
    assert_eq!(largest_difference(&untrained, &frozen_all), 0.0);
    assert!(largest_difference(&untrained, &frozen_half) > 0.0);

    let weights = || {
        let load =
            |file: &str| candle_core::safetensors::load(out.join(file), &Device::Cpu).unwrap();
        let mut all = load("unet/diffusion_pytorch_model.safetensors");
        all.extend(load("text_encoder/model.safetensors"));
        all
    };
    // Data-parallel shards: the batch in one piece or in three gives the same
    // first loss and, after the stage, weights that differ only by rounding.
    let sharded = |shards: usize| {
        let cfg = TrainConfig {
            shards,
            diffusion_rounds: Vec::new(),
            ..cfg.clone()
        };
        let reports = latentd_train::train_diffusion_in(&cfg, out, &Silent).unwrap();
        (reports[0].first_loss, weights())
    };
    let (whole_loss, whole) = sharded(1);
    let (three_loss, three) = sharded(3);
    assert!(
        (whole_loss - three_loss).abs() <= 1e-5 * whole_loss,
        "{whole_loss} vs {three_loss}"
    );
    let shard_difference = largest_difference(&whole, &three);
    assert!(shard_difference < 1e-3, "{shard_difference}");

    // Continuation rounds: the main stage and its rounds in one call equal the
    // main stage, saved, then the rounds continued from the folder.
    let reports = latentd_train::train_diffusion_in(&cfg, out, &Silent).unwrap();
    assert_eq!(reports.len(), 1 + cfg.diffusion_rounds.len());
    let in_one_call = weights();
    let main_only = TrainConfig {
        diffusion_rounds: Vec::new(),
        ..cfg.clone()
    };
    latentd_train::train_diffusion_in(&main_only, out, &Silent).unwrap();
    let main_stage = weights();
    let reports = latentd_train::continue_diffusion_in(&cfg, out, 0, &Silent).unwrap();
    assert_eq!(reports.len(), cfg.diffusion_rounds.len());
    let continued = weights();
    assert!(latentd_train::continue_diffusion_in(&cfg, out, 2, &Silent).is_err());
    assert_eq!(largest_difference(&in_one_call, &continued), 0.0);
    assert!(largest_difference(&main_stage, &continued) > 0.0);

    // A round's own text-encoder rate: at zero the round moves only the UNet.
    let text_fixed = TrainConfig {
        diffusion_rounds: vec![latentd_train::DiffusionRound {
            text_learning_rate_scale: Some(0.0),
            ..cfg.diffusion_rounds[0].clone()
        }],
        ..cfg.clone()
    };
    latentd_train::train_diffusion_in(&main_only, out, &Silent).unwrap();
    latentd_train::continue_diffusion_in(&text_fixed, out, 0, &Silent).unwrap();
    let round_weights = weights();
    let (text, unet): (Vec<_>, Vec<_>) = round_weights
        .keys()
        .partition(|name| name.starts_with("text_model."));
    assert!(!text.is_empty() && !unet.is_empty());
    let part = |all: &HashMap<String, Tensor>, names: &[&String]| -> HashMap<String, Tensor> {
        names.iter().map(|&n| (n.clone(), all[n].clone())).collect()
    };
    // (Not bit-identical: the round's moving average of unchanged weights rounds.)
    let text_change = |weights: &HashMap<String, Tensor>| {
        largest_difference(&part(&main_stage, &text), &part(weights, &text))
    };
    assert!(
        text_change(&round_weights) < 1e-6,
        "{}",
        text_change(&round_weights)
    );
    assert!(
        text_change(&continued) > 1e-4,
        "{}",
        text_change(&continued)
    );
    assert!(largest_difference(&part(&main_stage, &unet), &part(&round_weights, &unet)) > 0.0);
}
