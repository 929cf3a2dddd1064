"""Render a harness result: the terminal table and the BENCHMARKS.md section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

START = "<!-- bench:harness:start -->"
END = "<!-- bench:harness:end -->"
_GIB = 1024**3

_ORDER = [
    "ceiling_thp",
    "ceiling",
    "kernel",
    "baseline",
    "peer",
    "trainer_prebuilt",
    "trainer_nometrics",
    "trainer",
    "loader",
]


def _eps(x: float) -> str:
    return f"{x:,.0f}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _rows(res: dict[str, Any]) -> list[list[str]]:
    from bench.config import PATH_LABELS

    main = res["main"]
    p, r = main["paths"], main["ratios"]
    rows = []
    for name in _ORDER:
        if name not in p:
            continue
        vs_k = 1.0 if name == "kernel" else r.get(f"{name}_vs_kernel")
        vs_c = 1.0 if name == "ceiling" else r.get(f"{name}_vs_ceiling")
        rows.append(
            [
                name,
                PATH_LABELS[name],
                _eps(p[name]["median_examples_per_s"]),
                _x(vs_k),
                _x(vs_c),
                _eps(p[name]["examples_per_cpu_s"]),
            ]
        )
    for k, ray in sorted(res.get("ray", {}).items()):
        cpe = ray.get("cpu_seconds_per_example")
        rows.append(
            [
                f"ray_{k}",
                PATH_LABELS[f"ray_{k}"],
                _eps(ray["examples_per_s"]),
                _x(ray["vs_kernel"]),
                _x(ray["vs_ceiling"]),
                _eps(1 / cpe) if cpe else "-",
            ]
        )
    return rows


def _table(header: list[str], rows: list[list[str]], md: bool) -> str:
    if md:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(h.ljust(wd) for h, wd in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += [
        "  ".join(
            str(c).rjust(wd) if i >= 2 else str(c).ljust(wd)
            for i, (c, wd) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(out)


def _scaling_rows(res: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in res.get("scaling", []):
        rows.append(
            [
                s["axis"],
                f"{s['rows']:,}" + (" *" if s.get("kernel_shares_trainer_tables") else ""),
                str(s["dim"]),
                str(s["batch"]),
                _eps(s["ceiling_examples_per_s"]),
                _eps(s["kernel_examples_per_s"]),
                _eps(s["trainer_examples_per_s"]),
                f"{s['trainer_vs_kernel']:.2f}",
                f"{s['kernel_vs_ceiling']:.2f}",
                f"{s['trainer_vs_ceiling']:.2f}",
                f"{s['peak_increase_bytes'] / _GIB:.2f} / "
                f"{s.get('full_estimate_bytes', s['estimate_bytes']) / _GIB:.2f}",
                f"{s.get('increase_vs_full_estimate', s['increase_vs_estimate']):.2f}",
            ]
        )
    return rows


_SCALING_HEADER = [
    "axis",
    "rows",
    "dim",
    "batch",
    "ceiling ex/s",
    "kernel ex/s",
    "trainer ex/s",
    "trainer/kernel",
    "kernel/ceiling",
    "trainer/ceiling",
    "peak RSS incr. / full estimate GiB",
    "ratio",
]
_MAIN_HEADER = ["path", "what", "examples/s (median round)", "x kernel", "x ceiling", "ex per CPU-s"]


def format_text(res: dict[str, Any]) -> str:
    return _render(res, md=False)


def format_markdown(res: dict[str, Any]) -> str:
    return _render(res, md=True)


def _render(res: dict[str, Any], md: bool) -> str:
    meta, main, c = res["meta"], res["main"], res["ceiling"]
    w = meta["workload"]
    mem = main["memory"]
    h = (lambda s: f"**{s}**") if md else (lambda s: s)
    lines = []
    if md:
        lines += [
            f"Command: `{meta['command']}`  ",
            f"Date: {meta['date']}  ",
            f"Machine: {meta['cores']} cores ({meta['torch_threads']} torch threads), device "
            f"{meta['device']}{' (' + meta['gpu'] + ')' if meta.get('gpu') else ''}, {meta['platform']}  ",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "  ",
            f"Load average (1/5/15 min) at start {_load(meta['load_avg_start'])}, at end "
            f"{_load(meta.get('load_avg_end'))}; wall {meta.get('wall_seconds', 0):.0f} s",
            "",
        ]
    lines.append(
        h(
            f"Workload (every path): {w['tables']} sparse features -> {w['tables']} tables x "
            f"{w['rows']:,} rows x dim {w['dim']}, one id per table, {w['dense']} dense features, "
            f"batch {w['batch']}; dense arch {list(w['dense_arch']) + [w['dim']]}, "
            f"{w.get('interaction', 'dot')} interaction, "
            f"over arch {list(w['over_arch'])} + 1"
            + (
                "; rectrain's paths with training.compile (peer and plain PyTorch eager)"
                if w.get("compile")
                else ""
            )
        )
    )
    lines.append(f"Ids: {w['ids']}. The kernel, baseline and ceiling replay the trainer loader's batches.")
    lines.append(
        f"In-process paths interleaved (after an untimed warm-up round, a random order each round): {meta['rounds']} rounds x {max(1, -(-meta['steps'] // meta['rounds']))}"
        " steps each; ratios are medians of per-round ratios."
    )
    lines.append("")
    lines.append(_table(_MAIN_HEADER, _rows(res), md))
    if main.get("peer_skipped"):
        lines.append(f"Peer (TorchRec's own DLRM loop) skipped: {main['peer_skipped']}.")
    lines.append("")
    lines.append(h("Physical ceiling"))
    lines.append(
        f"{'- ' if md else '  '}gather + row-wise AdaGrad loop ({c['impl']}) on the kernel's own tables: "
        f"{c['gather_lookups_per_s'] / 1e6:.2f} M lookups/s = {_eps(c['gather_examples_per_s'])} examples/s"
    )
    if "gather_thp_lookups_per_s" in c:
        lines.append(
            f"{'- ' if md else '  '}same loop, tables copied onto transparent huge pages: "
            f"{c['gather_thp_lookups_per_s'] / 1e6:.2f} M lookups/s"
        )
    lines.append(
        f"{'- ' if md else '  '}warm memory copy {c['memcpy_bytes_per_s'] / 1e9:.1f} GB/s (read + write); "
        f"{c['bytes_per_example']:,} bytes/example (5 x dim x 4 + 8 per lookup) -> bandwidth bound "
        f"{_eps(c['bandwidth_bound_examples_per_s'])} examples/s"
    )
    lines.append("")
    b = res["breakdown"]
    lines.append(
        h("Where a rectrain step's time goes") + " (from the interleaved paths): "
        f"FBGEMM kernel {b['kernel']:.0%}, dense arch + DMP/KJT plumbing + dense optimizer "
        f"{b['model_overhead']:.0%}, loader in the loop {b['loader']:.0%}, metrics "
        f"{b['metrics']:.1%}, rest {b['unattributed']:.0%} (differences of noisy ratios: a negative share means "
        "within noise). The loader alone delivers "
        f"{main['ratios'].get('loader_vs_trainer', float('nan')):.2f}x the full step's examples/s. "
        f"Metrics A/B: with metrics / without = {main['ratios']['trainer_vs_trainer_nometrics']:.2f}."
    )
    lines.append("")
    full = mem.get("full_estimate_bytes")
    parts = mem.get("estimate_parts") or {}
    lines.append(
        h("Memory")
        + f": trainer peak RSS increase {mem['peak_increase_bytes'] / _GIB:.2f} GiB vs the spec's full "
        + (
            f"estimate {full / _GIB:.2f} GiB ({mem['increase_vs_full_estimate']:.2f}x; "
            + ", ".join(f"{k} {v / _GIB:.2f}" for k, v in parts.items())
            + ") "
            if full
            else "estimate (not recorded) "
        )
        + f"and the embeddings alone {mem['estimate_bytes'] / _GIB:.2f} GiB "
        f"({mem['increase_vs_estimate']:.2f}x, information); whole-process peak "
        f"{mem['peak_rss_bytes'] / _GIB:.2f} GiB, includes the interpreter and libraries; right after "
        f"building the Trainer: +{mem['build_increase_bytes'] / _GIB:.2f} GiB"
    )
    if "gpu_peak_allocated_bytes" in mem:
        lines.append(
            f"{'- ' if md else '  '}GPU memory ({meta.get('gpu')}, {mem['gpu_total_bytes'] / _GIB:.1f} GiB): "
            f"trainer peak allocated increase {mem['gpu_peak_increase_bytes'] / _GIB:.2f} GiB vs estimate "
            f"{mem['estimate_bytes'] / _GIB:.2f} GiB ({mem['gpu_increase_vs_estimate']:.2f}x)"
        )
    for _k, ray in sorted(res.get("ray", {}).items()):
        inc = ray.get("worker_peak_increase_bytes")
        full_r = ray.get("worker_full_estimate_bytes")
        cpe = ray.get("cpu_seconds_per_example")
        lines.append(
            f"{'- ' if md else '  '}Ray {ray['workers']} worker(s), batch "
            f"{ray.get('batch_per_worker', ray['global_batch'] // ray['workers'])} each "
            f"(global {ray['global_batch']}): "
            + (f"{cpe * 1e6:.1f} CPU-us per example (pass 2, all workers); " if cpe else "")
            + f"worker peak RSS {ray['worker_peak_rss_bytes'] / _GIB:.2f} GiB (whole process"
            + (
                f", {ray['worker_peak_vs_full_estimate']:.2f}x the full estimate "
                f"{full_r / _GIB:.2f} GiB; minus its RSS before the Trainer: {inc / _GIB:.2f} GiB, "
                f"{ray['worker_increase_vs_full_estimate']:.2f}x"
                if full_r and inc
                else f", {ray['worker_peak_vs_estimate']:.2f}x the embedding estimate"
            )
            + f"); examples/s by pass {[round(x) for x in ray['examples_per_s_by_pass']]}, "
            f"{ray['wall_seconds']:.0f} s wall incl. Ray start-up"
        )
    sc = res.get("ray_scaling")
    if sc:
        lines.append(
            f"{'- ' if md else '  '}strong scaling at global batch {sc['global_batch']}: CPU-seconds per "
            f"example 2 workers / 1 = {sc['cpu_per_example_2w_vs_1w']:.2f} (1.0 = free; on a shared "
            f"machine wall time says little), examples/s 2 workers / 1 = {sc['examples_per_s_2w_vs_1w']:.2f}"
        )
    if res.get("ray"):
        lines.append(
            "Ray figures are the second pass's examples/s as the trainer times it inside its loop: "
            "Ray and worker start-up, planning and checkpoints are excluded; nothing is subtracted."
        )
    lines.append("")
    if res.get("scaling"):
        lines.append(
            h("Scaling") + " (ceiling, kernel, and rectrain step with loader + metrics; baseline left "
            "out: its dense AdaGrad state doubles memory)"
        )
        lines.append("")
        lines.append(_table(_SCALING_HEADER, _scaling_rows(res), md))
        if any(s.get("kernel_shares_trainer_tables") for s in res["scaling"]):
            lines.append(
                "\\* tables too big to hold twice: the kernel and ceiling ran on the trainer's own FBGEMM TBE "
                "(same tables, same ids), so memory is one copy."
            )
        for s in res.get("scaling_skipped", []):
            lines.append(
                f"skipped {s['axis']} rows {s['rows']:,} dim {s['dim']} batch {s['batch']}: {s['reason']}"
            )
        lines.append("")
    lines.append(h("Targets"))
    lines.append("")
    trows = [
        [t["name"], t["what"], t["target"], f"{t['value']:.3f}", "met" if t["met"] else "MISSED"]
        for t in res["targets"]
    ]
    lines.append(_table(["target", "what", "wanted", "measured", ""], trows, md))
    if main.get("profile"):
        lines.append("")
        lines.append(h("torch.profiler, 3 rectrain steps (loader + metrics), top ops by self CPU time"))
        lines.append("")
        prow = [
            [
                p["op"][:60],
                f"{p['self_cpu_ms_per_step']:.2f}",
                f"{p['share']:.0%}",
                f"{p['calls_per_step']:.0f}",
            ]
            for p in main["profile"]
        ]
        lines.append(_table(["op", "ms/step", "share", "calls/step"], prow, md))
    return "\n".join(lines)


def _load(v: list[float] | None) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


HEADING = "## Benchmark harness (`rectrain bench`)"


def write_markdown(res: dict[str, Any], path: str | Path, notes: str = "") -> None:
    """Replace the text between this harness's markers (create the file or section if absent).

    The heading sits *outside* the markers, right before the start marker: other
    sections' writers in BENCHMARKS.md treat "everything up to the next ``## ``
    heading" as theirs, so a marker placed before our heading could be swallowed."""
    p = Path(path)
    body = format_markdown(res) + "\n"
    if notes:
        body += "\n" + notes.strip() + "\n"
    section = f"{START}\n{body}{END}"
    text = (
        p.read_text()
        if p.exists()
        else "# Benchmarks\n\nFigures are measured by the commands named in each section.\n"
    )
    if START in text and END in text and text.index(START) < text.index(END):
        text = re.sub(
            re.escape(START) + r".*?" + re.escape(END), lambda _: section, text, count=1, flags=re.S
        )
    else:
        text = text.rstrip("\n") + "\n\n" + HEADING + "\n\n" + section + "\n"
    p.write_text(text)
