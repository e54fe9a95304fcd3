"""Well-known pretrained generators that no PyPI package ships: where a user gets them.

A command given one of these names while the file is missing says where to download it and where
to put it, instead of a bare "not found". The names are the ones their publishers use (and that
Cartoon-StyleGAN's and DualStyleGAN's instructions use), so a user following those instructions
types them.
"""
from __future__ import annotations

from pathlib import Path

from ..filekind import link_problem, not_found

_CARTOON_STYLEGAN = "https://drive.google.com/uc?id="
# file name -> (what it is, where to download it)
KNOWN_GENERATORS = {
    "ffhq256.pt": ("rosinality's 256 px FFHQ StyleGAN2 (Cartoon-StyleGAN's source model)",
                   _CARTOON_STYLEGAN + "1PQutd-JboOCOZqmd95XWxWrO8gGEvRcO"),
    "stylegan2-ffhq-config-f.pt": ("rosinality's conversion of NVlabs' 1024 px FFHQ StyleGAN2",
                                   "https://drive.google.com/file/d/1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT/view"),
    "stylegan2-ffhq-config-f.pkl": ("NVlabs' 1024 px FFHQ StyleGAN2",
                                    "https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-ffhq-config-f.pkl"),
    "ffhq-res256-mirror-paper256-noaug.pkl": (
        "NVlabs' 256 px FFHQ StyleGAN2 (stylegan2-ada-pytorch's transfer-learning source)",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/"
        "ffhq-res256-mirror-paper256-noaug.pkl"),
    **{f"{name}.pt": (f"Cartoon-StyleGAN's {name} model", _CARTOON_STYLEGAN + file_id) for name, file_id in (
        ("NaverWebtoon", "1yIn_gM3Fk3RrRphTPNBPgJ3c-PuzCjOB"),
        ("NaverWebtoon_FreezeSG", "1OysFtj7QTy7rPnxV9TXeEgBfmtgr8575"),
        ("NaverWebtoon_StructureLoss", "1Oylfl5j-XGoG_pFHtQwHd2G7yNSHx2Rm"),
        ("Romance101", "1wWt4dPC9TJfJ6cF3mwg7kQvpuVwPhSN7"),
        ("TrueBeauty", "1yEky49SnkBqPhdWvSAwgK5Sbrc3ctz1y"),
        ("Disney", "1z51gxECweWXqSYQxZJaHOJ4TtjUDGLxA"),
        ("Disney_FreezeSG", "1PJaNozfJYyQ1ChfZiU2RwJqGlOurgKl7"),
        ("Disney_StructureLoss", "1PILW-H4Q0W8S22TO4auln1Wgz8cyroH6"),
        ("Metface_FreezeSG", "1P5T6DL3Cl8T74HqYE0rCBQxcq15cipuw"),
        ("Metface_StructureLoss", "1P65UldIHd2QfBu88dYdo1SbGjcDaq1YL"),
    )},
}
DUALSTYLEGAN_MODELS = "https://github.com/williamyang1991/DualStyleGAN#pretrained-models"


def missing_checkpoint(path: str | Path) -> str:
    """The one line for a checkpoint that is not there: for a well-known name, what it is, where to
    download it and where to put it."""
    path = Path(path)
    known = KNOWN_GENERATORS.get(path.name)
    if known is None or link_problem(path):  # a link to a file that is gone: downloading is not the fix
        return not_found("checkpoint", path)
    what, url = known
    return (f"checkpoint not found: {path} is {what}, which no package ships: download it from {url} "
            f"and save it as {path}")


def missing_dualstyle_folder(path: str | Path) -> str:
    """The one line for a DualStyleGAN style folder that is not there."""
    if link_problem(path):
        return not_found("DualStyleGAN style folder", path)
    return (f"DualStyleGAN style folder not found: {path}: download one (generator.pt and exstyle_code.npy) "
            f"from {DUALSTYLEGAN_MODELS} and save it as {path}, with encoder.pt one level above it")
