"""A pure-Python training script on the batchd package's Trial, for the
batch-schedule protocol: linear regression whose batch follows
BATCHD_BATCH_SCHEDULE by the samples trained (Trial.batch_at), at the LR
schedule's value times the phase's factor. It writes the batches it trained
to BATCHES_OUT, so the test sees what the script did, not what it reported.
"""
import os
import random

from batchd.trial import Trial

DIM = 8
trial = Trial()
rng = random.Random(trial.seed)
teacher = [rng.gauss(0, 1) for _ in range(DIM)]
weights = [0.0] * DIM
seen = 0
trained = []
for step in range(trial.steps):
    n, factor = trial.batch_at(seen)
    xs = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(n)]
    ys = [sum(a * b for a, b in zip(x, teacher)) for x in xs]
    g = [0.0] * DIM
    loss = 0.0
    for x, y in zip(xs, ys):
        err = sum(a * b for a, b in zip(x, weights)) - y
        loss += err * err / n
        for i in range(DIM):
            g[i] += 2 * err * x[i] / n
    lr = trial.lr(step) * factor
    weights = [w - lr * v for w, v in zip(weights, g)]
    trial.report(step, loss, samples=n, lr=lr)
    seen += n
    trained.append(n)
with open(os.environ["BATCHES_OUT"], "w") as out:
    out.write(",".join(map(str, trained)))
trial.close()
