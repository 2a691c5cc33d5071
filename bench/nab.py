"""NAB standard-profile score of `liquid evaluate anomaly`'s detector, against NAB's windowed Gaussian.

Replays every labelled series of a Numenta Anomaly Benchmark corpus through
the exact path of ``liquid evaluate anomaly`` (`prediction.evaluate_anomaly.score_rows`:
`prediction.onset.OnsetDetector`, score then learn, in file order) and scores
the per-row scores with the project's NAB scorer (`prediction.nab`: windows,
scaled sigmoid, 15 % probation, one threshold swept over the corpus,
normalised between the null and the perfect detector). NAB's windowed-Gaussian
detector is scored in the same run as the baseline.

Overfitting guard: the files, sorted by name, are split into alternate halves,
each scored with its own swept threshold. The detector's later choices (the
quiet release, the range rule, dropping a long-run z-score, every parameter
check) were made on the even-numbered half ("tune"); its first design, and
the likelihood's averaging and 5σ level, were chosen with both halves in view,
so the odd half ("held-out") is held out from most of the tuning, not from
the design.

    python bench/nab.py [--nab DIR] [--scores-out DIR]

``--nab`` defaults to ``../shared/data/nab`` beside the repository; NAB itself is
at https://github.com/numenta/NAB (``data/`` and ``labels/combined_windows.json``,
MIT licence). ``--scores-out`` writes one ``timestamp,score`` CSV per series (same
relative path) for an independent scorer. Progress goes to stderr; the last line
of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from _bench import ROOT, emit_result

from prediction.evaluate_anomaly import parse_time, score_rows
from prediction.nab import corpus_score, load_corpus, windowed_gaussian_scores

DEFAULT_NAB = ROOT.parent / "shared" / "data" / "nab"


def detector_scores(corpus) -> tuple[list, float]:
    """Per-file score lists of the onset detector, and its µs per row."""
    out, rows, elapsed = [], 0, 0.0
    for f in corpus:
        times = [parse_time(t) for t in f.timestamps]
        start = time.perf_counter()
        scored = score_rows(times, [{"value": v} for v in f.values])
        elapsed += time.perf_counter() - start
        rows += len(times)
        out.append(scored.scores)
        print(f"  {f.name}: {len(times)} rows", file=sys.stderr, flush=True)
    return out, elapsed / rows * 1e6


def halves(corpus, scores):
    pairs = [(f.layout, s) for f, s in zip(corpus, scores)]
    return corpus_score(pairs), corpus_score(pairs[0::2]), corpus_score(pairs[1::2])


def write_scores(directory: Path, corpus, scores) -> None:
    for f, s in zip(corpus, scores):
        path = directory / f.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timestamp", "score"])
            writer.writerows(zip(f.timestamps, (repr(float(x)) for x in s)))


def nab_figures(root, scores_out=None) -> dict:
    """Score the corpus at ``root``; print the table; return the figures."""
    corpus = load_corpus(root)
    print(f"NAB corpus {root}: {len(corpus)} series, {sum(f.layout.windows for f in corpus)} windows",
          file=sys.stderr)
    ours, us_per_row = detector_scores(corpus)
    gaussian = [windowed_gaussian_scores(f.values) for f in corpus]
    if scores_out:
        write_scores(Path(scores_out), corpus, ours)
    rows = {}
    print(f"{'detector':<22}{'all':>8}{'tune':>8}{'held-out':>10}{'threshold':>11}{'windows':>10}{'FP':>6}")
    for name, scores in (("onset (ours)", ours), ("windowed Gaussian", gaussian)):
        whole, tune, held = halves(corpus, scores)
        rows[name] = (whole, tune, held)
        print(f"{name:<22}{whole.score:>8.2f}{tune.score:>8.2f}{held.score:>10.2f}{whole.threshold:>11.4g}"
              f"{f'{whole.detected}/{whole.windows}':>10}{whole.false_positives:>6}")
    whole, tune, held = rows["onset (ours)"]
    base = rows["windowed Gaussian"][0]
    print(f"ratio to the windowed Gaussian (same run): {whole.score / base.score:.3f}; "
          f"{us_per_row:.1f} µs per row (machine shared, timings noisy)")
    return {"nab_score": round(whole.score, 2), "nab_score_windowed_gaussian": round(base.score, 2),
            "nab_files": len(corpus), "nab_score_tune_half": round(tune.score, 2),
            "nab_score_heldout_half": round(held.score, 2), "nab_threshold": round(whole.threshold, 4),
            "nab_windows_detected": whole.detected, "nab_windows": whole.windows,
            "nab_false_positives": whole.false_positives, "nab_ratio_to_windowed_gaussian":
            round(whole.score / base.score, 3), "nab_us_per_row": round(us_per_row, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="NAB: https://github.com/numenta/NAB (MIT). The last stdout line is JSON.")
    ap.add_argument("--nab", default=str(DEFAULT_NAB), metavar="DIR",
                    help=f"NAB corpus root holding data/ and labels/combined_windows.json (default {DEFAULT_NAB})")
    ap.add_argument("--scores-out", metavar="DIR", help="write the detector's per-row scores here, one CSV per series")
    args = ap.parse_args()
    try:
        figures = nab_figures(args.nab, args.scores_out)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    emit_result(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
