"""Near-duplicate and label-issue study of ``mode=audit`` on real images with planted problems.

    python scripts/audit_near_duplicates_study.py --data /work/data/real_cls \\
        --weights ../shared/weights/tf_efficientnet_lite1_timm.safetensors \\
        --out scripts/audit_near_duplicates_study.results.json

Copies a class-folder set (``train/<class>/*``, ``val/<class>/*``; ``scripts/build_real_sets.py
--which classification``) and plants, with a fixed seed: near-duplicates of train images in val, each
kind of edit ``--per-kind`` times (``KINDS``: resized to 80 / 60 / 50 / 130 % or not, re-encoded as JPEG
q60-q85: the "resized / re-encoded" group, the must-show target; cropped to 90 % of the side at a random
offset; mirrored), exact copies in val, and flipped labels (train images moved to another class's
folder). Then, for the copy and for the generated planted set of the tests (``tests/planted.py``, also
with the tests' random-init ``test_efficientnet``):

1. runs the library's ``mode=audit`` in this process (its embedding pass recorded) and scores its
   ``audit.json``: near-duplicate recall per kind and group, the finder that found each planted pair,
   false pairs per 100 images, and the flipped labels among the label issues (all flagged, and those
   within the stated cut-off);
2. scores every image pair of the same images by each candidate measure (cosine of the audit's pooled
   embeddings as they are, centred, standardised per feature; Hamming distance of 64-bit pHash / dHash
   and 256-bit pHash): the planted pairs' scores, the closest unplanted pairs, and per group the recall
   at the (oracle) threshold that lets through at most 1 false pair per 100 images.

The weights and the data are arguments: nothing in the library or the tests depends on them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from b4transfer.audit.duplicates import normalised  # noqa: E402
from b4transfer.audit.phash import image_hashes  # noqa: E402
from b4transfer.data.images import IMG_EXTENSIONS  # noqa: E402


def _resize(image, scale):
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def _crop(image, share, rng):
    w, h = round(image.width * share), round(image.height * share)
    x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    return image.crop((x, y, x + w, y + h))


# kind -> (group, edit, JPEG quality); the must-show target is the "resized / re-encoded" group
KINDS = {
    "resize80_q80": ("resized / re-encoded", lambda im, rng: _resize(im, 0.8), 80),
    "resize60_q80": ("resized / re-encoded", lambda im, rng: _resize(im, 0.6), 80),
    "resize50_q70": ("resized / re-encoded", lambda im, rng: _resize(im, 0.5), 70),
    "upscale130_q85": ("resized / re-encoded", lambda im, rng: _resize(im, 1.3), 85),
    "reencode_q60": ("resized / re-encoded", lambda im, rng: im, 60),
    "crop90_q80": ("cropped", lambda im, rng: _crop(im, 0.9, rng), 80),
    "resize80_crop90_q60": ("cropped", lambda im, rng: _resize(_crop(im, 0.9, rng), 0.8), 60),
    "mirrored_q80": ("mirrored", lambda im, rng: ImageOps.mirror(im), 80),
}
GROUPS = {"resize130_q85": "resized / re-encoded"} | {k: v[0] for k, v in KINDS.items()}  # + tests' set
TARGET = "resized / re-encoded"


def images_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)


def plant(src: Path, dst: Path, *, per_kind: int, exact: int, flip_share: float, seed: int) -> dict:
    """Copy ``src`` to ``dst`` and plant the problems; the manifest (paths relative to ``dst``)."""
    shutil.copytree(src / "train", dst / "train")
    shutil.copytree(src / "val", dst / "val")
    rng = np.random.default_rng(seed)
    train = [p for p in images_of(dst / "train")]
    pool = [train[i] for i in rng.permutation(len(train))]
    rel = lambda p: str(p.relative_to(dst))  # noqa: E731
    out = {"near": [], "exact": [], "flipped": []}
    for kind, (_, edit, quality) in KINDS.items():
        for k in range(per_kind):
            original = pool.pop()
            copy = dst / "val" / original.parent.name / f"planted_{kind}_{k}.jpg"
            edit(Image.open(original).convert("RGB"), rng).save(copy, quality=quality)
            out["near"].append({"kind": kind, "a": rel(original), "b": rel(copy)})
    for k in range(exact):
        original = pool.pop()
        copy = dst / "val" / original.parent.name / f"planted_exact_{k}{original.suffix}"
        shutil.copyfile(original, copy)
        out["exact"].append({"a": rel(original), "b": rel(copy)})
    classes = sorted(p.name for p in (dst / "train").iterdir())
    for k in range(round(flip_share * len(train))):
        original = pool.pop()
        others = [c for c in classes if c != original.parent.name]
        moved = dst / "train" / others[int(rng.integers(len(others)))] / f"flipped_{k}{original.suffix}"
        original.rename(moved)
        out["flipped"].append(rel(moved))
    return out


def measures(paths: list[Path], features: np.ndarray) -> dict[str, np.ndarray]:
    """``(N, N)`` similarity of every pair by each measure (higher: more alike; hashes: minus distance)."""
    out = {}
    for norm in ("none", "centre", "standardise"):
        x = normalised(features, norm)
        out[f"cosine ({norm})"] = x @ x.T
    for kind, size in (("phash", 8), ("dhash", 8), ("phash", 16)):
        bits = image_hashes(paths, kind=kind, size=size)
        s = np.where(bits, 1.0, -1.0).astype(np.float32)
        out[f"-hamming {kind} {size * size} bit"] = -(s.shape[1] - s @ s.T) / 2
    return out


def score_measure(sim: np.ndarray, planted: list[tuple[int, int, str]], skip: set, n: int) -> dict:
    """Planted pairs' scores per kind, the closest unplanted pairs, and per group of kinds the recall at
    the threshold that lets through at most 1 false pair per 100 images."""
    iu = np.triu_indices(n, 1)
    positive = {(min(a, b), max(a, b)) for a, b, _ in planted}
    keep = np.array([(i, j) not in positive and (i, j) not in skip for i, j in zip(*iu)])
    negatives = np.sort(sim[iu][keep])[::-1]
    budget = n // 100
    cut = negatives[budget] if len(negatives) > budget else -np.inf  # pairs above it: <= budget false
    per_kind: dict[str, list[float]] = {}
    for a, b, kind in planted:
        per_kind.setdefault(kind, []).append(round(float(sim[a, b]), 4))
    recall = {}
    for group in dict.fromkeys(GROUPS[k] for _, _, k in planted):
        scores = [sim[a, b] for a, b, k in planted if GROUPS[k] == group]
        recall[group] = round(float(np.mean(np.array(scores) > cut)), 3)
    return {
        "planted_scores": {k: sorted(v) for k, v in per_kind.items()},
        "closest_unplanted": [round(float(v), 4) for v in negatives[:5]],
        "recall_at_1_false_per_100": recall,
        "threshold_exclusive": round(float(cut), 4),
    }


def study_measures(paths: list[Path], features: np.ndarray, root: Path, manifest: dict) -> dict:
    """Every measure scored on the audit's own images and embeddings."""
    index = {str(p.relative_to(root)): i for i, p in enumerate(paths)}
    planted = [(index[p["a"]], index[p["b"]], p["kind"]) for p in manifest["near"]]
    skip = {tuple(sorted((index[p["a"]], index[p["b"]]))) for p in manifest["exact"]}
    sims = measures(paths, features)
    return {name: score_measure(sim, planted, skip, len(paths)) for name, sim in sims.items()}


