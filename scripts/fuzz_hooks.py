"""Schemathesis hooks for scripts/fuzz-check.sh: real image files where latentd's
OpenAPI document asks for one.

The document says what an image field takes (`format: byte`, base64 of a PNG, JPEG or
WebP file, in JSON bodies; `image/png, image/jpeg, image/webp` parts in the edit form),
but no JSON Schema can say "a file that decodes", so schemathesis would send random bytes
and the server's 422 for them (documented on each route) would count as a schema-valid
request rejected. These strategies make the files schemathesis sends decodable PNGs:
RGBA (the edit form reads masks by their alpha), all of one size (a mask must have its
image's size), a size the served model accepts (LATENTD_FUZZ_IMAGE_SIDE, default 32).
Negative testing still sends whatever violates the schema.
"""

import base64
import os
import random
import struct
import zlib

import schemathesis
from hypothesis import strategies as st

SIDE = int(os.environ.get("LATENTD_FUZZ_IMAGE_SIDE", "32"))


def png_rgba(width: int, height: int, pixels: bytes) -> bytes:
    """A PNG file of 8-bit RGBA `pixels` (row-major, 4 bytes a pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + pixels[y * width * 4 : (y + 1) * width * 4] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@st.composite
def png_files(draw) -> bytes:
    """RGBA PNGs of SIDE x SIDE: random colours, and alpha opaque, clear, or in blocks."""
    rng = random.Random(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    alpha = draw(st.sampled_from(["opaque", "clear", "blocks"]))
    pixels = bytearray()
    for y in range(SIDE):
        for x in range(SIDE):
            if alpha == "opaque":
                a = 255
            elif alpha == "clear":
                a = 0
            else:
                a = 0 if (x // 8 + y // 8) % 2 else 255
            pixels += bytes((rng.randrange(256), rng.randrange(256), rng.randrange(256), a))
    return png_rgba(SIDE, SIDE, bytes(pixels))


# Multipart parts declared as image/png (the edit form's image and mask).
schemathesis.openapi.media_type("image/png", png_files())
# Base64 image fields of JSON bodies (`image`, `mask` of /v1/generate and /v1/jobs).
schemathesis.openapi.format("byte", png_files().map(lambda data: base64.b64encode(data).decode("ascii")))


# The text models' prompts are refused above `max_prompt_tokens` tokens (a 422, in the
# document's descriptions), which no JSON Schema keyword can count. A prompt of at most
# that many UTF-8 bytes, lowercased as the tokenizer reads it, never has more tokens
# (each token stands for at least one byte), so generated prompts are cut to that.
PROMPT_BYTES = int(os.environ.get("LATENTD_FUZZ_PROMPT_BYTES", "75"))


def within_token_limit(text: str) -> str:
    while len(text.lower().encode("utf-8")) > PROMPT_BYTES:
        text = text[:-1]
    return text


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if isinstance(body, dict):
        for field in ("prompt", "negative_prompt"):
            if isinstance(body.get(field), str):
                body[field] = within_token_limit(body[field])
    return case
