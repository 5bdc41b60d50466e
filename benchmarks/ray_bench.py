"""The Ray backend against the local backend on this machine, for a 100 K and a 10 M parameter
model: the push/pull round trip, samples/s of training, and where the round trip's time goes.

Both backends run in the same process, alternating; Ray is started once (a local instance, as
``backend="ray"`` would start it) and its start and stop are timed too.

    python benchmarks/ray_bench.py [--json benchmarks/results/ray.json] [--quick | --ci]

- round trip: BSP rounds of k=2 workers whose ``upd`` does no arithmetic, so a round is the
  transport alone: each worker's push of n floats, the shard's update, the pull of n floats.
- training: an MLP of that size (784-128-10: 102 K; 784-4096-1600-10: 9.8 M parameters),
  float32, batch 64, k=2, BSP with momentum; samples/s of the epochs after the first.
- parts of a round trip on Ray: an empty actor call, ``ray.put`` of n floats, a zero-copy get.
- push frequencies (100 K model): samples/s with freq BATCH, NBATCHES 8 and EPOCH, BSP and ASP.
- calls: a tiny paramserv call's wall time, cold (it starts the embedded instance) and warm.
- sockets: every listening socket of the instance started here is on loopback.

``--ci`` is the short form the test suite runs (100 K only, few rounds, fewer repeats).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

SIZES = {"100K": [784, 128, 10], "10M": [784, 4096, 1600, 10]}


def null_upd(params, x, y, hp, out=None):
    """A gradient of zeros, written nowhere: the payload buffer is left as it is."""
    return out


def train(backend, layers, rounds, k=2, bs=64, epochs=3, upd=None, utype="BSP", freq="BATCH"):
    import gpups
    from gpups.models import MLP

    net = MLP(layers)
    n = k * bs * rounds
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, layers[0]), dtype=np.float32)
    y = rng.integers(0, layers[-1], n)
    res = gpups.paramserv(net.init(0), X, y, upd=upd or net.gradients, agg="momentum", utype=utype, k=k,
                          batchsize=bs, epochs=epochs, hyperparams={"lr": 0.01}, progress=False,
                          device="cpu", backend=backend, freq=freq, nbatches=8 if freq == "NBATCHES" else 1)
    secs = statistics.median(h["seconds"] for h in res.history[1:])
    return {"round_trip_ms": 1e3 * secs / rounds, "samples_per_s": n / secs, "params": net.size}


def parts(ray, n):
    @ray.remote(num_cpus=0)
    class Echo:
        def call(self, x=None):
            return 0

    a = Echo.remote()
    ray.get(a.call.remote())
    arr = np.ones(n, np.float32)

    def timed(fn, reps):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1e3 * (time.perf_counter() - t) / reps

    ref = ray.put(arr)
    out = {"empty_call_ms": timed(lambda: ray.get(a.call.remote()), 200),
           "put_ms": timed(lambda: ray.put(arr), 20 if n > 10**6 else 200),
           "get_zero_copy_ms": timed(lambda: ray.get(ref), 200),
           "call_with_array_ms": timed(lambda: ray.get(a.call.remote(ref)), 100),
           "numpy_copy_ms": timed(lambda: arr.copy(), 20 if n > 10**6 else 200)}
    ray.kill(a)
    return out


def rounds(ray, n, k=2, reps=200):
    """A BSP round of k workers (each returning an n-float push) and one shard (summing them
    into its parameters, which go back to the workers), as plain actor tasks submitted ahead
    (what the backend does) and as a Ray Compiled Graph (``experimental_compile``: channels
    between the actors instead of task calls): what the lower-latency path could gain here.
    Run at 100 K only: with 10 M floats the compiled graph's default channel buffers were
    outgrown and the first execution never returned."""
    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self):
            self.g, self.w = np.zeros(n, np.float32), np.zeros(n, np.float32)

        def run(self, params):
            if isinstance(params, np.ndarray):
                self.w[:] = params
            return self.g

        def pull(self, params):
            self.w[:] = params
            return 0

    @ray.remote(num_cpus=0)
    class Shard:
        def __init__(self):
            self.w = np.zeros(n, np.float32)

        def apply(self, *gs):
            for g in gs:
                self.w -= 0.01 * g
            return self.w

    ws, s = [Worker.remote() for _ in range(k)], Shard.remote()
    ray.get([w.run.remote(0) for w in ws] + [s.apply.remote()])
    p: object = 0
    t = time.perf_counter()
    for _ in range(reps):
        p = s.apply.remote(*[w.run.remote(p) for w in ws])
    ray.get(p)
    out = {"task_round_ms": 1e3 * (time.perf_counter() - t) / reps}
    from ray.dag import InputNode, MultiOutputNode

    with InputNode() as inp:
        new = s.apply.bind(*[w.run.bind(inp) for w in ws])
        dag = MultiOutputNode([w.pull.bind(new) for w in ws]).experimental_compile()
    try:
        ray.get(dag.execute(0))
        t = time.perf_counter()
        for i in range(reps):
            ray.get(dag.execute(i))
        out["compiled_graph_round_ms"] = 1e3 * (time.perf_counter() - t) / reps
    finally:
        dag.teardown()
    for a in ws + [s]:
        ray.kill(a)
    return out


def freqs(div):
    """samples/s of the 100 K model for each push frequency, BSP and ASP, local and Ray alternating."""
    out = {}
    for utype in ("BSP", "ASP"):
        for freq in ("BATCH", "NBATCHES", "EPOCH"):
            rounds = (96 if freq == "BATCH" else 192) // div // 8 * 8 or 8
            got = {"local": [], "ray": []}
            for backend in ("local", "ray") * (1 if div >= 10 else 2):
                got[backend].append(train(backend, SIZES["100K"], rounds, utype=utype, freq=freq)["samples_per_s"])
            key = f"{utype} {freq if freq != 'NBATCHES' else 'NBATCHES 8'}"
            out[key] = {b: max(v) for b, v in got.items()}
            print(key, json.dumps(out[key]), flush=True)
    return out


def loopback(addr):
    import ipaddress

    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


CALLS = r"""
import json, time, numpy as np, gpups
from gpups.models import SoftmaxRegression
rng = np.random.default_rng(0)
X = rng.standard_normal((400, 8)); y = (X[:, 0] > 0).astype(np.int64)
net = SoftmaxRegression(8, 2)
def call(backend):
    t = time.perf_counter()
    gpups.paramserv(net.init(0), X, y, upd=net.gradients, k=2, batchsize=20, epochs=2, backend=backend,
                    progress=False, device="cpu")
    return time.perf_counter() - t
