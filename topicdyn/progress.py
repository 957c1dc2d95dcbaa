"""The training progress display on stderr: phases, then one step bar.

Phases: `compile` (the first chunk compiles the training program: seconds during which no
step finishes), `replay` (a resume recomputing the loss window it continues, see
topicdyn.loop), `train` (the step bar) and `probe` (waiting for the checkpoints still being
probed once training is done). The step bar is created only after compiling, so its rate and
ETA never include the compilation; it shows the loss of the last row and how many checkpoints
have been probed. tqdm's own rate is the only rate shown.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """Phases and the step bar of one training loop (enabled=False: silent)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self._phase = None  # a one-line tqdm status while no step bar exists
        self._bar = None
        self._loss = None  # the last row's loss, kept on the bar through the probe phase
        self.started = False

    def phase(self, text: str) -> None:
        """Show a phase line (e.g. 'compile: ...') until the step bar starts."""
        if not self.enabled:
            return
        from tqdm import tqdm

        if self._phase is None:
            self._phase = tqdm(total=None, bar_format="{desc}", desc=text, leave=False,
                               file=sys.stderr, dynamic_ncols=True)
        else:
            self._phase.set_description_str(text)

    def start(self, step: int) -> None:
        """The step bar, from `step` (steps already done count neither in its rate nor ETA)."""
        self.started = True
        if not self.enabled or self._bar is not None:
            return
        from tqdm import tqdm

        if self._phase is not None:
            self._phase.close()
            self._phase = None
        self._bar = tqdm(total=self.total, initial=step, unit="step", desc="train",
                         file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def show(self, loss: float | None = None, probed: tuple[int, int] | None = None) -> None:
        """Postfix: the last row's loss (mean over members) and checkpoints probed / saved."""
        if self._bar is None:
            return
        self._loss = loss if loss is not None else self._loss
        post = {}
        if self._loss is not None:
            post["loss"] = f"{self._loss:.4f}"
        if probed is not None and probed[1]:
            post["probed"] = f"{probed[0]}/{probed[1]}"
        self._bar.set_postfix(post, refresh=True)

    def wait_for_probes(self, hooks: list, poll_s: float = 0.2) -> None:
        """Phase `probe`: wait while hooks (e.g. a background prober) still have checkpoints
        queued, showing how many are done."""
        pending = lambda: sum(getattr(h, "pending", 0) for h in hooks)  # noqa: E731
        if not self.enabled or self._bar is None or not pending():
            return
        self._bar.set_description_str("probe")
        while pending():
            self.show(probed=probe_counts(hooks))
            time.sleep(poll_s)
            if not any(getattr(h, "alive", False) for h in hooks):
                break  # a worker that stopped (an error) is reported by its close()
        self.show(probed=probe_counts(hooks))

    def close(self) -> None:
        for b in (self._phase, self._bar):
            if b is not None:
                b.close()
        self._phase = self._bar = None


def probe_counts(hooks: list) -> tuple[int, int] | None:
    """(checkpoints probed, checkpoints handed to the probers) over hooks that count them."""
    counted = [h for h in hooks if hasattr(h, "submitted")]
    if not counted:
        return None
    return (sum(h.finished for h in counted), sum(h.submitted for h in counted))
