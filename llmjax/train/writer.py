"""Run outputs, written by process 0 only: metrics.jsonl, samples.jsonl (`eval_prompts`'
continuations), TensorBoard event files (tensorboardX; flax.metrics.tensorboard would import
TensorFlow) and plots/loss.png."""

from __future__ import annotations

import json
import math
import sys

import jax
from etils import epath

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


def read_metrics(workdir: str | epath.Path, name: str = METRICS_FILE) -> list[dict]:
    """The rows of WORKDIR/metrics.jsonl (or another of the run's JSON Lines files)."""
    path = epath.Path(workdir) / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported with torch hidden: where torch is installed,
    tensorboardX imports it at import time only to accept torch tensors (measured: 2.4 s and
    its libraries loaded into every training process), and llmjax passes floats."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str | epath.Path, enabled: bool | None = None):
        self.workdir = epath.Path(workdir)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None

    def _tensorboard(self):
        if self._tb is None:
            self._tb = _summary_writer_class()(logdir=str(self.workdir), flush_secs=30)
        return self._tb

    def truncate_after(self, step: int) -> None:
        """Drops rows past `step` (logged by a run that stopped before its next checkpoint), so a
        resumed run does not write them twice."""
        if not self.enabled:
            return
        for name in (METRICS_FILE, SAMPLES_FILE):
            rows = read_metrics(self.workdir, name)
            kept = [r for r in rows if r["step"] <= step]
            if len(kept) != len(rows):
                (self.workdir / name).write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """One row {"step": step, "split/metric": value, ...}."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in sorted(metrics.items())}}
        with (self.workdir / METRICS_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
        tb = self._tensorboard()
        for key, value in metrics.items():
            if math.isfinite(float(value)):
                tb.add_scalar(key, float(value), int(step))

    def write_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        """Rows {"step", "prompt", "text"} of samples.jsonl, and TensorBoard text `samples/I`
        (the prompt in bold, then its continuation)."""
        if not self.enabled or not samples:
            return
        with (self.workdir / SAMPLES_FILE).open("a") as f:
            for prompt, text in samples:
                f.write(json.dumps({"step": int(step), "prompt": prompt, "text": text}) + "\n")
        tb = self._tensorboard()
        for i, (prompt, text) in enumerate(samples):
            tb.add_text(f"samples/{i}", f"**{prompt}**{text}", int(step))

    def plot(self) -> epath.Path | None:
        """plots/loss.png: train and eval loss (and each extra eval set's) against step."""
        if not self.enabled:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = read_metrics(self.workdir)
        fig, ax = plt.subplots(figsize=(7, 4))
        extra_sets = sorted({k for r in rows for k in r
                             if k.startswith("eval_") and k.endswith("/loss")})
        for key in ("train/loss", "eval/loss", *extra_sets, "eval/best_achievable_loss"):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                style = "--" if "best" in key else "-"
                ax.plot(*zip(*points, strict=True), style, label=key,
                        marker="o" if key.startswith("eval") and "best" not in key else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(self.workdir.name)
        ax.grid(alpha=0.3)
        if ax.lines:  # a run stopped before its first log has nothing to label
            ax.legend()
        out = self.workdir / "plots" / "loss.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as f:
            fig.savefig(f, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
