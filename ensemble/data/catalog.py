"""The one dataset catalog (SPEC §4): what each named dataset is, where it lives, how to get it.

A dataset argument is one of ``hela``, ``bg``, ``lar``, ``digits``, ``medmnist:NAME``,
``folder:PATH`` (classification) or ``seg:PATH`` (segmentation: ``images/`` and ``masks/``);
:func:`resolve` turns it into a :class:`DatasetRef` (name in the store, path on disk, protocol,
published class counts to check against).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError


@dataclass(frozen=True)
class Source:
    """An official download: URL, checksum as ``"md5:HEX"``/``"sha256:HEX"`` (None: not pinned), file name."""

    url: str
    checksum: str | None
    filename: str


@dataclass(frozen=True)
class DatasetInfo:
    """A catalog entry. ``counts`` are the published images per class (a differing count warns)."""

    name: str
    description: str
    protocol: str  # "cv5", "predefined" or "official"
    layout: str  # "classes", "folds", "npz", "builtin" or "seg" (images/ + masks/)
    counts: dict[str, int] = field(default_factory=dict)
    sources: tuple[Source, ...] = ()
    citation: str = ""


HELA_CLASSES = (
    "actin",
    "dap",
    "endosome",
    "er",
    "golgia",
    "golgpp",
    "lysosome",
    "microtubules",
    "mitochondria",
    "nucleolus",
)

CATALOG: dict[str, DatasetInfo] = {
    "hela": DatasetInfo(
        "hela",
        "2D HeLa (IICBU 2008): 10 subcellular organelles, 16-bit grey TIFF, 382x382",
        "cv5",
        "classes",
        # the archive's own counts (the paper says 832 in all; the archive has 862)
        {
            "actin": 98,
            "dap": 87,
            "endosome": 91,
            "er": 86,
            "golgia": 87,
            "golgpp": 85,
            "lysosome": 84,
            "microtubules": 91,
            "mitochondria": 73,
            "nucleolus": 80,
            "_total": 862,
        },
        (Source("https://ome.grc.nia.nih.gov/iicbu2008/hela.tar.gz", None, "hela.tar.gz"),),
        "Boland & Murphy (2001); Shamir et al., IICBU 2008",
    ),
    "bg": DatasetInfo(
        "bg",
        "Breast grading carcinoma (Zenodo 834910): 3 grades of invasive ductal carcinoma, RGB 1280x960",
        "cv5",
        "classes",
        {"_total": 300},  # 107 / 102 / 91 images of grades 1 / 2 / 3 (folder names vary by copy)
        (Source("https://zenodo.org/record/834910/files/BreastGrading.zip?download=1", None, "bg.zip"),),
        "Dimitropoulos et al. (2017)",
    ),
    "lar": DatasetInfo(
        "lar",
        "Laryngeal NBI patches (Zenodo 1003200): He, Hbv, IPCL, Le in 3 predefined folds, RGB ~100x100",
        "predefined",
        "folds",
        {"He": 330, "Hbv": 330, "IPCL": 330, "Le": 330, "_total": 1320},
        # the record's file is a tar archive, "laryngeal dataset.tar"; Zenodo publishes no checksum we could reach
        (Source("https://zenodo.org/record/1003200/files/laryngeal%20dataset.tar?download=1", None, "lar.tar"),),
        "Moccia et al. (2017)",
    ),
    "digits": DatasetInfo(
        "digits",
        "scikit-learn's bundled 8x8 handwritten digits (the demo dataset; no download)",
        "cv5",
        "builtin",
        {"_total": 1797},
    ),
}

MEDMNIST_URL = "https://zenodo.org/record/6496656/files/{name}.npz?download=1"
MEDMNIST: dict[str, tuple[str, int, int, int]] = {
    # name: (MD5 of the official file, train, val, test) -- MedMNIST v2 (medmnist 2.1.0's INFO)
    "pathmnist": ("a8b06965200029087d5bd730944a56c1", 89996, 10004, 7180),
    "dermamnist": ("0744692d530f8e62ec473284d019b0c7", 7007, 1003, 2005),
    "octmnist": ("c68d92d5b585d8d81f7112f81e2d0842", 97477, 10832, 1000),
    "pneumoniamnist": ("28209eda62fecd6e6a2d98b1501bb15f", 4708, 524, 624),
    "retinamnist": ("bd4c0672f1bba3e3a89f0e4e876791e4", 1080, 120, 400),
    "breastmnist": ("750601b1f35ba3300ea97c75c52ff8f6", 546, 78, 156),
    "bloodmnist": ("7053d0359d879ad8a5505303e11de1dc", 11959, 1712, 3421),
    "tissuemnist": ("ebe78ee8b05294063de985d821c1c34b", 165466, 23640, 47280),
    "organamnist": ("866b832ed4eeba67bfb9edee1d5544e6", 34581, 6491, 17778),
    "organcmnist": ("0afa5834fb105f7705a7d93372119a21", 13000, 2392, 8268),
    "organsmnist": ("e5c39f1af030238290b9557d9503af9d", 13940, 2452, 8829),
}
MEDMNIST_CLASSES = {
    "breastmnist": ("malignant", "normal-benign"),
    "pneumoniamnist": ("normal", "pneumonia"),
}


@dataclass(frozen=True)
class DatasetRef:
    """A resolved dataset argument: its store name, where it is, and its catalog entry."""

    name: str
    path: Path | None
    info: DatasetInfo
    spec: str

    @property
    def task(self) -> str:
        """``segmentation`` for image/mask folders, else ``classification``: a property of the dataset."""
        return "segmentation" if self.info.layout == "seg" else "classification"

    @property
    def present(self) -> bool:
        return self.path is None or self.path.exists()


def store_name(spec: str) -> str:
    """The dataset's name in the member store: ``medmnist:blood`` -> ``medmnist-blood``."""
    return resolve(spec, Path(".")).name


