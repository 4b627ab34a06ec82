"""diffusers' / transformers' SD1.5 VAE decoder and CLIP text encoder on the same
weights and shapes as benches/parts.rs.

If missing, writes random-weight parts of the SD1.5 architecture in diffusers' folder
layout (torch.manual_seed(0), then save_pretrained as safetensors):

- DIR/vae/: `AutoencoderKL` from benches/sd15_vae_config.json;
- DIR/text_encoder/: `CLIPTextModel` from benches/sd15_text_encoder_config.json.

Then times, in float32 on the CPU under torch.inference_mode, one warm-up then ITERS
timed runs (median reported):

- VAE decode: `vae.decode(latents / scaling_factor)` of a [1, 4, 64, 64] latent
  (a 512x512 image);
- text encoder: one forward of 2 prompts as token ids [2, 77] from
  benches/sd15_prompt_ids.json (BOS, ids, EOS, EOS padding; no tokenizer).

Run by hand where torch, diffusers and transformers are installed
(tests/fixtures/requirements.txt):

    python crates/latentd-models/benches/sd15_parts.py [DIR] [--iters 3]

DIR defaults to /tmp/latentd-sd15-parts, the folder `cargo bench -p latentd-models
--features openblas --bench parts` reads. Prints one line per part and the process's
peak RSS.
"""

import argparse
import json
import pathlib
import resource
import statistics
import time

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel

HERE = pathlib.Path(__file__).resolve().parent


def read_config(name: str) -> dict:
    config = json.loads((HERE / name).read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def prompt_ids() -> torch.Tensor:
    spec = json.loads((HERE / "sd15_prompt_ids.json").read_text())
    rows = []
    for ids in spec["prompts"]:
        row = [spec["bos"], *ids, spec["eos"]]
        rows.append(row + [spec["eos"]] * (spec["length"] - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def write_parts(root: pathlib.Path) -> None:
    vae_dir, text_dir = root / "vae", root / "text_encoder"
    if not (vae_dir / "config.json").exists():
        torch.manual_seed(0)
        AutoencoderKL.from_config(read_config("sd15_vae_config.json")).save_pretrained(
            vae_dir, safe_serialization=True
        )
        print(f"wrote {vae_dir}")
    if not (text_dir / "config.json").exists():
        torch.manual_seed(0)
        config = CLIPTextConfig(**read_config("sd15_text_encoder_config.json"))
        CLIPTextModel(config).save_pretrained(text_dir, safe_serialization=True)
        print(f"wrote {text_dir}")


def time_it(name: str, fn, iters: int) -> None:
    times = []
    with torch.inference_mode():
        fn()
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    print(f"{name:<34} min {min(times):.3f}s median {statistics.median(times):.3f}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", nargs="?", default="/tmp/latentd-sd15-parts")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    root = pathlib.Path(args.dir)
    write_parts(root)

    vae = AutoencoderKL.from_pretrained(root / "vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder").eval()
    print(
        f"diffusers/transformers SD1.5 parts, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.iters} timed runs after 1 warm-up"
    )
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((1, vae.config.latent_channels, 64, 64), generator=gen)
    scaling = vae.config.scaling_factor
    time_it("vae decode [1, 4, 64, 64]", lambda: vae.decode(latents / scaling).sample, args.iters)
    ids = prompt_ids()
    time_it(
        f"text encoder [{ids.shape[0]}, {ids.shape[1]}]",
        lambda: text_encoder(input_ids=ids).last_hidden_state,
        args.iters,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
