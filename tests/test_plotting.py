import matplotlib.pyplot as plt
import pytest
import torch

from tsbd_utils import plotting


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
    fig = plotting.image_grid(images, 2, 3, title="grid", row_labels=["a", "b"])
    assert len(fig.axes) == 6 and fig.axes[0].get_ylabel() == "a"
    with pytest.raises(ValueError, match="cannot fill a 3 x 3 grid"):
        plotting.image_grid(images, 3, 3, title="grid")
    rgb = plotting.image_grid(torch.rand(2, 3, 8, 8), 1, 2, title="rgb")
    flow = plotting.flow_diagram([("A", ["x", "y"]), ("B", ["z"])], title="flow")
    assert flow.axes[0].get_title() == "flow"
    for f in (fig, rgb, flow):
        plt.close(f)
