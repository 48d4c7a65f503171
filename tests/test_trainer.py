"""The run's trainer: progress a user can follow in a log file."""

from __future__ import annotations

import io

from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from trimlab.engine import LOG_FILE_REFRESH_STEPS, build_trainer
from trimlab.results.tracking import Tracker


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_output_to_a_file_gets_a_bar_that_updates_as_it_goes_beside_the_callers_callbacks(compose_cfg, tmp_path, monkeypatch) -> None:
    cfg = compose_cfg()
    mine = Callback()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    trainer = build_trainer(cfg, Tracker(None), tmp_path, callbacks=[mine])
    bar = trainer.progress_bar_callback
    assert isinstance(bar, TQDMProgressBar) and bar.refresh_rate == LOG_FILE_REFRESH_STEPS
    assert any(c is mine for c in trainer.callbacks)


def test_a_terminal_keeps_lightnings_own_bar_and_no_bar_means_none(compose_cfg, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr", Terminal())
    trainer = build_trainer(compose_cfg(), Tracker(None), tmp_path)
    assert trainer.progress_bar_callback is not None and getattr(trainer.progress_bar_callback, "refresh_rate", 1) != LOG_FILE_REFRESH_STEPS
    monkeypatch.setattr("sys.stderr", io.StringIO())
    trainer = build_trainer(compose_cfg("trainer.progress_bar=false"), Tracker(None), tmp_path)
    assert trainer.progress_bar_callback is None
