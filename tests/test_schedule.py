"""The progressive schedule and the exponential weighting, exactly."""
import math

import pytest

from dibigan_tf.schedule import ProgressiveSchedule, exponential_weights


def paper_schedule():
    # 4x4 .. 32x32, 1000 images stable, 600 fade
    return ProgressiveSchedule.uniform(4, 4, stable_images=1000, fade_images=600)


def test_phases_layout():
    phases = paper_schedule().phases()
    assert [(p.stage, p.fade, p.start_image, p.end_image) for p in phases] == [
        (0, False, 0, 1000),
        (1, True, 1000, 1600), (1, False, 1600, 2600),
        (2, True, 2600, 3200), (2, False, 3200, 4200),
        (3, True, 4200, 4800), (3, False, 4800, 5800)]
    assert paper_schedule().total_images == 5800


def test_paper_batch_rule_128_at_4x4_halved_per_doubling():
    s = paper_schedule()
    assert [s.batch_size(i) for i in range(4)] == [128, 64, 32, 16]
    assert [s.resolution(i) for i in range(4)] == [4, 8, 16, 32]
    override = ProgressiveSchedule.uniform(2, 8, 10, 10, batch_sizes=[64, 64])
    assert override.batch_size(1) == 64


@pytest.mark.parametrize("seen, stage, alpha, batch", [
    (0, 0, 1.0, 128), (999, 0, 1.0, 128),
    (1000, 1, 0.0, 64), (1150, 1, 0.25, 64), (1300, 1, 0.5, 64), (1599, 1, 599 / 600, 64),
    (1600, 1, 1.0, 64), (2600, 2, 0.0, 32), (3050, 2, 0.75, 32), (5799, 3, 1.0, 16)])
def test_stage_alpha_batch_at_image_counts(seen, stage, alpha, batch):
    s = paper_schedule()
    phase = s.phase_at(seen)
    assert phase.stage == stage
    assert s.alpha(seen) == pytest.approx(alpha, abs=1e-12)
    assert phase.batch_size == batch


def test_done_after_last_image():
    s = paper_schedule()
    assert s.phase_at(5800) is None
    assert s.alpha(5800) == 1.0


def test_scale_moves_continuously_through_fade():
    s = paper_schedule()
    assert s.scale(500) == 0.0
    assert s.scale(1300) == pytest.approx(0.5)
    assert s.scale(2000) == 1.0
    assert s.scale(5000) == 3.0


def test_exponential_weights_section_3_4():
    # R_M = 3; at R = 1: lambda_b = 0.001 e^2, lambda_d = lambda_r = e^2, lambda_adv = e^1
    w = exponential_weights(1.0, 3.0, alpha=0.001, beta=1.0)
    assert w.biject == pytest.approx(0.001 * math.e ** 2)
    assert w.distill == pytest.approx(math.e ** 2)
    assert w.recon == pytest.approx(math.e ** 2)
    assert w.adversarial == pytest.approx(math.e)
    last = exponential_weights(3.0, 3.0, alpha=0.001, beta=2.0)
    assert (last.distill, last.recon, last.biject) == (1.0, 1.0, 0.001)
    assert last.adversarial == pytest.approx(2.0 * math.e ** 3)


def test_invalid_schedules_refused():
    with pytest.raises(ValueError, match="stable_images"):
        ProgressiveSchedule(3, 8, [1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        ProgressiveSchedule(2, 8, [1, -2], [0, 1])
