"""Load on the web demo: concurrent gradio_client users against a running `supemb demo`.

    python benchmarks/demo_load.py                       # starts `supemb demo` on a free port itself
    python benchmarks/demo_load.py --url http://127.0.0.1:7860/ [--clients 8] [--requests 25]

Each client (its own `gradio_client.Client`, in its own thread) sends
`--requests` predictions one after the other, cycling over the three tabs
(age, temperature, brain age) with the demo's example inputs: upload, queue,
predict, neighbours, map, as a user's click does. One warm-up call per tab
runs first, untimed. A request fails if it raises or comes back with an
error. Latency is per request, client side (upload included).

The demo runs in its own process (started here unless --url is given), so
the clients do not share its interpreter. Prints a table and writes JSON
(default benchmarks/results/demo-load.json) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "demo-load.json"
TABS = ("age", "temperature", "brain_age")


def machine_info() -> dict:
    import gradio

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_machine.py
    from _machine import machine_info as base

    return base(gradio=gradio.__version__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """`supemb demo` on a free port in a child process; returns once it answers."""
    import httpx

    port = _free_port()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen([sys.executable, "-m", "supemb", "demo", "--port", str(port)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"supemb demo exited with {proc.returncode}: {log.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"supemb demo did not answer on {url} within {timeout_s:.0f} s")


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run_load(url: str, clients: int, requests: int, examples: dict[str, list[Path]]) -> dict:
    from gradio_client import Client, handle_file

    def call(client: Client, tab: str, path: Path) -> str | None:
        """None on success, else what went wrong."""
        try:
            # the age tab finds faces; its synthetic examples are face crops already
            extra = [True] if tab == "age" else []
            data = client.predict(handle_file(str(path)), 10, *extra, api_name=f"/predict_{tab}")[1]
        except Exception as err:  # noqa: BLE001 - every failure is counted, whatever it is
            return f"{type(err).__name__}: {err}"
        return data.get("error") if isinstance(data, dict) else f"unexpected output {data!r}"

    pool = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
    for tab in TABS:  # warm-up, untimed
        if (err := call(pool[0], tab, examples[tab][0])) is not None:
            raise SystemExit(f"warm-up {tab} failed: {err}")

    latencies: dict[str, list[float]] = {tab: [] for tab in TABS}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def user(c: int) -> None:
        start.wait()
        for i in range(requests):
            tab = TABS[(c + i) % len(TABS)]
            files = examples[tab]
            t0 = time.perf_counter()
            err = call(pool[c], tab, files[(c + i) % len(files)])
            dt = time.perf_counter() - t0
            with lock:
                latencies[tab].append(dt)
                if err is not None:
                    errors.append(f"client {c} request {i} ({tab}): {err}")

    threads = [threading.Thread(target=user, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    def stats(xs: list[float]) -> dict:
        return {"n": len(xs), "p50_s": round(percentile(xs, 50), 4), "p95_s": round(percentile(xs, 95), 4),
                "max_s": round(max(xs), 4), "mean_s": round(statistics.fmean(xs), 4)}

    every = [x for xs in latencies.values() for x in xs]
    return {"clients": clients, "requests_per_client": requests, "requests": len(every),
            "errors": len(errors), "error_messages": errors[:20], "wall_s": round(wall, 3),
            "throughput_rps": round(len(every) / wall, 3), "all": stats(every),
            "per_tab": {tab: stats(xs) for tab, xs in latencies.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running demo (default: start `supemb demo` on a free port)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="per client")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()

    from supemb.cli import _load_demo

    examples = {tab: [e.path for e in items if e.cropped]  # the synthetic ones (face crops for the age tab)
                for tab, items in _load_demo().example_inputs().items()}
    proc = None
    url = args.url
    if url is None:
        proc, url = start_demo()
    try:
        result = run_load(url, args.clients, args.requests, examples)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    result.update(url=url if args.url else "local `supemb demo` (started by this script)",
                  machine=machine_info())

    print(f"\n{result['clients']} clients x {result['requests_per_client']} requests "
          f"({result['requests']} in {result['wall_s']:.1f} s, {result['throughput_rps']:.1f} req/s), "
          f"errors: {result['errors']}\n")
    print("| tab | requests | p50 (s) | p95 (s) | max (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, s in [*result["per_tab"].items(), ("all", result["all"])]:
        print(f"| {name} | {s['n']} | {s['p50_s']:.3f} | {s['p95_s']:.3f} | {s['max_s']:.3f} |")
    for msg in result["error_messages"]:
        print("error:", msg)
    from _machine import append_run

    n = append_run(args.json, result)
    print(f"\nappended run {n} to {args.json}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
