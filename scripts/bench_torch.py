#!/usr/bin/env python3
"""PyTorch CPU side of scripts/bench-inference.sh: the same weights and inputs as the burn benchmark.

Prints `RESULT model batch per_second` lines. Uses torch's own threads (2 on this machine kind), float32.
"""
import gzip
import os
import pathlib
import sys
import time

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import minilm_reference  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS = pathlib.Path(os.environ.get("FLEETMESH_ASSETS", ROOT / "assets"))
SECS = float(os.environ.get("BENCH_SECS", "3"))
SENTENCES = (ROOT / "scripts" / "bench-sentences.txt").read_text().splitlines()


def measure(items, call):
    call()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < SECS:
        call()
        calls += 1
    return calls * items / (time.perf_counter() - start)


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.conv_layers = nn.Sequential(*block(1, 32), *block(32, 64), *block(64, 128))
        self.fc_layers = nn.Sequential(nn.Linear(1152, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.fc_layers(self.conv_layers(x).flatten(1))


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    with torch.no_grad():
        pth = ASSETS / "mnist-cnn" / "handwriting_model.pth"
        if pth.exists():
            net = MnistNet().eval()
            net.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
            rows = gzip.open(ASSETS / "mnist" / "mnist_5k.csv.gz", "rt").read().splitlines()[:64]
            px = torch.tensor([[float(v) for v in r.split(",")[:784]] for r in rows]).view(64, 1, 28, 28)
            x = (px / 255.0 - 0.1307) / 0.3081
            print(f"RESULT mnist-cnn 1 {measure(1, lambda: net(x[:1])):.1f}")
            print(f"RESULT mnist-cnn 64 {measure(64, lambda: net(x)):.1f}")
        if (ASSETS / "minilm" / "model.safetensors").exists():
            tensors, tok = minilm_reference.load(ASSETS / "minilm")
            texts = [SENTENCES[i % len(SENTENCES)] for i in range(32)]
            state = {"i": 0}

            # Both sides tokenise inside the timed call (the burn side's run_batch takes text): one
            # sentence at a time, or the 32 sentences as one padded batch.
            def one():
                state["i"] = (state["i"] + 1) % len(SENTENCES)
                minilm_reference.embed_batch(tensors, [tok.encode(SENTENCES[state["i"]]).ids])

            def batch():
                minilm_reference.embed_batch(tensors, [e.ids for e in tok.encode_batch(texts)])

            print(f"RESULT minilm 1 {measure(1, one):.1f}")
            print(f"RESULT minilm 32 {measure(32, batch):.1f}")

if __name__ == "__main__":
    main()
