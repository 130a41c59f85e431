"""The student F^S: ResNet family by depth, named taps, stems by input size."""
import pytest

from dibigan_tf.models.student import build_student


@pytest.mark.parametrize("shape, depth, width, taps, tap1", [
    ((32, 32, 1), "small", 8, 3, (32, 32, 8)),      # 3x3 stride-1 stem
    ((64, 64, 3), 18, 8, 4, (32, 32, 8)),           # 3x3 stride-2 stem
    ((112, 112, 3), 50, 4, 4, (28, 28, 16)),        # 7x7/2 stem + max-pool, bottlenecks (x4)
])
def test_student_shapes_and_named_taps(shape, depth, width, taps, tap1):
    model = build_student(shape, 16, depth=depth, width=width)
    names = list(model.output_names)
    assert names == [f"tap_{j + 1}" for j in range(taps)] + ["embedding"]
    assert tuple(model.outputs[0].shape[1:]) == tap1
    assert tuple(model.outputs[-1].shape[1:]) == (16,)


def test_resnet50_block_count():
    model = build_student((64, 64, 3), 8, depth=50, width=4)
    blocks = {layer.name.rsplit("_", 1)[0] for layer in model.layers
              if layer.name.startswith("stage") and layer.name.endswith("_add")}
    assert len(blocks) == 3 + 4 + 6 + 3


def test_unknown_depth():
    with pytest.raises(ValueError, match="unknown student depth"):
        build_student((32, 32, 1), 8, depth=7)
