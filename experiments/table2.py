"""The paper's Table 2 rows (A)-(F) as one table of overrides, and the flagfiles made from it.

Each row changes four settings of a base configuration: the generator and which of Eq. 8's terms
are on. A row runs in blackbox or whitebox mode, on digits or faces (64x64 or 128x128); each of
these 36 combinations has a named flagfile (`experiments/flagfiles/<dataset>_<row>_<mode>[_128]
.flags`, what people and scripts call), written from this table by

    python experiments/table2.py

and kept equal to it by tests/test_flagfiles.py. Change a row here, never in its flagfiles.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = os.path.join("experiments", "flagfiles")

#: letter -> (Table 2's name, what the row is, its overrides)
ROWS = {
    "A": ("(A) PO.GAN", "PO.GAN: the progressive generator with the feature (and noise) as its "
          "only input; L_adv + L_recon.",
          dict(generator="pggan", use_distill=False, use_biject=False)),
    "B": ("(B) + L_distill", "(A) + L_distill.",
          dict(generator="pggan", use_distill=True, use_biject=False)),
    "C": ("(C) + L_biject", "(B) + L_biject.",
          dict(generator="pggan", use_distill=True, use_biject=True)),
    "D": ("(D) Ours", "ours: the feature-conditional generator; L_adv + L_recon.",
          dict(generator="feature_conditional", use_distill=False, use_biject=False)),
    "E": ("(E) + L_distill", "(D) + L_distill.",
          dict(generator="feature_conditional", use_distill=True, use_biject=False)),
    "F": ("(F) + L_biject", "(E) + L_biject: the full DiBiGAN (the default run's "
          "configuration).",
          dict(generator="feature_conditional", use_distill=True, use_biject=True)),
}
#: every row keeps L_adv and L_recon
COMMON = dict(use_adv=True, use_recon=True)

_DLIB_KERAS = ("F is dlib's ResNet descriptor rebuilt in Keras from\n# dlib's own weight file "
               "(--matcher=dlib_keras: the same 150x150 aligned chips and the same\n# answers as "
               "--matcher=dlib, differentiable; its taps are the five residual levels' outputs).")

#: (dataset, mode, size) -> (base flagfile, description, overrides of the variant)
VARIANTS = {
    ("digits", "blackbox", 0): (
        "digits_blackbox.flags",
        "Blackbox mode on the embedded digits; every other setting is the default run's.", {}),
    ("digits", "whitebox", 0): (
        "digits_blackbox.flags",
        "Whitebox mode (F itself, differentiated, in place of F^S) on the embedded digits; every "
        "other\n# setting is the default run's.", dict(mode="whitebox")),
    ("faces", "blackbox", 64): (
        "faces_blackbox.flags",
        "Blackbox mode on faces at 64x64; every other setting is faces_blackbox.flags's.", {}),
    ("faces", "whitebox", 64): (
        "faces_blackbox.flags",
        f"Whitebox mode on faces at 64x64: {_DLIB_KERAS}\n# Every other setting is "
        f"faces_blackbox.flags's.", dict(mode="whitebox", matcher="dlib_keras")),
    ("faces", "blackbox", 128): (
        "faces_blackbox_128.flags",
        "Blackbox mode on faces at 128x128; every other setting is faces_blackbox_128.flags's.",
        {}),
    ("faces", "whitebox", 128): (
        "faces_blackbox_128.flags",
        f"Whitebox mode on faces at 128x128: {_DLIB_KERAS}\n# Every other setting is "
        f"faces_blackbox_128.flags's.", dict(mode="whitebox", matcher="dlib_keras")),
}


def flagfile_name(letter, dataset, mode, size):
    return f"{dataset}_{letter}_{mode}{'_128' if size == 128 else ''}.flags"


def run_name(letter, dataset, mode, size):
    return f"{dataset}-{letter}-{mode}{'-128' if size == 128 else ''}"


def _text(value):
    return str(value).lower() if isinstance(value, bool) else str(value)


def overrides(letter, dataset, mode, size):
    """The flags a row adds to its base flagfile, in order."""
    _, _, variant = VARIANTS[(dataset, mode, size)]
    return {"run_name": run_name(letter, dataset, mode, size), **variant, **ROWS[letter][2],
            **COMMON}


def flagfile_text(letter, dataset, mode, size):
    base, description, _ = VARIANTS[(dataset, mode, size)]
    lines = [f"# Table 2, ({letter}) {ROWS[letter][1]}", f"# {description}",
             f"--flagfile={FLAGFILES}/{base}"]
    lines += [f"--{k}={_text(v)}" for k, v in overrides(letter, dataset, mode, size).items()]
    return "\n".join(lines) + "\n"


def all_flagfiles():
    """{relative path: text} of every row x variant."""
    return {os.path.join(FLAGFILES, flagfile_name(letter, *variant)):
            flagfile_text(letter, *variant) for variant in VARIANTS for letter in ROWS}


def main():
    for path, text in all_flagfiles().items():
        with open(os.path.join(ROOT, path), "w") as handle:
            handle.write(text)
    print(f"wrote {len(ROWS) * len(VARIANTS)} flagfiles under {FLAGFILES}/")


if __name__ == "__main__":
    main()
