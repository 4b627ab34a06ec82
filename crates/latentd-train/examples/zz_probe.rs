use std::path::PathBuf;
use candle_core::{Device, Tensor, D};
use latentd_demo::{analyse_image, render, sample_split, AnalyserConfig, Rng, SamplerConfig, Split};
use latentd_models::pipeline::StableDiffusion;
use latentd_train::data::to_planar;
use latentd_train::generate::to_demo_image;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let pipe = StableDiffusion::load(&PathBuf::from(&a[0]), &Device::Cpu)?;
    let mut rng = Rng::new(77);
    let cfg = SamplerConfig { two_objects: 0, ..SamplerConfig::default() };
    let ks = [0.85, 1.0, 1.15, 1.3, 1.5];
    let mut sums = vec![0.0; ks.len()]; let mut n = 0;
    for _ in 0..60 {
        let scene = sample_split(&mut rng, &cfg, Split::HeldOut)?;
        let img = render(&scene, 32)?;
        let x = Tensor::from_vec(to_planar(&img), (1, 3, 32, 32), &Device::Cpu)?;
        let z = pipe.encode_images(&x)?; // [1,c,8,8]
        let flat = z.flatten_from(2)?; // [1,c,64]
        let sorted = flat.contiguous()?.sort_last_dim(true)?.0;
        let med = sorted.narrow(D::Minus1, 32, 1)?.unsqueeze(3)?; // [1,c,1,1]
        let mut sides = vec![];
        for &k in &ks {
            let zk = (med.broadcast_add(&(z.broadcast_sub(&med)? * k)?))?;
            let im = &pipe.decode(&zk)?[0];
            let an = analyse_image(&to_demo_image(im)?, &AnalyserConfig::default());
            sides.push(an.objects.first().map(|o| o.side).unwrap_or(0.0));
        }
        if sides[1] > 0.0 { n += 1; for i in 0..ks.len() { sums[i] += sides[i] / sides[1]; } }
    }
    for i in 0..ks.len() { println!("k {} mean side ratio {:.3}", ks[i], sums[i] / n as f64); }
    Ok(())
}
