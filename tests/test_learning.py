"""Learning tests: each architecture overfits a few synthetic images (slow, run by CI)."""

import pytest

from tests.overfit import overfit


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["detr", "conditional_detr", "dab_detr"])
def test_overfits_synthetic_images(arch, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "shapes-cache"
    ap50, losses = overfit(arch, cache, count=4, steps=300)
    assert losses[-1] < 0.1 * losses[0]
    assert ap50 >= 0.9, f"{arch}: AP50 {ap50:.3f} after 300 steps on 4 images"