def library_audit(root: Path, overrides: list[str], threads: int, run_dir: Path):
    """``mode=audit`` in this process (the library's code path, its embedding pass recorded once for
    the measures): ``(audit.json, paths, embeddings, seconds)``."""
    import torch
    from hydra import compose, initialize_config_dir

    import b4transfer.tasks.classification.audit as cls_audit
    from b4transfer.cli.entry import config_dir
    from b4transfer.modes import run

    torch.set_num_threads(threads)
    recorded = {}
    library_embed = cls_audit.pooled_embeddings

    def recording(paths, **kwargs):
        recorded["paths"], recorded["features"] = list(paths), library_embed(paths, **kwargs)
        return recorded["features"]

    cls_audit.pooled_embeddings = recording
    args = ["mode=audit", "data=folder", f"data.root={root}", *overrides, f"run_dir={run_dir}"]
    args += ["trainer.accelerator=cpu", "data.num_workers=0"]
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="config", overrides=args)
        start = time.perf_counter()
        run(cfg)
        seconds = time.perf_counter() - start
    finally:
        cls_audit.pooled_embeddings = library_embed
    found = json.loads((run_dir / "audit.json").read_text())
    return found, recorded["paths"], recorded["features"], seconds


def score_audit(found: dict, manifest: dict, root: Path, n: int) -> dict:
    """Recall of the planted pairs (per kind and group) and flipped labels in the library's
    ``audit.json``, and the unplanted pairs it reported."""

    def rel(p):
        return str(Path(p).relative_to(root))

    reported = {frozenset((rel(p["a"]), rel(p["b"]))): p for p in found["near_duplicates"]}
    planted = {frozenset((p["a"], p["b"])): p["kind"] for p in manifest["near"]}
    per_kind: dict[str, list[int]] = {}
    for pair, kind in planted.items():
        per_kind.setdefault(kind, [0, 0])
        per_kind[kind][0] += pair in reported
        per_kind[kind][1] += 1
    per_group: dict[str, list[int]] = {}
    for kind, (hit, total) in per_kind.items():
        g = per_group.setdefault(GROUPS[kind], [0, 0])
        g[0], g[1] = g[0] + hit, g[1] + total
    false = [p for pair, p in reported.items() if pair not in planted]
    found_by = {}
    for pair, p in reported.items():
        if pair in planted:
            found_by[p["method"]] = found_by.get(p["method"], 0) + 1
    exact = {frozenset(rel(m["where"]) for m in g["members"]) for g in found["exact_duplicates"]}
    flipped = set(manifest["flipped"])
    issues = [rel(p["where"]) for p in found.get("label_issues", [])]
    within = [rel(p["where"]) for p in found.get("label_issues", []) if p.get("within_cutoff")]
    return {
        "images": n,
        "near_recall_per_group": {g: round(h / t, 3) for g, (h, t) in per_group.items()},
        "near_found_per_kind": {k: f"{h}/{t}" for k, (h, t) in per_kind.items()},
        "planted_found_by": found_by,
        "false_pairs": len(false),
        "false_pairs_per_100_images": round(100 * len(false) / n, 2),
        "false_pair_examples": [
            {k: p[k] for k in ("a", "b", "method", "cosine", "hash_distance")} for p in false[:5]
        ],
        "exact_recall": float(np.mean([frozenset((p["a"], p["b"])) in exact for p in manifest["exact"]])),
        "flipped_planted": len(flipped),
        "label_issues_flagged": len(issues),
        "flipped_in_flagged": len(flipped & set(issues)),
        "label_issue_cutoff": found.get("label_issue_cutoff"),
        "label_issues_within_cutoff": len(within),
        "flipped_within_cutoff": len(flipped & set(within)),
        "flipped_ranks": sorted(issues.index(f) + 1 for f in flipped & set(issues)),
    }


