"""The choice rule of the multi-dataset dev benchmark (issue 27): when an alternative replaces a default.

``table[arm][set] = {"mean": m, "sd": s}`` (a final metric over seeds, higher is better). Per set, an
arm's **gain** over the baseline arm (the current defaults) is ``m_arm - m_defaults``; the set's **spread**
is the larger of the two arms' seed standard deviations (at least ``floor``). The arm **wins** on the set
when its gain is above the spread, **loses** when it is below minus the spread, and **ties** otherwise; its
**normalised gain** is gain / spread. **Ranks**: per set, every arm of the table by mean (1 = best, ties
share the average rank); the mean rank is over the voting sets.

Held-out sets are reported (wins / ties / losses) but never vote. An arm **beats** the defaults when it
wins on more than half of the voting sets, loses on none and has the better mean rank. The verdict:

* an alternative that adds something to the defaults (or swaps a part, e.g. another detector): ``change``
  when it beats the defaults, else ``keep`` (the defaults stay);
* an alternative that is *simpler* than the defaults (it removes a knob the defaults turn on):
  ``keep`` when the knob holds — the simpler arm loses beyond the spread on at least one voting set, wins
  on none and ranks worse (dropping the knob would leave the defaults beyond the seed spread of the best
  somewhere) — else ``revert`` (the simpler arm ties everywhere, or wins somewhere);
* a baseline arm (a plain loop): ``baseline``, no verdict; an arm without every voting set: ``incomplete``.
"""

from __future__ import annotations

import statistics

VERDICTS = ("keep", "change", "revert", "baseline", "incomplete", "reference", "pending")
# The budgets (epochs) each task's defaults are judged at (rule 5: a change must hold at all of them):
# a few epochs and ~10 (benchmarks/run.py builds the dev profiles from these).
BUDGETS = {"classification": (3, 10), "detection": (6,), "segmentation": (4,)}
# The final metrics each task's arms are compared on (the first one names the task's headline).
METRICS = {"classification": ["acc1"], "detection": ["map_50", "map"], "segmentation": ["miou"]}


def ranks(table: dict, sets: list[str]) -> dict[str, float]:
    """Mean rank of every arm over ``sets`` (per set: 1 = the highest mean; equal means share their
    average rank; an arm without the set is left out of that set's ranking)."""
    per_arm: dict[str, list[float]] = {arm: [] for arm in table}
    for name in sets:
        means = sorted(((cells[name]["mean"], arm) for arm, cells in table.items() if name in cells),
                       reverse=True)
        for mean, arm in means:
            better = sum(m > mean for m, _ in means)
            equal = sum(m == mean for m, _ in means)
            per_arm[arm].append(better + (equal + 1) / 2)
    return {arm: round(statistics.fmean(r), 3) if r else None for arm, r in per_arm.items()}


def compare(cell: dict, base: dict, floor: float) -> dict:
    """One set: the arm's gain over the baseline, the spread, the normalised gain and win / tie / loss."""
    gain = round(cell["mean"] - base["mean"], 6)  # 0.69 - 0.70 is -0.010000000000000009 in floats
    spread = round(max(cell.get("sd", 0.0), base.get("sd", 0.0), floor), 6)
    outcome = "win" if gain > spread else "loss" if gain < -spread else "tie"
    return {"gain": round(gain, 4), "spread": round(spread, 4), "norm_gain": round(gain / spread, 3),
            "outcome": outcome}


def _tally(per_set: dict, sets: list[str]) -> dict:
    outcomes = [per_set[s]["outcome"] for s in sets if s in per_set]
    return {"wins": outcomes.count("win"), "ties": outcomes.count("tie"), "losses": outcomes.count("loss")}


def verdict(row: dict, base_rank: float | None, n_sets: int, simpler: bool) -> str:
    """``keep`` / ``change`` / ``revert`` of one alternative (see the module docstring)."""
    if row["missing"] or not n_sets:
        return "incomplete"
    rank = row["mean_rank"]
    if simpler:  # the knob holds when dropping it costs beyond the spread somewhere and gains nowhere
        held = row["losses"] >= 1 and row["wins"] == 0 and rank > base_rank
        return "keep" if held else "revert"
    beats = row["wins"] > n_sets / 2 and row["losses"] == 0 and rank < base_rank
    return "change" if beats else "keep"


