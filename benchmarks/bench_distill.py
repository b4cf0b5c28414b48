"""Distillation and pseudo-labels on real images with real weights (issue 28): two accuracy-suite results.

On a class-folder set of real images (``DATA/train/<class>``, ``DATA/val/<class>``), per seed, each arm a
``python run.py`` subprocess with the library's defaults (nothing overridden but data, model, weights,
image size, epochs, seed, the ONNX export and, for the students, ``mode=distill``):

``distillation`` (must-show 1)
    * ``teacher``: the teacher model (``tf_efficientnet_lite1``, ``--weights``) fine-tuned on all labels;
    * ``student alone``: the student model (``tf_efficientnet_lite0``, ``--student-weights``) fine-tuned;
    * ``student distilled``: the same student, ``mode=distill distill.teacher=<that seed's teacher run>``,
      one arm per ``(alpha, T)`` of ``distill_settings`` (the first is the headline).

    Ratio: mean val top-1 of the distilled student / the student alone (final epoch, over seeds); met when
    the gain in mean is larger than the larger of the two arms' seed standard deviations. Beside it, the
    student's CPU speed-up over the teacher: ONNX Runtime, one thread, batch 1, each model's exported
    ``model.onnx`` at its own input size, timed interleaved (median of the per-round ratios).

``pseudo_labels`` (must-show 2)
    A quarter of each class's training images keeps its label (seeded, the same for every seed); the rest
    is an unlabelled folder. ``teacher (quarter)`` is fine-tuned on the labelled quarter, ``student
    (quarter)`` likewise; ``student + pseudo-labels`` is ``mode=distill`` from that teacher with
    ``distill.unlabeled`` (soft targets and the pseudo-labels above ``distill.pseudo_threshold``), and
    ``teacher + pseudo-labels`` the teacher's own model fine-tuned again on the quarter plus the
    pseudo-labels (``distill.alpha=0``: hard labels only). Ratio: the student with pseudo-labels / the
    student on the quarter alone; met as above.

Runs are kept in ``WORK`` (``<--cache's folder>/distill``), one folder per composed config (its hash in the
name, as the run cache keys other accuracy runs): a folder holding ``summary.json`` is reused, since the
teachers' folders are what the students learn from. Command (after ``scripts/convert_lite_weights.py
--variant lite0`` for the student's weights)::

    python -m benchmarks.run --suite accuracy --only distillation,pseudo_labels \\
        --cls-data /work/data/real_cls --weights ../shared/weights/tf_efficientnet_lite1_timm.safetensors \\
        --student-weights /work/data/weights/tf_efficientnet_lite0_timm.safetensors
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
from pathlib import Path

from benchmarks.bench_detection_accuracy import ROOT, _commit, config_key, mean_sd, run_captured
from benchmarks.bench_time_to_accuracy import read_epochs, summarize
from benchmarks.common import Result, interleaved, ratio_of_rounds, timed

NAME, PSEUDO_NAME = "distillation", "pseudo_labels"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def base_args(data, *, model, weights, image_size, epochs, seed) -> list[str]:
    """The overrides every arm shares (no ``weights``: random init, for the smoke profile only)."""
    return [
        "data=folder",
        f"data.root={data}",
        f"model.name={model}",
        *([f"model.weights={weights}"] if weights else ["model.pretrained=false"]),
        f"data.image_size={image_size}",
        f"trainer.max_epochs={epochs}",
        f"seed={seed}",
        "trainer.enable_progress_bar=false",
        "export.format=[timm,onnx]",
    ]


def library_run(work: Path, arm: str, args: list[str], threads: int | None) -> dict:
    """One ``python run.py args`` in ``work/<arm>-<config hash>``, reused when it finished before."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in arm)  # a Hydra-safe folder name
    run_dir = work / f"{slug}-{config_key(args)[4:]}"
    reused = (run_dir / "summary.json").is_file()
    if not reused:
        if run_dir.exists():  # an unfinished earlier attempt of this very run
            shutil.rmtree(run_dir)
        run_captured(
            [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"], threads, str(work)
        )
        (run_dir / "bench_commit.txt").write_text(_commit() + "\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    epochs = read_epochs(run_dir / "metrics.csv")
    commit = run_dir / "bench_commit.txt"
    return {
        "arm": arm,
        "run_dir": str(run_dir),
        "epochs": epochs,
        "wall_s": epochs[-1]["elapsed_s"],
        "best_score": summary.get("best_score"),
        "pseudo_labels": (summary.get("distillation") or {}).get("pseudo_labels"),
        "commit": commit.read_text().strip() if commit.is_file() else "?",
        "reused": reused,
    }


def quarter_split(data: Path, out: Path, *, share: float = 0.25, seed: int = 0) -> tuple[Path, Path]:
    """``out/labelled`` (``train/<class>``: ``share`` of each class, seeded; ``val``: the data's) and
    ``out/unlabelled`` (the rest, renamed ``u00000.jpg``... so no name tells the class), as symlinks."""
    labelled, unlabelled, done = out / "labelled", out / "unlabelled", out / "DONE"
    if done.is_file():
        made = json.loads(done.read_text())
        if made.get("data", str(data.resolve())) != str(data.resolve()):  # another set's split in this folder
            raise ValueError(f"{out} holds the split of {made['data']}, not of {data}: pass another --cache")
        return labelled, unlabelled
    shutil.rmtree(out, ignore_errors=True)
    (labelled / "train").mkdir(parents=True)
    unlabelled.mkdir(parents=True)
    (labelled / "val").symlink_to((data / "val").resolve(), target_is_directory=True)
    rng, rest = random.Random(seed), []
    for folder in sorted(p for p in (data / "train").iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        rng.shuffle(images)
        keep = max(2, round(share * len(images)))
        (labelled / "train" / folder.name).mkdir()
        for image in images[:keep]:
            (labelled / "train" / folder.name / image.name).symlink_to(image.resolve())
        rest += images[keep:]
    rng.shuffle(rest)
    for i, image in enumerate(rest):
        (unlabelled / f"u{i:05d}{image.suffix.lower()}").symlink_to(image.resolve())
    made = {"share": share, "seed": seed, "unlabelled": len(rest), "data": str(data.resolve())}
    done.write_text(json.dumps(made) + "\n")
    return labelled, unlabelled


def onnx_speedup(teacher_dir: str, student_dir: str, rounds: int) -> dict:
    """Latency of each run's ``export/model.onnx`` (ONNX Runtime, 1 thread, batch 1) and the speed-up."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    calls, sizes = {}, {}
    for name, run_dir in (("teacher", teacher_dir), ("student", student_dir)):
        session = ort.InferenceSession(
            str(Path(run_dir) / "export" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        spec = session.get_inputs()[0]
        side = [d if isinstance(d, int) else 1 for d in spec.shape]
        x = np.random.default_rng(0).random(side, dtype=np.float32)
        sizes[name] = side[-1]
        calls[name] = lambda s=session, n=spec.name, x=x: timed(lambda: s.run(None, {n: x}))
    samples = interleaved(calls, rounds=rounds, warmup=3)
    return {
        "teacher_ms": round(1000 * statistics.median(samples["teacher"]), 2),
        "student_ms": round(1000 * statistics.median(samples["student"]), 2),
        "speedup": round(ratio_of_rounds(samples["teacher"], samples["student"]), 3),
        "input_sides": sizes,
        "runtime": f"onnxruntime {ort.__version__}, CPU, 1 thread, batch 1",
    }


def _final(run: dict) -> float:
    return run["epochs"][-1]["acc1"]


def verdict(better: list[dict], baseline: list[dict]) -> dict:
    """Mean gain of ``better`` over ``baseline`` (final val top-1) against the seeds' spread."""
    (m_b, s_b), (m_a, s_a) = mean_sd([_final(r) for r in better]), mean_sd([_final(r) for r in baseline])
    spread = max(s_b, s_a)
    return {
        "gain": round(m_b - m_a, 4),
        "spread": round(spread, 4),
        "beats_spread": m_b - m_a > spread,
        "ratio": round(m_b / m_a, 4) if m_a else None,
    }


def _side(runs: list[dict], unit: str) -> dict:
    values = [round(_final(r), 4) for r in runs]
    return {"median": round(statistics.fmean(values), 4), "unit": unit, "samples": values}


def _skip(name: str, title: str, p: dict) -> Result | None:
    missing = [
        flag
        for flag, key in (
            ("--cls-data DIR", "cls_data"),
            ("--weights FILE", "weights"),
            ("--student-weights FILE", "student_weights"),
        )
        if not p.get(key)
    ]
    if missing and not p.get("random_init"):
        return Result(
            name=name,
            title=title,
            status="skipped",
            reason=f"needs {', '.join(missing)} (the student's: scripts/convert_lite_weights.py "
            "--variant lite0)",
        )
    data = Path(p["cls_data"])
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise ValueError(f"--cls-data {data} needs train/<class>/ and val/<class>/ folders")
    return None


def _work(p: dict) -> Path:
    cache = Path(p.get("cache") or ROOT / "benchmarks/results/runs/acc.json")
    work = Path(p.get("work") or cache.parent / "distill")
    work.mkdir(parents=True, exist_ok=True)
    return work


def _teacher_student(p: dict, data, seed: int) -> tuple[list[str], list[str]]:
    """The teacher's overrides (its own ``teacher_image_size`` / ``teacher_epochs`` / ``teacher_seed`` when
    given: one stronger teacher serves every student seed, as a user has one teacher) and the student's."""
    teacher = base_args(
        data,
        model=p["teacher_model"],
        weights=p.get("weights"),
        image_size=p.get("teacher_image_size", p["image_size"]),
        epochs=p.get("teacher_epochs", p["epochs"]),
        seed=p.get("teacher_seed", seed),
    )
    common = {"image_size": p["image_size"], "epochs": p["epochs"], "seed": seed}
    student = base_args(data, model=p["student_model"], weights=p.get("student_weights"), **common)
    return teacher, student


def run(p: dict, name: str = NAME) -> Result:
    """``p``: cls_data, weights, student_weights, teacher_model, student_model, image_size, epochs, seeds,
    distill_settings ``[[alpha, T], ...]``, speed_rounds, threads, cache / work (``random_init``: smoke)."""
    title = "Distillation: a student distilled from a fine-tuned teacher vs the student fine-tuned alone"
    skipped = _skip(name, title, p)
    if skipped:
        return skipped
    work, threads, arms = _work(p), p.get("threads", 1), {}
    settings = [tuple(s) for s in p.get("distill_settings", [(0.5, 4.0)])]
    teachers: dict[str, dict] = {}
    # arm by arm over the seeds (the baseline first, then each setting), so a cut-short run has whole arms
    plans = [("student alone", [])] + [
        (
            f"student distilled a={alpha} T={temperature}",
            [f"distill.student={p['student_model']}", f"distill.alpha={alpha}",
             f"distill.temperature={temperature}"],
        )
        for alpha, temperature in settings
    ]
    for arm, extra in plans:
        for seed in p["seeds"]:
            teacher_args, student_args = _teacher_student(p, p["cls_data"], seed)
            teacher = library_run(work, "teacher", teacher_args, threads)
            teachers.setdefault(teacher["run_dir"], teacher)  # one per seed, or one for all (teacher_seed)
            distill = ["mode=distill", f"distill.teacher={teacher['run_dir']}", *extra] if extra else []
            arms.setdefault(arm, []).append(library_run(work, arm, [*student_args, *distill], threads))
    arms = {"teacher": list(teachers.values()), **arms}
    headline = f"student distilled a={settings[0][0]} T={settings[0][1]}"
    v = verdict(arms[headline], arms["student alone"])
    speed = onnx_speedup(
        arms["teacher"][0]["run_dir"], arms[headline][0]["run_dir"], p.get("speed_rounds", 30)
    )
    result = Result(
        name=name,
        title=f"{title} ({p['teacher_model']} -> {p['student_model']} @ {p['image_size']}, "
        f"{p['epochs']} epochs, seeds {list(p['seeds'])})",
        settings={k: p[k] for k in ("teacher_model", "student_model", "image_size", "epochs", "seeds")}
        | {"data": str(p["cls_data"]), "distill_settings": settings, "threads": threads},
        library=_side(arms[headline], "val acc1 (distilled student, mean over seeds)"),
        baseline=_side(arms["student alone"], "val acc1 (student alone)"),
        ratio=v["ratio"],
        ratio_kind="mean final val top-1 of the distilled student / of the student fine-tuned alone; met "
        "when the gain beats the larger seed sd",
        target=">= 1.0",
        extra={
            **{f"{k}": v[k] for k in ("gain", "spread")},
            "student_speedup_onnx_cpu": speed["speedup"],
            "teacher_ms": speed["teacher_ms"],
            "student_ms": speed["student_ms"],
            "speed": speed["runtime"],
            "arms": {name: summarize(runs) for name, runs in arms.items()},
        },
    )
    result.passed = v["beats_spread"]
    return result


def run_pseudo(p: dict, name: str = PSEUDO_NAME) -> Result:
    """``p`` as :func:`run`, plus ``labelled_share`` (0.25), ``pseudo_threshold`` (the library's default
    when absent) and ``self_training`` (also run ``teacher + pseudo-labels``; off unless asked)."""
    title = "Pseudo-labels: a quarter of the labels plus the teacher's pseudo-labels vs the quarter alone"
    skipped = _skip(name, title, p)
    if skipped:
        return skipped
    work, threads, arms, used = _work(p), p.get("threads", 1), {}, []
    share = p.get("labelled_share", 0.25)
    labelled, unlabelled = quarter_split(Path(p["cls_data"]), work / f"split-{int(100 * share)}", share=share)
    threshold = [f"distill.pseudo_threshold={p['pseudo_threshold']}"] if p.get("pseudo_threshold") else []
    alpha, temperature = p.get("distill_settings", [(0.5, 4.0)])[0]  # the headline (alpha, T), stated
    for seed in p["seeds"]:
        teacher_args, student_args = _teacher_student(p, labelled, seed)
        teacher = library_run(work, "teacher (quarter)", teacher_args, threads)
        pseudo = [
            "mode=distill",
            f"distill.teacher={teacher['run_dir']}",
            f"distill.unlabeled={unlabelled}",
            f"distill.temperature={temperature}",
            *threshold,
        ]
        runs = {
            "teacher (quarter)": teacher,
            "student (quarter)": library_run(work, "student (quarter)", student_args, threads),
            "student + pseudo-labels": library_run(
                work,
                "student + pseudo-labels",
                [*student_args, *pseudo, f"distill.student={p['student_model']}", f"distill.alpha={alpha}"],
                threads,
            ),
        }
        if p.get("self_training"):  # the teacher's own model, fine-tuned again with its pseudo-labels
            runs["teacher + pseudo-labels"] = library_run(
                work,
                "teacher + pseudo-labels",
                [*teacher_args, *pseudo, f"distill.student={p['teacher_model']}", "distill.alpha=0"],
                threads,
            )
        used.append(runs["student + pseudo-labels"]["pseudo_labels"])
        for name, r in runs.items():
            if not any(r["run_dir"] == seen["run_dir"] for seen in arms.get(name, [])):  # one shared teacher
                arms.setdefault(name, []).append(r)
    v = verdict(arms["student + pseudo-labels"], arms["student (quarter)"])
    self_training = (
        verdict(arms["teacher + pseudo-labels"], arms["teacher (quarter)"]) if p.get("self_training") else {}
    )
    result = Result(
        name=name,
        title=f"{title} ({p['teacher_model']} teacher, {p['student_model']} student @ {p['image_size']}, "
        f"{p['epochs']} epochs, seeds {list(p['seeds'])})",
        settings={k: p[k] for k in ("teacher_model", "student_model", "image_size", "epochs", "seeds")}
        | {"data": str(p["cls_data"]), "labelled_share": share, "threads": threads},
        library=_side(arms["student + pseudo-labels"], "val acc1 (student, quarter + pseudo-labels)"),
        baseline=_side(arms["student (quarter)"], "val acc1 (student, labelled quarter alone)"),
        ratio=v["ratio"],
        ratio_kind="mean final val top-1 of the student with the teacher's pseudo-labels / on the labelled "
        "quarter alone; met when the gain beats the larger seed sd",
        target=">= 1.0",
        extra={
            "gain": v["gain"],
            "spread": v["spread"],
            "teacher_self_training_gain": self_training.get("gain"),
            "teacher_self_training_spread": self_training.get("spread"),
            "pseudo_labels_used": [u["used"] if u else None for u in used],
            "unlabelled_images": used[0]["images"] if used and used[0] else None,
            "pseudo_threshold": used[0]["threshold"] if used and used[0] else None,
            "arms": {name: summarize(runs) for name, runs in arms.items()},
        },
    )
    result.passed = v["beats_spread"]
    return result
