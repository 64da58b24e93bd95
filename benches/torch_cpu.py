"""PyTorch on the CPU, beside batchd's Burn trials (`cargo bench --bench backends`).

Builds the same architecture as batchd's model zoo (src/trial/worker/models.rs)
from the model section of a batchd spec, trains it for STEPS steps at BATCH with
the spec's optimizer in fp32, and prints one JSON line:
{"torch": version, "threads": n, "samples_per_second": x, "peak_rss_bytes": y}.

Usage: torch_cpu.py '{"model": {...}, "input_size": 64, "optimizer": {...},
                      "batch": 256, "steps": 30, "warmup": 5, "min_seconds": 1.0}'
Without PyTorch it prints {"skipped": "..."} and exits 0.
"""

import json
import resource
import sys
import time

try:
    import torch
    import torch.nn as nn
except ImportError as error:  # the bench prints "skipped" for this
    print(json.dumps({"skipped": f"PyTorch is not importable: {error}"}))
    sys.exit(0)


def activation(name):
    return {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[name]()


class Mlp(nn.Module):
    def __init__(self, spec, input_size):
        super().__init__()
        layers, width = [], spec.get("input_size") or input_size
        for hidden in spec["hidden"]:
            layers += [nn.Linear(width, hidden), activation(spec["activation"]), nn.Dropout(spec["dropout"])]
            width = hidden
        layers.append(nn.Linear(width, spec["classes"]))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def conv_bn(cin, cout, kernel, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class Residual(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.first = conv_bn(cin, cout, 3, stride)
        self.second = conv_bn(cout, cout, 3, 1)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(self.second(torch.relu(self.first(x))) + skip)


class Cnn(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.shape = (spec["channels"], spec["height"], spec["width"])
        self.stem = conv_bn(spec["channels"], spec["stages"][0], 3, 1)
        blocks, width = [], spec["stages"][0]
        for stage, out in enumerate(spec["stages"]):
            for block in range(spec["blocks_per_stage"]):
                blocks.append(Residual(width, out, 2 if stage > 0 and block == 0 else 1))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, spec["classes"])

    def forward(self, x):
        x = torch.relu(self.stem(x.reshape(x.shape[0], *self.shape)))
        return self.head(self.blocks(x).mean(dim=(2, 3)))


class Gpt(nn.Module):
    def __init__(self, spec):
        super().__init__()
        d, ctx = spec["d_model"], spec["context_length"]
        self.tokens = nn.Embedding(spec["vocab_size"], d)
        self.positions = nn.Embedding(ctx, d)
        layer = nn.TransformerEncoderLayer(
            d, spec["heads"], d * spec["mlp_ratio"], dropout=spec["dropout"],
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, spec["layers"], enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, spec["vocab_size"])
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx))

    def forward(self, tokens):
        t = tokens.shape[1]
        h = self.tokens(tokens) + self.positions(torch.arange(t))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def build(model, input_size, batch):
    kind = model["kind"]
    if kind == "mlp":
        net = Mlp(model, input_size)
        x = torch.randn(batch, model.get("input_size") or input_size)
        y = torch.randint(0, model["classes"], (batch,))
        return net, lambda: nn.functional.cross_entropy(net(x), y)
    if kind == "cnn":
        net = Cnn(model)
        x = torch.randn(batch, model["channels"] * model["height"] * model["width"])
        y = torch.randint(0, model["classes"], (batch,))
        return net, lambda: nn.functional.cross_entropy(net(x), y)
    if kind == "transformer":
        net = Gpt(model)
        vocab, ctx = model["vocab_size"], model["context_length"]
        x = torch.randint(0, vocab, (batch, ctx))
        y = torch.randint(0, vocab, (batch, ctx))
        return net, lambda: nn.functional.cross_entropy(net(x).reshape(-1, vocab), y.reshape(-1))
    raise SystemExit(f"unknown model kind {kind!r}")


def optimizer(spec, parameters):
    kind, lr = spec["kind"], 1e-4
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=spec.get("momentum", 0.0),
                               nesterov=spec.get("nesterov", False) and spec.get("momentum", 0.0) > 0,
                               weight_decay=spec.get("weight_decay", 0.0))
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(parameters, lr=lr, betas=(spec.get("beta1", 0.9), spec.get("beta2", 0.999)),
               eps=spec.get("epsilon", 1e-8), weight_decay=spec.get("weight_decay", 0.0))


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    request = json.loads(sys.argv[1])
    torch.manual_seed(0)
    net, loss_fn = build(request["model"], request.get("input_size", 0), request["batch"])
    net.train()
    opt = optimizer(request["optimizer"], net.parameters())
    clip = request["optimizer"].get("grad_clip_norm")

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        if clip:  # batchd clips by global norm when the spec asks
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        return loss.item()  # waits for the step, as batchd's loop does

    for _ in range(request.get("warmup", 5)):
        step()
    # At least `steps` steps and `min_seconds` of them, so fast models are
    # timed over more than a few milliseconds.
    times, min_seconds = [], request.get("min_seconds", 0.0)
    while len(times) < request["steps"] or sum(times) < min_seconds:
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "samples_per_second": request["batch"] * len(times) / sum(times),
        "step_seconds_median": sorted(times)[len(times) // 2],
        # ru_maxrss is KiB on Linux; it includes PyTorch's own libraries.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
