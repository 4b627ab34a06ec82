"""diffusers' half of bench/sd15-compare.sh: the parts `latentd bench` times, measured
the same way on the same SD1.5-size pipeline folder.

If DIR has no model_index.json, first writes a random-weight Stable Diffusion 1.5
pipeline there in diffusers' folder layout (torch.manual_seed(0) before each part):

- unet/: `UNet2DConditionModel` of crates/latentd-models/benches/sd15_unet_config.json,
  norm scales one, norm shifts zero, every other tensor N(0, 0.02^2) so activations stay
  finite through 20 guided steps; stored as float16 (1.7 GB instead of 3.4 GB);
- vae/ and text_encoder/: SD1.5's `AutoencoderKL` and `CLIPTextModel` from
  benches/sd15_vae_config.json and benches/sd15_text_encoder_config.json (their default
  initialisation), float32;
- tokenizer/: tests/fixtures/sd1-tiny's CLIP tokenizer (ids fit the larger vocabulary);
- scheduler/: SD1.5's DDIM schedule (scaled_linear 0.00085..0.012, steps_offset 1).

Then, on --device in --dtype (default float32 on the CPU, float16 on CUDA, where torch
uses SDPA attention), under torch.inference_mode, one warm-up and --runs timed calls of
each part (device synchronised after each), as `latentd bench` does:

- text_encoder: `encode_prompt` of one guided job (prompt and empty negative prompt,
  tokenizer included);
- unet_step at each --sizes and --rows: one UNet forward of [rows, 4, s/8, s/8] latents,
  timestep 500, context negative rows first;
- vae_decode at the largest size: `vae.decode(latents / scaling_factor)`;
- generation: the whole pipeline, --steps DDIM steps at guidance 7.5 and the largest
  size, seed = run index, PIL output (no warm-up beyond the parts above).

Run by hand where torch and diffusers are installed (tests/fixtures/requirements.txt):

    python bench/sd15_diffusers.py [DIR] [--device cpu] [--sizes 256,512] [--rows 2]
        [--steps 20] [--runs 3] [--json FILE] [--write-only]

DIR defaults to /tmp/latentd-sd15. Prints a table; --json writes the report with the
keys of `latentd bench --json`.
"""

import argparse
import json
import pathlib
import resource
import shutil
import statistics
import sys
import time

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "crates/latentd-models/benches"
TOKENIZER = ROOT / "tests/fixtures/sd1-tiny/tokenizer"
PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 7.5
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def read_config(name: str) -> dict:
    config = json.loads((CONFIGS / name).read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def random_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(read_config("sd15_unet_config.json"))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif "norm" in name and name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02)
    return unet.to(torch.float16)


def write_pipeline(root: pathlib.Path) -> None:
    unet = random_unet()
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(read_config("sd15_vae_config.json"))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**read_config("sd15_text_encoder_config.json")))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    staging.rename(root)
    print(f"wrote {root}", file=sys.stderr)


class Timer:
    """Runs calls with device synchronisation and keeps the peak device memory."""

    def __init__(self, device: torch.device, runs: int):
        self.device = device
        self.runs = runs

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, call) -> float:
        start = time.perf_counter()
        call()
        self.sync()
        return time.perf_counter() - start

    def warm_and_time(self, label: str, call) -> list:
        print(f"{label}: warm-up", file=sys.stderr)
        self.once(call)
        times = []
        for run in range(self.runs):
            print(f"{label}: run {run + 1}/{self.runs}", file=sys.stderr)
            times.append(self.once(call))
        return times

    def peak_device_mib(self):
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def measurement(part: str, size: int, rows: int, images: int, runs: list) -> dict:
    return {
        "part": part,
        "size": size,
        "rows": rows,
        "images": images,
        "median_s": statistics.median(runs),
        "min_s": min(runs),
        "runs_s": runs,
    }


def label(part: str, size: int, rows: int) -> str:
    if part == "text_encoder":
        return "text encoder, 2 prompts"
    if part == "unet_step":
        return f"guided UNet step {size}x{size}, {rows} rows"
    if part == "vae_decode":
        return f"VAE decode {size}x{size}"
    return f"generation {size}x{size}"


