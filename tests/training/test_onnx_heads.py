"""ONNX export + onnxruntime parity of the dense task models the backend runs (classifier, change detector).

The segmenter's parity test lives in test_dense_models.py; backbones' in test_onnx_export.py.
"""

import pytest
import torch

from training.models import create_model
from training.onnx_export import export_onnx, onnx_max_rel_error

BB = "efficientnet_lite0"


def test_scene_classifier_onnx_parity(tmp_path):
    torch.manual_seed(0)
    model = create_model("scene_classifier", backbone=BB, num_classes=5).eval()
    x = torch.randn(2, 3, 96, 96)
    path = export_onnx(model, (x,), tmp_path / "cls.onnx", ["image"], ["logits"])
    assert onnx_max_rel_error(model, path, (x,)) < 1e-4


def test_change_detector_onnx_parity_two_inputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("change_detector", backbone=BB, channels=16).eval()
    before, after = torch.randn(1, 3, 96, 96), torch.randn(1, 3, 96, 96)
    path = export_onnx(model, (before, after), tmp_path / "cd.onnx", ["before", "after"], ["logits"])
    err = onnx_max_rel_error(model, path, (before, after))
    assert err < 1e-4
    # swapping the dates must change the answer less than unrelated inputs would: the graph really reads both
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    same = sess.run(None, {"before": before.numpy(), "after": before.numpy()})[0]
    diff = sess.run(None, {"before": before.numpy(), "after": after.numpy()})[0]
    assert not np.allclose(same, diff)


@pytest.mark.parametrize("name", ["vit_t_rvsa"])
def test_segmenter_on_vit_backbone_onnx_parity(tmp_path, name):
    torch.manual_seed(0)
    model = create_model("upernet_segmenter", backbone=name, num_classes=3, channels=16,
                         backbone_kwargs={"img_size": 64}).eval()
    x = torch.randn(1, 3, 64, 64)
    path = export_onnx(model, (x,), tmp_path / "seg_vit.onnx", ["image"], ["logits"])
    assert onnx_max_rel_error(model, path, (x,)) < 1e-4
