"""diffusers' half of examples/attention_cpu.rs: the SD1.5 UNet's attention and
feed-forward layers at 512x512 (batch 2, one guided step) with diffusers' `Attention`
(SDPA on the CPU) and `FeedForward` (GEGLU), random weights, best and median of 5 after a
warm-up; then SDPA alone on the 4096-token shape.

    python crates/latentd-models/benches/attention_torch.py
"""

import time

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention

SHAPES = [(4096, 320, 8, 0), (1024, 640, 8, 0), (256, 1280, 8, 0), (4096, 320, 8, 77)]


def best_and_median(call) -> tuple:
    call()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[0], times[2]


def main() -> None:
    torch.manual_seed(0)
    print("threads", torch.get_num_threads())
    with torch.inference_mode():
        for n, dim, heads, ctx in SHAPES:
            layer = Attention(
                query_dim=dim,
                cross_attention_dim=768 if ctx else None,
                heads=heads,
                dim_head=dim // heads,
            ).eval()
            xs = torch.randn(2, n, dim)
            context = torch.randn(2, ctx, 768) if ctx else None
            best, median = best_and_median(lambda: layer(xs, context))
            print(
                f"tokens {n:>5} width {dim:>4} heads {heads} context {ctx:>2}: "
                f"best {best:.1f} ms median {median:.1f} ms"
            )
        for n, dim in [(4096, 320), (1024, 640), (256, 1280)]:
            layer = FeedForward(dim, mult=4, activation_fn="geglu").eval()
            xs = torch.randn(2, n, dim)
            best, median = best_and_median(lambda: layer(xs))
            print(
                f"feed-forward tokens {n:>5} width {dim:>4}: "
                f"best {best:.1f} ms median {median:.1f} ms"
            )
        q = torch.randn(2, 8, 4096, 40)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        best, median = best_and_median(lambda: sdpa(q, q, q))
        print(f"SDPA alone [2, 8, 4096, 40]: best {best:.1f} ms median {median:.1f} ms")


if __name__ == "__main__":
    main()
