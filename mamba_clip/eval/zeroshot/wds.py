"""clip_benchmark's ``wds/`` dataset layout: writing it from an ImageFolder tree, and reading it.

Layout (clip_benchmark ``datasets/builder.py`` ``build_wds_dataset``)::

    DST/
      <split>/0.tar 1.tar ...      samples "<key>.<png|jpg|jpeg|webp>" + "<key>.cls" (label as ASCII int)
      <split>/nshards.txt          number of shards
      classnames.txt               one class name per line, in label order
      zeroshot_classification_templates.txt   one template per line, "{c}" where the class name goes

clip_benchmark reads both text files with ``line.strip()`` per line and fills templates with
``template.format(c=classname)``, so templates are written with ``{c}`` (``{}`` is converted).

The reader here (``WdsDataset``) indexes the tar members once and then reads each image by offset: a
map-style dataset with a length, deterministic order (shards in order, members in tar order, as
webdataset yields them) and any number of DataLoader workers. A corrupt image raises an error naming
the shard and the member.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mamba_clip.fileio import atomic_write_text

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # what clip_benchmark's wds reader decodes
SOURCE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_TEMPLATES = ("a photo of a {c}.",)
DEFAULT_SHARD_SIZE = 10_000


class CorruptImageError(RuntimeError):
    pass


class WdsLayoutError(FileNotFoundError):
    pass


def read_lines_file(path: Union[str, Path]) -> List[str]:
    """A text file of one entry per line (blank lines dropped), or a JSON list."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [str(x) for x in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _to_cb_template(t: str) -> str:
    t = t.strip()
    if "{c}" not in t:
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' or '{{c}}' placeholder")
        t = t.replace("{}", "{c}")
    return t


def _image_folder(src: Path) -> Tuple[List[str], List[Tuple[Path, int]]]:
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{src} has no class folders (expected one sub-folder of images per class)")
    samples, empty = [], []
    for label, c in enumerate(classes):
        files = sorted(
            p for p in (src / c).rglob("*") if p.is_file() and p.suffix.lower() in SOURCE_EXTS
        )
        samples.extend((p, label) for p in files)
        if not files:
            empty.append(c)
    if not samples:
        raise ValueError(f"no images ({', '.join(SOURCE_EXTS)}) under {src}")
    if empty:  # as torchvision's ImageFolder: a class without images is a mistake, not a silent extra class
        raise ValueError(f"class folder(s) of {src} without images: {', '.join(empty[:5])}"
                         f"{', ...' if len(empty) > 5 else ''} (remove them, or add images)")
    return classes, samples


def check_destination(src: Union[str, Path], dst: Union[str, Path]) -> None:
    """ValueError when ``dst`` is ``src`` or lies inside it: the shards would become a class of the
    next run (or be packed into themselves)."""
    s, d = Path(src).resolve(), Path(dst).resolve()
    if d == s or s in d.parents:
        raise ValueError(f"DST {str(dst)!r} lies inside SRC {str(src)!r}; choose an output folder outside it")


def _image_bytes(path: Path, name: str = "") -> Tuple[str, bytes]:
    """(extension, bytes) of an image to pack; ``CorruptImageError`` naming ``name`` (or the path) if PIL
    cannot read it, so no corrupt image reaches a shard."""
    from PIL import Image

    ext = path.suffix.lower().lstrip(".")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if ext in IMAGE_EXTS:
                im.verify()
                return ext, data
            im.load()  # other formats become PNG, which clip_benchmark decodes
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except Exception as exc:  # noqa: BLE001 - any decode failure names the source file
        raise CorruptImageError(f"cannot decode image {name or path}: {type(exc).__name__}: {exc}") from exc
    return "png", buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def make_wds(src, dst, templates: Union[None, str, Path, Sequence[str]] = None, split: str = "test",
             shard_size: int = DEFAULT_SHARD_SIZE, classnames: Union[None, str, Path, Sequence[str]] = None,
             progress: bool = False) -> Dict:  # fmt: skip
    """Convert an ImageFolder tree ``src`` (one folder per class) into clip_benchmark's ``wds/`` layout.

    ``templates``: None (``"a photo of a {c}."``), a file (one per line, or a JSON list) or a list;
    ``{}`` or ``{c}`` marks the class name. ``classnames``: None (the folder names, sorted, which is
    also the label order), a file or a list, one per class in sorted-folder order. Shards of
    ``shard_size`` samples are written to temporary names and renamed when complete; the text files are
    written atomically, ``nshards.txt`` last. Returns a summary dict.
    """
    src, dst = Path(src), Path(dst)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    check_destination(src, dst)
    folders, samples = _image_folder(src)
    if classnames is None:
        names = list(folders)
    else:
        names = read_lines_file(classnames) if isinstance(classnames, (str, Path)) else [str(c) for c in classnames]
        if len(names) != len(folders):
            raise ValueError(
                f"{len(names)} class names given but {src} has {len(folders)} class folders "
                f"({', '.join(folders[:5])}{', ...' if len(folders) > 5 else ''})"
            )
    if templates is None:
        tpl = list(DEFAULT_TEMPLATES)
    elif isinstance(templates, (str, Path)):
        tpl = read_lines_file(templates)
    else:
        tpl = list(templates)
    tpl = [_to_cb_template(t) for t in tpl]
    if not tpl:
        raise ValueError("no templates given")
    out = dst / split
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    nshards = (len(samples) + shard_size - 1) // shard_size
    it = range(nshards)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc=f"make-wds {dst.name}", unit="img")
    for shard in it:
        final = out / f"{shard}.tar"
        tmp = out / f".{shard}.tar.tmp"
        try:
            _write_shard(tmp, samples, shard, shard_size, src, bar)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, final)
    if bar is not None:
        bar.close()
    atomic_write_text(dst / "classnames.txt", "\n".join(names) + "\n")
    atomic_write_text(dst / "zeroshot_classification_templates.txt", "\n".join(tpl) + "\n")
    atomic_write_text(out / "nshards.txt", f"{nshards}\n")
    return {"dst": str(dst), "split": split, "n_images": len(samples), "n_classes": len(names),
            "n_shards": nshards, "classnames": names, "templates": tpl}  # fmt: skip


