"""diffusers' UNet2DConditionModel on the same weights and inputs as benches/unet.rs.

One UNet forward of the SD1.5 architecture on the CPU in float32: batch 2, context
[2, 77, 768], timestep 500, one warm-up then ITERS timed runs (median reported), for
each latent side. Run by hand where torch and diffusers are installed
(tests/fixtures/requirements.txt):

    python crates/latentd-models/benches/torch_unet.py [WEIGHTS] [--sizes 32,64] [--iters 3]

WEIGHTS defaults to /tmp/latentd-sd15-unet-random.safetensors, the file
`cargo run --release -p latentd-models --example write_random_unet` writes. Prints one
line per size and the process's peak RSS.
"""

import argparse
import json
import pathlib
import resource
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights", nargs="?", default="/tmp/latentd-sd15-unet-random.safetensors")
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    config = json.loads((HERE / "sd15_unet_config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    unet = UNet2DConditionModel.from_config(config)
    unet.load_state_dict(load_file(args.weights), strict=True)
    unet.eval()
    print(
        f"diffusers UNet forward, SD1.5 architecture, batch 2, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.iters} timed runs after 1 warm-up"
    )
    gen = torch.Generator().manual_seed(0)
    for side in (int(s) for s in args.sizes.split(",")):
        sample = torch.randn((2, config["in_channels"], side, side), generator=gen)
        context = torch.randn((2, 77, config["cross_attention_dim"]), generator=gen)
        t = torch.tensor([500.0, 500.0])
        times = []
        with torch.inference_mode():
            unet(sample, t, encoder_hidden_states=context)
            for _ in range(args.iters):
                start = time.perf_counter()
                unet(sample, t, encoder_hidden_states=context)
                times.append(time.perf_counter() - start)
        print(f"diffusers {side}x{side}: min {min(times):.3f}s median {statistics.median(times):.3f}s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
