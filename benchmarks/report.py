#!/usr/bin/env python3
"""Turns bench_attention's JSON into the comparison table (printed, and as Markdown) and a chart.

usage: report.py BENCH.json [--markdown OUT.md] [--png OUT.png [--gnuplot PATH]]

Reads the median aggregates when the run had repetitions, the plain runs otherwise. Standard
library only; the chart is drawn by gnuplot (Debian: gnuplot-nox).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

SHAPES = ["S1", "S2", "S3", "S4", "S5", "S6", "D1"]


def load(path):
    with open(path) as f:
        data = json.load(f)
    runs = data["benchmarks"]
    medians = [b for b in runs if b.get("aggregate_name") == "median"]
    results = {}
    for b in medians or [b for b in runs if b.get("run_type", "iteration") == "iteration"]:
        m = re.match(r"(.+)/threads:(\d+)", b["run_name"] if "run_name" in b else b["name"])
        if not m:
            continue
        results[(m.group(1), int(m.group(2)))] = b
    return data.get("context", {}), results


def counter(results, name, threads, key):
    b = results.get((name, threads))
    return b.get(key) if b and key in b else None  # the benchmark already reports G units


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def build_table(results):
    threads = sorted({t for (_, t) in results})
    lines = []
    ceilings = []
    for t in threads:
        roof = counter(results, "ceiling/fma_roof", t, "GFLOPS")
        sgemm = counter(results, "ceiling/sgemm_1024", t, "GFLOPS")
        bw = counter(results, "ceiling/read_bandwidth", t, "GBps")
        ceilings.append((t, roof, sgemm, bw))
    lines.append("| threads | FMA roof GFLOP/s | sgemm 1024³ GFLOP/s | read GB/s |")
    lines.append("|---|---|---|---|")
    for t, roof, sgemm, bw in ceilings:
        lines.append(f"| {t} | {fmt(roof)} | {fmt(sgemm)} | {fmt(bw)} |")
    lines.append("")
    lines.append("| shape | threads | naive GFLOP/s | attn GFLOP/s | attn / naive | attn / roof | attn / sgemm "
                 "| attn extra memory MiB |")
    lines.append("|---|---|---|---|---|---|---|---|")
    rows = []
    for shape in SHAPES + ["S3 double"]:
        for t, roof, sgemm, bw in ceilings:
            key = "S3" if shape == "S3 double" else shape
            suffix = "_double" if shape == "S3 double" else ""
            naive = counter(results, f"naive{suffix}/{key}", t, "GFLOPS")
            lib = counter(results, f"attn{suffix}/{key}", t, "GFLOPS")
            if naive is None and lib is None:
                continue
            extra = ""
            if shape == "D1":
                gbs = counter(results, "attn/D1", t, "GBps")
                extra = f" ({fmt(gbs)} GB/s = {fmt(ratio(gbs, bw), 2)} of read bandwidth)"
            mib = counter(results, f"attn{suffix}/{key}", t, "extra_MiB")
            lines.append(f"| {shape} | {t} | {fmt(naive)} | {fmt(lib)}{extra} | {fmt(ratio(lib, naive), 2)}× "
                         f"| {fmt(ratio(lib, roof), 2)} | {fmt(ratio(lib, sgemm), 2)} | {fmt(mib, 2)} |")
            rows.append((shape, t, naive, lib))
    for t, *_ in ceilings:
        fwd = counter(results, "self_attention_forward/n1024_dmodel512_dk64", t, "GFLOPS")
        if fwd is not None:
            lines.append(f"| SelfAttention forward, n 1024, d_model 512, d_k 64 (projections included) "
                         f"| {t} | – | {fmt(fwd)} | – | – | – | – |")
    if len(threads) > 1:
        lo, hi = threads[0], threads[-1]
        lines.append("")
        lines.append(f"| shape | attn {hi} threads ÷ {lo} thread |")
        lines.append("|---|---|")
        for shape in SHAPES + ["S3 double"]:
            key = "S3" if shape == "S3 double" else shape
            suffix = "_double" if shape == "S3 double" else ""
            a = counter(results, f"attn{suffix}/{key}", lo, "GFLOPS")
            b = counter(results, f"attn{suffix}/{key}", hi, "GFLOPS")
            if a is not None and b is not None:
                lines.append(f"| {shape} | {fmt(ratio(b, a), 2)}× |")
    return "\n".join(lines), rows


def chart(rows, png, gnuplot):
    threads = sorted({t for (_, t, _, _) in rows})
    with tempfile.TemporaryDirectory() as tmp:
        dat = os.path.join(tmp, "bench.dat")
        with open(dat, "w") as f:
            f.write("shape " + " ".join(f"naive_{t}t attn_{t}t" for t in threads) + "\n")
            shapes = []
            for shape, *_ in rows:
                if shape not in shapes:
                    shapes.append(shape)
            for shape in shapes:
                vals = []
                for t in threads:
                    match = [r for r in rows if r[0] == shape and r[1] == t]
                    naive, lib = (match[0][2], match[0][3]) if match else (None, None)
                    vals += [naive if naive is not None else 0, lib if lib is not None else 0]
                f.write(f'"{shape}" ' + " ".join(f"{v:.3f}" for v in vals) + "\n")
        columns = ", ".join(f"'{dat}' using {i + 2}:xtic(1) title columnhead" for i in range(2 * len(threads)))
        script = "\n".join([
            "set terminal pngcairo size 1000,520 noenhanced" if png else "",
            f"set output '{png}'",
            "set title 'attn vs the naive Eigen composition (fp32, GFLOP/s, higher is better)'",
            "set style data histograms", "set style histogram clustered gap 1",
            "set style fill solid 0.85 border -1", "set key top right", "set grid ytics",
            "set ylabel 'GFLOP/s'", "set yrange [0:*]",
            f"plot {columns}",
        ])
        result = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
        if result.returncode != 0 and "pngcairo" in result.stderr:  # a gnuplot without cairo
            script = script.replace("pngcairo size 1000,520 noenhanced", "png size 1000,520")
            result = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
        if result.returncode != 0:
            sys.exit(f"gnuplot failed: {result.stderr.strip()}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("--markdown")
    p.add_argument("--png")
    p.add_argument("--gnuplot", default="gnuplot")
    args = p.parse_args()
    context, results = load(args.json)
    table, rows = build_table(results)
    header = (f"host: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs at "
              f"{context.get('mhz_per_cpu', '?')} MHz, {context.get('date', '')}")
    print("\n" + header + "\n\n" + table + "\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header + "\n\n" + table + "\n")
        print(f"table: {args.markdown}")
    if args.png:
        chart(rows, args.png, args.gnuplot)
        print(f"chart: {args.png}")


if __name__ == "__main__":
    main()
