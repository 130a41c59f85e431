"""Flags shared by train.py and evaluate.py: the matcher F under attack and face alignment."""
from absl import flags

flags.DEFINE_enum("matcher", "lenet", ["lenet", "keras", "savedmodel", "onnx", "dlib",
                                       "dlib_keras", "http"],
                  "The matcher F under attack (lenet: trained here on the digits; dlib_keras: "
                  "dlib's descriptor rebuilt in Keras from its weight file, differentiable, "
                  "aligned chips only).")
flags.DEFINE_string("matcher_path", "", "keras/savedmodel/onnx: the model file or directory.")
flags.DEFINE_string("matcher_url", "", "http: the endpoint (see dibigan_tf/matchers/http.py).")
flags.DEFINE_integer("matcher_embedding_dim", 0, "http: length of the returned vectors.")
flags.DEFINE_enum("matcher_http_format", "json", ["json", "npy"], "http: request format.")
flags.DEFINE_float("matcher_timeout", 30.0, "http: seconds per request.")
flags.DEFINE_integer("matcher_retries", 3, "http: retries (exponential backoff) per request.")
flags.DEFINE_integer("matcher_query_budget", 0, "http: images it may send, over every run "
                     "sharing its feature store (0: no limit).")
flags.DEFINE_multi_string("matcher_header", [], "http: a header sent with every request, its "
                          "secret value read at start from an environment variable or a file: "
                          "Name:env:VAR or Name:file:PATH (repeatable; the value is never "
                          "written to config.json, logs or errors).")
flags.DEFINE_integer("matcher_input_size", 0, "The matcher's input size when it cannot say "
                     "(0: the aligned crops').")
flags.DEFINE_enum("matcher_input_range", "minus1_1", ["minus1_1", "zero_1", "raw", "arcface"],
                  "keras/savedmodel: the pixel range the model expects.")
flags.DEFINE_enum("matcher_layout", "", ["", "nchw", "nhwc"], "onnx: input layout (empty: "
                  "from the model).")
flags.DEFINE_float("matcher_mean", 127.5, "onnx: (x - mean) / std normalisation.")
flags.DEFINE_float("matcher_std", 127.5, "onnx: (x - mean) / std normalisation.")
flags.DEFINE_enum("matcher_channel_order", "rgb", ["rgb", "bgr"], "onnx: channel order.")
flags.DEFINE_integer("dlib_jitters", 0, "dlib (not dlib_keras): average the descriptor over "
                     "this many jittered copies (0: none, as dlib's default).")
flags.DEFINE_enum("dlib_chip", "aligned", ["aligned", "landmarks"], "dlib: the images are "
                  "aligned face chips, or dlib's landmark + chip step runs on each.")
flags.DEFINE_integer("align_size", 150, "faces: size of the aligned crops (dlib's face chip: "
                     "150), what the matcher sees.")
flags.DEFINE_integer("image_size", 0, "Size F^S, H and G train on (faces: 64 on a CPU, 128 as "
                     "in the paper's figures; 0: the dataset's own).")
flags.DEFINE_float("heldout_fraction", 0.25, "faces: share of the people held out (no network "
                   "trains on them).")
flags.DEFINE_enum("align_multiple", "largest", ["largest", "central"], "faces: which face of a "
                  "photo with several.")
flags.DEFINE_enum("align_none", "skip", ["skip", "center_crop"], "faces: a photo without a "
                  "detected face is skipped (and counted) or centre-cropped.")
flags.DEFINE_string("align_cache_dir", "", "Aligned-crop cache (default <checkpoint_dir>/aligned).")
flags.DEFINE_integer("align_upsample", 1, "faces: times dlib's detector may upsample a photo "
                     "in which it found no face (each doubles the size; finds smaller faces, "
                     "slower).")
flags.DEFINE_enum("align_template", "dlib", ["dlib", "arcface", "none"], "faces: dlib's face "
                  "chip (dlib's matcher), the ArcFace 112x112 five-point template (insightface "
                  "matchers; 68 dlib landmarks give the five points), or none (already aligned "
                  "crops: the whole image resized to --align_size).")

FLAGS = flags.FLAGS


def matcher_config(**extra):
    """MatcherConfig from the matcher flags (`extra`: the LeNet fields of train.py)."""
    from dibigan_tf.config import MatcherConfig
    return MatcherConfig(name=FLAGS.matcher, path=FLAGS.matcher_path, url=FLAGS.matcher_url,
                         embedding_dim=FLAGS.matcher_embedding_dim,
                         http_format=FLAGS.matcher_http_format, timeout=FLAGS.matcher_timeout,
                         retries=FLAGS.matcher_retries, query_budget=FLAGS.matcher_query_budget,
                         input_size=FLAGS.matcher_input_size,
                         input_range=FLAGS.matcher_input_range, layout=FLAGS.matcher_layout,
                         mean=FLAGS.matcher_mean, std=FLAGS.matcher_std,
                         channel_order=FLAGS.matcher_channel_order, chip=FLAGS.dlib_chip,
                         num_jitters=FLAGS.dlib_jitters, headers=_http_headers(), **extra)


def _http_headers():
    """The --matcher_header specs (no secret in them), after refusing a --matcher_url with
    credentials in it: before config.json or any log line can hold it."""
    if FLAGS.matcher_url:
        from dibigan_tf.matchers.http import check_url
        check_url(FLAGS.matcher_url)
    return list(FLAGS.matcher_header)
