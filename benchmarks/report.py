"""``BENCHMARKS.md`` (tables, details, notes) and one PNG per result file, from the JSON results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_ORDER = {"accuracy-full": -1, "cpu-quick": 0, "cpu-full": 1, "gpu-quick": 2, "gpu-full": 3}
# Everything from this line on in BENCHMARKS.md is hand-written (e.g. benchmarks/precision.py's table)
# and kept as it is when the generated part above it is rewritten.
KEEP_MARKER = "<!-- Hand-written sections below: benchmarks/report.py keeps them as they are. -->"
NOTES = """\
## How these numbers are taken

- **Interleaved, same process.** Every benchmark runs the library path and its baseline alternately
  (A B, B A, ... after a warm-up round; the training benchmark alternates blocks of steps inside one
  `Trainer.fit`), and reports the median of each side and the **median of the per-round ratios**,
  so that load changes on the machine hit both sides alike.
- **Shared CPU.** The CPU results were taken on a 2-core machine shared with other jobs (see the load
  averages in the machine table): absolute images/s move with the load by up to 2-3x between
  minutes; the interleaved ratios are what to read.
- **No pretrained weights** (no network here): models are randomly initialised. For the inference
  agreement check the head is fitted (ridge regression) to the fp32 features of generated demo
  images, so that top-1 decisions mean something; agreement on a real fine-tuned B4 is reported by
  `mode=predict` itself (`summary.json` -> `inference.agreement_vs_fp32`).
- **Training overhead** counts everything the default `Trainer` does per step (hooks, `self.log`,
  progress bar, LR monitor, timm scheduler step, EMA) and excludes validation, which the plain loop
  does not do. A benchmark epoch is only 8-13 steps, so the blocks holding an epoch end (best + last
  checkpoint writes) are reported apart, as `epoch_end_extra_s` seconds per epoch, and the ratio is the
  median over the other blocks (`ratio_all_blocks` includes them). One-time `fit()` set-up is reported
  apart too.
- **Training overhead in milliseconds**: `framework_overhead_ms_per_step` is the library's extra time
  per step measured on a tiny model, where it is most of the step; the overhead ratio of any model
  is about 1 + that / its step time. The B0 ratio itself is within a few % of noise run to run.
- **EMA on both sides**: the library's default recipe averages the weights (`ema.enabled=true`), so the
  plain training loops (classification and detection) run timm's `ModelEmaV3` update with the same
  decay after each step: the ratio compares a hand-written loop with the same recipe (the update is
  ~2 ms per step for B0 on this CPU).
- **Cached probe and EMA**: `cached_epoch_s_without_ema` / `ratio_without_ema` show a cached epoch
  with `ema.enabled=false`; since the EMA skips the frozen backbone (below) the two are about equal.
- **Detection** compares against the standalone torchvision `RetinaNet` that `build_detector` gives
  (the exported form) with a copy of the same weights; predict runs the `mode=predict` path
  (channels_last, bf16 body where native) against fp32 `model(images)`, and reports the share of
  confident boxes (score >= 0.3) found by both (same class, IoU >= 0.9).
- **Input pipeline** is per DataLoader worker (one torch thread, as in a worker): with `W` workers
  the loader delivers about `W x` that rate; `workers_to_feed_model` = model images/s / per-worker rate.
- **Scaling**: the best of a few batches per configuration (not interleaved, so it moves with the
  load more than the ratios do); each configuration runs in its own process; peak RSS (`VmHWM`) is
  that whole process's (Python, torch, the model, activations), `rss_increase_mib` its rise once the
  model is built.
- **OpenMP threads wait passively** (`OMP_WAIT_POLICY=PASSIVE`, set by `benchmarks/__init__.py`): with
  the default spinning, 2 threads on a shared 2-core machine ran B4 inference 7x slower than 1 thread.
