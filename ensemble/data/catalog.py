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
    no_source: str = ""  # why there is no download, when the name is not one the catalogue knows


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

MEDMNIST_SIZES = (28, 64, 128, 224)  # MedMNIST+: 28 px is MedMNIST v2's own (and the default)
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{file}?download=1"


@dataclass(frozen=True)
class MedMNISTSet:
    """One MedMNIST 2D dataset as the ``medmnist`` package's INFO describes it (v3.0.2).

    ``task`` is INFO's, shortened: ``multi-class``, ``binary``, ``ordinal`` or ``multi-label``;
    ``md5`` is the official file's checksum at each size of :data:`MEDMNIST_SIZES`.
    """

    task: str
    channels: int
    n_classes: int
    split: tuple[int, int, int]  # images in train, val, test (the same at every size)
    md5: dict[int, str]

    @property
    def multilabel(self) -> bool:
        return self.task == "multi-label"


def medmnist_file(name: str, size: int = 28) -> str:
    """The official file name: ``NAME.npz`` at 28 px, ``NAME_SIZE.npz`` otherwise."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


# the 12 MedMNIST v2 2D datasets, copied from medmnist 3.0.2's INFO (url, MD5, url_64, MD5_64, ...)
MEDMNIST: dict[str, MedMNISTSet] = {
    "pathmnist": MedMNISTSet(
        "multi-class",
        3,
        9,
        (89996, 10004, 7180),
        {
            28: "a8b06965200029087d5bd730944a56c1",
            64: "55aa9c1e0525abe5a6b9d8343a507616",
            128: "ac42d08fb904d92c244187169d1fd1d9",
            224: "2c51a510bcdc9cf8ddb2af93af1eadec",
        },
    ),
    "chestmnist": MedMNISTSet(
        "multi-label",
        1,
        14,
        (78468, 11219, 22433),
        {
            28: "02c8a6516a18b556561a56cbdd36c4a8",
            64: "9de6cd0b934ebb5b7426cfba5efbae16",
            128: "db107e5590b27930b62dbaf558aebee3",
            224: "45bd33e6f06c3e8cdb481c74a89152aa",
        },
    ),
    "dermamnist": MedMNISTSet(
        "multi-class",
        3,
        7,
        (7007, 1003, 2005),
        {
            28: "0744692d530f8e62ec473284d019b0c7",
            64: "b70a2f5635c6199aeaa28c31d7202e1f",
            128: "2defd784463fa5243564e855ed717de1",
            224: "8974907d8e169bef5f5b96bc506ae45d",
        },
    ),
    "octmnist": MedMNISTSet(
        "multi-class",
        1,
        4,
        (97477, 10832, 1000),
        {
            28: "c68d92d5b585d8d81f7112f81e2d0842",
            64: "e229e9440236b774d9f0dfef9d07bdaf",
            128: "0a97e76651ace45c5d943ee3f65b63ae",
            224: "abc493b6d529d5de7569faaef2773ba3",
        },
    ),
    "pneumoniamnist": MedMNISTSet(
        "binary",
        1,
        2,
        (4708, 524, 624),
        {
            28: "28209eda62fecd6e6a2d98b1501bb15f",
            64: "8f4eceb4ccffa70c672198ea285246c6",
            128: "05b46931834c231683c68f40c47b2971",
            224: "d6a3c71de1b945ea11211b03746c1fe1",
        },
    ),
    "retinamnist": MedMNISTSet(
        "ordinal",
        3,
        5,
        (1080, 120, 400),
        {
            28: "bd4c0672f1bba3e3a89f0e4e876791e4",
            64: "afda852cc34dcda56f86ad2b2457dbcc",
            128: "e48e916a24454daf90583d4e6efb1a18",
            224: "eae7e3b6f3fcbda4ae613ebdcbe35348",
        },
    ),
    "breastmnist": MedMNISTSet(
        "binary",
        1,
        2,
        (546, 78, 156),
        {
            28: "750601b1f35ba3300ea97c75c52ff8f6",
            64: "742edef2a1fd1524b2efff4bd7ba9364",
            128: "363e4b3f8d712e9b5de15470a2aaadf1",
            224: "b56378a6eefa9fed602bb16d192d4c8b",
        },
    ),
    "bloodmnist": MedMNISTSet(
        "multi-class",
        3,
        8,
        (11959, 1712, 3421),
        {
            28: "7053d0359d879ad8a5505303e11de1dc",
            64: "2b94928a2ae4916078ca51e05b6b800b",
            128: "adace1e0ed228fccda1f39692059dd4c",
            224: "b718ff6835fcbdb22ba9eacccd7b2601",
        },
    ),
    "tissuemnist": MedMNISTSet(
        "multi-class",
        1,
        8,
        (165466, 23640, 47280),
        {
            28: "ebe78ee8b05294063de985d821c1c34b",
            64: "123ece2eba09d0aa5d698fda57103344",
            128: "61b955355d7425a89687b06cca3ce0c2",
            224: "b077128c4a949f0a4eb01517f9037b9c",
        },
    ),
    "organamnist": MedMNISTSet(
        "multi-class",
        1,
        11,
        (34561, 6491, 17778),
        {
            28: "68e3f8846a6bd62f0c9bf841c0d9eacc",
            64: "2dcccc29b88e6da5a01161ef20cda288",
            128: "eeae80d0a227a8d099027e1b3cfd3b60",
            224: "50747347e05c87dd3aaf92c49f9f3170",
        },
    ),
    "organcmnist": MedMNISTSet(
        "multi-class",
        1,
        11,
        (12975, 2392, 8216),
        {
            28: "b9ceb9546e10131b32923c5bbeaea2b1",
            64: "3ce34a8724ea6f548e6db4744d03b6a9",
            128: "773c1f009daa3fe5d9a2a201b2a7ed94",
            224: "050f5e875dc056f6768abf94ec9995d1",
        },
    ),
    "organsmnist": MedMNISTSet(
        "multi-class",
        1,
        11,
        (13932, 2452, 8827),
        {
            28: "9ab87b696fb54e2a387ebe992d6ed5f1",
            64: "53a6d115339d874c25e309a994ff46d3",
            128: "ded0c5fa01a95dc4978b956f613e9b8e",
            224: "b354719e553fbbb2513d5533f52a4cb1",
        },
    ),
}
MEDMNIST_CLASSES = {
    "breastmnist": ("malignant", "normal-benign"),
    "pneumoniamnist": ("normal", "pneumonia"),
    # INFO's labels of ChestMNIST, one 0/1 column each (multi-label: several findings per image)
    "chestmnist": (
        "atelectasis",
        "cardiomegaly",
        "effusion",
        "infiltration",
        "mass",
        "nodule",
        "pneumonia",
        "pneumothorax",
        "consolidation",
        "edema",
        "emphysema",
        "fibrosis",
        "pleural",
        "hernia",
    ),
}


def __getattr__(name: str):  # noqa: ANN202 - the parser moved to .sources; old imports keep working
    if name in ("DatasetRef", "resolve"):
        from . import sources

        return getattr(sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
