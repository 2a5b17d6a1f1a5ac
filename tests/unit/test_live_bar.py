"""A long cell shows its progress bar from its first second (issue: 4.0.2's grid showed nothing for
minutes): live_bar draws at once and redraws while one slow item runs; lines go above it."""

import time

from course_lib.lab.progress_bars import live_bar


def test_live_bar_draws_at_once_and_ticks(capsys):
    with live_bar(total=2, desc="grid cells", tick_s=0.05) as bar:
        first = capsys.readouterr().out
        assert "grid cells:   0%" in first, first
        time.sleep(0.3)  # one slow item: the bar keeps redrawing
        ticks = capsys.readouterr().out.count("\r")
        bar.write("cell 1 done")
        bar.update(2)
    out = capsys.readouterr().out
    assert ticks >= 3, ticks
    assert "cell 1 done\n" in out and "100%" in out
