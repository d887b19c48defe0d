"""Evaluate a toy classifier on a CSV dataset: the program the example service runs.

Usage::

    python evaluate.py --model NAME --data PATH --output-dir DIR [--duration SECONDS] [--fail]

The dataset is a CSV file with a header row: any number of numeric feature columns and a
last column ``label`` holding the true class, 0 or 1 (1 is the positive class).

The "models" are deterministic rule-based classifiers picked by name:

``threshold``
    predicts 1 when the mean of the features is above 0.
``majority``
    always predicts the most common label of the dataset.
``nearest-centroid``
    predicts the class whose centroid (the mean of its rows' features) is nearest.

The evaluation is spread over about ``--duration`` seconds so that a watcher has something
to watch: progress lines go to stdout (flushed), a couple of warnings to stderr, and each batch
is reported to flask-procman with ``flask_procman.progress.report`` (the pages show it as a bar
with an ETA; outside procman the call does nothing). At the end
``metrics.json`` is written into ``--output-dir`` (created if missing, written atomically)
with ``accuracy``, ``precision``, ``recall``, ``f1``, ``n_samples``, ``model`` and
``dataset``, then ``done`` is printed.

Exit statuses: 0 on success; 1 when the evaluation fails (``--fail`` makes it fail halfway,
with a traceback on stderr); 2 for bad arguments, an unknown model or an unreadable dataset.
SIGTERM stops it at once: it says so on stderr and dies by the signal (143 from a shell),
unless ``--ignore-sigterm`` is given, which lets you try a manager's SIGKILL escalation.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
import traceback
import typing as t

from flask_procman.progress import report  # stdlib only: no Flask is imported into the script

Row = tuple[list[float], int]
Classifier = t.Callable[[list[float]], int]

#: Number of batches the samples are evaluated in; one progress line per batch.
BATCHES = 10


class DatasetError(Exception):
    """The dataset cannot be read or is not in the expected shape."""


# --------------------------------------------------------------------------- models


def mean(values: t.Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def build_threshold(rows: list[Row]) -> Classifier:
    """1 when the mean of the features is above 0."""
    return lambda features: int(mean(features) > 0.0)


def build_majority(rows: list[Row]) -> Classifier:
    """Always the most common label (1 on a tie)."""
    positives = sum(label for _, label in rows)
    answer = int(positives * 2 >= len(rows))
    return lambda features: answer


def build_nearest_centroid(rows: list[Row]) -> Classifier:
    """The class whose centroid is nearest (Euclidean distance)."""
    centroids: dict[int, list[float]] = {}
    for label in (0, 1):
        members = [features for features, row_label in rows if row_label == label]
        if members:
            centroids[label] = [mean(column) for column in zip(*members, strict=True)]

    def predict(features: list[float]) -> int:
        return min(centroids, key=lambda label: math.dist(features, centroids[label]))

    return predict


MODELS: dict[str, t.Callable[[list[Row]], Classifier]] = {
    "threshold": build_threshold,
    "majority": build_majority,
    "nearest-centroid": build_nearest_centroid,
}


# --------------------------------------------------------------------------- data and metrics


def load_dataset(path: str) -> list[Row]:
    """Read the CSV: numeric feature columns, then a 0/1 ``label`` column."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[-1].strip() != "label" or len(header) < 2:
                raise DatasetError(f"{path}: the header must be feature columns then 'label'")
            rows: list[Row] = []
            for line_no, record in enumerate(reader, start=2):
                if not record:
                    continue
                if len(record) != len(header):
                    raise DatasetError(f"{path}:{line_no}: expected {len(header)} fields, got {len(record)}")
                try:
                    features = [float(value) for value in record[:-1]]
                    label = int(record[-1])
                except ValueError as exc:
                    raise DatasetError(f"{path}:{line_no}: {exc}") from None
                if label not in (0, 1):
                    raise DatasetError(f"{path}:{line_no}: label must be 0 or 1, not {label}")
                rows.append((features, label))
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not rows:
        raise DatasetError(f"{path}: no samples")
    return rows


