"""`uv run tune`'s study: opened or resumed in its storage, run one trial at a time or several,
and reported (the best trial, Optuna's plots, the table of trials)."""

from __future__ import annotations

import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any

from finetune import search
from finetune.config.schema import Params
from finetune.errors import UserError
from finetune.report import charts

FINISHED = ("COMPLETE", "PRUNED")


def say(message: str) -> None:
    print(f"tune: {message}", flush=True)


def open_study(params: Params, root: Path) -> Any:
    import optuna

    p = params.tune
    url = search.storage_url(p, root)
    try:
        storage = (optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
                   if "://" in url else url)
        existed = p.study in optuna.get_all_study_names(storage)
        study = optuna.create_study(study_name=p.study, storage=storage, load_if_exists=True,
                                    sampler=search.sampler(p), pruner=search.pruner(p),
                                    direction=search.direction(p))
    except (ImportError, ValueError, optuna.exceptions.OptunaError) as e:
        raise UserError(f"tune.storage {url}: {e}") from None
    if study.direction.name.lower() != search.direction(p):
        raise UserError(f"study {p.study} in {url} was made to {study.direction.name.lower()} "
                        f"another objective; set another tune.study for tune.objective {p.objective}")
    left_over = search.existing_experiments(root, p.study)
    if not existed and left_over:
        raise UserError(f"experiments {', '.join(left_over[:3])}... are from an earlier study "
                        f"{p.study}; remove them (uv run dvc exp remove {' '.join(left_over)}) or "
                        "set another tune.study")
    if isinstance(storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)  # trials of a tune that was killed outright
    study.sampler = search.sampler(p, len(study.trials))
    one_at_a_time(study)
    return study


def one_at_a_time(study: Any) -> None:
    """Let one thread at a time start a trial. SQLite has no row locks, so two --jobs threads can
    pop the same enqueued trial (seen here: both ran it); PostgreSQL and MySQL lock the row."""
    ask, lock = study.ask, threading.Lock()

    def locked_ask(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return ask(*args, **kwargs)

    study.ask = locked_ask  # study.optimize starts every trial with study.ask()


def finished(study: Any) -> int:
    return sum(t.state.name in FINISHED for t in study.trials)


class Budget:
    """Stops the study once its finished trials, with those still running, reach n_trials: with
    --jobs N no trial starts that the budget has no room for."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: Any, trial: Any) -> None:
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        if sum(s in FINISHED for s in states) + states.count("RUNNING") >= self.n_trials:
            study.stop()


def best_line(study: Any, p: Any, root: Path) -> str:
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        return "no trial has completed yet"
    best = study.best_trial
    run = best.user_attrs.get("values", best.params)
    values = " ".join(f"{k}={search.yaml_value(v)}" for k, v in run.items())
    name = best.user_attrs.get("experiment", search.experiment_name(p.study, best.number))
    line = f"best: trial {best.number} ({name}), {p.objective} {best.value:.4f}: {values}\n"
    if name in search.existing_experiments(root, p.study):
        return line + f"tune: apply it with: uv run dvc exp apply {name}"
    where = best.user_attrs.get("host", "another machine")
    return line + (f"tune: it ran on {where}: there `uv run dvc exp push origin {name}`, here "
                   f"`uv run dvc exp pull origin {name} && uv run dvc exp apply {name}`")


def write_report(study: Any, out: Path) -> list[str]:
    """reports/tune/<study>/: trials.csv and Optuna's matplotlib plots (those the trials allow)."""
    import optuna
    from optuna.visualization import matplotlib as plots

    charts.pyplot()  # the Agg backend before Optuna draws

    out.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    written = ["trials.csv"]
    wanted = {"history.png": plots.plot_optimization_history,
              "importances.png": plots.plot_param_importances,
              "intermediate.png": plots.plot_intermediate_values}
    for name, plot in wanted.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need two completed trials
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        charts.save(fig, out / name)
        written.append(name)
    return written


def stop_on_signal(signum: int, frame: Any) -> None:
    search.STOP.set()
    raise KeyboardInterrupt


def check_repository(root: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                          capture_output=True, text=True)
    if head.returncode != 0:
        raise UserError(f"{root.resolve()}: not a git repository with a commit; experiments are "
                        "based on a commit (git add -A && git commit)")
