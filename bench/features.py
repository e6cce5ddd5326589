"""Feature stage and streaming forecaster, microseconds per symbol-bar at 1, 100 and 1000 symbols.

    PYTHONPATH=. .venv/bin/python -m bench.features [--sizes 1,100,1000] [--steps N] [--json]

Run against another checkout's code (the numbers before a change) with that checkout on PYTHONPATH and
this file by path: PYTHONPATH=/path/to/other .venv/bin/python bench/features.py. Cases the other code
lacks (the batch API) are left out.

Symbols are the bundled real hourly bars (data/equities-1h: AAPL, IBM, SPY) re-labelled: symbol i replays
series i % 3 from an offset of 7 * (i // 3) bars, on one common timeline, so every batch holds one bar of
every symbol and no two symbols carry the same values. Features use config.toml's [strategies.features]
(return lags 1 2 4 8, z-score 20, RSI 14, volatility 20, every extra, outlier handling) and window 32.

Cases, each timed per batch after a warm-up to full windows, median and p90 over --steps batches:

* features per-bar:   FeatureEngine.update(bar) for each bar, then np.stack of window(symbol) for each
                      symbol: what the engine did per batch before the batch API.
* features batch:     FeatureEngine.update_many(bars) and FeatureEngine.windows(symbols) (a copy).
* features batch view: the same with windows(symbols, copy=False) (a read-only view when it can).
* stream predict:     StreamingForecaster.predict(bars, windows) with the bundled model
                      (models/lstm-equities, inference = "streaming"), every symbol's stream continuing.

The load average is printed: on a shared 2-core machine other processes move these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

REPO = Path(__file__).resolve().parent.parent
try:  # the code under test: whichever `bot` is importable (PYTHONPATH first), else this checkout's
    import bot
except ImportError:
    sys.path.insert(0, str(REPO))
    import bot
CODE = Path(bot.__file__).resolve().parent.parent  # printed with the results

from bot.bars import Bar  # noqa: E402
from bot.config import FeatureSettings  # noqa: E402
from bot.features import FeatureEngine  # noqa: E402
from bot.feeds.replay import load_csv  # noqa: E402
from bot.model.forecaster import StreamingForecaster  # noqa: E402
from bot.model.registry import latest_version, load_model  # noqa: E402
from bot.model.streaming import StreamingPredictor  # noqa: E402

DATA = REPO / "data" / "equities-1h"
BASES = ("AAPL", "IBM", "SPY")
OFFSET = 7  # bars between the starts of two symbols replaying the same series
START = 20_000  # bar index (in every base series) where the replay starts: after every 2000-era split
WINDOW = 32


@dataclass(frozen=True)
class Timing:
    """One case at one size."""

    case: str
    symbols: int
    median_us: float
    p90_us: float
    batches: int

    @property
    def per_symbol_us(self) -> float:
        """Median microseconds per symbol-bar."""
        return self.median_us / self.symbols


def settings_from_config(path: Path = REPO / "config.toml") -> FeatureSettings:
    """The first strategy's [strategies.features] in config.toml."""
    data = tomllib.loads(path.read_text())
    return FeatureSettings.model_validate(data["strategies"][0]["features"])