def resolve(spec: str, data_dir: Path | str = "datasets") -> DatasetRef:
    """Parse a ``--dataset`` argument; an unknown one lists what is valid."""
    data_dir = Path(data_dir)
    for prefix, layout in (("folder:", "folder"), ("seg:", "seg")):
        if spec.startswith(prefix):
            path = Path(spec[len(prefix) :]).expanduser()
            if not spec[len(prefix) :]:
                raise UsageError(f"{prefix} needs a path, e.g. {prefix}/data/my_images")
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.resolve().name).lstrip("._").replace("..", "_") or "folder"
            if layout == "seg":
                info = DatasetInfo(name, f"segmentation folder {path} (images/ + masks/)", "cv5", layout)
            else:
                info = DatasetInfo(name, f"image folder {path}", "cv5-or-predefined", layout)
            return DatasetRef(name, path, info, spec)
    if spec.lower().startswith("medmnist:"):
        sub = spec.split(":", 1)[1].lower()
        if not sub:
            raise UsageError(f"medmnist: needs a name, e.g. medmnist:breastmnist ({', '.join(MEDMNIST)})")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", sub):
            raise UsageError(
                f"{spec} is not a MedMNIST name (letters, digits, '_' or '-'; known: {', '.join(MEDMNIST)})"
            )
        md5, n_train, n_val, n_test = MEDMNIST.get(sub, (None, 0, 0, 0))
        info = DatasetInfo(
            f"medmnist-{sub}",
            f"MedMNIST v2 {sub} (official train/val/test split)",
            "official",
            "npz",
            {"_train": n_train, "_val": n_val, "_test": n_test} if md5 else {},
            (Source(MEDMNIST_URL.format(name=sub), f"md5:{md5}" if md5 else None, f"{sub}.npz"),),
            "Yang et al. (2023), MedMNIST v2",
        )
        return DatasetRef(info.name, data_dir / "medmnist" / f"{sub}.npz", info, spec)
    info = CATALOG.get(spec.lower())
    if info is None:
        valid = ", ".join([*CATALOG, "medmnist:NAME", "folder:PATH", "seg:PATH"])
        raise UsageError(f"unknown dataset {spec!r}; valid: {valid}")
    path = None if info.layout == "builtin" else data_dir / info.name
    return DatasetRef(info.name, path, info, spec)
