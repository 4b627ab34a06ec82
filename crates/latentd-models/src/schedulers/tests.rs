//! Behaviour shared by every scheduler (numerical parity lives in
//! `tests/schedulers_parity.rs`).

use candle_core::{Device, Tensor};

use super::*;

/// SD 1.5's scheduler config (as the sd1-tiny fixture ships it).
fn sd15_config() -> SchedulerConfig {
    serde_json::from_str(
        r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000,
            "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1}"#,
    )
    .unwrap()
}

fn tensor(seed: u64) -> Tensor {
    TorchRng::new(seed)
        .randn_tensor(&[1, 4, 4, 4], &Device::Cpu)
        .unwrap()
}

/// Runs a whole schedule on fixed fake model outputs; returns the final sample.
fn run(scheduler: &mut dyn Scheduler, rng: &mut TorchRng) -> Tensor {
    let mut sample = (tensor(1) * scheduler.init_noise_sigma()).unwrap();
    for step in 0..scheduler.timesteps().len() {
        let scaled = scheduler.scale_model_input(&sample, step).unwrap();
        let model_output = (tensor(2 + step as u64) + scaled * 0.01).unwrap();
        sample = scheduler.step(&model_output, step, &sample, rng).unwrap();
    }
    sample
}

#[test]
fn names_round_trip() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.to_string().parse::<SchedulerKind>().unwrap(), kind);
    }
    assert!("lms".parse::<SchedulerKind>().is_err());
    assert_eq!(
        SchedulerKind::from_class_name("PNDMScheduler"),
        Some(SchedulerKind::Pndm)
    );
    assert_eq!(
        SchedulerKind::from_class_name("DPMSolverMultistepScheduler"),
        Some(SchedulerKind::DpmPp2m)
    );
    assert_eq!(SchedulerKind::from_class_name("LMSDiscreteScheduler"), None);
}

#[test]
fn invalid_steps_and_eta_are_rejected() {
    let config = sd15_config();
    for steps in [0, 1001] {
        for kind in SchedulerKind::ALL {
            let result = build_scheduler(kind, &config, steps, 0.0);
            assert!(
                matches!(result, Err(Error::InvalidArgument(_))),
                "{kind} {steps}"
            );
        }
    }
    for eta in [-0.5, f64::NAN] {
        let result = build_scheduler(SchedulerKind::Ddim, &config, 10, eta);
        assert!(matches!(result, Err(Error::InvalidArgument(_))));
    }
    // Every training timestep is usable; with SD's steps_offset of 1 the last one overflows.
    let plain = SchedulerConfig::default();
    assert!(build_scheduler(SchedulerKind::Ddim, &plain, 1000, 0.0).is_ok());
    assert!(matches!(
        build_scheduler(SchedulerKind::Ddim, &config, 1000, 0.0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn unsupported_config_values_name_the_key() {
    let cases = [
        (
            SchedulerKind::Ddim,
            r#"{"thresholding": true}"#,
            "thresholding",
        ),
        (
            SchedulerKind::DpmPp2m,
            r#"{"algorithm_type": "sde-dpmsolver++"}"#,
            "algorithm_type",
        ),
        (
            SchedulerKind::DpmPp2m,
            r#"{"solver_order": 4}"#,
            "solver_order",
        ),
        (
            SchedulerKind::Euler,
            r#"{"interpolation_type": "cubic"}"#,
            "interpolation_type",
        ),
        (
            SchedulerKind::Pndm,
            r#"{"prediction_type": "sample"}"#,
            "prediction_type",
        ),
        (
            SchedulerKind::Euler,
            r#"{"timestep_spacing": "random"}"#,
            "timestep_spacing",
        ),
    ];
    for (kind, json, key) in cases {
        let config: SchedulerConfig = serde_json::from_str(json).unwrap();
        match build_scheduler(kind, &config, 10, 0.0) {
            Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key, "{kind} {json}"),
            other => panic!(
                "{kind} {json}: expected an unsupported-config error, got {:?}",
                other.err()
            ),
        }
    }
}

#[test]
fn steps_out_of_order_or_with_wrong_shapes_are_errors() {
    for kind in SchedulerKind::ALL {
        let mut scheduler = build_scheduler(kind, &sd15_config(), 5, 0.0).unwrap();
        let mut rng = TorchRng::new(0);
        let sample = tensor(1);
        let output = tensor(2);
        let steps = scheduler.timesteps().len();
        assert!(
            scheduler.step(&output, 1, &sample, &mut rng).is_err(),
            "{kind}"
        );
        assert!(
            scheduler.scale_model_input(&sample, steps).is_err(),
            "{kind}"
        );
        let wrong = Tensor::zeros((1, 4, 4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(
            scheduler.step(&wrong, 0, &sample, &mut rng).is_err(),
            "{kind}"
        );
        let next = scheduler.step(&output, 0, &sample, &mut rng).unwrap();
        assert_eq!(next.dims(), sample.dims());
        assert!(
            scheduler.step(&output, 0, &next, &mut rng).is_err(),
            "{kind} repeated step"
        );
    }
}

#[test]
fn multistep_history_rejects_a_changed_shape() {
    for kind in [SchedulerKind::Pndm, SchedulerKind::DpmPp2m] {
        let mut scheduler = build_scheduler(kind, &sd15_config(), 5, 0.0).unwrap();
        let mut rng = TorchRng::new(0);
        scheduler.step(&tensor(2), 0, &tensor(1), &mut rng).unwrap();
        let batch2 = Tensor::zeros((2, 4, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(
            scheduler.step(&batch2, 1, &batch2, &mut rng).is_err(),
            "{kind}"
        );
    }
}

#[test]
fn noise_is_drawn_only_where_diffusers_draws_it() {
    let config = sd15_config();
    let cases = [
        (SchedulerKind::Ddim, 0.0, false),
        (SchedulerKind::Ddim, 1.0, true),
        (SchedulerKind::Pndm, 1.0, false),
        (SchedulerKind::Euler, 0.0, false),
        (SchedulerKind::EulerAncestral, 0.0, true),
        (SchedulerKind::DpmPp2m, 0.0, false),
        (SchedulerKind::DpmPp2mKarras, 0.0, false),
    ];
    for (kind, eta, draws) in cases {
        let mut scheduler = build_scheduler(kind, &config, 4, eta).unwrap();
        let mut rng = TorchRng::new(5);
        let a = run(scheduler.as_mut(), &mut rng);
        let untouched = TorchRng::new(5).randn(&[7]) == rng.randn(&[7]);
        assert_eq!(untouched, !draws, "{kind}");
        // Same seed, same result; a different seed changes it only where noise is drawn.
        let mut again = build_scheduler(kind, &config, 4, eta).unwrap();
        let b = run(again.as_mut(), &mut TorchRng::new(5));
        let mut other = build_scheduler(kind, &config, 4, eta).unwrap();
        let c = run(other.as_mut(), &mut TorchRng::new(6));
        let diff = |x: &Tensor, y: &Tensor| crate::pipeline::max_abs_diff(x, y).unwrap();
        assert_eq!(diff(&a, &b), 0.0, "{kind}");
        assert_eq!(diff(&a, &c) > 0.0, draws, "{kind}");
    }
}

#[test]
fn schedulers_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let scheduler = build_scheduler(SchedulerKind::DpmPp2m, &sd15_config(), 3, 0.0).unwrap();
    assert_send(&scheduler);
}
