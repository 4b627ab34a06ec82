"""Reference ids for both `ClipTokenizerKind`s (read by ../text_parity.rs).

transformers has two CLIP tokenizers that disagree on unusual text: the slow
`CLIPTokenizer` of transformers 4 (run here without `ftfy`, as diffusers usually has it)
and the `tokenizers` pipeline (`CLIPTokenizerFast`, and `CLIPTokenizer` in transformers 5).
tests/fixtures/refs/clip_tokenizer.json holds the latter only; this file records both, on
the fixture prompts plus edge cases where they differ.

Run from the repository root, once per transformers major version; each run fills its own
fields ("slow" with transformers 4, "fast" with transformers 5) and keeps the others:

    PYTHONPATH=<transformers 4.57.1 checkout> /work/venv/bin/python \
        crates/latentd-models/tests/data/clip_tokenizer_kinds.py
    /work/venv/bin/python crates/latentd-models/tests/data/clip_tokenizer_kinds.py
"""

import json
from pathlib import Path

import transformers
from transformers.models.clip.tokenization_clip import CLIPTokenizer

REPO = Path(__file__).resolve().parents[4]
VOCAB = REPO / "tests" / "data" / "clip"
OUT = Path(__file__).with_suffix(".json")
MAX_LENGTH = 77

EDGE_CASES = [
    "x<|ENDOFTEXT|>y",
    "a!!<|endoftext|>",
    "ΣΑΣ ΌΣΟΣ λέξη",
    "İstanbul ǅemal",
    "ctrl\x07char",
    "\ufffdbad",
    "a\u00adb soft hyphen",
    "\ue000 private use",
    "𠀀𪜀 𫝀 extension ideographs",
    "hello!world!!",
    "a\u2028b\u2029c\x1cd\x85e",
    "𝐀𝐁 mathematical bold",
    "Ⅻ ⅓ ²",
]


def main() -> None:
    major = int(transformers.__version__.split(".")[0])
    kind = "slow" if major == 4 else "fast"
    tokenizers = {
        "eos_pad": CLIPTokenizer.from_pretrained(str(VOCAB), model_max_length=MAX_LENGTH),
        "bang_pad": CLIPTokenizer.from_pretrained(str(VOCAB), model_max_length=MAX_LENGTH, pad_token="!"),
    }
    if kind == "slow":
        assert all(t.fix_text is None for t in tokenizers.values()), "uninstall ftfy"
    fixture = json.loads((REPO / "tests" / "fixtures" / "refs" / "clip_tokenizer.json").read_text())
    texts = [case["text"] for case in fixture["cases"]] + EDGE_CASES
    old = json.loads(OUT.read_text()) if OUT.exists() else {"cases": []}
    by_text = {case["text"]: case for case in old["cases"]}
    cases = []
    for text in texts:
        case = by_text.get(text, {"text": text})
        for pad, tok in tokenizers.items():
            ids = tok(text, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
            case[f"{kind}_{pad}"] = ids
        cases.append(case)
    versions = dict(old.get("transformers", {}), **{kind: transformers.__version__})
    OUT.write_text(
        json.dumps({"max_length": MAX_LENGTH, "transformers": versions, "cases": cases}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