def compute_metrics(labels: list[int], predictions: list[int]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of the positive class (0.0 where undefined)."""
    pairs = list(zip(labels, predictions, strict=True))
    tp = sum(1 for y, p in pairs if y == 1 and p == 1)
    fp = sum(1 for y, p in pairs if y == 0 and p == 1)
    fn = sum(1 for y, p in pairs if y == 1 and p == 0)
    correct = sum(1 for y, p in pairs if y == p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": round(correct / len(pairs), 4) if pairs else 0.0,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def write_metrics(output_dir: str, metrics: dict[str, t.Any]) -> str:
    """Write ``metrics.json`` atomically (a reader never sees half a file); returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "metrics.json")
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    os.replace(partial, path)
    return path


# --------------------------------------------------------------------------- running


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def on_sigterm(signum: int, frame: object) -> None:
    """Stop at once, and die by the signal so the parent sees how it ended."""
    print("evaluate: received SIGTERM, stopping", file=sys.stderr, flush=True)
    sys.stdout.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def evaluate(args: argparse.Namespace) -> dict[str, t.Any]:
    """Run the evaluation batch by batch over about ``args.duration`` seconds."""
    dataset = os.path.basename(args.data)
    say(f"loading dataset {dataset}")
    rows = load_dataset(args.data)
    positives = sum(label for _, label in rows)
    say(f"loaded {len(rows)} samples, {len(rows[0][0])} features, {positives} positive")
    if not 0.3 <= positives / len(rows) <= 0.7:
        warn(f"imbalanced dataset: {positives}/{len(rows)} samples are positive; accuracy may mislead")
    warn("the model is evaluated on the data it was built from; no held-out split")

    classify = MODELS[args.model](rows)
    say(f"evaluating model {args.model}")
    report(0, len(rows), f"evaluating {args.model}")

    pause = args.duration / BATCHES
    batch_size = math.ceil(len(rows) / BATCHES)
    predictions: list[int] = []
    for batch in range(BATCHES):
        time.sleep(pause)
        if args.fail and batch == BATCHES // 2:
            raise RuntimeError(f"simulated failure in batch {batch + 1}/{BATCHES} (--fail)")
        chunk = rows[batch * batch_size:(batch + 1) * batch_size]
        predictions.extend(classify(features) for features, _ in chunk)
        done = len(predictions)
        running = compute_metrics([label for _, label in rows[:done]], predictions)
        say(f"progress {done}/{len(rows)} ({100 * done // len(rows)}%) accuracy so far {running['accuracy']:.3f}")
        report(done, len(rows), f"accuracy so far {running['accuracy']:.3f}")
        if batch == BATCHES // 2 - 1 and running["accuracy"] < 0.6:
            warn(f"accuracy so far ({running['accuracy']:.3f}) is close to chance")

    metrics: dict[str, t.Any] = compute_metrics([label for _, label in rows], predictions)
    metrics.update(n_samples=len(rows), model=args.model, dataset=dataset)
    return metrics


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a toy classifier on a CSV dataset.")
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(MODELS)}")
    parser.add_argument("--data", required=True, metavar="PATH", help="CSV file: feature columns, then 'label'")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="where metrics.json is written")
    parser.add_argument("--duration", type=seconds, default=10.0, metavar="SECONDS",
                        help="spread the work over about this many seconds (default 10)")
    parser.add_argument("--fail", action="store_true", help="fail halfway through, with exit status 1")
    parser.add_argument("--ignore-sigterm", action="store_true", help="ignore SIGTERM (to try SIGKILL escalation)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm else on_sigterm)
    if args.model not in MODELS:
        print(f"evaluate: unknown model {args.model!r}; choose one of: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    try:
        metrics = evaluate(args)
    except DatasetError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("evaluate: evaluation failed", file=sys.stderr, flush=True)
        return 1
    path = write_metrics(args.output_dir, metrics)
    say(f"wrote {path}: accuracy {metrics['accuracy']:.3f}, f1 {metrics['f1']:.3f}")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
