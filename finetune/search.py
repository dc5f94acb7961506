"""The search behind `uv run tune`: an Optuna study whose trials are DVC experiments.

Each trial samples the `tune.space` of params.yaml, runs `dvc exp run --temp -n <study>-t<N>
-S key=value ...` (a full pipeline run in a temporary copy of the repository: upstream stages
come from the cache, a params combination that already ran from DVC's run cache), feeds the
validation losses the train stage reports as it goes (finetune.training.progress) to the pruner, and
returns the objective from the experiment's metrics/train.json. The study lives in Optuna
storage, so a search that was stopped continues where it was."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune.config.schema import Params, parse
from finetune.config.tune import TUNE_OBJECTIVES, Distribution, Scalar, TuneParams
from finetune.errors import UserError
from finetune.paths import PATHS
from finetune.training import progress

TUNE_DIR = Path("tune")  # the default SQLite study, trial logs and progress files (git-ignored)
REPORT_DIR = Path("reports/tune")  # <study>/: the plots and the table of trials
POLL_SECONDS = 0.5
STOP = threading.Event()  # set on Ctrl-C / SIGTERM: every running trial stops and is marked failed


class TrialFailed(Exception):
    """A trial's `dvc exp run` failed: the study keeps it as failed."""

    def __str__(self) -> str:
        return ("a trial failed (the study keeps it as failed; `uv run tune` goes on with a new "
                f"one): {super().__str__()}")


def storage_url(p: TuneParams, root: Path) -> str:
    if p.storage:
        return p.storage
    (root / TUNE_DIR).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / TUNE_DIR / f'{p.study}.db').resolve()}"


def grid(space: dict[str, list[Scalar] | Distribution]) -> dict[str, list[Scalar]]:
    """Every value of each key, for the grid sampler (ranges: low, low + step, ... high)."""
    out: dict[str, list[Scalar]] = {}
    for key, dist in space.items():
        if isinstance(dist, list):
            out[key] = list(dist)
            continue
        step = dist.step if dist.step is not None else 1
        count = int(math.floor((dist.high - dist.low) / step + 1e-9)) + 1
        values = [dist.low + i * step for i in range(count)]
        out[key] = [int(v) for v in values] if dist.is_int else [round(v, 12) for v in values]
    return out


def sampler(p: TuneParams, trials_so_far: int = 0) -> Any:
    """The study's sampler. Its seed moves on with the trials the study already has: a resumed
    study then samples new points instead of the first session's again, and the same history
    still gives the same search."""
    import optuna

    seed = None if p.seed is None else p.seed + trials_so_far
    if p.sampler == "grid":
        return optuna.samplers.GridSampler(grid(p.space), seed=seed)
    if p.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(p: TuneParams) -> Any:
    import optuna

    if p.pruner == "none" or p.objective != "val_loss":  # only validation losses are reported
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=p.pruner_startup_trials,
                                       n_warmup_steps=p.pruner_warmup_steps)


def suggest(trial: Any, space: dict[str, list[Scalar] | Distribution]) -> dict[str, Scalar]:
    """One point of the space, sampled by the study's sampler."""
    values: dict[str, Scalar] = {}
    for key, dist in space.items():
        if isinstance(dist, list):
            values[key] = trial.suggest_categorical(key, dist)
        elif dist.is_int:
            values[key] = trial.suggest_int(key, int(dist.low), int(dist.high),
                                            step=int(dist.step or 1), log=dist.log)
        else:
            value = trial.suggest_float(key, float(dist.low), float(dist.high), step=dist.step,
                                        log=dist.log)
            # four significant digits: what the experiment table shows (and -S sets) stays short
            values[key] = value if dist.step is not None else float(f"{value:.4g}")
    return values


