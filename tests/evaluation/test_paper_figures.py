"""The paper's Figures 4, 6 and 7 as image grids: every cell where it should be."""
import numpy as np

from dibigan_tf.evaluation.figures import figure4, figure6, figure7


def _images(values, size=4):
    return np.stack([np.full((size, size, 3), v, np.uint8) for v in values])


def test_figure4_input_recon_and_another_image_of_the_person():
    inputs = _images([10, 11, 20, 30])       # person 0: images 0, 1; person 1: 2; person 2: 3
    recons = _images([110, 111, 120, 130])
    labels = np.array([0, 0, 1, 2])
    grid = figure4(inputs, recons, labels, others={"whitebox": _images([210, 211, 220, 230])})
    assert grid.shape == (3 * 4, 4 * 4, 3)                 # one row per person, 4 columns
    cell = lambda r, c: grid[4 * r, 4 * c, 0]              # noqa: E731
    assert [cell(0, c) for c in range(4)] == [10, 110, 210, 11]
    assert [cell(1, c) for c in range(4)] == [20, 120, 220, 0]   # no other image: black


def test_figure6_rows_of_real_then_reconstructed():
    labels = np.array([0, 1, 1, 1, 2, 2])
    inputs = _images([1, 2, 3, 4, 5, 6])
    recons = _images([101, 102, 103, 104, 105, 106])
    grid = figure6(inputs, recons, labels, people=2, per_person=3)
    assert grid.shape == (4 * 4, 3 * 4, 3)
    assert [grid[0, 4 * c, 0] for c in range(3)] == [2, 3, 4]       # person 1 (most images)
    assert [grid[4, 4 * c, 0] for c in range(3)] == [102, 103, 104]
    assert [grid[8, 4 * c, 0] for c in range(3)] == [5, 6, 0]       # person 2, padded


def test_figure7_rows_share_f_columns_share_v():
    class Generate:
        latent_dim = 3

        def __call__(self, features, v):
            # pixel = feature (row) * 10 + v's first coordinate sign (column)
            out = features[:, :1] * 10 + (v[:, :1] > 0)
            return np.broadcast_to(out[:, None, None, :], (len(out), 2, 2, 3)).astype(np.uint8)

    grid = figure7(Generate(), np.array([[1.0], [2.0]]), num_v=5, seed=0)
    assert grid.shape == (2 * 2, 5 * 2, 3)
    top, bottom = grid[0, ::2, 0], grid[2, ::2, 0]
    assert (top // 10 == 1).all() and (bottom // 10 == 2).all()
    np.testing.assert_array_equal(top % 10, bottom % 10)     # the same v in each column
