"""What every bench ends with: its result printed as JSON and, with ``--out``, written to that file."""

import json


def report(out: dict, path: str = ""):
    print(json.dumps(out, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


def alternated(fns: dict, args: tuple, rounds: int, calls: int) -> dict:
    """Seconds per call of each ``fns[name](*args)`` (after one warm-up call each), timed in turn ``rounds`` times,
    ``calls`` calls a turn, so that every function sees the same drift of the box: ``{name: [s per call]}``."""
    import time
    import jax
    for f in fns.values():
        jax.block_until_ready(f(*args))
    times = {n: [] for n in fns}
    for _ in range(rounds):
        for n, f in fns.items():
            t = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(f(*args))
            times[n].append((time.perf_counter() - t) / calls)
    return times


def ratio(times: dict, num: str, den: str) -> dict:
    """Median, min and max over rounds of ``times[num] / times[den]`` (paired, round by round)."""
    import statistics
    r = [a / b for a, b in zip(times[num], times[den])]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}
