"""Each figure kind, inspected as a matplotlib Figure: panels, axis labels, lines, epoch marks, legends outside the
axes, tick labels that do not overlap; and runs with no evaluations, one evaluation, no validation loss."""
import json

import pytest
from plotkit import write_grid, write_run

from minift.plots.figures import bar_figure, overlay_figure, run_figure, smooth
from minift.plots.runs import read_run

pytest.importorskip("matplotlib")


def drawn(fig):
    """The figure laid out and drawn (constrained layout runs at draw time), on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def data_lines(ax) -> list:
    return [line for line in ax.get_lines() if line.get_gid() not in ("epoch", "raw")]


def epoch_lines(ax) -> list:
    return [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == "epoch"]


def assert_legend_outside_axes(fig):
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers an axes"
        assert box.y1 <= ax.get_window_extent(renderer).y0 + 1, "the legend is not below the axes"


def legend_reading_order(fig) -> list:
    """The legend's entries as a reader sees them: row by row, left to right."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_window_extent(renderer), t.get_text()) for t in fig.legends[0].get_texts()]
    return [text for box, text in sorted(boxes, key=lambda b: (-round(b[0].y0), b[0].x0))]


def assert_no_overlapping_tick_labels(fig):
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]
            for a, b in zip(boxes, boxes[1:]):
                assert not a.overlaps(b), f"tick labels overlap: {[t.get_text() for t in labels]}"


def column_width(fig):
    assert fig.get_size_inches()[0] == pytest.approx(3.3)


def test_run_figure_has_loss_metrics_and_learning_rate_with_epochs(tmp_path):
    fig = drawn(run_figure(read_run(write_run(tmp_path / "r", eval_every=30))))
    column_width(fig)
    loss, scores, lr = fig.axes[:3]
    assert [ax.get_ylabel() for ax in (loss, scores, lr)] == ["loss", "validation metric", "learning rate"]
    assert lr.get_xlabel() == "optimizer step" and loss.get_xlabel() == ""  # shared step axis, labelled once
    assert [line.get_label() for line in data_lines(loss)] == ["training loss", "validation loss"]
    assert [line.get_label() for line in data_lines(scores)] == ["accuracy", "micro_f1", "macro_f1"]
    assert len(data_lines(scores)[0].get_xdata()) == 6  # evaluations every 30 steps
    assert all(epoch_lines(ax) == [60, 120] for ax in (loss, scores, lr))
    (top,) = loss.child_axes  # the epoch axis above the first panel
    assert top.get_xlabel() == "epoch" and [t.get_text() for t in top.get_xticklabels()] == ["1", "2", "3"]
    assert fig._suptitle.get_text() == "sst2 · lora · roberta-base · seed 42"
    assert_legend_outside_axes(fig)
    assert legend_reading_order(fig) == ["training loss", "validation loss", "accuracy", "micro_f1", "macro_f1"]
    assert_no_overlapping_tick_labels(fig)


def test_run_without_evaluations_has_no_metrics_panel(tmp_path):
    fig = drawn(run_figure(read_run(write_run(tmp_path / "r", evals=False, summary=False))))
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["loss", "learning rate"]
    assert [line.get_label() for line in data_lines(fig.axes[0])] == ["training loss"]
    assert epoch_lines(fig.axes[0]) == [60, 120]  # from the logged epoch numbers
    assert_legend_outside_axes(fig)


def test_run_with_one_evaluation_and_no_validation_loss(tmp_path):
    fig = drawn(run_figure(read_run(write_run(tmp_path / "r", epochs=1, val_loss_key=None))))
    loss, scores, _ = fig.axes[:3]
    assert [line.get_label() for line in data_lines(loss)] == ["training loss"]
    assert [len(line.get_xdata()) for line in data_lines(scores)] == [1, 1, 1]
    assert data_lines(scores)[0].get_marker() != "None"  # a single evaluation is still visible
    assert epoch_lines(loss) == [] and loss.child_axes == []  # one epoch: nothing to mark, no epoch axis


def test_a_metric_outside_minus_one_to_one_gets_its_own_panel(tmp_path):
    fig = drawn(run_figure(read_run(write_run(tmp_path / "r", task="stsb", val_loss_key="loss"))))
    labels = [ax.get_ylabel() for ax in fig.axes[:4]]
    assert labels == ["loss", "validation metric", "validation mse", "learning rate"]
    assert [line.get_label() for line in data_lines(fig.axes[1])] == ["pearson", "spearman"]
    assert len(data_lines(fig.axes[0])) == 2  # "loss" in eval records is the validation loss