def choose(
    table: dict[str, dict[str, dict]],
    baseline_arm: str = "defaults",
    *,
    held_out=(),
    simpler=(),
    baselines=(),
    floor: float = 1e-3,
) -> dict:
    """Apply the choice rule to ``table`` (``{arm: {set: {"mean", "sd"}}}``).

    Args:
        table: every arm's per-set mean and seed sd of the final metric (higher is better).
        baseline_arm: the current defaults.
        held_out: sets reported but never voting.
        simpler: arms simpler than the defaults (they remove a knob the defaults use).
        baselines: plain-loop arms: compared and ranked, never a candidate.
        floor: the smallest spread (one seed has sd 0; this keeps the normalised gain finite).

    Returns:
        ``{"voting_sets", "held_out", "arms": {arm: {wins, ties, losses, mean_gain, mean_norm_gain,
        mean_rank, held_out: {wins, ties, losses}, per_set, missing, verdict}}}``.
    """
    if baseline_arm not in table:
        raise KeyError(f"choose: the baseline arm {baseline_arm!r} is not in the table ({sorted(table)})")
    base = table[baseline_arm]
    voting = [s for s in base if s not in held_out]
    held = [s for s in base if s in held_out]
    mean_ranks = ranks(table, voting)
    arms = {}
    for arm, cells in table.items():
        per_set = {s: compare(cells[s], base[s], floor) for s in base if s in cells}
        gains = [per_set[s] for s in voting if s in per_set]
        row = {
            **_tally(per_set, voting),
            "mean_gain": round(statistics.fmean(g["gain"] for g in gains), 4) if gains else None,
            "mean_norm_gain": round(statistics.fmean(g["norm_gain"] for g in gains), 3) if gains else None,
            "mean_rank": mean_ranks[arm],
            "held_out": _tally(per_set, held),
            "per_set": per_set,
            "missing": [s for s in voting if s not in cells],
        }
        if arm == baseline_arm:
            row["verdict"] = "reference"
        elif arm in baselines:
            row["verdict"] = "baseline"
        else:
            row["verdict"] = verdict(row, mean_ranks[baseline_arm], len(voting), arm in simpler)
        arms[arm] = row
    return {"baseline_arm": baseline_arm, "voting_sets": voting, "held_out": held, "arms": arms}


def combine(verdicts: list[str], simpler: bool) -> str:
    """One verdict from several metrics' (detection: mAP@50 and mAP), conservatively: a change needs
    every metric; a knob the defaults use stays only when every metric keeps it."""
    if "incomplete" in verdicts or not verdicts:
        return "incomplete"
    if verdicts[0] in ("reference", "baseline"):
        return verdicts[0]
    if simpler:
        return "keep" if all(v == "keep" for v in verdicts) else "revert"
    return "change" if all(v == "change" for v in verdicts) else "keep"


def across_budgets(verdicts: dict[str, dict[str, str]], budgets: list[str]) -> dict[str, str]:
    """Rule 5: one decision per arm from its verdicts at every budget (``{budget: {arm: verdict}}``).

    ``change`` / ``revert`` only when every budget in ``budgets`` says so; ``keep`` as soon as one budget
    keeps the default; ``pending`` while a budget has not measured the arm (or measured it on fewer sets:
    ``incomplete``) and none has kept the default yet. Baselines and the reference keep their label.
    """
    arms = dict.fromkeys(arm for budget in budgets for arm in verdicts.get(budget, {}))
    out = {}
    for arm in arms:
        said = [verdicts.get(budget, {}).get(arm, "incomplete") for budget in budgets]
        known = [v for v in said if v != "incomplete"]
        if known and known[0] in ("baseline", "reference"):
            out[arm] = known[0]
        elif "keep" in known:
            out[arm] = "keep"
        elif len(known) < len(said):
            out[arm] = "pending"
        else:
            out[arm] = known[0] if len(set(known)) == 1 else "keep"
    return out
