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
