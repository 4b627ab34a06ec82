"""A small diffusers + FastAPI server: the baseline for bench/serve-compare.sh.

It serves the subset of latentd's ``POST /v1/generate`` that the comparison's load
uses and answers the PNG itself, as latentd does with ``Accept: image/png``. The
pipeline runs one request at a time, the way most users wrap diffusers, on one
dedicated thread (requests entering torch from many pool threads would each start
their own intra-op thread team, whose idle threads spin beside the busy one and cut
throughput about threefold on a 2-core machine):

    pip install -r bench/requirements.txt   # plus torch and diffusers (tests/fixtures/requirements.txt)
    python bench/diffusers_server.py --model tests/fixtures/sd1-tiny --port 8081

Scheduler names are latentd's; each is the diffusers class built from the
pipeline's own scheduler config (``from_config``), as latentd builds its schedulers.
A request without one uses the folder's scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import io
import random
import socket
from pathlib import Path
from typing import Optional

import torch
import uvicorn
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sd1-tiny"

# latentd's scheduler names -> (diffusers class, extra from_config arguments).
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp-2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}


class GenerateRequest(BaseModel):
    # Unknown fields are refused (422), so a load that asks for more than this
    # server does shows up as errors instead of silently doing less work.
    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    negative_prompt: Optional[str] = None
    steps: int = Field(20, ge=1, le=150)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    width: Optional[int] = Field(None, ge=8, le=4096, multiple_of=8)
    height: Optional[int] = Field(None, ge=8, le=4096, multiple_of=8)
    scheduler: Optional[str] = None


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def build_app(model: Path, device: str = "cpu", dtype: Optional[str] = None) -> FastAPI:
    """The app on one pipeline; dtype defaults to f16 on CUDA (SDPA attention), f32 elsewhere."""
    dtype = dtype or ("f16" if device.startswith("cuda") else "f32")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model), safety_checker=None, dtype=DTYPES[dtype]
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    # Built once; a scheduler keeps per-run state, which the lock makes safe to reuse.
    schedulers = {
        name: cls.from_config(pipe.scheduler.config, **extra)
        for name, (cls, extra) in SCHEDULERS.items()
    }
    default_scheduler = pipe.scheduler
    # One thread runs every pipeline call, one at a time.
    runner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
    app = FastAPI(title="diffusers baseline")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": str(model)}

    def run(req: GenerateRequest, seed: int) -> bytes:
        pipe.scheduler = schedulers[req.scheduler] if req.scheduler else default_scheduler
        image = pipe(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            width=req.width,
            height=req.height,
            generator=torch.Generator(pipe.device).manual_seed(seed),
        ).images[0]
        png = io.BytesIO()
        image.save(png, format="PNG")
        return png.getvalue()

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest) -> Response:
        if req.scheduler is not None and req.scheduler not in schedulers:
            return JSONResponse(
                {"error": f"unknown scheduler `{req.scheduler}` (expected one of {', '.join(SCHEDULERS)})"},
                status_code=422,
            )
        seed = req.seed if req.seed is not None else random.randrange(2**63)
        png = await asyncio.get_running_loop().run_in_executor(runner, run, req, seed)
        return Response(png, media_type="image/png")

    return app


async def serve(app: FastAPI, host: str, port: int) -> None:
    # Bind first so that --port 0 can report the port the OS picked.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(f"listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="diffusers pipeline folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    args = parser.parse_args()
    app = build_app(args.model, args.device, args.dtype)
    asyncio.run(serve(app, args.host, args.port))


if __name__ == "__main__":
    main()