local = min(call("local") for _ in range(3))
first, second, third = call("ray"), call("ray"), call("ray")
t = time.perf_counter(); gpups.ray_shutdown(); stop = time.perf_counter() - t
print(json.dumps({"local_call_s": local, "first_ray_call_s": first, "second_ray_call_s": second,
                  "third_ray_call_s": third, "shutdown_s": stop}))
"""


def call_overheads():
    """Wall time of a tiny paramserv call on Ray: the first starts the embedded instance, the next
    ones find it warm (in a fresh process, as a user's script would be)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", CALLS], capture_output=True, text=True, timeout=600)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["warm_call_overhead_s"] = min(r["second_ray_call_s"], r["third_ray_call_s"]) - r["local_call_s"]
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "ray.json"))
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    ap.add_argument("--ci", action="store_true", help="the short form the tests run: 100 K only, few rounds")
    args = ap.parse_args(argv)
    calls = call_overheads()
    print("calls", json.dumps(calls), flush=True)
    import ray

    from gpups.ray_backend.cluster import listening_addresses, loopback_only

    t = time.perf_counter()
    with loopback_only(ray):  # (the bench's traffic stays on loopback)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="warning")
    R = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                    f"ray {ray.__version__}", "ray_start_s": time.perf_counter() - t, "calls": calls}
    div = 10 if args.ci else 4 if args.quick else 1
    sizes = {"100K": SIZES["100K"]} if args.ci else SIZES
    for name, layers in sizes.items():
        big = name == "10M"
        rt_rounds = (20 if big else 200) // div
        tr_rounds = (8 if big else 100) // div
        row = {}
        for backend in ("local", "ray") if args.ci else ("local", "ray", "local", "ray"):  # alternate
            rt = train(backend, layers, rt_rounds, upd=null_upd)
            tr = train(backend, layers, tr_rounds)
            row.setdefault(backend, []).append((rt["round_trip_ms"], tr["samples_per_s"]))
            row["params"] = rt["params"]
        R[name] = {"params": row["params"]}
        for backend in ("local", "ray"):
            R[name][f"{backend}_round_trip_ms"] = min(r for r, _ in row[backend])
            R[name][f"{backend}_samples_per_s"] = max(s for _, s in row[backend])
        R[name]["ray_parts"] = parts(ray, row["params"])
        if not args.ci and row["params"] <= 10**6:  # (a 10 M push outgrows a compiled graph's channel buffer: it hung)
            R[name]["ray_parts"].update(rounds(ray, row["params"], reps=max(20, 200 // div)))
        print(name, json.dumps(R[name]), flush=True)
    R["freqs"] = freqs(div)
    found = listening_addresses(os.getpid())
    R["sockets"] = {"listening": len(found), "addresses": sorted({a for a, _, _ in found}),
                    "all_loopback": all(loopback(a) for a, _, _ in found)}
    t = time.perf_counter()
    ray.shutdown()
    R["ray_stop_s"] = time.perf_counter() - t
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(R, f, indent=2)
    print(f"\n{R['machine']}; Ray start {R['ray_start_s']:.1f} s, stop {R['ray_stop_s']:.1f} s")
    c = R["calls"]
    print(f"a tiny paramserv call: local {c['local_call_s']:.3f} s; Ray first {c['first_ray_call_s']:.2f} s (starts "
          f"Ray), then {c['second_ray_call_s']:.2f} s and {c['third_ray_call_s']:.2f} s (warm): "
          f"{c['warm_call_overhead_s']:.2f} s over local")
    print(f"{'model':>6} {'params':>10} | {'round trip local':>16} {'ray':>9} | {'samples/s local':>15} "
          f"{'ray':>9} {'ray/local':>9}")
    for name in sizes:
        r = R[name]
        print(f"{name:>6} {r['params']:>10,} | {r['local_round_trip_ms']:>13.3f} ms {r['ray_round_trip_ms']:>6.2f} ms | "
              f"{r['local_samples_per_s']:>15,.0f} {r['ray_samples_per_s']:>9,.0f} "
              f"{r['ray_samples_per_s'] / r['local_samples_per_s']:>9.2f}")
    print(f"{'push frequency (100 K, k=2)':>28} | {'local':>9} {'ray':>9} {'ray/local':>9}")
    for key, f in R["freqs"].items():
        print(f"{key:>28} | {f['local']:>9,.0f} {f['ray']:>9,.0f} {f['ray'] / f['local']:>9.2f}")
    print(f"sockets of the instance: {R['sockets']['listening']} listening, on {R['sockets']['addresses']}")
    for name in sizes:
        p = R[name]["ray_parts"]
        print(f"{name:>6} Ray parts: empty call {p['empty_call_ms']:.2f} ms, put {p['put_ms']:.2f} ms, "
              f"zero-copy get {p['get_zero_copy_ms']:.3f} ms, call with the array {p['call_with_array_ms']:.2f} ms, "
              f"numpy copy {p['numpy_copy_ms']:.2f} ms")
        if "task_round_ms" in p:
            print(f"{name:>6} a bare BSP round (k=2): actor tasks {p['task_round_ms']:.2f} ms, "
                  f"compiled graph {p['compiled_graph_round_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
