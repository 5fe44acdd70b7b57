import matplotlib.pyplot as plt
import pytest
import torch

from tsbd_utils import galleries, plotting


def test_savefig_writes_a_png_under_a_stable_name(tmp_path):
    plotting.setup()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set(title="t", xlabel="x", ylabel="y")
    path = plotting.savefig(fig, "00_line", tmp_path / "figs")
    assert path == tmp_path / "figs" / "00_line.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["00_line.png"]  # no temporary file left
    plt.close(fig)


@pytest.mark.parametrize("name", ["line", "0_line", "00-line", "00_Line", "00_line.png"])
def test_savefig_rejects_unstable_names(tmp_path, name):
    fig = plt.figure()
    with pytest.raises(ValueError, match="must look like 'NN_slug'"):
        plotting.savefig(fig, name, tmp_path)
    plt.close(fig)


def test_image_grid_and_flow_diagram(tmp_path):
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    fig = galleries.image_grid(images, 2, 3, title="grid", row_labels=["a", "b"])
    assert len(fig.axes) == 6 and fig.axes[0].get_ylabel() == "a"
    with pytest.raises(ValueError, match="cannot fill a 3 x 3 grid"):
        galleries.image_grid(images, 3, 3, title="grid")
    rgb = galleries.image_grid(torch.rand(2, 3, 8, 8), 1, 2, title="rgb")
    flow = plotting.flow_diagram([("A", ["x", "y"]), ("B", ["z"])], title="flow")
    assert flow.axes[0].get_title() == "flow"
    for f in (fig, rgb, flow):
        plt.close(f)


def test_panel_grid_hides_unused_panels_and_takes_a_height():
    from tsbd_utils import plotting

    fig, axes = plotting.panel_grid(5, ncols=4, size=2.0, height=1.5)
    assert len(axes) == 5 and tuple(fig.get_size_inches()) == (8.0, 3.0)
    assert sum(ax.get_visible() for ax in fig.axes) == 5
    plt.close(fig)


def test_found_trigger_gallery_puts_the_real_trigger_above_what_was_found():
    real = {"BadNets": torch.rand(1, 8, 8), "WaNet": torch.rand(1, 8, 8)}
    found = {"BadNets": (torch.rand(1, 8, 8), "reversed"), "WaNet": (torch.rand(1, 8, 8), "reversed")}
    fig = galleries.found_trigger_gallery(real, found, title="t")
    assert len(fig.axes) == 4 and fig.axes[0].get_title() == "BadNets\nreal trigger"
    assert fig.axes[2].get_title() == "reversed"  # second row, first column
    plt.close(fig)
    with pytest.raises(ValueError, match="must name the same attacks"):
        galleries.found_trigger_gallery(real, {"BadNets": found["BadNets"]}, title="t")
