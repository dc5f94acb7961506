"""`uv run tune`: search the `tune.space` of params.yaml with Optuna, each trial a DVC experiment.

    uv run tune                  # tune.n_trials trials (continues the study if it exists)
    uv run tune --trials 20      # the study ends with 20 finished trials
    uv run tune --jobs 2         # two trials at once (DVC's temporary-directory executors)
    uv run tune --report         # only write reports/tune/<study>/ and print the best trial

Stop it with Ctrl-C whenever: the running trial is marked failed and leaves nothing behind, and
the next `uv run tune` carries on with the trials that are left. The best trial is one
`uv run dvc exp apply <study>-t<N>` away."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

import yaml

from finetune import search
from finetune.cli import run_command
from finetune.config.schema import load
from finetune.errors import UserError
from finetune.study import (
    Budget,
    best_line,
    check_repository,
    finished,
    open_study,
    say,
    stop_on_signal,
    write_report,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tune", description="Search hyperparameters with "
                                     "Optuna; every trial is a DVC experiment (dvc exp show).")
    parser.add_argument("--trials", type=int, default=None,
                        help="finished trials the study ends with (default: tune.n_trials)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="trials at once on this machine (default: tune.jobs)")
    parser.add_argument("--enqueue", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                        help="a point to try first, e.g. --enqueue train.learning_rate=1.0e-4 "
                        "(keys left out are sampled); repeat for more points")
    parser.add_argument("--report", action="store_true",
                        help="run no trial: write the report of the study and print the best")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1 or args.jobs is not None and args.jobs < 1:
        parser.error("--trials and --jobs must be at least 1")
    return args


def run(args: argparse.Namespace) -> None:
    import optuna

    root = Path.cwd()
    params = load(args.params)
    raw = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    p = params.tune
    if not p.space:
        raise UserError(f"{args.params}: tune.space is empty: give it a key to search, e.g. "
                        "train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}")
    search.check_space(raw, p)
    points = [search.parse_point(items, p.space) for items in args.enqueue]
    check_repository(root)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tune says what happens itself
    # Optuna marks heartbeats (which fail the trials of a killed tune) experimental: not ours to act on
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    study = open_study(params, root)
    n_trials = args.trials or p.n_trials
    jobs = args.jobs or p.jobs
    if not args.report:
        for point in points:
            study.enqueue_trial(point, skip_if_exists=True)
        done = finished(study)
        if done >= n_trials:
            say(f"study {p.study} already has {done} finished trials (of {n_trials})")
        else:
            say(f"study {p.study}: {done} of {n_trials} trials finished; running "
                f"{n_trials - done} more, {jobs} at a time (logs: {search.TUNE_DIR}/logs)")
            signal.signal(signal.SIGTERM, stop_on_signal)
            signal.signal(signal.SIGINT, stop_on_signal)
            try:
                study.optimize(search.Objective(root, params, raw, say), n_trials=n_trials - done,
                               n_jobs=jobs, gc_after_trial=False, callbacks=[Budget(n_trials)])
            except KeyboardInterrupt:
                search.STOP.set()
                say(f"stopped: the running trial is marked failed; {finished(study)} of {n_trials} "
                    "trials are finished, and `uv run tune` continues the study")
                sys.exit(130)
    written = write_report(study, root / search.REPORT_DIR / p.study)
    say(f"report: {search.REPORT_DIR / p.study} ({', '.join(written)})")
    say(best_line(study, p, root))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_command("tune", lambda: run(args), errors=(UserError, search.TrialFailed))


if __name__ == "__main__":
    main()
