"""The shared plot style: one colour per method everywhere, equal parameter counts side by side, a log axis only
where counts span more than 3x, and the same bytes on rerun."""

from __future__ import annotations

import io

import pytest

from experiments.harness import plotstyle


def test_every_method_keeps_one_colour_and_methods_differ():
    from baselines import available_methods

    colours = {m: plotstyle.method_color(m) for m in available_methods()}
    assert len(set(colours.values())) == len(colours)  # no two registered methods share a colour
    assert plotstyle.method_color("some-new-method") == plotstyle.method_color("some-new-method")


@pytest.mark.parametrize("log", [True, False])
def test_equal_counts_are_spread_and_distinct_counts_stay(log):
    xs = [83_232.0, 82_944.0, 83_232.0, 22_600_000.0 if log else 120_000.0]
    shown = plotstyle.dodge(xs, log)
    assert len({round(x, 6) for x in shown[:3]}) == 3  # the three near-equal counts no longer coincide
    assert shown[3] == xs[3]  # a count on its own is where it is


def test_log_axis_only_for_counts_spanning_more_than_3x():
    plt = plotstyle.pyplot()
    fig, (a, b) = plt.subplots(1, 2)
    plotstyle.parameter_axis(a, [82_944, 83_232])
    plotstyle.parameter_axis(b, [11_500, 22_600_000])
    assert a.get_xscale() == "linear" and b.get_xscale() == "log"
    assert (
        plotstyle.count(82_944) == "82.9k"
        and plotstyle.count(22_600_000) == "22.6M"
        and plotstyle.count(770) == "770"
    )
    plt.close(fig)


def test_saved_plots_are_the_same_bytes_on_rerun():
    def draw() -> bytes:
        plt = plotstyle.pyplot()
        fig, ax = plt.subplots()
        ax.plot([1, 2], [3, 4], color=plotstyle.method_color("lora"))
        buf = io.BytesIO()
        plotstyle.save(fig, buf)
        return buf.getvalue()

    assert draw() == draw()
