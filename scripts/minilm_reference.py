#!/usr/bin/env python3
"""PyTorch reference embeddings for all-MiniLM-L6-v2, written independently of the Rust code.

Reads assets/minilm/{model.safetensors,tokenizer.json}, runs BERT in plain torch (float32), pools with the
attention mask, L2-normalises, and writes node/tests/data/minilm-reference.json, which the Rust test compares
against (max abs difference <= 1e-4).

    scripts/bench-inference.sh --setup        # creates .venv with torch, safetensors, tokenizers
    .venv/bin/python scripts/minilm_reference.py
"""
import json
import math
import pathlib
import sys

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "minilm"
OUT = ROOT / "node" / "tests" / "data" / "minilm-reference.json"
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Parked electric cars can run inference while they charge overnight.",
    "The fleet accepts a result only when independent cars agree on it.",
    "short",
    "Ünïcödé and punctuation: does it still work?!",
]
HEADS, LAYERS, EPS = 12, 6, 1e-12


def layer_norm(x, w, b):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, EPS)


def linear(x, w, b):
    return x @ w.T + b


def embed_batch(t, batch_ids):
    """Sentence embeddings for a list of token-id lists: padded to the longest, masked attention and pooling."""
    n = max(len(ids) for ids in batch_ids)
    b = len(batch_ids)
    ids = torch.zeros((b, n), dtype=torch.long)
    mask = torch.zeros((b, n), dtype=torch.float32)
    for i, row in enumerate(batch_ids):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1.0
    x = t["embeddings.word_embeddings.weight"][ids]
    x = x + t["embeddings.position_embeddings.weight"][torch.arange(n)][None]
    x = x + t["embeddings.token_type_embeddings.weight"][torch.zeros_like(ids)]
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    d = x.shape[-1]
    hd = d // HEADS
    bias = ((1.0 - mask) * torch.finfo(torch.float32).min)[:, None, None, :]
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."

        def proj(name, inp):
            return linear(inp, t[p + name + ".weight"], t[p + name + ".bias"])

        def split(v):
            return v.view(b, n, HEADS, hd).transpose(1, 2)

        q = split(proj("attention.self.query", x))
        k = split(proj("attention.self.key", x))
        v = split(proj("attention.self.value", x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, n, d)
        a = layer_norm(proj("attention.output.dense", ctx) + x,
                       t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"])
        h = torch.nn.functional.gelu(proj("intermediate.dense", a))
        x = layer_norm(proj("output.dense", h) + a, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
    pooled = (x * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    return pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)


def load(assets=ASSETS):
    """The weights (float32) and the tokenizer with its built-in padding turned off."""
    tensors = {k: v.float() for k, v in load_file(str(assets / "model.safetensors")).items()}
    tok = Tokenizer.from_file(str(assets / "tokenizer.json"))
    tok.no_padding()
    return tensors, tok


def main():
    torch.set_num_threads(1)
    tensors, tok = load()
    items = []
    with torch.no_grad():
        for s in SENTENCES:
            ids = tok.encode(s).ids
            e = embed_batch(tensors, [ids])[0]
            items.append({"text": s, "ids": ids, "embedding": [float(v) for v in e]})
    a, b = (torch.tensor(items[i]["embedding"]) for i in (0, 1))
    print(f"cosine(sentence 0, sentence 1) = {float(a @ b):.4f}", file=sys.stderr)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": "all-MiniLM-L6-v2", "torch": torch.__version__, "sentences": items}) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
