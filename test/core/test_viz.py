import numpy as np

from m3_ros.viz import heatmap


def test_heatmap_brightens_with_relevance_and_greys_out_empty_pixels():
    rel = np.tile(np.linspace(0.0, 1.0, 50), (4, 1))
    rel[0, 0] = np.nan
    img = heatmap(rel, empty=np.eye(4, 50, 10, dtype=bool))
    assert img.shape == (4, 50, 3) and img.dtype == np.uint8
    brightness = img[1].astype(int).sum(axis=1)
    assert np.all(np.diff(brightness[12:]) >= 0) and brightness[-1] > brightness[12] + 300
    assert (img[0, 0] == 64).all() and (img[0, 10] == 64).all()  # NaN and masked pixels are grey
    assert (heatmap(np.full((3, 3), np.nan)) == 64).all()
