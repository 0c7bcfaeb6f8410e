"""Fixed figure margins, in inches, in place of a layout engine."""

from __future__ import annotations

from matplotlib.figure import Figure


def set_margins(figure: Figure, left: float, right: float, bottom: float, top: float, wspace: float = 0.2,
                hspace: float = 0.2) -> None:
    """Place the subplots `left`, `right`, `bottom` and `top` inches from the edges (`wspace`, `hspace`: the gaps, as
    fractions of a panel, as matplotlib takes them). Tight layout measures a figure by drawing it once more before
    saving it: on a small run that was a third of the time spent plotting, at every epoch's curves and every run's end."""
    width, height = figure.get_size_inches()
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                           wspace=wspace, hspace=hspace)