def _write_shard(tmp: Path, samples, shard: int, shard_size: int, src: Path, bar) -> None:
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(shard * shard_size, min(len(samples), (shard + 1) * shard_size)):
            path, label = samples[i]
            ext, data = _image_bytes(path, str(path.relative_to(src)))
            key = f"s{i:07d}"
            _add(tar, f"{key}.{ext}", data)
            _add(tar, f"{key}.cls", str(label).encode())
            if bar is not None:
                bar.update(1)


# ------------------------------------------------------------------------------------------- reading
def wds_ready(root: Union[str, Path], split: str = "test") -> bool:
    return (Path(root) / split / "nshards.txt").is_file()


def read_wds_meta(root: Union[str, Path]) -> Tuple[Optional[List[str]], Optional[List[str]]]:
    """(classnames, templates) as clip_benchmark reads them (``line.strip()`` per line); None if absent."""
    root = Path(root)

    def lines(name):
        p = root / name
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines()] if p.is_file() else None

    return lines("classnames.txt"), lines("zeroshot_classification_templates.txt")


class WdsDataset:
    """Map-style reader of one split of a ``wds/`` folder: ``(transform(PIL image), label)``."""

    def __init__(self, root: Union[str, Path], split: str = "test", transform=None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        nfile = self.root / split / "nshards.txt"
        if not nfile.is_file():
            raise WdsLayoutError(f"{nfile} not found: not a clip_benchmark wds/ folder (split {split!r})")
        nshards = int(nfile.read_text().strip())
        self.shards = [self.root / split / f"{i}.tar" for i in range(nshards)]
        self.items: List[Tuple[int, str, int, int, int]] = []  # shard, member, offset, size, label
        for si, shard in enumerate(self.shards):
            if not shard.is_file():
                raise WdsLayoutError(f"shard {shard} listed by {nfile} is missing")
            groups: Dict[str, Dict[str, tarfile.TarInfo]] = {}
            order = []
            with tarfile.open(shard, "r") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    base = os.path.basename(m.name)
                    key, _, ext = base.partition(".")
                    key = os.path.join(os.path.dirname(m.name), key)
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    groups[key][ext.lower()] = m
                labels = {}
                for key in order:
                    g = groups[key]
                    if "cls" in g:
                        labels[key] = int(tar.extractfile(g["cls"]).read().decode().strip())
            for key in order:
                g = groups[key]
                img = next((g[e] for e in IMAGE_EXTS if e in g), None)
                if img is None or key not in labels:
                    continue  # webdataset's to_tuple would skip it too (no image or no label)
                self.items.append((si, img.name, img.offset_data, img.size, labels[key]))
        self.classes, self.templates = read_wds_meta(self.root)
        self._handles: Dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def targets(self) -> List[int]:
        return [it[4] for it in self.items]

    def _read(self, si: int, offset: int, size: int) -> bytes:
        f = self._handles.get(si)
        if f is None:
            f = self._handles[si] = open(self.shards[si], "rb")
        f.seek(offset)
        return f.read(size)

    def describe(self, index: int) -> str:
        si, member = self.items[index][:2]
        return f"{self.shards[si]}:{member}"

    def __getitem__(self, index: int):
        from PIL import Image

        si, member, offset, size, label = self.items[index]
        try:
            img = Image.open(io.BytesIO(self._read(si, offset, size)))
            img = img.convert("RGB")
        except Exception as exc:
            raise CorruptImageError(f"cannot decode image {self.describe(index)}: {exc}") from exc
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __getstate__(self):  # file handles do not cross into DataLoader workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __del__(self):
        for f in getattr(self, "_handles", {}).values():
            try:
                f.close()
            except Exception:
                pass