def test_a_dense_training_loss_is_smoothed_over_its_faint_raw_values(tmp_path):
    run = read_run(write_run(tmp_path / "r", log_every=1, epochs=2, steps_per_epoch=400))
    loss = drawn(run_figure(run)).axes[0]
    (raw,) = [line for line in loss.get_lines() if line.get_gid() == "raw"]
    trend = data_lines(loss)[0]
    assert list(raw.get_ydata()) == run.curve("train_loss")[1] and raw.get_alpha() < 0.5
    assert len(trend.get_ydata()) == 800 and max(trend.get_ydata()) < max(raw.get_ydata())
    assert smooth([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]  # few points stay as logged
    assert smooth([0.0, 2.0] * 40, points=4)[10] == pytest.approx(1.0, abs=0.1)


def test_a_nan_metric_stays_on_the_score_panel(tmp_path):
    folder = write_run(tmp_path / "r", task="stsb")
    path = folder / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    next(r for r in records if r["type"] == "eval")["pearson"] = float("nan")  # json writes NaN, as the engine does
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = drawn(run_figure(read_run(folder)))
    assert [line.get_label() for line in data_lines(fig.axes[1])] == ["pearson", "spearman"]


def test_run_with_nothing_logged_yet(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    fig = drawn(run_figure(read_run(tmp_path / "r")))
    assert fig.axes[0].texts[0].get_text() == "nothing logged yet"


def test_overlay_has_one_line_per_series_per_panel_and_a_band_over_seeds(tmp_path):
    grid = write_grid(tmp_path / "g", tasks=("cola",), methods=("full", "lora", "bitfit"), seeds=(1, 2, 3))
    series = [(m, [read_run(grid / f"roberta-base-cola-{m}" / f"seed-{s}") for s in (1, 2, 3)])
              for m in ("full", "lora", "bitfit")]
    fig = drawn(overlay_figure(series, title="cola"))
    column_width(fig)
    panels = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in panels] == ["training loss", "validation loss", "validation mcc"]
    for ax in panels:
        assert len(data_lines(ax)) == 3
        assert len(ax.collections) == 3  # the ±1 std bands
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["full", "lora", "bitfit"]
    assert_legend_outside_axes(fig)
    assert_no_overlapping_tick_labels(fig)


def test_overlay_of_single_runs_without_val_loss_names_differing_metrics(tmp_path):
    runs = [read_run(write_run(tmp_path / t, task=t, val_loss_key=None, evals=(t != "stsb"))) for t in ("sst2", "cola")]
    fig = drawn(overlay_figure([(r.get("task"), [r]) for r in runs]))
    panels = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in panels] == ["training loss", "validation main metric"]
    assert all(len(ax.collections) == 0 for ax in panels)  # one run per series: no band
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["sst2 (accuracy)", "cola (mcc)"]


def test_bars_have_error_bars_and_value_labels():
    cells = {(0, 0): (0.9, 0.01, 5), (0, 1): (0.8, 0.02, 5), (1, 0): (0.55, 0.03, 5), (1, 1): (-0.1, 0.05, 5)}
    fig = drawn(bar_figure(["sst2", "cola"], ["full", "lora"], cells, "test main metric", "title"))
    (ax,) = fig.axes
    column_width(fig)
    bars = [p for p in ax.patches]
    assert len(bars) == 4 and sorted(round(b.get_height(), 2) for b in bars) == [-0.1, 0.55, 0.8, 0.9]
    caps = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(caps) == 2 and all(c.has_yerr for c in caps)
    assert sorted(t.get_text() for t in ax.texts) == ["-0.100", "0.550", "0.800", "0.900"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sst2", "cola"]
    assert ax.get_ylabel() == "test main metric" and ax.get_title() == "title"
    assert_legend_outside_axes(fig)
    assert_no_overlapping_tick_labels(fig)


def test_bars_leave_missing_cells_empty_and_one_seed_has_no_error_bar():
    cells = {(0, 0): (0.9, 0.0, 1), (1, 0): (0.7, 0.0, 1)}
    fig = drawn(bar_figure(["a", "b", "c"], [""], cells, "test accuracy"))
    (ax,) = fig.axes
    assert len(ax.patches) == 2 and fig.legends == []  # one series: the x labels say it all
    (errorbar,) = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert all(segment[0][1] == segment[1][1] for segment in errorbar.lines[2][0].get_segments())  # zero length
