"""Small helpers of the pipeline: augment stage names, config changes between runs."""
import json

import pytest


def test_unknown_augment_stage_is_a_one_line_error():
    from dibigan_tf.config import RunConfig
    from dibigan_tf.training.common import TrainingError
    from dibigan_tf.training.pipeline import _augment_stages
    assert _augment_stages(RunConfig(augment_stages="student, gan")) == {"student", "gan"}
    assert _augment_stages(RunConfig(augment_stages="")) == set()
    with pytest.raises(TrainingError, match="unknown stage.*'matcher'"):
        _augment_stages(RunConfig(augment_stages="student,matcher"))


def test_config_changes_name_the_training_settings_that_differ():
    from dibigan_tf.config import RunConfig
    from dibigan_tf.training.pipeline import config_changes
    old = json.loads(json.dumps(RunConfig().to_dict()))
    new = RunConfig(stop_after_steps=5, augment_copies=2)
    new.gan.learning_rate = 0.004
    new = json.loads(json.dumps(new.to_dict()))
    assert config_changes(old, new) == ["augment_copies: 0 -> 2",
                                        "gan.learning_rate: 0.0015 -> 0.004"]
    assert config_changes(old, old) == []


def test_bad_augment_stage_stops_the_run_before_anything_is_written(tmp_path):
    from dibigan_tf.config import RunConfig
    from dibigan_tf.training.common import TrainingError
    from dibigan_tf.training.pipeline import _open_run
    with pytest.raises(TrainingError, match="--augment_stages"):
        _open_run(RunConfig(checkpoint_dir=str(tmp_path), augment_stages="flwo"), None)
    assert list(tmp_path.iterdir()) == []


def test_attack_images_are_the_split_then_its_copies():
    import numpy as np
    from dibigan_tf.config import RunConfig
    from dibigan_tf.data.digits import load_embedded_digits
    from dibigan_tf.training.pipeline import _attack_images
    train = load_embedded_digits().subset(np.arange(0, 5000, 500))
    assert _attack_images(RunConfig(), train) is train
    attack = _attack_images(RunConfig(augment_copies=2, seed=5), train)
    assert len(attack) == 30 and attack.labels.tolist() == train.labels.tolist() * 3
    np.testing.assert_array_equal(attack.images[:10], train.images)
    np.testing.assert_array_equal(attack.images[10:],
                                  _attack_images(RunConfig(augment_copies=2, seed=5),
                                                 train).images[10:])