@torch.inference_mode()
def bench(args, pipe: StableDiffusionPipeline, device: torch.device, dtype: torch.dtype):
    """Times every part; returns the measurements and the peak device memory in MiB."""
    timer = Timer(device, args.runs)
    out = []
    largest = max(args.sizes)

    def encode():
        return pipe.encode_prompt(PROMPT, device, 1, True, negative_prompt="")

    out.append(measurement("text_encoder", 0, 0, 1, timer.warm_and_time(label("text_encoder", 0, 0), encode)))
    text, negative = encode()

    gen = torch.Generator().manual_seed(0)
    channels = pipe.unet.config.in_channels
    for size in args.sizes:
        side = size // pipe.vae_scale_factor
        for rows in args.rows:
            images = rows // 2
            latents = torch.randn((rows, channels, side, side), generator=gen).to(device, dtype)
            context = torch.cat([negative] * images + [text] * images)
            t = torch.full((rows,), 500.0, device=device)
            runs = timer.warm_and_time(
                label("unet_step", size, rows),
                lambda: pipe.unet(latents, t, encoder_hidden_states=context).sample,
            )
            out.append(measurement("unet_step", size, rows, images, runs))

    side = largest // pipe.vae_scale_factor
    latents = torch.randn((1, channels, side, side), generator=gen).to(device, pipe.vae.dtype)
    scaling = pipe.vae.config.scaling_factor
    runs = timer.warm_and_time(
        label("vae_decode", largest, 0), lambda: pipe.vae.decode(latents / scaling).sample
    )
    out.append(measurement("vae_decode", largest, 0, 1, runs))

    if args.steps > 0:
        runs = []
        for run in range(args.runs):
            print(f"{label('generation', largest, 2)}, {args.steps} steps: run {run + 1}/{args.runs}", file=sys.stderr)
            generator = torch.Generator(device).manual_seed(run)
            runs.append(
                timer.once(
                    lambda: pipe(
                        PROMPT,
                        height=largest,
                        width=largest,
                        num_inference_steps=args.steps,
                        guidance_scale=GUIDANCE,
                        generator=generator,
                        output_type="pil",
                    )
                )
            )
        out.append(measurement("generation", largest, 2, 1, runs))
    return out, timer.peak_device_mib()


def print_table(report: dict) -> None:
    print(f"{report['implementation']} {report['version']}, {report['device']}, {report['dtype']}")
    print("| part | median s | min s | per image s |")
    print("|---|---|---|---|")
    for m in report["measurements"]:
        per_image = m["median_s"] / m["images"]
        print(
            f"| {label(m['part'], m['size'], m['rows'])} | {m['median_s']:.3f} | "
            f"{m['min_s']:.3f} | {per_image:.3f} |"
        )
    print(f"peak RSS {report['peak_rss_mib']:.0f} MiB")
    if report["peak_device_mib"] is not None:
        print(f"peak device memory {report['peak_device_mib']:.0f} MiB")


def int_list(text: str) -> list:
    return [int(s) for s in text.split(",") if s]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default="/tmp/latentd-sd15")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    parser.add_argument("--sizes", type=int_list, default=[256, 512])
    parser.add_argument("--rows", type=int_list, default=[2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--write-only", action="store_true", help="write DIR if missing, time nothing")
    args = parser.parse_args()
    if args.runs < 1 or not args.sizes or not args.rows:
        parser.error("--runs, --sizes and --rows must not be empty or zero")
    if any(s <= 0 or s % 8 for s in args.sizes):
        parser.error("--sizes are positive multiples of 8")
    if any(r <= 0 or r % 2 for r in args.rows):
        parser.error("--rows are positive and even (a guided image is two rows)")

    root = pathlib.Path(args.dir)
    if not (root / "model_index.json").exists():
        write_pipeline(root)
    if args.write_only:
        return 0

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("f16" if device.type == "cuda" else "f32")]
    pipe = StableDiffusionPipeline.from_pretrained(root, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    measurements, peak_device = bench(args, pipe, device, dtype)
    report = {
        "implementation": "diffusers",
        "version": f"diffusers {__import__('diffusers').__version__}, torch {torch.__version__}",
        "model": str(root),
        "device": str(device),
        "dtype": [k for k, v in DTYPES.items() if v == dtype][0],
        "threads": torch.get_num_threads(),
        "measurements": measurements,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mib": peak_device,
    }
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