def run_set(name: str, root: Path, manifest: dict, args, work: Path, backbones: dict) -> dict:
    result = {"images": len(images_of(root)), "planted": {k: len(v) for k, v in manifest.items()}}
    for label, overrides in backbones.items():
        print(f"{name} / {label}: library audit ...", flush=True)
        run_dir = work / f"{name}-{label.split()[0]}-audit"
        found, paths, features, seconds = library_audit(root, overrides, args.threads, run_dir)
        audit = score_audit(found, manifest, root, len(paths)) | {"audit_s": round(seconds, 1)}
        print(json.dumps(audit, indent=1), flush=True)
        result[label] = {"library_audit": audit, "measures": study_measures(paths, features, root, manifest)}
    return result


def generated_set(work: Path) -> dict:
    from tests.planted import make_planted

    planted = make_planted(work / "generated")
    root = planted.root

    def rel(p):
        return str(Path(p).relative_to(root))

    manifest = {
        "near": [{"kind": "resize130_q85", "a": rel(a), "b": rel(b)} for a, b in planted.near],
        "exact": [{"a": rel(a), "b": rel(b)} for a, b in planted.exact],
        "flipped": [rel(p) for p in planted.flipped],
    }
    return manifest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="class-folder set: train/<class>, val/<class>"
    )
    parser.add_argument("--weights", type=Path, required=True, help="timm-layout ImageNet weights")
    parser.add_argument("--model", default="tf_efficientnet_lite1")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--work", type=Path, help="where the planted copies go (default: a temp dir)")
    parser.add_argument("--per-kind", type=int, default=8)
    parser.add_argument("--exact", type=int, default=4)
    parser.add_argument("--flip-share", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for path in (args.data / "train", args.data / "val", args.weights):
        if not path.exists():
            parser.error(f"{path}: not found")
    work = args.work or Path(tempfile.mkdtemp(prefix="b4t-audit-study-"))
    work.mkdir(parents=True, exist_ok=True)
    weights = str(args.weights.resolve())
    real = [f"model.name={args.model}", f"model.weights={weights}"]
    tiny = ["model=test_efficientnet", "data.image_size=48"]  # as tests/test_audit.py
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "kinds": list(KINDS)}
    if not (work / "real-manifest.json").exists():
        manifest = plant(
            args.data,
            work / "real",
            per_kind=args.per_kind,
            exact=args.exact,
            flip_share=args.flip_share,
            seed=args.seed,
        )
        (work / "real-manifest.json").write_text(json.dumps(manifest, indent=1))
    if not (work / "generated-manifest.json").exists():
        (work / "generated-manifest.json").write_text(json.dumps(generated_set(work), indent=1))
    sets = {
        "real": (work / "real", {args.model: real}),
        "generated": (work / "generated", {args.model: real, "test_efficientnet (random init)": tiny}),
    }
    for name, (root, backbones) in sets.items():
        manifest = json.loads((work / f"{name}-manifest.json").read_text())
        results[name] = run_set(name, root, manifest, args, work, backbones)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
