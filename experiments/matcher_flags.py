"""Flags shared by train.py and evaluate.py: the matcher F under attack and face alignment.

They are generated from `MatcherConfig` and the face fields of `RunConfig` (groups "matcher" and
"faces" in dibigan_tf/config.py) by experiments/config_flags.py.
"""
from absl import flags

from experiments.config_flags import config_from_flags, define_flags

define_flags(groups=("matcher", "faces"))

FLAGS = flags.FLAGS


def matcher_config(**extra):
    """MatcherConfig from the matcher flags (`extra`: fields set by the caller)."""
    from dibigan_tf.config import MatcherConfig
    _check_url()
    return config_from_flags(MatcherConfig, "matcher", **extra)


def _check_url():
    """Refuses a --matcher_url with credentials in it, before config.json or any log line can
    hold it."""
    if FLAGS.matcher_url:
        from dibigan_tf.matchers.http import check_url
        check_url(FLAGS.matcher_url)
