"""The one dataset catalog (SPEC §4): what each named dataset is, where it lives, how to get it.

Data only: the named entries, MedMNIST's files and checksums. Parsing a dataset argument
(``hela``, ``medmnist:NAME``, ``folder:PATH``, ``seg:PATH``) into a resolved
:class:`~.sources.DatasetRef` is :func:`.sources.resolve`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


CATALOG: dict[str, DatasetInfo] = {
    "hela": DatasetInfo(  # Boland & Murphy (2001); Shamir et al., IICBU 2008
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
    ),
    "bg": DatasetInfo(  # Dimitropoulos et al. (2017)
        "bg",
        "Breast grading carcinoma (Zenodo 834910): 3 grades of invasive ductal carcinoma, RGB 1280x960",
        "cv5",
        "classes",
        {"_total": 300},  # 107 / 102 / 91 images of grades 1 / 2 / 3 (folder names vary by copy)
        (Source("https://zenodo.org/record/834910/files/BreastGrading.zip?download=1", None, "bg.zip"),),
    ),
    "lar": DatasetInfo(  # Moccia et al. (2017)
        "lar",
        "Laryngeal NBI patches (Zenodo 1003200): He, Hbv, IPCL, Le in 3 predefined folds, RGB ~100x100",
        "predefined",
        "folds",
        {"He": 330, "Hbv": 330, "IPCL": 330, "Le": 330, "_total": 1320},
        # the record's file is a tar archive, "laryngeal dataset.tar"; Zenodo publishes no checksum we could reach
        (Source("https://zenodo.org/record/1003200/files/laryngeal%20dataset.tar?download=1", None, "lar.tar"),),
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


def __getattr__(name: str):  # noqa: ANN202 - the parser moved to .sources; old imports keep working
    if name in ("DatasetRef", "resolve"):
        from . import sources

        return getattr(sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