def parse_point(items: list[str], space: dict[str, list[Scalar] | Distribution]) -> dict[str, Scalar]:
    """`key=value` items (a point to try, `tune --enqueue`) as values of the space's keys."""
    point: dict[str, Scalar] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in space:
            raise UserError(f"--enqueue {item}: expected key=value with a key of tune.space "
                            f"({', '.join(space)})")
        dist = space[key]
        try:
            if isinstance(dist, list):
                value = yaml.safe_load(text)
                match = [c for c in dist if c == value and type(c) is type(value)]
                if not match:
                    raise ValueError(f"not one of {dist}")
                point[key] = match[0]
            else:
                point[key] = int(text) if dist.is_int else float(text)
        except (ValueError, yaml.YAMLError) as e:
            raise UserError(f"--enqueue {item}: {e}") from None
    return point


def yaml_value(value: Scalar) -> str:
    """A value as `dvc exp run -S` and params.yaml read it back: floats keep a dot (1.0e-05)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    return str(value)


def with_values(raw: dict[str, Any], values: dict[str, Scalar]) -> dict[str, Any]:
    """params.yaml's content with the dotted keys set, as `-S` sets them."""
    out = json.loads(json.dumps(raw))
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def check_space(raw: dict[str, Any], p: TuneParams) -> None:
    """Every choice and both ends of every range must be valid params on their own."""
    for key, dist in p.space.items():
        candidates = dist if isinstance(dist, list) else [dist.low, dist.high]
        for value in candidates:
            try:
                parse(with_values(raw, {key: value}))
            except UserError as e:
                raise UserError(f"params.yaml: tune.space: {key}: {yaml_value(value)} is not "
                                f"valid ({str(e).removeprefix('params.yaml: ')})") from None


def invalid(raw: dict[str, Any], values: dict[str, Scalar]) -> str | None:
    """Why this combination is not valid params (e.g. freeze_layers with method full), or None."""
    try:
        parse(with_values(raw, values))
    except UserError as e:
        return str(e).removeprefix("params.yaml: ")
    return None


def experiment_name(study: str, number: int) -> str:
    return f"{study}-t{number}"


