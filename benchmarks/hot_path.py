"""The facade's hot path: what one log call costs the training thread, the shipper left out.

Measures, on a journal-only ``DualTrackLogger`` (no shipper, no backend: exactly the work a call does
before it returns), with warm-up and many repetitions, the median / p95 / mean per call of:

- ``log_metrics`` of 3 scalar floats at a new step each call (budget: median <= 20 us);
- ``log_params`` of 100 ordinary params (numbers, short strings, small lists, nested dicts flattened),
  each call with keys not seen before, so every call pays for flattening, redaction, the key rules and
  one journal line (budget: median <= 2 ms);
- masking one 1 MB param (a token-like string): linear-time redaction, "milliseconds".

Ratios against a baseline measured in the same run: the bare cost of one ``os.write`` of a line of
the same size (what no logger can go below). Run on a quiet machine for absolute numbers.

Example::

    python benchmarks/hot_path.py                 # default repetitions
    python benchmarks/hot_path.py --quick         # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_dualtrack import DualTrackLogger
from lightning_dualtrack.core.redact import redact_value
from lightning_dualtrack.core.values import flatten_params

BUDGETS_US = {"log_metrics (3 scalars)": 20.0, "log_params (100 params)": 2000.0}


def summarise(samples_ns: list[int]) -> dict[str, float]:
    us = sorted(s / 1000 for s in samples_ns)
    return {"median": statistics.median(us), "p95": us[int(0.95 * (len(us) - 1))], "mean": statistics.fmean(us), "n": len(us)}


def timed(fn, repeats: int, warmup: int) -> list[int]:
    for i in range(warmup):
        fn(i)
    gc.collect()
    gc.disable()  # a collection lands on one call at random: measured separately by the mean
    try:
        out = []
        for i in range(warmup, warmup + repeats):
            t0 = time.perf_counter_ns()
            fn(i)
            out.append(time.perf_counter_ns() - t0)
        return out
    finally:
        gc.enable()


def params_for(i: int) -> dict:
    return {
        f"run{i}": {
            **{f"lr_{j}": 0.001 * j for j in range(40)},
            **{f"name_{j}": f"layer-{j}-conv" for j in range(30)},
            **{f"sizes_{j}": [j, 2 * j, 3 * j] for j in range(10)},
            "optim": {f"beta_{j}": 0.9 for j in range(10)},
            "data": {"root": "/data/har", "batch_size": 32, "workers": 4, "augment": True, "size": 224, "mean": [0.48, 0.45, 0.40],
                     "std": [0.26, 0.26, 0.27], "shuffle": True, "seed": i, "split": "train"},
        }
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20_000, help="log_metrics calls measured")
    parser.add_argument("--param-repeats", type=int, default=300, help="log_params calls measured")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repetitions")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.param_repeats = 2000, 30
    with tempfile.TemporaryDirectory() as tmp:
        logger = DualTrackLogger(save_dir=tmp, mlflow=False, wandb=False, deliver=False, log_system_info=False)
        logger.log_metrics({"loss": 1.0, "acc": 0.5, "lr": 0.1}, step=0)  # start the run
        metrics = timed(lambda i: logger.log_metrics({"loss": 1.0 / (i + 1), "acc": 0.5, "lr": 0.1}, step=i), args.repeats, 500)
        assert len(flatten_params(params_for(0))) == 100
        params = timed(lambda i: logger.log_params(params_for(i)), args.param_repeats, 10)
        logger.finalize("success")
        line = b'{"k":"metrics","t":1796161618537,"s":12345,"v":{"loss":0.123456789,"acc":0.5,"lr":0.1}}\n'
        fd = os.open(os.path.join(tmp, "floor.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        floor = timed(lambda i: os.write(fd, line), args.repeats, 500)
        os.close(fd)
    token = secrets.token_urlsafe(1_000_000)[:1_000_000]
    redact = timed(lambda i: redact_value("note", token), 5 if args.quick else 20, 1)

    rows = [("log_metrics (3 scalars)", summarise(metrics)), ("log_params (100 params)", summarise(params)),
            ("os.write of one journal line (floor)", summarise(floor)), ("mask a 1 MB param", summarise(redact))]
    floor_median = rows[2][1]["median"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("| call | median | p95 | mean | calls | × os.write | budget (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    for name, s in rows:
        budget = BUDGETS_US.get(name)
        verdict = ""
        if budget is not None:
            ok = s["median"] <= budget
            failed |= not ok
            verdict = f"{budget:g} µs: {'met' if ok else 'MISSED'}"
        print(f"| {name} | {s['median']:.1f} µs | {s['p95']:.1f} µs | {s['mean']:.1f} µs | {s['n']} | {s['median'] / floor_median:.1f} | {verdict} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