def synthetic_batches(n: int, steps: int) -> list[list[Bar]]:
    """`steps` batches of n bars, one per symbol S0000.., re-labelled real bars on a common timeline."""
    bases = [load_csv(DATA / f"{name}.csv", name, timedelta(hours=1))[0] for name in BASES]
    timeline = [b.ts for b in bases[2][START : START + steps]]
    batches: list[list[Bar]] = [[] for _ in range(steps)]
    for i in range(n):
        series = bases[i % len(bases)]
        first = START + OFFSET * (i // len(bases))
        if first + steps > len(series):
            raise ValueError(f"{n} symbols need more history than the bundled data holds")
        symbol = f"S{i:04d}"
        for t in range(steps):
            batches[t].append(replace(series[first + t], symbol=symbol, ts=timeline[t]))
    return batches


def time_batches(run: Callable[[Sequence[Bar]], object], batches: Sequence[Sequence[Bar]]) -> list[float]:
    """Microseconds per call of run(batch), one sample per batch."""
    samples = []
    for batch in batches:
        start = time.perf_counter()
        run(batch)
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def _timing(case: str, n: int, samples: Sequence[float]) -> Timing:
    a = np.asarray(samples)
    return Timing(case, n, float(np.median(a)), float(np.percentile(a, 90)), len(a))


Windows = npt.NDArray[np.float32]


def bench_size(n: int, steps: int, settings: FeatureSettings, model_dir: Path) -> list[Timing]:
    """Every case at one size."""
    symbols = [f"S{i:04d}" for i in range(n)]
    warm = FeatureEngine(settings, WINDOW, symbols[:1]).warmup_bars
    batches = synthetic_batches(n, warm + 2 * steps)
    timed = batches[warm : warm + steps]
    results: list[Timing] = []

    def per_bar(engine: FeatureEngine) -> Callable[[Sequence[Bar]], Windows]:
        def run(batch: Sequence[Bar]) -> Windows:
            ready = [b for b in batch if engine.update(b)]
            if not ready:  # still warming up
                return np.empty((0, WINDOW, len(engine.names)), dtype=np.float32)
            return np.stack([engine.window(b.symbol) for b in ready])

        return run

    old = per_bar(FeatureEngine(settings, WINDOW, symbols))
    for batch in batches[:warm]:
        old(batch)
    results.append(_timing("features per-bar", n, time_batches(old, timed)))

    if hasattr(FeatureEngine, "update_many"):  # the batch API (absent from code before it)
        for case, copy in (("features batch", True), ("features batch view", False)):
            engine = FeatureEngine(settings, WINDOW, symbols)

            def batched(batch: Sequence[Bar], engine: FeatureEngine = engine, copy: bool = copy) -> Windows:
                engine.update_many(batch)
                return engine.windows([b.symbol for b in batch], copy=copy)

            for batch in batches[:warm]:
                engine.update_many(batch)
            results.append(_timing(case, n, time_batches(batched, timed)))

    # The stream, fed the windows the feature engine gives; the windows are made beforehand.
    model = load_model(latest_version(model_dir))
    forecaster = StreamingForecaster(StreamingPredictor(model, symbols))
    feed = per_bar(FeatureEngine(settings, WINDOW, symbols))
    for batch in batches[: warm + steps]:
        feed(batch)
    inputs = [(batch, feed(batch)) for batch in batches[warm + steps : warm + 2 * steps]]
    forecaster.predict(*inputs[0])  # the first call restarts every stream from its window: not timed
    samples = []
    for batch, windows in inputs[1:]:
        start = time.perf_counter()
        forecaster.predict(batch, windows)
        samples.append((time.perf_counter() - start) * 1e6)
    results.append(_timing("stream predict", n, samples))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table (or JSON)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,100,1000", help="comma-separated symbol counts")
    parser.add_argument("--steps", type=int, default=60, help="timed batches per case")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (daemon.torch_threads)")
    parser.add_argument("--models", type=Path, default=REPO / "models" / "lstm-equities")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = settings_from_config()
    load_before = os.getloadavg()
    results: list[Timing] = []
    for n in (int(s) for s in args.sizes.split(",")):
        results.extend(bench_size(n, args.steps, settings, args.models))
    load_after = os.getloadavg()
    if args.json:
        rows = [asdict(r) | {"per_symbol_us": r.per_symbol_us} for r in results]
        print(
            json.dumps(
                {"code": str(CODE), "load_before": load_before, "load_after": load_after, "results": rows}
            )
        )
        return 0
    before = " ".join(f"{x:.2f}" for x in load_before)
    after = " ".join(f"{x:.2f}" for x in load_after)
    print(f"code {CODE}; load average before {before}, after {after}; torch threads {args.threads}")
    print(f"{'case':20s} {'symbols':>7s} {'median us':>10s} {'p90 us':>10s} {'us/symbol-bar':>14s}")
    for r in results:
        print(f"{r.case:20s} {r.symbols:7d} {r.median_us:10.1f} {r.p90_us:10.1f} {r.per_symbol_us:14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
