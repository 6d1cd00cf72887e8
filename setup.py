"""Packaging for ``mamba_clip`` (distribution name ``open-clip-mamba``).

The PyPI name ``mamba-clip`` belongs to an unrelated project, hence the distribution name; the import
name is ``mamba_clip`` and the command-line tool is ``mamba-clip``.

Two things beyond plain packages:

* ``model_configs/*.json`` live at the top of the repository and are installed as the package
  ``mamba_clip.model_configs`` so an installed (non-editable) copy finds them with
  ``importlib.resources``.
* ``mamba_clip_autoload.pth`` is installed into site-packages. Python runs it at start-up; it only
  puts a tiny import hook on ``sys.meta_path`` (no torch import) that registers our timm models and
  open_clip configs the moment ``timm`` or ``open_clip`` is imported. That is how the unmodified
  ``open_clip_train.main`` and ``clip_benchmark`` find ``vmamba-s`` and friends.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
PTH_NAME = "mamba_clip_autoload.pth"


class BuildPyWithPth(build_py):
    """build_py that also places the autoload ``.pth`` at the root of the wheel."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, PTH_NAME), os.path.join(self.build_lib, PTH_NAME))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_NAME)]


class EditableWheelWithPth(editable_wheel):
    """Editable installs get the same ``.pth`` next to setuptools' own path hook."""

    def _create_wheel_file(self, bdist_wheel):
        wheel_path = super()._create_wheel_file(bdist_wheel)
        import zipfile

        with zipfile.ZipFile(wheel_path, "a") as zf:
            if PTH_NAME not in zf.namelist():
                zf.write(os.path.join(HERE, PTH_NAME), PTH_NAME)
        return wheel_path


def read_version() -> str:
    with open(os.path.join(HERE, "mamba_clip", "version.py")) as f:
        scope: dict = {}
        exec(f.read(), scope)
        return scope["__version__"]


setup(
    name="open-clip-mamba",
    version=read_version(),
    description="Mamba vision towers (VMamba, SiMBA) for open_clip: models, selective-scan kernels, "
    "CLIP-Mamba checkpoints, zero-shot / OOD / Hessian evaluation",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["mamba_clip", "mamba_clip.*"]) + ["mamba_clip.model_configs"],
    package_dir={"mamba_clip.model_configs": "model_configs"},
    package_data={
        "mamba_clip.model_configs": ["*.json"],
        "mamba_clip.ops": ["csrc/*.c"],
        "mamba_clip.eval.zeroshot": ["data/*.json", "data/*.csv", "data/README.md"],
        "mamba_clip.eval.ood": ["data/*.npy", "data/LICENSE.txt", "data/README.md"],
        "mamba_clip.openclip_ext": ["data/checkpoint-keys/*.tsv.gz", "data/checkpoint-keys/README.md"],
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "open_clip_torch>=2.24,<4",
        "timm>=1.0,<2",
        "clip-benchmark>=1.6,<2",
        # clip-benchmark 1.6.2 imports requests without declaring it.
        "requests>=2.25",
        # clip-benchmark 1.6.2's top-k accuracy crashes with numpy >= 2.4.
        "numpy>=1.24,<2.4",
        "pyhessian>=0.1",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "huggingface_hub>=0.20",
        "pillow>=9",
        # open_clip_train imports pandas for CSV datasets (stock trainer).
        "pandas>=1.5",
        # the demo's handwritten digits ship with scikit-learn; ROC-AUC of the zero-shot suite.
        "scikit-learn>=1.0",
    ],
    extras_require={
        "cuda": ["mamba-ssm>=2.0", "causal-conv1d>=1.2"],
        "test": ["pytest>=7", "ruff>=0.4"],
    },
    entry_points={"console_scripts": ["mamba-clip=mamba_clip.cli:main"]},
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
