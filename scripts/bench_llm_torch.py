#!/usr/bin/env python3
"""PyTorch reference for scripts/bench-llm.sh: SmolLM2-135M-Instruct from the same GGUF, loaded by Hugging
Face transformers (weights dequantised to float32), greedy generation of 64 new tokens after each chat
prompt of scripts/bench-llm-prompts.txt (end of turn ignored), at batch 1 and batch 8 (left-padded), on
2 threads. Prints `RESULT smollm2 batch tokens_per_s` lines.
"""
import pathlib
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW = 64


def main():
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(ASSETS, gguf_file=GGUF)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(ASSETS, gguf_file=GGUF, torch_dtype=torch.float32).eval()
    prompts = [l for l in (ROOT / "scripts" / "bench-llm-prompts.txt").read_text().splitlines() if l.strip()]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]

    def run(batch):
        enc = tok(texts[:batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                 eos_token_id=None, pad_token_id=tok.eos_token_id)
            secs = time.perf_counter() - start
        return (out.shape[1] - enc["input_ids"].shape[1]) * batch, secs

    run(1)  # warm-up
    for batch in (1, 8):
        tokens, secs = run(batch)
        print(f"batch {batch}: {tokens} tokens in {secs:.2f} s", flush=True)
        print(f"RESULT smollm2 {batch} {tokens / secs:.2f}", flush=True)


if __name__ == "__main__":
    main()
