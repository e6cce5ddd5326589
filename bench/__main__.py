"""How fast the hot path is, measured against a naive pipeline and against the hardware.

    python -m bench [--quick] [--json PATH] [--sizes 1,100,1000] [--no-training] [--no-replay]

Everything runs the daemon's own code from the bundled config.toml (model, features, guard, strategy,
sizing, every risk check, SQLite journal, simulated broker, JSON decision log into /dev/null) on a
universe of 1, 100 and 1000 symbols made of the bundled real bars (bench/universe.py):

* latency: per-batch decision latency, bars in to order intents recorded and sent, p50/p99/max over
  timed batches after warm-up ones; then the same number of batches with every stage timed (guard,
  broker, features, inference, strategy, drift, risk, journal, logging; "other" is the rest), reported
  as the median per stage. Timing the stages costs about a microsecond per wrapped call, so their
  sum exceeds the plain figure a little.
* naive: the reference pipeline of bench/naive.py on the same bars; its features, its inference and
  their sum against paperbot's features stage, inference stage and whole batch.
* replay: end-to-end throughput, CSV files through the replay feed and the whole engine into SQLite.
* inference: the forecaster at 1000 symbols (window and streaming paths), and on CUDA when torch sees
  one at 1000 and 10,000, against the FLOP floor of one LSTM step from the measured matmul rate.
* training: samples per second of the bundled strategy's training on the bundled bars.
* commands: wall time of `paperbot --help` and `paperbot status` in a fresh process.
* peak RSS of the whole benchmark process.

--quick runs fewer batches (under two minutes on 2 cores). torch runs on daemon.torch_threads threads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import model, naive, pipeline
from bench.universe import REPO, Universe
from bot.config import load_config
from bot.daemon import load_strategy_model
from bot.features import FeatureEngine
from bot.logs import configure_logging
from bot.model.predictor import Predictor

CONFIG = REPO / "config.toml"
TARGETS = {
    "latency_p50_ms": {"1": 0.5, "100": 2.0, "1000": 6.0},
    "latency_p99_ms": {"100": 5.0, "1000": 15.0},
    "naive_ratio": {"100": 50.0},
    "replay_bars_per_s": {"1": 3000.0, "100": 20000.0},
    "inference_floor_multiple": {"1000": 4.0},
}


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _batches(size: int, quick: bool) -> int:
    if quick:
        return {1: 40, 100: 20}.get(size, 6)
    return {1: 300, 100: 100}.get(size, 30)


def _command_seconds(args: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bot", "-c", str(CONFIG), *args],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches: under two minutes on 2 cores")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--sizes", default="1,100,1000", help="symbols per batch (1,100,1000)")
    parser.add_argument("--no-training", action="store_true", help="skip the training throughput")
    parser.add_argument("--no-replay", action="store_true", help="skip the end-to-end replay")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    config = load_config(CONFIG)
    strategy = config.strategies[0]
    torch.set_num_threads(config.daemon.torch_threads)
    cpu = torch.device("cpu")
    started = time.perf_counter()
    out: dict[str, Any] = {
        "latency_ms": {},
        "naive_ratio": {},
        "naive": {},
        "replay_bars_per_s": {},
        "inference_floor_multiple": {},
        "inference": [],
    }
    print(
        f"# paperbot bench{' --quick' if args.quick else ''}: {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} CPUs, torch {torch.__version__} on {config.daemon.torch_threads} thread(s),"
        f" load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    loaded = load_strategy_model(0, strategy)
    predictor = Predictor(loaded, cpu)
    warmup = FeatureEngine(strategy.features, strategy.model.window, ["x"]).warmup_bars
    warmup = max(warmup, naive.HISTORY)

    with Path(os.devnull).open("w") as sink, tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        configure_logging(config.daemon.log_level, None, stream=sink)
        folder = Path(scratch)
        last_db = folder / "none.sqlite"
        print("\n## latency per batch (ms): bars in to order intents recorded and sent")
        print(f"{'symbols':>8} {'p50':>9} {'p99':>9} {'max':>9}  stages (median ms, instrumented run)")
        for size in sizes:
            batches = _batches(size, args.quick)
            universe = Universe.build(size, warmup + 3 * batches + 1)
            db = last_db = folder / f"latency-{size}.sqlite"
            run = asyncio.run(
                pipeline.latency(config, universe=universe, warmup=warmup, batches=batches, db=db, device=cpu)
            )
            stages = {s: statistics.median(b[s] for b in run.stages) for s in pipeline.STAGES}
            instrumented = statistics.median(run.instrumented)
            stages["other"] = max(0.0, instrumented - sum(stages.values()))
            entry = {
                "p50": round(_percentile(run.batches, 50), 3),
                "p99": round(_percentile(run.batches, 99), 3),
                "max": round(max(run.batches), 3),
                "batches": len(run.batches),
                "instrumented_p50": round(instrumented, 3),
                "stages": {k: round(v, 3) for k, v in stages.items()},
            }
            out["latency_ms"][str(size)] = entry
            shown = " ".join(f"{k} {v:.2f}" for k, v in stages.items())
            print(
                f"{size:>8} {entry['p50']:>9.3f} {entry['p99']:>9.3f} {entry['max']:>9.3f}  {shown}",
                flush=True,
            )

            if size <= 100:
                times = [
                    naive.naive_batch(universe.bars, warmup + k, strategy.features, predictor)
                    for k in range(max(3, batches // 4))
                ]
                mine = out["latency_ms"][str(size)]
                naive_ms = {
                    "features": statistics.median(t.features for t in times) * 1e3,
                    "inference": statistics.median(t.inference for t in times) * 1e3,
                    "total": statistics.median(t.total for t in times) * 1e3,
                }
                ratios = {
                    "features": naive_ms["features"] / max(mine["stages"]["features"], 1e-6),
                    "inference": naive_ms["inference"] / max(mine["stages"]["inference"], 1e-6),
                    "total": naive_ms["total"] / mine["p50"],
                }
                out["naive"][str(size)] = {
                    "ms": {k: round(v, 3) for k, v in naive_ms.items()},
                    "ratio": {k: round(v, 2) for k, v in ratios.items()},
                }
                out["naive_ratio"][str(size)] = round(ratios["total"], 2)

        print("\n## naive reference (ms per batch) and naive / paperbot")
        for size, entry in out["naive"].items():
            ms, ratio = entry["ms"], entry["ratio"]
            print(
                f"{size:>8} symbols: features {ms['features']:.2f} (x{ratio['features']:.1f}),"
                f" inference {ms['inference']:.2f} (x{ratio['inference']:.1f}),"
                f" total {ms['total']:.2f} (x{ratio['total']:.1f} the whole paperbot batch)"
            )

        if not args.no_replay:
            print("\n## replay, end to end into SQLite (symbol-bars/s)")
            for size, instants in ((1, 1500 if args.quick else 6000), (100, 40 if args.quick else 200)):
                universe = Universe.build(size, warmup + instants)
                run_folder = folder / f"replay-{size}"
                replay = asyncio.run(pipeline.replay(config, universe, warmup, run_folder, cpu))
                last_db = run_folder / "replay.sqlite"
                out["replay_bars_per_s"][str(size)] = round(replay.bars_per_s, 1)
                print(
                    f"{size:>8} symbols: {replay.symbol_bars:,} symbol-bars in {replay.seconds:.2f} s,"
                    f" {replay.bars_per_s:,.0f}/s",
                    flush=True,
                )

        print("\n## inference against the FLOP floor of one LSTM step")
        repeat = 10 if args.quick else 40
        devices = [cpu] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        for device in devices:
            rate = model.matmul_rate(device, repeat)
            print(f"{device.type}: matmul {rate / 1e9:.1f} GFLOP/s")
            out.setdefault("matmul_gflops", {})[device.type] = round(rate / 1e9, 2)
            counts = (1000,) if device.type == "cpu" else (1000, 10_000)
            for count in counts:
                for path in ("window", "streaming"):
                    result = model.inference(
                        strategy, path=path, symbols=count, device=device, rate=rate, repeat=repeat
                    )
                    out["inference"].append(
                        {
                            "path": path,
                            "device": device.type,
                            "symbols": count,
                            "ms": round(result.seconds * 1e3, 4),
                            "floor_ms": round(result.floor_seconds * 1e3, 5),
                            "floor_multiple": round(result.floor_multiple, 1),
                        }
                    )
                    print(
                        f"  {path:>9} {count:>6} symbols: {result.seconds * 1e3:8.3f} ms,"
                        f" floor {result.floor_seconds * 1e3:.4f} ms, x{result.floor_multiple:.1f}",
                        flush=True,
                    )
        configured = strategy.model.inference
        for entry in out["inference"]:
            if entry["device"] == "cpu" and entry["path"] == configured:
                out["inference_floor_multiple"][str(entry["symbols"])] = entry["floor_multiple"]

        if not args.no_training:
            universe = Universe.build(3, 2000 if args.quick else 8000)
            trained = model.training(strategy, universe, 1 if args.quick else 2)
            out["training_samples_per_s"] = round(trained.samples_per_s, 1)
            print(
                f"\n## training: {trained.samples:,} samples x {trained.epochs} epoch(s)"
                f" in {trained.seconds:.1f} s, {trained.samples_per_s:,.0f} samples/s"
            )

        # Against the last database written above: a book with its fills, orders and decisions.
        env = dict(os.environ, PAPERBOT_DATABASE_URL=f"sqlite:///{last_db}")
        out["command_seconds"] = {
            " ".join(c): round(_command_seconds(c, env, 3), 3) for c in (["--help"], ["status"])
        }
        print(f"\n## commands (s, median of 3): {out['command_seconds']}")

    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["targets"] = TARGETS
    out["machine"] = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": config.daemon.torch_threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m_end": round(os.getloadavg()[0], 2),
    }
    out["quick"] = args.quick
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n# peak RSS {out['peak_rss_mb']} MB; {out['seconds']} s")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