@dataclass
class Trial:
    """One `dvc exp run --temp` of the study, in its own process group: through the train stage
    (what the objective reads), or the whole pipeline with `tune.score_test`."""

    root: Path
    name: str
    values: dict[str, Scalar]
    through: str | None = "train"  # the stage it runs up to; None: the whole pipeline
    log: Path = field(init=False)
    progress_file: Path = field(init=False)

    def __post_init__(self) -> None:
        logs = self.root / TUNE_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / f"{self.name}.log"
        self.progress_file = logs / f"{self.name}.progress.jsonl"
        for stale in (self.log, self.progress_file):
            stale.unlink(missing_ok=True)

    def command(self) -> list[str]:
        sets = [arg for k, v in self.values.items() for arg in ("-S", f"{k}={yaml_value(v)}")]
        target = [self.through] if self.through else []
        return [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", self.name, *sets, *target]

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, progress.PROGRESS_ENV: str(self.progress_file.resolve()),
               # the stages' `python` is this environment's, as under `uv run`
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        with open(self.log, "wb") as log:
            return subprocess.Popen(self.command(), cwd=self.root, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # Ctrl-C is ours to pass on

    def tail(self, lines: int = 12) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a trial's `dvc exp run` as Ctrl-C would: DVC removes its temporary copy, and nothing
    of the run reaches the workspace or the experiments (a stage that had already finished is in
    the run cache, as every finished stage is)."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def experiment_refs(root: Path) -> dict[str, str]:
    """Every DVC experiment of the repository by name, with its git ref (the newest of a name)."""
    refs = subprocess.run(["git", "for-each-ref", "--sort=committerdate", "--format=%(refname)",
                           "refs/exps"], cwd=root, capture_output=True, text=True, check=True)
    return {ref.rsplit("/", 1)[-1]: ref for ref in refs.stdout.split()}  # newest last: it wins


def experiment_ref(root: Path, name: str) -> str:
    ref = experiment_refs(root).get(name)
    if ref is None:
        raise TrialFailed(f"experiment {name} finished but DVC recorded no experiment ref")
    return ref


def committed(root: Path, ref: str, path: Path) -> str:
    """A git-tracked file (a `cache: false` output) as the experiment committed it."""
    return subprocess.run(["git", "show", f"{ref}:{path.as_posix()}"], cwd=root,
                          capture_output=True, text=True, check=True).stdout


def val_losses(root: Path, ref: str) -> list[tuple[int, float]]:
    """The experiment's validation losses by step, from its DVCLive log (also there when train
    came from the run cache and reported nothing as it went)."""
    try:
        lines = committed(root, ref, PATHS.train_log / "plots" / "metrics" / "eval" / "loss.tsv")
    except subprocess.CalledProcessError:  # no evaluation was logged
        return []
    rows = [line.split("\t") for line in lines.splitlines()[1:] if line]
    return [(int(step), float(loss)) for step, loss, *_ in rows]


def existing_experiments(root: Path, study: str) -> list[str]:
    return sorted(name for name in experiment_refs(root) if name.startswith(f"{study}-t"))


class Objective:
    """The function Optuna calls once per trial."""

    def __init__(self, root: Path, params: Params, raw: dict[str, Any], say: Any) -> None:
        self.root, self.p, self.raw, self.say = root, params.tune, raw, say

    def __call__(self, trial: Any) -> float:
        import optuna

        values = suggest(trial, self.p.space)
        name = experiment_name(self.p.study, trial.number)
        shown = " ".join(f"{k}={yaml_value(v)}" for k, v in values.items())
        problem = invalid(self.raw, values)
        if problem:  # a combination params.yaml refuses: nothing to run, recorded as pruned
            trial.set_user_attr("invalid", problem)
            self.say(f"trial {trial.number}: {shown}: not valid params ({problem}); skipped")
            raise optuna.TrialPruned(problem)
        trial.set_user_attr("experiment", name)
        trial.set_user_attr("host", f"{socket.gethostname()}:{self.root.resolve()}")  # who ran it
        trial.set_user_attr("values", values)  # as run: floats to four significant digits
        self.say(f"trial {trial.number} ({name}): {shown}")
        run = Trial(self.root, name, values, None if self.p.score_test else "train")
        proc = run.start()
        reported: set[int] = set()
        try:
            while proc.poll() is None:
                if STOP.is_set():
                    raise KeyboardInterrupt
                if self._prune(trial, run, reported):
                    self.say(f"trial {trial.number} ({name}): pruned at step {max(reported)}")
                    stop(proc)
                    raise optuna.TrialPruned(f"pruned at step {max(reported)}")
                time.sleep(POLL_SECONDS)
        finally:
            stop(proc)  # nothing left running, whatever ended the loop
        if proc.returncode != 0:
            if STOP.is_set():
                raise KeyboardInterrupt
            raise TrialFailed(f"dvc exp run failed (exit {proc.returncode}), log {run.log}:\n"
                               f"{run.tail()}")
        ref = experiment_ref(self.root, name)
        for step, loss in val_losses(self.root, ref):  # the whole curve, for later trials' pruning
            if step not in reported:
                trial.report(loss, step)
                reported.add(step)
        value = json.loads(committed(self.root, ref, PATHS.metrics / "train.json")).get(
            self.p.objective)
        if value is None or not math.isfinite(value):
            raise TrialFailed(f"{name}: metrics/train.json has no finite {self.p.objective}")
        self.say(f"trial {trial.number} ({name}): {self.p.objective} {value:.4f}")
        return float(value)

    def _prune(self, trial: Any, run: Trial, reported: set[int]) -> bool:
        """Report new validation losses; True when the pruner says stop."""
        if self.p.objective != "val_loss":
            return False
        for entry in progress.read(run.progress_file):
            if entry["step"] not in reported:  # the final evaluation repeats the last step
                trial.report(entry["val_loss"], entry["step"])
                reported.add(entry["step"])
                # asked at every step, as if inside the training loop: the pruner compares with
                # other trials at the same step, and a later one may be past where they stopped
                if trial.should_prune():
                    return True
        return False


def direction(p: TuneParams) -> str:
    return TUNE_OBJECTIVES[p.objective]