- **Side by side**: `python run.py` training runs (B0 @ 128 px, 2 epochs of 12 batches, generated demo
  data, subprocesses with the user's default threads), one alone and then two started together, under
  libgomp's own default (spin 300 000 times, then sleep: what the CLI did before) and under the CLI's
  policy now; the ratio is the largest pair run / the alone run. Startup (imports, data) is part of
  every run's wall time, as a user sees it.
- **Time to accuracy** (`time_to_accuracy`, accuracy suite, `--cls-data DIR` of class folders):
  per seed, the naive plain-PyTorch loop (`benchmarks/plain_classification.py`: AdamW 1e-3 constant,
  fp32, cross-entropy, random-resized-crop + flip, the library's batch size and workers) trains the same
  epochs as `python run.py data=folder` with the library's defaults, from the same weights file, each a
  subprocess with one OpenMP thread, one at a time. `A` is the naive loop's final val top-1, `T` its
  wall seconds at its last epoch end; `t_lib` is the library's `time/elapsed_s` (logged at each training
  epoch end, after validation and checkpoints) at the first epoch with `val/acc1 >= A`. Both clocks start
  when the process starts (imports, data scan, model creation included). The ratio is
  mean(`t_lib`) / mean(`T`) over seeds (per-seed ratios and their mean in the details); a seed that
  never reaches `A` misses the target.
- **GPU**: the GPU suite (B4 @ 320, bf16-mixed, channels_last: library vs plain timm loop, target
  images/s ratio >= 0.97; timm publishes 293 img/s for B4 training on an RTX 3090 with AMP at batch 96)
  needs a CUDA device; without one it records "skipped" and no GPU number is claimed. First measured
  on an H200 (torch 2.11, timm 1.0.29, `scripts/gpu_checks.sh`): training 0.98 of the plain loop,
  ~507 img/s at batch 64. `gpu_inference` missed its target (0.67 at 256 images, 0.96 at 2048): the
  model itself runs bf16 + channels_last at ~2 975 img/s (batch 128 @ 384, `gpu_scaling`) against
  ~1 100 img/s fp32, but the benchmark fed the library through a `DataLoader` that collated 128
  single images per batch (~0.1 s per batch on one CPU thread, measured here) while the naive loop
  sliced the tensor. The loader is now pre-batched on both sides; re-run
  `--suite gpu --quick --only gpu_inference` on the next GPU. Batch-1 latency is launch-bound on
  a GPU: autocast's casts make it slower (12 ms vs 8 ms fp32).

## What the measurements changed in the library

- `mode=predict` / `mode=embed` default to channels_last and bf16 autocast where the hardware runs
  bf16 natively (`predict.precision=auto`), with an fp32 agreement report; the head and softmax stay
  in fp32 so probabilities still sum to 1.
- JPEG draft decoding keeps >= `data.draft_factor` (1.5) x each split's own input side. The earlier
  rule (2x the larger of the train and eval sizes, 768 px for B4) never drafted a 2 MP photo
  (1224 px short side < 2 x 768), so it did nothing at the sizes this benchmark uses.
- The progress bar refreshes every `trainer.log_every_n_steps` steps instead of every step: each
  refresh reads the logged loss/accuracy as Python numbers, a host-device sync on a GPU. On this
  CPU the whole per-step overhead of the default path is a few ms (about 1 % at B0 @ 160, batch 16),
  so the change is not visible in the CPU numbers.
- Cached-feature linear probe (`data.cache_features=true`): the frozen backbone runs once, not every
  epoch.
- The EMA skips tensors that are still equal to their average and did not change in a step (frozen
  stages: no gradient; frozen BatchNorm: eval mode), in its update and in the validation swap: a cached
  epoch of a B4 probe went from 0.18 s to 0.10 s (the same as without EMA), bit-identical results.
- The CLI (`python run.py`, `b4transfer`) sets `OMP_WAIT_POLICY=PASSIVE` unless the user set
  `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`: two small training runs side by side on 2 cores each took 5.4x
  the wall time of one alone with libgomp's default spinning, 1.1x now ("side by side" above).
- Detection `mode=predict` got the classification fast path: channels_last weights (1.4x for B4
  RetinaNet at 512 px, fp32) and bf16 autocast for the timm body only (FPN and heads stay fp32 for
  box precision), with a box-agreement check against fp32 eager.
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _side(d: dict) -> str:
    if not d:
        return ""
    if d["median"] is None:
        return f"never ({d['unit']})"
    text = f"{_fmt(d['median'])} {d['unit']}"
    if "images_per_s" in d:
        text += f" ({_fmt(d['images_per_s'])} img/s)"
    return text


def _verdict(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"]
    return {True: "met", False: "**missed**", None: ""}[r["passed"]]


def _table(record: dict) -> list[str]:
    lines = ["| benchmark | library | baseline | ratio | target | result |", "|---|---|---|---|---|---|"]
    for r in record["results"]:
        if r["status"] != "ok":
            status = r["status"]
            lines.append(f"| {r['title']} | {status}: {r['reason']} | | | {r['target']} | {status} |")
            continue
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else ""
        lines.append(f"| {r['title']} | {_side(r['library'])} | {_side(r['baseline'])} | {ratio} | "
                     f"{r['target']} | {_verdict(r)} |")
    return lines


def _details(record: dict) -> list[str]:
    lines = []
    for r in record["results"]:
        if r["status"] != "ok":
            continue
        lines.append(f"**{r['title']}** ({r['seconds']:.0f} s) — ratio: {r['ratio_kind'] or 'n/a'}")
        lines.append("")
        lines.append("- settings: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in r["settings"].items()))
        extra = {k: v for k, v in r["extra"].items() if k not in ("rows", "arms", "per_seed", "dev_suite")}
        if extra:
            lines.append("- measured: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in extra.items()))
        if r["library"]:
            lines.append(f"- samples: library {r['library']['samples']}, "
                         f"baseline {r['baseline'].get('samples', [])}")
        if "arms" in r["extra"]:
            lines += _per_epoch(r["extra"]["arms"])
        if "per_seed" in r["extra"]:
            lines += _time_to_accuracy(r["extra"]["per_seed"])
        if "dev_suite" in r["extra"]:
            lines += _dev_suite(r["extra"]["dev_suite"])
        if "rows" in r["extra"]:
            cuda = any("cuda_max_allocated_mib" in x for x in r["extra"]["rows"])
            lines += ["", "| kind | batch | size | images/s | s/batch | peak RSS MiB | RSS rise MiB |"
                      + (" CUDA max alloc MiB |" if cuda else ""), "|---|---|---|---|---|---|---|"]
            for row in r["extra"]["rows"]:
                cuda = f" {row['cuda_max_allocated_mib']} |" if "cuda_max_allocated_mib" in row else ""
                lines.append(f"| {row['kind']} | {row['batch_size']} | {row['image_size']} | "
                             f"{row['images_per_s']} | {row['s_per_batch']} | {row['rss_peak_mib']} | "
                             f"{row['rss_increase_mib']} |{cuda}")
        lines.append("")
    return lines


def _time_to_accuracy(seeds: list[dict]) -> list[str]:
    """Per seed: the naive loop's final accuracy and time, and when the library reached it."""
    lines = ["", "| seed | naive acc1 | naive s | library acc1 | library s | t_lib s (epoch) "
             "| t_lib / naive s |", "|---|---|---|---|---|---|---|"]
    for s in seeds:
        reached = f"{s['t_lib']:.1f} ({s['reached_at_epoch']})" if s["t_lib"] is not None else "never"
        ratio = f"{s['ratio']:.3f}" if s["ratio"] is not None else ""
        lines.append(f"| {s['seed']} | {s['naive_acc1']:.4f} | {s['naive_s']:.1f} | "
                     f"{s['library_acc1']:.4f} | {s['library_s']:.1f} | {reached} | {ratio} |")
    return lines


_METRIC_NAMES = {"acc1": "val acc1", "map_50": "mAP@50", "map": "mAP", "miou": "val mIoU"}


def _dev_suite(d: dict) -> list[str]:
    """The dev benchmark: per metric, arm x set (mean ± sd over seeds) and the choice rule's table."""
    lines, sets, held, seeds = [], d["sets"], set(d["held_out"]), len(d["seeds"])
    names = [f"{s} (held out)" if s in held else s for s in sets]
    for metric, table in d["per_set"].items():
        lines += ["", f"{_METRIC_NAMES.get(metric, metric)} per set (mean ± sd over seeds; * best on the "
                  "set; s per run: mean wall seconds of one run):", "",
                  "| arm | " + " | ".join(names) + " | s per run |", "|---|" + "---|" * (len(sets) + 1)]
        best = {s: max((a[s]["mean"] for a in table.values() if s in a), default=None) for s in sets}
        for arm, per_set in table.items():
            row = [_dev_cell(per_set.get(s), best[s], seeds) for s in sets]
            walls = [c["wall_s"] for c in per_set.values()]
            lines.append(f"| {arm} | " + " | ".join(row) + f" | {sum(walls) / len(walls):.0f} |")
        if d["choice"].get(metric):
            lines += _dev_choice(d["choice"][metric], metric, d["verdicts"])
    within = d.get("defaults_within_spread_of_best", {})
    if within:
        lines += ["", "Defaults best or within the seed spread of the best: "
                  + ", ".join(f"{s} {'yes' if ok else '**no**'}" for s, ok in within.items()) + "."]
    return lines


def _dev_decisions(record: dict) -> list[str]:
    """Rule 5 of the choice rule: per task, each arm's verdict at every budget of the dev benchmark in
    ``record`` and the decision (a change or a revert must hold at every budget)."""
    from benchmarks.choice_rule import BUDGETS, METRICS, across_budgets

    by_task: dict[str, dict[str, dict]] = {}
    for r in record["results"]:
        suite = r.get("extra", {}).get("dev_suite") if r["status"] == "ok" else None
        if suite:
            task = next(t for t, metrics in METRICS.items() if metrics == list(suite["per_set"]))
            by_task.setdefault(task, {})[f"{r['settings']['epochs']} epochs"] = suite["verdicts"]
    lines = []
    for task, verdicts in by_task.items():
        budgets = sorted({*verdicts, *(f"{e} epochs" for e in BUDGETS[task])},
                         key=lambda b: int(b.split()[0]))
        decided = across_budgets(verdicts, budgets)
        lines += [f"Dev benchmark, {task}: the decision per arm (a change or a revert must hold at every "
                  "budget; `pending`: a budget still to measure):", "",
                  "| arm | " + " | ".join(budgets) + " | decision |", "|---|" + "---|" * (len(budgets) + 1)]
        for arm, decision in decided.items():
            cells = [verdicts.get(b, {}).get(arm, "—") for b in budgets]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {decision} |")
        lines.append("")
    return lines


def _dev_cell(cell: dict | None, best: float | None, seeds: int) -> str:
    if cell is None:
        return "—"
    text = f"{cell['mean']:.3f} ± {cell['sd']:.3f}" + ("*" if cell["mean"] == best else "")
    return text + (f" ({cell['n']}/{seeds} seeds)" if cell["n"] < seeds else "")


def _dev_choice(choice: dict, metric: str, verdicts: dict) -> list[str]:
    held = ", ".join(choice["held_out"]) or "none"
    lines = ["", f"Choice rule on {_METRIC_NAMES.get(metric, metric)} against `{choice['baseline_arm']}` "
             f"(voting: {', '.join(choice['voting_sets'])}; held out: {held}):", "",
             "| arm | wins / ties / losses | mean gain | mean gain / spread | mean rank | held out w / t / l "
             "| verdict (this metric) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for arm, row in choice["arms"].items():
        h = row["held_out"]
        gain = "" if row["mean_gain"] is None else f"{row['mean_gain']:+.4f}"
        norm = "" if row["mean_norm_gain"] is None else f"{row['mean_norm_gain']:+.2f}"
        lines.append(f"| {arm} | {row['wins']} / {row['ties']} / {row['losses']} | {gain} | {norm} | "
                     f"{row['mean_rank']} | {h['wins']} / {h['ties']} / {h['losses']} | {row['verdict']} | "
                     f"{verdicts.get(arm, '')} |")
    return lines


def _per_epoch(arms: dict[str, dict]) -> list[str]:
    """Accuracy benchmarks: each arm's final mean ± sd over seeds, per seed, and the per-epoch means."""
    if any("acc1" in a for a in arms.values()):  # time to accuracy (classification)
        lines = ["", "| arm | acc1 | acc1 per seed | acc1 per epoch (mean over seeds) | elapsed s per epoch "
                 "| runs made at | reused |", "|---|---|---|---|---|---|---|"]
        for name, a in arms.items():
            lines.append(
                f"| {name} | {a['acc1']:.4f} ± {a['acc1_sd']:.4f} | "
                f"{' / '.join(f'{v:.4f}' for v in a['per_seed_acc1'])} | "
                f"{' → '.join(format(v, '.4f') for v in a['per_epoch_acc1'])} | "
                f"{' → '.join(format(v, '.1f') for v in a['per_epoch_elapsed_s'])} | "
                f"{', '.join(a['commits'])} | {a['reused']} |")
        return lines
    if any("miou" in a for a in arms.values()):  # segmentation
        lines = ["", "| arm | mIoU | mIoU per seed | mIoU per epoch (mean over seeds) | runs made at "
                 "| reused |", "|---|---|---|---|---|---|"]
        for name, a in arms.items():
            lines.append(
                f"| {name} | {a['miou']:.3f} ± {a['miou_sd']:.3f} | "
                f"{' / '.join(f'{v:.3f}' for v in a['per_seed_miou'])} | "
                f"{' → '.join(format(v, '.3f') for v in a['per_epoch_miou'])} | {', '.join(a['commits'])} | "
                f"{a['reused']} |")
        return lines
    lines = ["", "| arm | mAP@50 | mAP | mAP@50 per seed | mAP@50 per epoch (mean over seeds) | "
             "mAP per epoch | runs made at | reused |", "|---|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        lines.append(
            f"| {name} | {a['map_50']:.3f} ± {a['map_50_sd']:.3f} | {a['map']:.3f} ± {a['map_sd']:.3f} | "
            f"{' / '.join(f'{v:.3f}' for v in a['per_seed_map_50'])} | "
            f"{' → '.join(format(e['map_50'], '.3f') for e in a['per_epoch'])} | "
            f"{' → '.join(format(e['map'], '.3f') for e in a['per_epoch'])} | {', '.join(a['commits'])} | "
            f"{a['reused']} |")
    return lines


def _machine(record: dict) -> list[str]:
    m = record["machine"]
    keys = ("cpu", "cpu_count", "torch_threads", "omp_wait_policy", "cpu_capability", "bf16_native_cpu",
            "memory_gib", "gpu",
            "load_average_start", "load_average_end", "python", "torch", "torchvision", "timm", "lightning",
            "onnxruntime", "platform")
    return [" · ".join(f"{k}: `{m[k]}`" for k in keys if m.get(k) is not None)]


def plot(record: dict, path: Path) -> None:
    """Ratios vs targets, and the scaling curves, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in record["results"] if r["status"] == "ok"]
    ratios = [r for r in ok if r["ratio"] is not None]
    scaling = next((r for r in ok if "rows" in r["extra"]), None)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    if ratios:
        names = [r["name"] for r in ratios]
        values = [r["ratio"] for r in ratios]
        targets = [float(r["target"].split()[1]) for r in ratios]
        colors = ["tab:green" if r["passed"] else "tab:red" for r in ratios]
        ax.barh(names, values, color=colors)
        ax.scatter(targets, names, marker="|", s=400, color="black", label="target", zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel("ratio (see table; green: target met)")
        ax.legend(loc="lower right")
    ax.set_title(f"{record['suite']} / {record['profile']}: ratios")
    for ax, kind in zip(axes[1:], ("inference", "train")):
        rows = [x for x in (scaling["extra"]["rows"] if scaling else []) if x["kind"] == kind]
        if not rows:
            ax.set_visible(False)
            continue
        sizes = sorted({x["image_size"] for x in rows})
        for size in sizes:
            pts = sorted((x["batch_size"], x["images_per_s"]) for x in rows if x["image_size"] == size)
            ax.plot(*zip(*pts), marker="o", label=f"{size} px")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.set_title(f"{kind} throughput ({scaling['settings']['model']})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render(results_dir: Path, markdown: Path) -> None:
    """Regenerate ``markdown`` (and the PNGs) from every ``*.json`` in ``results_dir``."""
    records = []
    for path in sorted(Path(results_dir).glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and {"suite", "profile", "results"} <= record.keys():  # not a run cache
            records.append((path, record))
    records.sort(key=lambda pr: _ORDER.get(f"{pr[1]['suite']}-{pr[1]['profile']}", 9))
    lines = ["# Benchmarks", "",
             "<!-- Generated by `python -m benchmarks.run`; edit benchmarks/report.py, not this file. -->",
             "",
             "Reproduce: `python -m benchmarks.run --suite cpu --quick` (under 10 minutes on 2 cores), "
             "`--suite cpu` (full), `--suite gpu [--quick]` (needs CUDA). Raw samples, settings and versions "
             "are in `benchmarks/results/*.json`.", ""]
    for path, record in records:
        png = path.with_suffix(".png")
        has_ok = any(r["status"] == "ok" for r in record["results"])
        if has_ok:
            plot(record, png)
        lines += [f"## {record['suite'].upper()} suite, {record['profile']} profile "
                  f"({record['started_utc'][:10]}, {record['wall_s']:.0f} s)", ""]
        lines += _table(record) + [""]
        if has_ok:
            rel = os.path.relpath(png, Path(markdown).parent)
            lines += [f"![{record['suite']} {record['profile']}]({rel})", ""]
            lines += _details(record)
        lines += _dev_decisions(record)
        lines += ["Machine: " + _machine(record)[0], ""]
        for rerun in record.get("reruns", []):
            cpu = f"on `{rerun['cpu']}`, " if rerun.get("cpu") else ""
            lines += [f"Re-run on its own later (`{rerun['command']}`, {cpu}{rerun['started_utc']}, "
                      f"load average {rerun['load_average'][0]} -> {rerun['load_average'][1]}): "
                      f"{', '.join(rerun['benchmarks'])}.", ""]
    lines.append(NOTES)
    kept = ""
    if Path(markdown).is_file():
        text = Path(markdown).read_text()
        if KEEP_MARKER in text:
            kept = text[text.index(KEEP_MARKER):]
    Path(markdown).write_text("\n".join(lines) + ("\n" + kept if kept else ""))
