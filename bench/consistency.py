"""Self-consistency decoding (greedy + K samples from one shared prefill) vs HF ``generate``.

The VRP's self-consistency needs a greedy answer and K=10 sampled answers per question.
``vlmlens.vrp.sampling.decode_shared`` encodes prompt and image once and decodes the
1 + K rows from one KV cache. In one process, on the same batch, this times it against
what a user would run with transformers alone:

* one greedy ``generate`` of the batch (goal: decode_shared <= 2.5x), and
* ``generate(do_sample=True, num_return_sequences=K)`` (goal: <= 0.5x), which repeats the
  prompt and image K times before the prefill;

and checks that decode_shared's greedy row equals HF's greedy answer for every question.
Both decode up to ``--tokens`` new tokens and stop early once every row has ended. The
default times two budgets, the VRP's on the toy zoo (3) and on real checkpoints (10). With
random weights no row ever ends, so every row decodes the whole budget: the more tokens, the
larger the share of single-token steps, which both methods pay, and the smaller the share of
the prefill that sharing saves. A trained model answering POPE ends after about two tokens.

    python bench/consistency.py [--family llava] [--scale tiny|reduced|full] [--device cuda]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import transformers
from common import (  # bench/ is on the path when run as a script
    FAMILIES,
    IMAGE_SIDE,
    build,
    interleaved,
)

from vlmlens.testing import tiny_images
from vlmlens.vrp.sampling import decode_shared

TOKENS = (3, 10)
"""Token budgets timed by default: the VRP's ``max_new_tokens`` on the toy zoo and on real
checkpoints (``vlmlens vrp``'s defaults)."""

QUESTIONS = ("Is there a cat in the image?", "Is there a dog in the image?", "Is there a car in the image?",
             "Is there a person in the image?")


def measure(model: Any, plain: torch.nn.Module, *, side: int, batch_size: int = 8, k: int = 10, tokens: int = 10,
            repeats: int = 3) -> dict[str, Any]:
    """Median seconds of the three decoders, their ratios, and whether the greedy rows agree."""
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch_size)]
    batch = model.prepare(tiny_images(batch_size, size=side, seed=5), questions, suffix=True)
    keys = list(range(batch_size))
    settings = {"max_new_tokens": tokens, "pad_token_id": model.tokenizer.pad_token_id}

    def shared() -> Any:
        return decode_shared(model, batch, k=k, max_new_tokens=tokens, keys=keys)

    def greedy() -> torch.Tensor:
        with torch.no_grad():
            return plain.generate(**batch.inputs, do_sample=False, **settings)

    def sampled() -> torch.Tensor:
        with torch.no_grad():
            return plain.generate(**batch.inputs, do_sample=True, temperature=0.7, top_p=0.9,
                                  num_return_sequences=k, **settings)

    t = interleaved({"shared": shared, "greedy": greedy, "sampled": sampled}, repeats, model.device)
    reference = greedy()[:, batch.inputs["input_ids"].shape[1]:]
    stop = {model.tokenizer.eos_token_id, model.tokenizer.pad_token_id}
    hf_texts = []
    for row in reference.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stop), len(row))
        hf_texts.append(model.tokenizer.decode(row[:end], skip_special_tokens=True))
    same = list(shared().greedy) == hf_texts
    return {"batch": batch_size, "k": k, "tokens": tokens, "shared_s": t["shared"], "greedy_s": t["greedy"],
            "hf_k_s": t["sampled"], "vs_greedy": t["shared"] / t["greedy"], "vs_hf_k": t["shared"] / t["sampled"],
            "greedy_identical": same}


def report(r: dict[str, Any]) -> list[str]:
    return [
        f"HF generate, greedy                     {r['greedy_s'] * 1000:9.1f} ms",
        f"HF generate, num_return_sequences={r['k']:<2d}    {r['hf_k_s'] * 1000:9.1f} ms",
        (f"decode_shared, greedy + K={r['k']:<2d} samples     {r['shared_s'] * 1000:9.1f} ms  "
         f"{r['vs_greedy']:.2f}x HF greedy (goal <= 2.5), {r['vs_hf_k']:.2f}x HF K samples (goal <= 0.5)"),
        f"greedy row identical to HF greedy: {r['greedy_identical']}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava", choices=FAMILIES)
    parser.add_argument("--scale", default="tiny", choices=sorted(IMAGE_SIDE))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, nargs="+", default=TOKENS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, plain = build(args.family, args.scale, device=args.device, dtype=dtype)
    print(f"{args.family} ({args.scale}, {dtype}, {args.device}), batch {args.batch_size}, median of {args.repeats}")
    for tokens in args.tokens:
        r = measure(model, plain, side=IMAGE_SIDE[args.scale], batch_size=args.batch_size, tokens=tokens,
                    repeats=args.repeats)
        print(f"up to {tokens} new tokens")
        print("\n".join(report(r)))


if __name__ == "__main__":
    main()
