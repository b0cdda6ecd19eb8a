#!/usr/bin/env python3
"""PyTorch reference generations for SmolLM2-135M-Instruct, independent of the Rust code.

Loads assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf with Hugging Face `transformers` (which dequantises the
GGUF tensors to float32 with the `gguf` package and runs its own llama implementation in torch), then for
each prompt writes the prompt's token ids, the greedy continuation of 32 tokens and the first step's logits.
The Rust test (node/tests/smollm2.rs) compares against these files; it does not need Python.

    scripts/bench-llm.sh --setup            # creates .venv with torch, transformers, gguf
    .venv/bin/python scripts/smollm2_reference.py

Writes node/tests/data/smollm2-reference.json and node/tests/data/smollm2-logits.bin (the first-step
logits of every prompt, float32 little-endian, prompt after prompt).
"""
import json
import pathlib

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "node" / "tests" / "data"
NEW_TOKENS = 32
# (kind, text): "raw" prompts are tokenised as they are, "chat" prompts through the model's chat template.
PROMPTS = [
    ("raw", "The capital of France is"),
    ("raw", "def fibonacci(n):"),
    ("raw", "Parked electric cars can lend their idle computers to"),
    ("chat", "What is 2+2?"),
    ("chat", "Name three colours of the rainbow."),
]
# Strings whose token ids the Rust tokenizer must reproduce (digits, spaces, unicode, special tokens).
TOKENIZER_CASES = [
    "Hello world!",
    "  two  spaces and 12345 digits, 3.14159",
    "Ünïcödé — emoji 🚗⚡ and 漢字",
    "<|im_start|>user\nhi<|im_end|>\n",
    "tabs\tand\nnewlines\n\n",
]


def main():
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(ASSETS, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(ASSETS, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()
    cases = []
    logits_out = []
    for kind, text in PROMPTS:
        if kind == "chat":
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            ids = [int(i) for i in ids]
        else:
            ids = tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            first = model(x).logits[0, -1].float().numpy()
            out = model.generate(x, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.eos_token_id, min_new_tokens=NEW_TOKENS)
        gen = [int(t) for t in out[0, len(ids):]]
        cases.append({
            "kind": kind,
            "prompt": text,
            "prompt_ids": ids,
            "greedy_ids": gen,
            "greedy_text": tok.decode(gen),
            "first_argmax": int(np.argmax(first)),
        })
        logits_out.append(first.astype("<f4"))
        print(kind, repr(text), "->", repr(tok.decode(gen)))
    tokenizer_cases = [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]} for s in TOKENIZER_CASES]
    reference = {
        "model": GGUF,
        "implementation": "transformers %s, torch %s, float32" % (__import__("transformers").__version__,
                                                                 torch.__version__),
        "new_tokens": NEW_TOKENS,
        "vocab": int(first.shape[0]),
        "cases": cases,
        "tokenizer": tokenizer_cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "smollm2-reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    np.concatenate(logits_out).tofile(OUT / "smollm2-logits.bin")
    print("wrote", OUT / "smollm2-reference.json", "and", OUT / "smollm2-logits.bin")


if __name__ == "__main__":
    main()
